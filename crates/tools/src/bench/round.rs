//! One round of the benchmark: every design, one after the other, on the same request stream
//! (the same shape and order; each design gets ids of its own, so no design replays another's),
//! with the ratios of this round.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;

use super::intake::{self, IntakeFigures, IntakeQueues};
use super::naive::NaiveTry;
use super::redis::{self, Fsync, RedisFigures, Setup, Shape};
use super::{BenchConfig, DesignFigures, NaiveFigures, Samples, ceiling, naive};
use crate::cpu::{Before, CpuShare, Servers};
use crate::rush::{self, RushConfig, RushReport};
use seatrush_core::amqp::Topology;
use seatrush_core::domain::{CourseId, Request};
use seatrush_core::protocol::Stage;

/// One round's figures, design by design, and the ratios of seatrush (batched answers) to each.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub round: usize,
    pub ceiling: DesignFigures,
    pub intake_ceiling: IntakeFigures,
    pub stream_intake_ceiling: IntakeFigures,
    pub naive: NaiveFigures,
    /// The naive design's throughput at each connection count tried (the best is `naive`).
    pub naive_by_connections: Vec<NaiveTry>,
    pub redis: RedisFigures,
    pub redis_everysec: RedisFigures,
    pub seatrush: RushReport,
    pub seatrush_single: RushReport,
    pub ratio_to_ceiling: f64,
    pub ratio_to_intake_ceiling: f64,
    pub ratio_to_stream_intake_ceiling: f64,
    pub ratio_to_naive: f64,
    pub ratio_to_redis: f64,
    pub ratio_to_redis_everysec: f64,
    pub ratio_single_to_batched: f64,
    /// CPU per request of every process, by design: where each design's time goes.
    pub cpu_us_per_request: BTreeMap<&'static str, CpuShare>,
}

/// `a / b`, for throughputs (0 when `b` measured nothing).
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// A topology of its own for a broker-only design, so that its queues never mix with a
/// worker's.
fn own_topology(config: &BenchConfig, design: &str, tag: &str) -> Topology {
    Topology {
        prefix: format!("{}-{design}-{tag}", config.services.topology.prefix),
        ..config.services.topology.clone()
    }
}

/// The round's stream under a fresh tag: the same shape and seed in every round and design.
pub(super) struct Stream {
    pub tag: String,
    pub courses: Vec<CourseId>,
    pub requests: Vec<Request>,
}

pub(super) fn stream(config: &BenchConfig, kind: &str) -> anyhow::Result<Stream> {
    let tag = rush::fresh_tag(kind);
    let crowd = config.crowd;
    let courses = rush::course_ids(&tag, crowd.courses)?;
    let requests = rush::crowd(&courses, crowd.students, crowd.choices, &tag, 1)?;
    Ok(Stream {
        tag,
        courses,
        requests,
    })
}

