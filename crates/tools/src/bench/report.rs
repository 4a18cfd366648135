//! The benchmark's outputs: `bench.json`, `report.md` and two SVG charts.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::crash::CrashReport;
use super::{BenchReport, JunkReport, Samples};
use crate::charts::{self, Series};
use crate::load;

/// Latencies and completion instants of final answers, for the charts.
fn timings(report: &load::Report) -> (Vec<Duration>, Vec<Duration>) {
    report
        .answered
        .iter()
        .filter_map(|a| a.finals.first().map(|(_, d)| (*d, a.sent + *d)))
        .unzip()
}

/// Writes `bench.json`, `report.md`, `latency.svg` and `throughput.svg` into `out`.
pub fn write_outputs(out: &Path, report: &BenchReport, samples: &Samples) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("bench.json"), serde_json::to_vec_pretty(report)?)?;
    let (ceiling_lat, ceiling_done) = timings(&samples.ceiling);
    let (rush_lat, rush_done) = timings(&samples.seatrush);
    let (single_lat, single_done) = timings(&samples.seatrush_single);
    let series = [
        Series {
            name: "broker ceiling",
            latencies: &ceiling_lat,
            completions: &ceiling_done,
        },
        Series {
            name: "naive Postgres",
            latencies: &samples.naive_latencies,
            completions: &samples.naive_latencies,
        },
        Series {
            name: "Redis (appendfsync always)",
            latencies: &samples.redis_latencies,
            completions: &samples.redis_latencies,
        },
        Series {
            name: "seatrush",
            latencies: &rush_lat,
            completions: &rush_done,
        },
        Series {
            name: "seatrush, one message per answer",
            latencies: &single_lat,
            completions: &single_done,
        },
    ];
    charts::latency_chart(&series, &out.join("latency.svg"))?;
    charts::throughput_chart(&series, &out.join("throughput.svg"))?;
    std::fs::write(out.join("report.md"), markdown(report))?;
    Ok(())
}

/// Writes `crash.json` and `crash.md` into `out`.
pub fn write_crash(out: &Path, report: &CrashReport) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("crash.json"), serde_json::to_vec_pretty(report)?)?;
    std::fs::write(out.join("crash.md"), crash_markdown(report))?;
    Ok(())
}

/// The crash round as a table: per design, what the students were told and what holds after.
pub fn crash_markdown(r: &CrashReport) -> String {
    let s = &r.seatrush;
    let mut md = String::new();
    let _ = writeln!(md, "# Crash round\n");
    let _ = writeln!(
        md,
        "The burst spread over two seconds; halfway, the design's stateful server is killed with \
         SIGKILL and started again (seatrush: its worker; Redis: the Redis server, whose clients \
         retry what got no answer).\n"
    );
    let _ = writeln!(
        md,
        "| design | requests | told something | answers lost | answers changed | violations |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        md,
        "| seatrush | {} | {} | {} | {} | {} |",
        s.requests, s.told, s.lost, s.answers_changed, s.violations
    );
    for (name, x) in [
        ("Redis, appendfsync always", &r.redis),
        ("Redis, appendfsync everysec", &r.redis_everysec),
    ] {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} |",
            s.requests,
            x.aftermath.told,
            x.aftermath.answers_lost + x.aftermath.forgotten_by_redis,
            x.aftermath.answers_changed,
            x.run.violations
        );
    }
    let _ = writeln!(
        md,
        "\nseatrush: killed at {:.0} ms, answering again at {:.0} ms (the new worker waits for the \
         killed one's partition leases to expire); {} provisional answers revised, {} of them \
         outside the crash window; {} requests asked after the kill waited at most {:.0} ms for \
         their final answer.",
        s.killed_at_ms,
        s.back_at_ms,
        s.provisional_revised,
        s.provisional_revised_outside_window,
        s.asked_after_kill,
        s.longest_wait_after_kill_ms
    );
    md
}

/// Writes `junk.json` and `junk.md` into `out`.
pub fn write_junk(out: &Path, report: &JunkReport) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("junk.json"), serde_json::to_vec_pretty(report)?)?;
    std::fs::write(out.join("junk.md"), junk_markdown(report))?;
    Ok(())
}

