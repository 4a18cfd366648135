//! The benchmark: the same request stream through the broker alone (its ceiling, and its intake
//! limit with quorum queues and with streams), through a naive one-transaction-per-request
//! Postgres design, through the forum's Redis design (two fsync settings), and through
//! seatrush (batched answers, and one message per answer), alternated over several rounds on the
//! same broker and database, reported as ratios within each round and their medians. The junk
//! scenario floods a worker with requests for random unknown courses and reports its memory; the
//! hostile scenario floods one with malformed, oversized and forged messages beside valid
//! students and accounts for every message.

pub mod ceiling;
pub mod crash;
pub mod hostile;
pub mod intake;
mod naive;
mod naive_sql;
mod peer_schema;
pub mod redis;
pub mod report;
mod round;
mod summary;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use serde::Serialize;

pub use report::{markdown, write_crash, write_hostile, write_junk, write_outputs};
pub use round::Round;

use crate::load;
use crate::rush::{self, Crowd, RushReport, Services, WorkerProcess};
use crate::stats::Latency;
use seatrush_core::domain::{Action, CourseId, Request, RequestId, StudentId};
use seatrush_core::store::Store;

/// The scenario a bench run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// The seeds' 10,000 requests at once over 300 courses of 30 seats.
    Burst,
    /// The seeds' literal question: 10,000 students at one 30-seat course at once.
    Hot,
    /// The seeds' whole opening day: 40,000 students with 3 choices each, at once.
    Opening,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Burst => "burst",
            Self::Hot => "hot",
            Self::Opening => "opening",
        }
    }

    /// The scenario's crowd, as the issue of each scenario defines it.
    pub fn crowd(self) -> Crowd {
        let (courses, students, choices) = match self {
            Self::Burst => (300, 10_000, 1),
            Self::Hot => (1, 10_000, 1),
            Self::Opening => (300, 40_000, 3),
        };
        Crowd {
            courses,
            seats: 30,
            waitlist: 0,
            students,
            choices,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub services: Services,
    pub scenario: Scenario,
    pub crowd: Crowd,
    pub rounds: usize,
    pub workers: usize,
    /// The connection counts the naive design is run with; the best one is reported.
    pub naive_connections: Vec<u32>,
    /// The Redis server of the Redis design.
    pub redis_url: String,
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

/// A bench run's report, written as `bench.json`: every round, and at the top level the
/// medians over the rounds (ratios are computed within a round, then their median taken;
/// losses and violations are summed over the rounds).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub scenario: &'static str,
    pub rounds: Vec<Round>,
    pub ratio_to_ceiling: f64,
    pub ratio_to_intake_ceiling: f64,
    pub ratio_to_stream_intake_ceiling: f64,
    pub ratio_to_naive: f64,
    pub ratio_to_redis: f64,
    pub ratio_to_redis_everysec: f64,
    /// seatrush with one message per answer, against seatrush with batched answers.
    pub ratio_single_to_batched: f64,
    /// The broker ceiling's time for the whole burst plus one second (median): the budget
    /// for seatrush's final p99.
    pub final_p99_budget_ms: f64,
    pub final_p99_within_budget: bool,
    /// Whether every student had a final answer within that budget (the hot scenario's target).
    pub final_max_within_budget: bool,
    /// The medians of every design's figures.
    pub median: Medians,
    /// CPU per request of every process (broker, database, Redis, the bench's own clients,
    /// seatrush's workers), by design, medians over the rounds: where each design's time goes.
    pub cpu_us_per_request: std::collections::BTreeMap<&'static str, crate::cpu::CpuShare>,
    /// seatrush with the crowd asking for batched answers, medians over the rounds.
    #[serde(flatten)]
    pub seatrush: RushReport,
    /// seatrush with one message per answer, medians over the rounds.
    pub seatrush_single: RushReport,
}

impl BenchReport {
    /// Whether every design that claims correctness kept it in every round: seatrush both ways
    /// (nothing lost, doubled, contradicted, no violation), the naive and the Redis design (no
    /// course over its seats, every request decided once).
    pub fn passed(&self) -> bool {
        self.seatrush.passed()
            && self.seatrush_single.passed()
            && self.rounds.iter().all(|r| {
                r.naive.violations == 0
                    && [&r.redis, &r.redis_everysec]
                        .iter()
                        .all(|x| x.violations == 0 && x.duplicated == 0)
            })
    }
}

/// Every design's median figures over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Medians {
    pub ceiling_rps: f64,
    pub intake_ceiling_rps: f64,
    pub stream_intake_ceiling_rps: f64,
    pub naive_rps: f64,
    pub redis_rps: f64,
    pub redis_everysec_rps: f64,
    pub seatrush_rps: f64,
    pub seatrush_single_rps: f64,
}

/// The raw samples behind the charts, of the last round.
pub struct Samples {
    pub ceiling: load::Report,
    pub naive_latencies: Vec<Duration>,
    pub redis_latencies: Vec<Duration>,
    pub seatrush: load::Report,
    pub seatrush_single: load::Report,
}

/// Runs every design on the same stream, `rounds` times alternated; writes nothing (see
/// [`write_outputs`]). The run has a database and a broker topology of its own, removed after:
/// what earlier runs left (their courses, outcomes and seats) would otherwise weigh on
/// seatrush's rounds alone, since the peer designs make their tables afresh each round.
pub async fn run(config: &BenchConfig) -> anyhow::Result<(BenchReport, Samples)> {
    let tag = rush::fresh_tag("bench");
    rush::fresh::on_own_services(&config.services, &tag, |services| async move {
        let config = BenchConfig {
            services,
            ..config.clone()
        };
        run_rounds(&config).await
    })
    .await
}

/// The rounds, one after the other. Each of seatrush's rushes migrates the run's database and
/// records its partitions itself (`rush::prepared_store`).
async fn run_rounds(config: &BenchConfig) -> anyhow::Result<(BenchReport, Samples)> {
    let mut rounds = Vec::with_capacity(config.rounds);
    let mut last = None;
    for n in 1..=config.rounds.max(1) {
        eprintln!("[bench] round {n} of {}", config.rounds.max(1));
        let (round, samples) = round::run(config, n).await?;
        rounds.push(round);
        last = Some(samples);
    }
    let samples = last.context("no round ran")?;
    Ok((summary::of(config.scenario, rounds), samples))
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
