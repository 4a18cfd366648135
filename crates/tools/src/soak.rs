//! `seatrush soak`: a steady load held for minutes, to find what a burst cannot: memory that
//! grows without bound, a latency that drifts, a queue that never drains.
//!
//! Every few seconds a window of requests leaves at the chosen rate: enrolls of students new in
//! that window, and drops of the previous window's enrollments, so seats keep changing hands
//! and nothing fills for good. Each window's final answers are collected on its own connection
//! and counted; at the end of each window the workers' and the broker's resident memory, the
//! requests waiting in the partition queues and the window's final p99 are sampled.
//!
//! The soak fails if a request is not answered, if the workers' or the broker's memory in the
//! last third of the run exceeds the middle third's by more than [`MEMORY_SLACK`] (and by more
//! than [`MEMORY_FLOOR_MIB`]), or if the final p99 in the last third exceeds the middle third's
//! [`DRIFT_FACTOR`] times over (and by more than [`DRIFT_FLOOR_MS`]). The first third is the
//! warm-up: caches, pools and actors fill there.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use seatrush_core::amqp::Broker;
use seatrush_core::domain::{Action, CourseId, Partition, Request, RequestId};

use crate::load::{self, Pace};
use crate::rush::{self, RushConfig, WorkerProcess};

/// Growth of memory allowed between the middle and the last third of the run.
pub const MEMORY_SLACK: f64 = 0.25;
/// Growth of memory below this many MiB never fails the soak (noise of a small process).
pub const MEMORY_FLOOR_MIB: f64 = 32.0;
/// How many times the middle third's p99 the last third's may reach.
pub const DRIFT_FACTOR: f64 = 2.0;
/// A p99 rise below this many milliseconds never fails the soak.
pub const DRIFT_FLOOR_MS: f64 = 200.0;

/// What to soak, and for how long.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Services, workers, courses and tag, as for a rush (its crowd's size is not used).
    pub rush: RushConfig,
    pub duration: Duration,
    /// Requests per second.
    pub rate: f64,
    /// How often a window starts and a sample is taken.
    pub window: Duration,
    /// Where the JSON report and the charts go.
    pub out: Option<PathBuf>,
}

/// One window's sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the soak began.
    pub at_secs: f64,
    pub sent: usize,
    pub answered: usize,
    pub p99_final_ms: f64,
    /// The workers' resident memory, summed.
    pub worker_rss_mib: f64,
    pub broker_rss_mib: f64,
    /// Requests waiting in every partition queue.
    pub queued: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub minutes: f64,
    pub rate: f64,
    pub requests: usize,
    pub unanswered: usize,
    pub samples: Vec<Sample>,
    /// Medians of the middle and last thirds.
    pub worker_rss_mib: (f64, f64),
    pub broker_rss_mib: (f64, f64),
    pub p99_final_ms: (f64, f64),
    /// Why the soak failed; empty when it passed.
    pub failures: Vec<String>,
}

impl SoakReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs the soak in a database and a topology of its own, removed after: a steady state is
/// measured from empty, not on what earlier runs left (millions of outcomes, or a backlog in
/// the partition queues). Errors only when it could not run.
pub async fn run(config: SoakConfig) -> anyhow::Result<SoakReport> {
    let name = config.rush.tag.to_lowercase();
    let services = config.rush.services.clone();
    rush::fresh::on_own_services(&services, &name, |own| {
        let mut config = config;
        config.rush.services = own;
        run_in(config)
    })
    .await
}