/// Writes `hostile.json` and `hostile.md` into `out`.
pub fn write_hostile(out: &Path, report: &super::hostile::HostileReport) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("hostile.json"), serde_json::to_vec_pretty(report)?)?;
    std::fs::write(out.join("hostile.md"), hostile_markdown(report))?;
    Ok(())
}

/// The hostile scenario's report in Markdown.
pub fn hostile_markdown(r: &super::hostile::HostileReport) -> String {
    let mut md = format!(
        "# Hostile scenario\n\n{} hostile messages ({} of them a warm-up), published at {:.0}/s \
         beside valid students: {} answered, {} dead-lettered ({} without a reason), {} neither. A \
         message that is not a valid request is answered when it has a valid id and a reply \
         address a queue takes the answer at, and dead-lettered otherwise.\n\n\
         | kind | sent | answered | dead-lettered | neither |\n|---|---:|---:|---:|---:|\n",
        r.messages,
        r.warmup_messages,
        r.publish_rps,
        r.answered,
        r.dead_lettered,
        r.dead_without_reason,
        r.unaccounted
    );
    for (kind, k) in &r.by_kind {
        let _ = writeln!(
            md,
            "| {kind} | {} | {} | {} | {} |",
            k.sent, k.answered, k.dead_lettered, k.unaccounted
        );
    }
    let _ = write!(
        md,
        "\n| worker memory | MiB |\n|---|---:|\n| after the warm-up | {:.1} |\n\
         | half-way through the flood | {:.1} |\n| after the flood | {:.1} |\n\
         | growth over the second half (must stay under {:.0}) | {:.1} |\n\
         | growth since the warm-up | {:.1} |\n| peak | {:.1} |\n\nWorker CPU {:.1} µs per \
         hostile message; the worker {} at the end.\n\nThe flood came on a lane of its own \
         (`--lanes {}`), the valid students on the default one. Then the same flood again, {} \
         messages published at {:.0}/s, on the valid students' own lane: {} answered, {} \
         dead-lettered ({} without a reason), {} neither. And a third time, {} messages \
         published at {:.0}/s into partition queues of their own that a consumer acks without \
         reading them ({} acked): what taking the flood in costs the valid students before \
         anything reads it.\n\n",
        r.rss_before_mib,
        r.rss_mid_mib,
        r.rss_after_mib,
        super::hostile::RSS_GROWTH_LIMIT_MIB,
        r.rss_growth_mib,
        r.rss_growth_from_warmup_mib,
        r.peak_rss_mib,
        r.worker_cpu_us_per_message,
        if r.worker_alive {
            "was running"
        } else {
            "had died"
        },
        r.flood_lane,
        r.same_lane.messages,
        r.same_lane.publish_rps,
        r.same_lane.answered,
        r.same_lane.dead_lettered,
        r.same_lane.dead_without_reason,
        r.same_lane.unaccounted,
        r.broker_only.messages,
        r.broker_only.publish_rps,
        r.broker_only.delivered,
    );
    let _ = write!(
        md,
        "While the flood on its own lane lasted ({:.1} s, until its last message was settled), \
         the machine's cores went to {}. A write into a quorum queue of the run that nothing \
         else touches was confirmed in {:.0} ms at the median and {:.0} ms at the 99th \
         percentile while the valid students were alone, {:.0} and {:.0} ms during the flood on \
         its own lane, {:.0} and {:.0} ms during the flood on theirs, {:.0} and {:.0} ms during \
         the flood nobody read. While the flood nobody read lasted ({:.1} s, the valid students \
         beside it as long), the cores went to {}.\n\n\
         | valid students | alone | beside the flood on its lane | beside the flood on theirs | \
         beside the flood nobody read |\n|---|---:|---:|---:|---:|\n",
        r.flood_s,
        cores_went_to(
            &r.cpu_us_per_message,
            r.messages - r.warmup_messages,
            r.flood_s
        ),
        r.probe_confirm.alone.p50_ms,
        r.probe_confirm.alone.p99_ms,
        r.probe_confirm.flood_own_lane.p50_ms,
        r.probe_confirm.flood_own_lane.p99_ms,
        r.probe_confirm.flood_same_lane.p50_ms,
        r.probe_confirm.flood_same_lane.p99_ms,
        r.probe_confirm.flood_broker_only.p50_ms,
        r.probe_confirm.flood_broker_only.p99_ms,
        r.broker_only.flood_s,
        cores_went_to(
            &r.broker_only.cpu_us_per_message,
            r.broker_only.messages,
            r.broker_only.flood_s
        ),
    );
    let columns = [
        &r.valid_alone,
        &r.valid_beside,
        &r.same_lane.valid_beside,
        &r.broker_only.valid_beside,
    ];
    type Figure = fn(&super::hostile::ValidFigures) -> f64;
    let rows: [(&str, Figure); 9] = [
        ("requests", |v| v.requests as f64),
        ("lost", |v| v.lost as f64),
        ("duplicated", |v| v.duplicated as f64),
        ("contradicted", |v| v.contradicted as f64),
        ("seats not matching", |v| v.mismatched_seats as f64),
        ("provisional p50 (ms)", |v| v.provisional_p50_ms),
        ("provisional p99 (ms)", |v| v.provisional_p99_ms),
        ("final p50 (ms)", |v| v.final_p50_ms),
        ("final p99 (ms)", |v| v.final_p99_ms),
    ];
    for (name, figure) in rows {
        let _ = write!(md, "| {name} |");
        for column in columns {
            let _ = write!(md, " {:.0} |", figure(column));
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "\nAudit violations: {}. {}",
        r.violations,
        if r.passed() { "Passed." } else { "FAILED." }
    );
    md
}

/// What each process's CPU per message, over `messages` in `seconds`, was as cores of the
/// machine, and per message.
fn cores_went_to(c: &crate::cpu::CpuShare, messages: usize, seconds: f64) -> String {
    let cores = |us: f64| us * messages as f64 / 1e6 / seconds.max(1e-9);
    format!(
        "the broker {:.2}, the worker {:.2}, the database {:.2}, the bench's publishers and \
         crowd {:.2} (µs per message: {:.0}, {:.0}, {:.0}, {:.0})",
        cores(c.broker),
        cores(c.workers),
        cores(c.database),
        cores(c.bench),
        c.broker,
        c.workers,
        c.database,
        c.bench,
    )
}

pub fn markdown(r: &BenchReport) -> String {
    let s = &r.seatrush;
    let mut md = String::new();
    let _ = writeln!(md, "# seatrush benchmark: {}\n", r.scenario);
    let _ = writeln!(
        md,
        "The same stream of {} requests ({} students, {} choices each, {} courses of {} seats) \
         through every design, one after the other, on the same RabbitMQ and PostgreSQL, in {} \
         round(s); medians over the rounds, ratios computed within each round.\n",
        s.requests,
        s.students,
        s.choices,
        s.courses,
        s.seats,
        r.rounds.len()
    );
    design_table(&mut md, r);
    ratios(&mut md, r);
    seatrush_costs(&mut md, r);
    cpu_table(&mut md, r);
    stage_table(&mut md, r);
    checks(&mut md, r);
    let _ = writeln!(
        md,
        "\n![latency](latency.svg)\n\n![throughput](throughput.svg)\n\n(charts: the last round)\n"
    );
    let _ = writeln!(
        md,
        "Latency is from publish to final answer (for the naive and Redis designs, from the \
         start of the burst to the commit of the decision in PostgreSQL: every request arrives \
         at once). Every design shares the machine with the load generator."
    );
    md
}

/// Requests per second of every design, per round and the median.
fn design_table(md: &mut String, r: &BenchReport) {
    let rounds: Vec<String> = (1..=r.rounds.len()).map(|n| format!("round {n}")).collect();
    let _ = writeln!(
        md,
        "| design | median requests/s | {} |",
        rounds.join(" | ")
    );
    let _ = writeln!(md, "|---|---:|{}", "---:|".repeat(r.rounds.len()));
    let mut row = |name: &str, median: f64, per_round: &dyn Fn(&super::Round) -> f64| {
        let cells: Vec<String> = r
            .rounds
            .iter()
            .map(|x| format!("{:.0}", per_round(x)))
            .collect();
        let _ = writeln!(md, "| {name} | {median:.0} | {} |", cells.join(" | "));
    };
    let m = &r.median;
    row(
        "intake ceiling (quorum queues: publish, deliver, ack)",
        m.intake_ceiling_rps,
        &|x| x.intake_ceiling.throughput_rps,
    );
    row(
        "intake ceiling (streams, offset in PostgreSQL)",
        m.stream_intake_ceiling_rps,
        &|x| x.stream_intake_ceiling.throughput_rps,
    );
    row(
        "broker ceiling (1 request in, 1 answer out)",
        m.ceiling_rps,
        &|x| x.ceiling.throughput_rps,
    );
    row(
        "naive Postgres (best connection count)",
        m.naive_rps,
        &|x| x.naive.figures.throughput_rps,
    );
    row(
        "Redis + Postgres writer, appendfsync always",
        m.redis_rps,
        &|x| x.redis.figures.throughput_rps,
    );
    row(
        "Redis + Postgres writer, appendfsync everysec",
        m.redis_everysec_rps,
        &|x| x.redis_everysec.figures.throughput_rps,
    );
    row("**seatrush** (batched answers)", m.seatrush_rps, &|x| {
        x.seatrush.throughput_rps
    });
    row(
        "seatrush, one message per answer",
        m.seatrush_single_rps,
        &|x| x.seatrush_single.throughput_rps,
    );
    let _ = writeln!(md);
}

fn ratios(md: &mut String, r: &BenchReport) {
    let lines = [
        ("ratio_to_ceiling", r.ratio_to_ceiling, "at least 1.0"),
        (
            "ratio_to_intake_ceiling",
            r.ratio_to_intake_ceiling,
            "at least 0.75",
        ),
        (
            "ratio_to_stream_intake_ceiling",
            r.ratio_to_stream_intake_ceiling,
            "none",
        ),
        ("ratio_to_naive", r.ratio_to_naive, "at least 1.25"),
        (
            "ratio_to_redis",
            r.ratio_to_redis,
            "none: Redis answers from memory",
        ),
        ("ratio_to_redis_everysec", r.ratio_to_redis_everysec, "none"),
        ("ratio_single_to_batched", r.ratio_single_to_batched, "none"),
    ];
    for (name, value, target) in lines {
        let _ = writeln!(md, "- **{name}**: {value:.2} (target: {target})");
    }
    let _ = writeln!(
        md,
        "- **final p99**: {:.0} ms, budget {:.0} ms (the broker ceiling's time for the burst plus 1 s): {}",
        r.seatrush.final_p99_ms,
        r.final_p99_budget_ms,
        within(r.final_p99_within_budget)
    );
    let _ = writeln!(
        md,
        "- **the last final answer**: {:.0} ms, same budget: {}",
        r.seatrush.final_max_ms,
        within(r.final_max_within_budget)
    );
}

fn within(yes: bool) -> &'static str {
    if yes { "within" } else { "over" }
}