/// Runs every design once.
pub async fn run(config: &BenchConfig, round: usize) -> anyhow::Result<(Round, Samples)> {
    let Stream {
        tag,
        courses,
        requests,
    } = stream(config, "bench")?;
    let n = requests.len();
    let services = &config.services;
    let servers = Servers::of(
        &services.amqp_url,
        &services.database_url,
        &config.redis_url,
    );
    let mut cpu = BTreeMap::new();
    let measured = |before: Before| before.per_request(n, None);

    // The ceilings sample the servers around their traffic only, as the rush does: declaring
    // and deleting their queues is not their cost per request.
    eprintln!("[bench]   broker ceiling: {n} requests in, one answer out");
    let (ceiling, ceiling_cpu) = ceiling::run(
        &services.amqp_url,
        own_topology(config, "ceiling", &tag),
        seatrush_core::worker::WorkerConfig::DEFAULT_PREFETCH,
        ceiling::Echo::One,
        requests.clone(),
        config.timeout,
        Some(&servers),
    )
    .await
    .context("measuring the broker ceiling")?;
    anyhow::ensure!(
        ceiling.complete,
        "the broker ceiling: not every request was answered"
    );
    cpu.insert("ceiling", ceiling_cpu.unwrap_or_default());
    let intake = async |queues: IntakeQueues, design: &str| {
        eprintln!("[bench]   intake ceiling ({design}): publish, deliver, ack");
        intake::run(
            &services.amqp_url,
            &services.database_url,
            own_topology(config, design, &tag),
            seatrush_core::worker::WorkerConfig::DEFAULT_PREFETCH,
            queues,
            requests.clone(),
            config.timeout,
            Some(&servers),
        )
        .await
        .with_context(|| format!("measuring the intake ceiling with {design}"))
    };
    let intake_ceiling = intake(IntakeQueues::Quorum, "quorum").await?;
    cpu.insert(
        "intake_ceiling",
        intake_ceiling.cpu_us_per_request.unwrap_or_default(),
    );
    let stream_intake_ceiling = intake(IntakeQueues::Stream, "stream").await?;
    cpu.insert(
        "stream_intake_ceiling",
        stream_intake_ceiling.cpu_us_per_request.unwrap_or_default(),
    );

    eprintln!(
        "[bench]   naive Postgres at {:?} connections",
        config.naive_connections
    );
    let before = servers.before();
    let naive = naive::best_of(
        &services.database_url,
        &courses,
        config.crowd.seats,
        &config.naive_connections,
        &requests,
    )
    .await?;
    // Over every connection count tried: the CPU of the best run alone is not told apart.
    cpu.insert("naive_all_connection_counts", measured(before));

    let redis_design = async |fsync: Fsync| {
        eprintln!("[bench]   Redis ({fsync:?}) with a Postgres writer");
        let setup = Setup {
            database_url: &services.database_url,
            courses: &courses,
            seats: config.crowd.seats,
            fsync,
            shape: Shape::default(),
        };
        redis::run(&config.redis_url, &setup, &requests)
            .await
            .with_context(|| format!("measuring the Redis design ({fsync:?})"))
    };
    let before = servers.before();
    let (redis, redis_latencies) = redis_design(Fsync::Always).await?;
    cpu.insert("redis", measured(before));
    let before = servers.before();
    let (redis_everysec, _) = redis_design(Fsync::EverySec).await?;
    cpu.insert("redis_everysec", measured(before));

    let seatrush_with = async |batch: bool| {
        eprintln!(
            "[bench]   seatrush, {} worker(s), {}",
            config.workers,
            if batch {
                "batched answers"
            } else {
                "one message per answer"
            }
        );
        // The rush plans the same stream under this tag itself.
        let tag = rush::fresh_tag("bench");
        let mut rush_config = RushConfig::burst(
            services.clone(),
            config.crowd,
            config.workers,
            config.exe.clone(),
            tag,
            config.out.join("logs"),
        );
        rush_config.batch = batch;
        rush_config.servers = Some(servers.clone());
        rush_config.timeout = config.timeout;
        rush::run(rush_config, false).await
    };
    // The rush samples the servers around its crowd only: creating the courses, starting the
    // worker and auditing after are not the design's cost per request.
    let batched = seatrush_with(true).await?;
    cpu.insert(
        "seatrush",
        batched.report.cpu_us_per_request.unwrap_or_default(),
    );
    let single = seatrush_with(false).await?;
    cpu.insert(
        "seatrush_single",
        single.report.cpu_us_per_request.unwrap_or_default(),
    );

    let ceiling_figures = DesignFigures::of(n, ceiling.total_time, ceiling.latency(Stage::Final));
    let rps = batched.report.throughput_rps;
    let round = Round {
        round,
        ratio_to_ceiling: ratio(rps, ceiling_figures.throughput_rps),
        ratio_to_intake_ceiling: ratio(rps, intake_ceiling.throughput_rps),
        ratio_to_stream_intake_ceiling: ratio(rps, stream_intake_ceiling.throughput_rps),
        ratio_to_naive: ratio(rps, naive.figures.figures.throughput_rps),
        ratio_to_redis: ratio(rps, redis.figures.throughput_rps),
        ratio_to_redis_everysec: ratio(rps, redis_everysec.figures.throughput_rps),
        ratio_single_to_batched: ratio(single.report.throughput_rps, rps),
        ceiling: ceiling_figures,
        intake_ceiling,
        stream_intake_ceiling,
        naive: naive.figures,
        naive_by_connections: naive.tried,
        redis,
        redis_everysec,
        seatrush: batched.report,
        seatrush_single: single.report,
        cpu_us_per_request: cpu,
    };
    let samples = Samples {
        ceiling,
        naive_latencies: naive.latencies,
        redis_latencies,
        seatrush: batched.load,
        seatrush_single: single.load,
    };
    Ok((round, samples))
}