async fn run_in(config: SoakConfig) -> anyhow::Result<SoakReport> {
    let services = config.rush.services.clone();
    let store = rush::prepared_store(&services).await?;
    let courses = rush::create_courses(&store, &config.rush.tag, &config.rush.crowd, false).await?;
    let workers = rush::start_workers(&config.rush, &store).await?;
    let broker = Broker::connect(&services.amqp_url, "seatrush-soak")
        .await
        .context("connecting to RabbitMQ")?;
    let broker_pids =
        crate::cpu::Servers::of(&services.amqp_url, &services.database_url, "").broker;

    let per_window = ((config.rate * config.window.as_secs_f64()).round() as usize).max(2);
    let windows = (config.duration.as_secs_f64() / config.window.as_secs_f64()).ceil() as usize;
    let began = Instant::now();
    let watched = Watched {
        began,
        workers: &workers,
        broker_pids: &broker_pids,
        broker: &broker,
        services: &services,
    };
    let mut running: Vec<Window> = Vec::new();
    let mut previous: Vec<Request> = Vec::new();
    let mut samples = Vec::new();
    let (mut requests, mut unanswered) = (0, 0);
    for k in 0..windows {
        let window = plan_window(&courses, &config.rush.tag, k, per_window, &previous)?;
        previous = window
            .iter()
            .filter(|r| r.action == Action::Enroll)
            .cloned()
            .collect();
        requests += window.len();
        running.push(load::spawn(
            &services.amqp_url,
            &services.topology,
            window,
            Duration::from_secs(60),
            Pace::Rate(config.rate),
        ));
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            began + config.window * (k as u32 + 1),
        ))
        .await;
        // The windows whose answers are all in (or timed out) are counted and sampled.
        let (done, still): (Vec<_>, Vec<_>) =
            running.into_iter().partition(|task| task.is_finished());
        running = still;
        for task in done {
            let (missing, sampled) = settle(task, &watched).await?;
            unanswered += missing;
            samples.push(sampled);
        }
    }
    for task in running {
        let (missing, sampled) = settle(task, &watched).await?;
        unanswered += missing;
        samples.push(sampled);
    }
    broker.close().await;
    for worker in workers {
        worker.stop(Duration::from_secs(60)).await?;
    }
    let violations = store.audit().await?;
    store.close().await;
    let report = verdict(&config, requests, unanswered, samples, violations.len());
    if let Some(out) = &config.out {
        write_outputs(&report, out)?;
    }
    Ok(report)
}

