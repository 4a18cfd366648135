//! The benchmark's outputs: `bench.json`, `report.md` and two SVG charts.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

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
    let (same_lat, same_done) = timings(&samples.same_messages);
    let (rush_lat, rush_done) = timings(&samples.seatrush);
    let series = [
        Series {
            name: "broker ceiling",
            latencies: &ceiling_lat,
            completions: &ceiling_done,
        },
        Series {
            name: "broker alone, seatrush's messages",
            latencies: &same_lat,
            completions: &same_done,
        },
        Series {
            name: "naive Postgres",
            latencies: &samples.naive_latencies,
            completions: &samples.naive_latencies,
        },
        Series {
            name: "seatrush",
            latencies: &rush_lat,
            completions: &rush_done,
        },
    ];
    charts::latency_chart(&series, &out.join("latency.svg"))?;
    charts::throughput_chart(&series, &out.join("throughput.svg"))?;
    std::fs::write(out.join("report.md"), markdown(report))?;
    Ok(())
}

/// Writes `junk.json` and `junk.md` into `out`.
pub fn write_junk(out: &Path, report: &JunkReport) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("junk.json"), serde_json::to_vec_pretty(report)?)?;
    std::fs::write(out.join("junk.md"), junk_markdown(report))?;
    Ok(())
}

pub fn markdown(r: &BenchReport) -> String {
    let s = &r.seatrush;
    let mut md = String::new();
    let _ = writeln!(md, "# seatrush benchmark\n");
    let _ = writeln!(
        md,
        "The same stream of {} requests ({} students, {} choices each, {} courses of {} seats) \
         through three designs, one after the other, on the same RabbitMQ and PostgreSQL.\n",
        s.requests, s.students, s.choices, s.courses, s.seats
    );
    let _ = writeln!(
        md,
        "| design | requests/s | all answered in | final p50 | final p99 | final max |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    let mut row = |name: &str, rps: f64, secs: f64, p50: f64, p99: f64, max: f64| {
        let _ = writeln!(
            md,
            "| {name} | {rps:.0} | {secs:.2} s | {p50:.0} ms | {p99:.0} ms | {max:.0} ms |"
        );
    };
    let c = &r.ceiling;
    row(
        "broker ceiling",
        c.throughput_rps,
        c.elapsed_s,
        c.final_p50_ms,
        c.final_p99_ms,
        c.final_max_ms,
    );
    let m = &r.ceiling_same_messages;
    row(
        "broker alone, seatrush's messages",
        m.throughput_rps,
        m.elapsed_s,
        m.final_p50_ms,
        m.final_p99_ms,
        m.final_max_ms,
    );
    let n = &r.naive.figures;
    row(
        "naive Postgres",
        n.throughput_rps,
        n.elapsed_s,
        n.final_p50_ms,
        n.final_p99_ms,
        n.final_max_ms,
    );
    row(
        "seatrush",
        s.throughput_rps,
        s.elapsed_s,
        s.final_p50_ms,
        s.final_p99_ms,
        s.final_max_ms,
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "- **ratio_to_ceiling**: {:.2} (target at least 0.85)",
        r.ratio_to_ceiling
    );
    let _ = writeln!(
        md,
        "- **ratio_to_same_messages**: {:.2} (against the broker alone publishing what seatrush \
         publishes per request: a provisional answer, a final answer and a final event)",
        r.ratio_to_same_messages
    );
    let _ = writeln!(md, "- **ratio_to_naive**: {:.2}", r.ratio_to_naive);
    let _ = writeln!(
        md,
        "- **final p99**: {:.0} ms, budget {:.0} ms (the broker alone's time for the burst plus 1 s): {}",
        s.final_p99_ms,
        r.final_p99_budget_ms,
        if r.final_p99_within_budget {
            "within"
        } else {
            "over"
        }
    );
    let _ = writeln!(
        md,
        "- **requests per commit**: {:.0} (target at least 50)",
        s.requests_per_commit
    );
    if let Some(cpu) = s.worker_cpu_us_per_request {
        let _ = writeln!(
            md,
            "- **worker CPU per request**: {cpu:.1} µs (target at most 30)"
        );
    }
    if let Some(rss) = s.worker_peak_rss_mib {
        let _ = writeln!(md, "- **worker peak memory**: {rss:.1} MiB");
    }
    let _ = writeln!(
        md,
        "- **checks**: lost {}, duplicated {}, contradicted {}, violations {}",
        s.lost, s.duplicated, s.contradicted, s.violations
    );
    let _ = writeln!(
        md,
        "- **naive design**: {} enrolled, {} full, {} duplicates refused, {} errors, {} violations, {} connections",
        r.naive.enrolled,
        r.naive.full,
        r.naive.duplicates,
        r.naive.errors,
        r.naive.violations,
        r.naive.connections
    );
    let _ = writeln!(
        md,
        "\n![latency](latency.svg)\n\n![throughput](throughput.svg)\n"
    );
    let _ = writeln!(
        md,
        "Latency is from publish to final answer (for the naive design, from the start of the \
         burst to the commit of its transaction: every request arrives at once). All three share \
         the machine with the load generator."
    );
    md
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
