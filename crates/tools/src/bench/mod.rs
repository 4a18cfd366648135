//! The benchmark: the same request stream through the broker alone (its ceiling), through a
//! naive one-transaction-per-request Postgres design, and through seatrush, in one run on the
//! same broker and database, reported as ratios. A second scenario floods a worker with requests
//! for random unknown courses and reports its memory before and after.

pub mod ceiling;
pub mod intake;
mod naive;
mod naive_sql;
pub mod redis;
mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use serde::Serialize;

pub use report::{markdown, write_junk, write_outputs};

use crate::load;
use crate::rush::{self, Crowd, RushConfig, RushReport, Services, WorkerProcess};
use crate::stats::Latency;
use seatrush_core::amqp::Topology;
use seatrush_core::domain::{Action, CourseId, Request, RequestId, StudentId};
use seatrush_core::store::Store;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub services: Services,
    pub crowd: Crowd,
    pub workers: usize,
    pub naive_connections: u32,
    pub exe: PathBuf,
    pub out: PathBuf,
    pub timeout: Duration,
}

/// One design's figures.
#[derive(Debug, Clone, Serialize)]
pub struct DesignFigures {
    pub throughput_rps: f64,
    pub elapsed_s: f64,
    pub final_p50_ms: f64,
    pub final_p90_ms: f64,
    pub final_p99_ms: f64,
    pub final_max_ms: f64,
}

impl DesignFigures {
    fn of(requests: usize, elapsed: Duration, latency: Latency) -> Self {
        Self {
            throughput_rps: requests as f64 / elapsed.as_secs_f64().max(1e-9),
            elapsed_s: elapsed.as_secs_f64(),
            final_p50_ms: latency.p50_ms,
            final_p90_ms: latency.p90_ms,
            final_p99_ms: latency.p99_ms,
            final_max_ms: latency.max_ms,
        }
    }
}

/// What the naive design did with the same stream.
#[derive(Debug, Clone, Serialize)]
pub struct NaiveFigures {
    #[serde(flatten)]
    pub figures: DesignFigures,
    pub connections: u32,
    pub enrolled: usize,
    pub full: usize,
    pub duplicates: usize,
    pub errors: usize,
    pub violations: i64,
}

/// The burst scenario's report, written as `bench.json`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub scenario: &'static str,
    pub ceiling: DesignFigures,
    /// The broker alone publishing what seatrush publishes per request (provisional answer,
    /// final answer, final event): what the broker's share of seatrush's path costs.
    pub ceiling_same_messages: DesignFigures,
    pub naive: NaiveFigures,
    pub ratio_to_ceiling: f64,
    /// seatrush against the broker doing seatrush's messages: the part of the gap that is ours.
    pub ratio_to_same_messages: f64,
    pub ratio_to_naive: f64,
    /// The broker alone's time for the whole burst plus one second: the budget for seatrush's
    /// final p99.
    pub final_p99_budget_ms: f64,
    pub final_p99_within_budget: bool,
    #[serde(flatten)]
    pub seatrush: RushReport,
}

/// The raw samples behind the charts.
pub struct Samples {
    pub ceiling: load::Report,
    pub same_messages: load::Report,
    pub naive_latencies: Vec<Duration>,
    pub seatrush: load::Report,
}

/// Runs the three designs on the same stream; writes nothing (see [`write_outputs`]).
pub async fn burst(config: &BenchConfig) -> anyhow::Result<(BenchReport, Samples)> {
    let tag = rush::fresh_tag("bench");
    let store = Store::connect(&config.services.database_url, 4)
        .await
        .context("connecting to PostgreSQL")?;
    store.migrate().await?;
    store
        .ensure_partitions(config.services.topology.partitions)
        .await?;
    let crowd = config.crowd;
    let courses = rush::course_ids(&tag, crowd.courses)?;
    let stream = rush::crowd(&courses, crowd.students, crowd.choices, &tag, 1)?;
    let n = stream.len();

    eprintln!("[bench] 1/3 broker ceiling: {n} requests through RabbitMQ alone");
    let ceiling_topology = Topology {
        prefix: format!("{}-ceiling-{tag}", config.services.topology.prefix),
        ..config.services.topology.clone()
    };
    let broker_alone = async |echo: ceiling::Echo, what: &str| -> anyhow::Result<load::Report> {
        let report = ceiling::run(
            &config.services.amqp_url,
            ceiling_topology.clone(),
            250,
            echo,
            stream.clone(),
            config.timeout,
        )
        .await
        .with_context(|| format!("measuring {what}"))?;
        anyhow::ensure!(report.complete, "{what}: not every request was answered");
        Ok(report)
    };
    let ceiling = broker_alone(ceiling::Echo::One, "the broker ceiling").await?;
    eprintln!("[bench] 1b/3 broker alone with seatrush's messages (provisional, final, event)");
    let same = broker_alone(
        ceiling::Echo::SameAsSeatrush,
        "the broker with seatrush's messages",
    )
    .await?;

    eprintln!(
        "[bench] 2/3 naive Postgres: {n} requests, one transaction each, {} connections",
        config.naive_connections
    );
    let (naive, naive_latencies) = naive::run(
        &config.services.database_url,
        &courses,
        config.crowd.seats,
        config.naive_connections,
        &stream,
    )
    .await?;

    eprintln!(
        "[bench] 3/3 seatrush: {n} requests through {} worker(s)",
        config.workers
    );
    let mut rush_config = RushConfig::burst(
        config.services.clone(),
        config.crowd,
        config.workers,
        config.exe.clone(),
        tag,
        config.out.join("logs"),
    );
    rush_config.timeout = config.timeout;
    let rush = rush::run(rush_config, false).await?;
    store.close().await;

    let ceiling_figures = DesignFigures::of(
        n,
        ceiling.total_time,
        ceiling.latency(seatrush_core::protocol::Stage::Final),
    );
    let budget = ceiling.total_time.as_secs_f64() * 1000.0 + 1000.0;
    let same_figures = DesignFigures::of(
        n,
        same.total_time,
        same.latency(seatrush_core::protocol::Stage::Final),
    );
    let report = BenchReport {
        scenario: "burst",
        ratio_to_same_messages: rush.report.throughput_rps / same_figures.throughput_rps.max(1e-9),
        ceiling_same_messages: same_figures,
        ratio_to_ceiling: rush.report.throughput_rps / ceiling_figures.throughput_rps.max(1e-9),
        ratio_to_naive: rush.report.throughput_rps / naive.figures.throughput_rps.max(1e-9),
        final_p99_budget_ms: budget,
        final_p99_within_budget: rush.report.final_p99_ms <= budget,
        ceiling: ceiling_figures,
        naive,
        seatrush: rush.report,
    };
    Ok((
        report,
        Samples {
            ceiling,
            same_messages: same,
            naive_latencies,
            seatrush: rush.load,
        },
    ))
}