/// Window `k`: enrolls of students new in it, and a drop of each enrollment of the window
/// before, `size` requests in all.
fn plan_window(
    courses: &[CourseId],
    tag: &str,
    k: usize,
    size: usize,
    previous: &[Request],
) -> anyhow::Result<Vec<Request>> {
    let drops: Vec<Request> = previous
        .iter()
        .take(size / 2)
        .map(|r| {
            Ok(Request {
                request_id: RequestId::parse(format!("{}-d", r.request_id.as_str()))
                    .map_err(|e| anyhow::anyhow!("a drop's id: {e}"))?,
                action: Action::Drop,
                course_id: r.course_id.clone(),
                student_id: r.student_id.clone(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut window = rush::crowd(
        courses,
        size - drops.len(),
        1,
        &format!("{tag}w{k}"),
        k as u64 + 1,
    )?;
    window.extend(drops);
    Ok(window)
}

/// A window of requests under way.
type Window = tokio::task::JoinHandle<anyhow::Result<load::Report>>;

/// What each sample reads.
struct Watched<'a> {
    began: Instant,
    workers: &'a [WorkerProcess],
    broker_pids: &'a [u32],
    broker: &'a Broker,
    services: &'a rush::Services,
}

/// Waits for a window's answers; returns how many went unanswered, and the sample.
async fn settle(window: Window, watched: &Watched<'_>) -> anyhow::Result<(usize, Sample)> {
    let report = window.await.context("a soak window")??;
    let missing = report
        .answered
        .iter()
        .filter(|a| a.finals.is_empty())
        .count();
    Ok((missing, sample(&report, watched).await))
}

async fn sample(report: &load::Report, watched: &Watched<'_>) -> Sample {
    let Watched {
        began,
        workers,
        broker_pids,
        broker,
        services,
    } = watched;
    let mut finals: Vec<Duration> = report
        .answered
        .iter()
        .filter_map(|a| a.finals.first().map(|(_, d)| *d))
        .collect();
    finals.sort();
    let p99 = crate::stats::quantile(&finals, 0.99).unwrap_or_default();
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let worker_rss: u64 = workers
        .iter()
        .filter_map(|w| w.usage())
        .map(|u| u.rss)
        .sum();
    let broker_rss: u64 = broker_pids
        .iter()
        .filter_map(|pid| rush::usage_of(*pid))
        .map(|u| u.rss)
        .sum();
    let mut queued = 0u64;
    for p in 0..services.topology.partitions {
        for queue in services.topology.partition_queues(Partition(p)) {
            if let Ok(Some(depth)) = broker.queue_depth(&queue).await {
                queued += u64::from(depth.ready);
            }
        }
    }
    Sample {
        at_secs: began.elapsed().as_secs_f64(),
        sent: report.answered.len(),
        answered: report
            .answered
            .iter()
            .filter(|a| !a.finals.is_empty())
            .count(),
        p99_final_ms: p99.as_secs_f64() * 1e3,
        worker_rss_mib: mib(worker_rss),
        broker_rss_mib: mib(broker_rss),
        queued,
    }
}

/// The medians of a value over the middle and the last third of the samples.
fn thirds(samples: &[Sample], value: impl Fn(&Sample) -> f64) -> (f64, f64) {
    let n = samples.len();
    let median = |part: &[Sample]| {
        let mut v: Vec<f64> = part.iter().map(&value).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    if n < 3 {
        let all = median(samples);
        return (all, all);
    }
    (
        median(&samples[n / 3..2 * n / 3]),
        median(&samples[2 * n / 3..]),
    )
}

fn verdict(
    config: &SoakConfig,
    requests: usize,
    unanswered: usize,
    samples: Vec<Sample>,
    violations: usize,
) -> SoakReport {
    let worker = thirds(&samples, |s| s.worker_rss_mib);
    let broker = thirds(&samples, |s| s.broker_rss_mib);
    let p99 = thirds(&samples, |s| s.p99_final_ms);
    let mut failures = Vec::new();
    if unanswered > 0 {
        failures.push(format!("{unanswered} requests got no final answer"));
    }
    if violations > 0 {
        failures.push(format!("the audit found {violations} violations"));
    }
    for (what, (middle, last)) in [("the workers'", worker), ("the broker's", broker)] {
        if last > middle * (1.0 + MEMORY_SLACK) && last - middle > MEMORY_FLOOR_MIB {
            failures.push(format!(
                "{what} memory grew from {middle:.0} to {last:.0} MiB between the middle and the last third"
            ));
        }
    }
    if p99.1 > p99.0 * DRIFT_FACTOR && p99.1 - p99.0 > DRIFT_FLOOR_MS {
        failures.push(format!(
            "the final p99 drifted from {:.0} to {:.0} ms between the middle and the last third",
            p99.0, p99.1
        ));
    }
    SoakReport {
        minutes: config.duration.as_secs_f64() / 60.0,
        rate: config.rate,
        requests,
        unanswered,
        samples,
        worker_rss_mib: worker,
        broker_rss_mib: broker,
        p99_final_ms: p99,
        failures,
    }
}

fn write_outputs(report: &SoakReport, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("soak.json"), serde_json::to_vec_pretty(report)?)?;
    let points = |value: &dyn Fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        report
            .samples
            .iter()
            .map(|s| (s.at_secs / 60.0, value(s)))
            .collect()
    };
    crate::charts::timeline_chart(
        "Memory during the soak",
        "resident memory (MiB)",
        &[
            ("workers", points(&|s| s.worker_rss_mib)),
            ("broker", points(&|s| s.broker_rss_mib)),
        ],
        &out.join("soak-memory.svg"),
    )?;
    crate::charts::timeline_chart(
        "Final answers' p99 during the soak",
        "p99 of final answers (ms)",
        &[("p99", points(&|s| s.p99_final_ms))],
        &out.join("soak-latency.svg"),
    )
}

/// The report, for a terminal.
pub fn describe(r: &SoakReport) -> String {
    let mut text = format!(
        "soak: {:.1} min at {:.0} requests/s, {} requests, {} unanswered\n\
         workers' memory (median, middle → last third): {:.1} → {:.1} MiB\n\
         broker's memory: {:.1} → {:.1} MiB\n\
         final p99: {:.0} → {:.0} ms\n\
         queued at the last sample: {}\n",
        r.minutes,
        r.rate,
        r.requests,
        r.unanswered,
        r.worker_rss_mib.0,
        r.worker_rss_mib.1,
        r.broker_rss_mib.0,
        r.broker_rss_mib.1,
        r.p99_final_ms.0,
        r.p99_final_ms.1,
        r.samples.last().map_or(0, |s| s.queued),
    );
    if r.passed() {
        text.push_str("passed: memory flat, latency steady, every request answered\n");
    } else {
        for failure in &r.failures {
            text.push_str(&format!("FAILED: {failure}\n"));
        }
    }
    text
}