fn seatrush_costs(md: &mut String, r: &BenchReport) {
    for (name, s) in [
        ("batched answers", &r.seatrush),
        ("one message per answer", &r.seatrush_single),
    ] {
        let cpu = s
            .worker_cpu_us_per_request
            .map_or("n/a".to_owned(), |c| format!("{c:.1} µs"));
        let publishes = s
            .worker_publishes_per_request
            .map_or("n/a".to_owned(), |p| format!("{p:.3}"));
        let rss = s
            .worker_peak_rss_mib
            .map_or("n/a".to_owned(), |m| format!("{m:.1} MiB"));
        let _ = writeln!(
            md,
            "- **seatrush, {name}**: worker CPU {cpu} per request (target at most 30), {publishes} \
             messages published per request (target at most 0.25 batched), {:.0} requests per \
             commit (target at least 50), peak memory {rss}",
            s.requests_per_commit
        );
    }
}

/// Where each design's CPU goes, per request and process.
fn cpu_table(md: &mut String, r: &BenchReport) {
    let _ = writeln!(
        md,
        "\nCPU per request (µs), by process (medians; `bench` is this process: the crowd, and \
         the naive and Redis designs' clients and writer):\n"
    );
    let _ = writeln!(
        md,
        "| design | broker | database | Redis | bench | workers | all |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for (design, c) in &r.cpu_us_per_request {
        let all = c.broker + c.database + c.redis + c.bench + c.workers;
        let _ = writeln!(
            md,
            "| {design} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {all:.0} |",
            c.broker, c.database, c.redis, c.bench, c.workers
        );
    }
    let _ = writeln!(md);
}