/// The junk scenario's report, written as `junk.json`.
#[derive(Debug, Clone, Serialize)]
pub struct JunkReport {
    pub scenario: &'static str,
    pub requests: usize,
    pub answered: usize,
    pub elapsed_s: f64,
    pub throughput_rps: f64,
    pub warmup_requests: usize,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    pub rss_growth_mib: f64,
    pub peak_rss_mib: f64,
    pub worker_cpu_us_per_request: f64,
}

/// Floods one worker with requests naming random unknown course ids and measures its memory:
/// after a warm-up (so allocator pools exist) and after the flood.
pub async fn junk(config: &BenchConfig, requests: usize) -> anyhow::Result<JunkReport> {
    let tag = rush::fresh_tag("junk");
    let store = Store::connect(&config.services.database_url, 2).await?;
    store.migrate().await?;
    store
        .ensure_partitions(config.services.topology.partitions)
        .await?;
    std::fs::create_dir_all(config.out.join("logs"))?;
    let worker = WorkerProcess::start(
        &config.exe,
        &config.services,
        &format!("{tag}-w0"),
        config.out.join("logs").join(format!("{tag}-w0.log")),
        &[],
    )?;
    rush::wait_for_partitions(&store, config.services.topology.partitions).await?;
    let warmup = (requests / 10).clamp(1000, 50_000);
    let send = |count: usize, seed: u64| {
        load::flood(
            &config.services.amqp_url,
            &config.services.topology,
            junk_requests(&tag, seed),
            count,
            config.timeout,
        )
    };
    eprintln!("[bench] junk: warm-up with {warmup} requests for unknown courses");
    send(warmup, 1).await?;
    let before = worker.usage().context("reading the worker's memory")?;
    eprintln!("[bench] junk: {requests} requests naming random unknown courses");
    let flood = send(requests, 2).await?;
    let after = worker.usage().context("reading the worker's memory")?;
    worker.stop(Duration::from_secs(60)).await?;
    store.close().await;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    Ok(JunkReport {
        scenario: "junk",
        requests: flood.published,
        answered: flood.finals,
        elapsed_s: flood.elapsed.as_secs_f64(),
        throughput_rps: flood.finals as f64 / flood.elapsed.as_secs_f64().max(1e-9),
        warmup_requests: warmup,
        rss_before_mib: mib(before.rss),
        rss_after_mib: mib(after.rss),
        rss_growth_mib: mib(after.rss) - mib(before.rss),
        peak_rss_mib: mib(after.peak_rss),
        worker_cpu_us_per_request: after.cpu.saturating_sub(before.cpu).as_secs_f64() * 1e6
            / flood.published.max(1) as f64,
    })
}

/// An endless stream of valid requests for course ids nobody created.
fn junk_requests(tag: &str, seed: u64) -> impl Iterator<Item = Request> + use<> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tag = tag.to_owned();
    (0u64..).filter_map(move |i| {
        let course: u64 = rng.random();
        Some(Request {
            request_id: RequestId::parse(format!("{tag}-{seed}-{i}")).ok()?,
            action: Action::Enroll,
            course_id: CourseId::parse(format!("nosuch{course:016x}")).ok()?,
            student_id: StudentId::parse(format!("{tag}-s{i}")).ok()?,
        })
    })
}

/// Seconds since `start`, for progress lines.
pub fn since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}