/// Where seatrush's worker CPU per request goes, by stage of the request path.
fn stage_table(md: &mut String, r: &BenchReport) {
    let designs = [
        ("batched answers", &r.seatrush),
        ("one message per answer", &r.seatrush_single),
    ];
    let shares: Vec<_> = designs
        .iter()
        .filter_map(|(name, s)| {
            Some((
                *name,
                s.worker_cpu_by_stage_us_per_request.as_ref()?,
                s.worker_cpu_us_per_request?,
            ))
        })
        .collect();
    let Some((_, first, _)) = shares.first() else {
        return;
    };
    let _ = writeln!(
        md,
        "Worker CPU per request (µs), by stage (medians). Each stage is measured by the worker \
         around its own code (`seatrush_stage_busy_nanoseconds_total`), the broker client's \
         thread from `/proc`; the rest is the async runtime's scheduling and the hand-offs \
         between tasks:\n"
    );
    let header: Vec<&str> = shares.iter().map(|(name, _, _)| *name).collect();
    let _ = writeln!(md, "| stage | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(shares.len()));
    for (i, (part, _)) in first.parts().iter().enumerate() {
        let cells: Vec<String> = shares
            .iter()
            .map(|(_, share, _)| format!("{:.1}", share.parts()[i].1))
            .collect();
        let _ = writeln!(md, "| {part} | {} |", cells.join(" | "));
    }
    let totals: Vec<String> = shares
        .iter()
        .map(|(_, _, cpu)| format!("{cpu:.1}"))
        .collect();
    let _ = writeln!(md, "| **worker CPU** | {} |\n", totals.join(" | "));
}

fn checks(md: &mut String, r: &BenchReport) {
    for (name, s) in [
        ("seatrush", &r.seatrush),
        ("seatrush, one message per answer", &r.seatrush_single),
    ] {
        let _ = writeln!(
            md,
            "- **checks, {name}** (summed over the rounds): lost {}, duplicated {}, contradicted {}, violations {}",
            s.lost, s.duplicated, s.contradicted, s.violations
        );
    }
    for round in &r.rounds {
        let n = &round.naive;
        let tried: Vec<String> = round
            .naive_by_connections
            .iter()
            .map(|t| format!("{}: {:.0}/s", t.connections, t.throughput_rps))
            .collect();
        let _ = writeln!(
            md,
            "- **round {}, naive design**: {} enrolled, {} full, {} duplicates refused, {} errors, \
             {} violations; best at {} connections ({})",
            round.round,
            n.enrolled,
            n.full,
            n.duplicates,
            n.errors,
            n.violations,
            n.connections,
            tried.join(", ")
        );
        for (name, x) in [
            ("always", &round.redis),
            ("everysec", &round.redis_everysec),
        ] {
            let _ = writeln!(
                md,
                "- **round {}, Redis ({name})**: lost {}, duplicated {}, contradicted {}, violations {}",
                round.round, x.lost, x.duplicated, x.contradicted, x.violations
            );
        }
    }
}

fn junk_markdown(r: &JunkReport) -> String {
    format!(
        "# Junk scenario\n\n{} requests naming random unknown courses, after a warm-up of {}; {} \
         answered in {:.1} s ({:.0}/s).\n\n| worker memory | MiB |\n|---|---:|\n| before | {:.1} |\n\
         | after | {:.1} |\n| growth | {:.1} |\n| peak | {:.1} |\n\nWorker CPU {:.1} µs per request. \
         The growth must stay under 32 MiB: unknown course ids create no state.\n",
        r.requests,
        r.warmup_requests,
        r.answered,
        r.elapsed_s,
        r.throughput_rps,
        r.rss_before_mib,
        r.rss_after_mib,
        r.rss_growth_mib,
        r.peak_rss_mib,
        r.worker_cpu_us_per_request
    )
}
