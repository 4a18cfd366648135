//! The hostile scenario: a flood of messages no honest producer sends (random bytes, bodies over
//! the limit, huge headers, wrong JSON types, deep JSON, every id rule broken, unknown and
//! forged actions, replies sent where nobody listens, invalid encodings, duplicates) against a
//! live worker, while valid students enroll beside it.
//!
//! Every hostile message must be answered (when it carries a usable id and a reply address) or
//! dead-lettered with its reason; the worker must stay up with flat memory, and the valid
//! students must get their answers as they do without the flood: nothing lost, nothing doubled,
//! no course oversold. The run has a database and a broker topology of its own, so the dead
//! letters it reads are its own, and both are removed at the end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::types::{AMQPValue, FieldTable, LongString};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::BenchConfig;
use super::intake::Sink;
use crate::load::{self, Pace};
use crate::rush::{self, Services, WorkerProcess};
use seatrush_core::amqp::{Broker, DeadLetter, Outbox, Outgoing, ReplyTo, Topology};
use seatrush_core::client::parse_answers;
use seatrush_core::protocol::Stage;
use tokio_util::sync::CancellationToken;

use crate::stats::Latency;

/// The kinds of hostile message, and how many of every twenty messages are of each.
const MIX: [(Kind, usize); 10] = [
    (Kind::RandomBytes, 3),
    (Kind::Oversized, 1),
    (Kind::HugeHeaders, 1),
    (Kind::WrongTypes, 3),
    (Kind::DeepJson, 2),
    (Kind::BrokenIds, 4),
    (Kind::UnknownAction, 2),
    (Kind::Forged, 2),
    (Kind::Duplicate, 1),
    (Kind::BadEncoding, 1),
];

/// The valid students' pace: steady, so that they run beside the whole flood.
const VALID_RATE: f64 = 500.0;
/// Publishes in flight at once.
const WINDOW: usize = 512;
/// How long the accounting waits for one more answer or dead letter before it stops.
const QUIET: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    RandomBytes,
    Oversized,
    HugeHeaders,
    WrongTypes,
    DeepJson,
    BrokenIds,
    UnknownAction,
    Forged,
    Duplicate,
    BadEncoding,
}

/// One hostile message, and where its answer would go.
#[derive(Clone)]
struct Hostile {
    kind: Kind,
    message_id: Option<String>,
    reply_to: Reply,
    headers: FieldTable,
    body: Vec<u8>,
}

/// Where a hostile message asks for its answer.
#[derive(Clone)]
enum Reply {
    /// The run's reply queue, where its answers are counted.
    Ours,
    /// A queue nobody listens on, or one only the broker may name.
    Elsewhere(String),
}

/// How the messages of one kind fared. A message the worker cannot turn into a request is
/// both answered (when it has a valid id and a reply address) and dead-lettered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindFigures {
    pub sent: usize,
    pub answered: usize,
    pub dead_lettered: usize,
    /// Neither answered nor dead-lettered: lost.
    pub unaccounted: usize,
}

/// The valid students' figures, without and beside the flood.
#[derive(Debug, Clone, Serialize)]
pub struct ValidFigures {
    pub requests: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub contradicted: usize,
    pub mismatched_seats: usize,
    /// The decision's answer, sent before the commit: how long the request waited to be taken
    /// and decided.
    pub provisional_p50_ms: f64,
    pub provisional_p99_ms: f64,
    pub final_p50_ms: f64,
    pub final_p99_ms: f64,
}

/// The hostile scenario's report, written as `hostile.json`.
#[derive(Debug, Clone, Serialize)]
pub struct HostileReport {
    pub scenario: &'static str,
    pub messages: usize,
    pub by_kind: BTreeMap<String, KindFigures>,
    pub answered: usize,
    pub dead_lettered: usize,
    /// Dead letters without a reason header.
    pub dead_without_reason: usize,
    pub unaccounted: usize,
    pub publish_s: f64,
    pub publish_rps: f64,
    pub warmup_messages: usize,
    /// After the warm-up.
    pub rss_before_mib: f64,
    /// Half-way through the flood.
    pub rss_mid_mib: f64,
    /// After the flood, every message settled.
    pub rss_after_mib: f64,
    /// Over the second half of the flood: what grows with the number of messages.
    pub rss_growth_mib: f64,
    /// Over the whole flood after the warm-up, the filling of the worker's buffers included.
    pub rss_growth_from_warmup_mib: f64,
    pub peak_rss_mib: f64,
    pub worker_cpu_us_per_message: f64,
    /// From the start of the flood (after the warm-up) until its last message was settled.
    pub flood_s: f64,
    /// The CPU each process spent over `flood_s`, per hostile message: what the machine's
    /// cores went to while the valid students waited.
    pub cpu_us_per_message: crate::cpu::CpuShare,
    /// Whether the worker was still running at the end.
    pub worker_alive: bool,
    /// The lane the flood came on, of its own (`--lanes`): the valid students' lane is the
    /// default one.
    pub flood_lane: &'static str,
    pub valid_alone: ValidFigures,
    /// Beside the flood on its own lane.
    pub valid_beside: ValidFigures,
    /// The flood again, as many messages, on the valid students' own lane: what a producer
    /// that floods costs those who share its lane.
    pub same_lane: SameLaneFigures,
    /// The flood a third time, into queues of its own that only ack it: what taking the flood
    /// in costs the valid students before anything reads it.
    pub broker_only: BrokerOnlyFigures,
    /// The broker's confirm time for a queue outside the traffic, alone and during each flood.
    pub probe_confirm: ProbeFigures,
    pub violations: usize,
}

/// How long the broker took to confirm a write into a quorum queue of the run that nothing else
/// touches, sampled every 50 ms, in each phase.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeFigures {
    pub alone: Latency,
    pub flood_own_lane: Latency,
    pub flood_same_lane: Latency,
    pub flood_broker_only: Latency,
}

/// The third flood: as many messages again, published the same way into partition queues of a
/// topology of their own, which a consumer acks without reading (no worker, no answer, no dead
/// letter). The valid students beside it measure what the flood costs them at the broker and
/// on the machine's cores alone; what the worker's handling adds is the difference.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerOnlyFigures {
    pub messages: usize,
    /// Deliveries acked by the sink; every message once when nothing was lost.
    pub delivered: usize,
    pub publish_rps: f64,
    /// From the start of this flood until the valid students beside it had their answers and
    /// every message was acked.
    pub flood_s: f64,
    /// The CPU each process spent over `flood_s`, per message, as for the first flood: the
    /// valid students' share is in both, so the difference is what reading and answering the
    /// flood costs.
    pub cpu_us_per_message: crate::cpu::CpuShare,
    pub valid_beside: ValidFigures,
}

/// The second flood, on the valid students' lane.
#[derive(Debug, Clone, Serialize)]
pub struct SameLaneFigures {
    pub messages: usize,
    pub answered: usize,
    pub dead_lettered: usize,
    pub dead_without_reason: usize,
    pub unaccounted: usize,
    pub publish_rps: f64,
    pub valid_beside: ValidFigures,
}

/// The memory growth the second half of the flood may cause, as for the junk scenario.
pub const RSS_GROWTH_LIMIT_MIB: f64 = 32.0;

impl HostileReport {
    pub fn passed(&self) -> bool {
        let clean = |v: &ValidFigures| {
            v.lost == 0 && v.duplicated == 0 && v.contradicted == 0 && v.mismatched_seats == 0
        };
        let same = &self.same_lane;
        self.unaccounted == 0
            && self.dead_without_reason == 0
            && same.unaccounted == 0
            && same.dead_without_reason == 0
            && self.worker_alive
            && self.rss_growth_mib < RSS_GROWTH_LIMIT_MIB
            && clean(&self.valid_alone)
            && clean(&self.valid_beside)
            && clean(&same.valid_beside)
            && clean(&self.broker_only.valid_beside)
            && self.broker_only.delivered >= self.broker_only.messages
            && self.violations == 0
    }
}

/// The lane the hostile producer publishes on, declared by the run's worker beside the default.
pub const FLOOD_LANE: &str = "flood";

/// Runs the scenario with `messages` hostile messages; `config.crowd` is the valid students'.
pub async fn run(config: &BenchConfig, messages: usize) -> anyhow::Result<HostileReport> {
    let tag = rush::fresh_tag("hostile");
    let tag = tag.as_str();
    let services = Services {
        topology: config
            .services
            .topology
            .clone()
            .with_lanes(&[FLOOD_LANE.to_owned()])
            .map_err(anyhow::Error::msg)?,
        ..config.services.clone()
    };
    rush::fresh::on_own_services(&services, tag, |services| async move {
        run_in(config, &services, tag, messages).await
    })
    .await
}

async fn run_in(
    config: &BenchConfig,
    services: &Services,
    tag: &str,
    messages: usize,
) -> anyhow::Result<HostileReport> {
    let store = rush::prepared_store(services).await?;
    let logs = config.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let worker = WorkerProcess::start(
        &config.exe,
        services,
        &format!("{tag}-w0"),
        logs.join(format!("{tag}-w0.log")),
        &[],
    )?;
    rush::wait_for_partitions(&store, services.topology.partitions).await?;
    let valid = |suffix: &str, seed: u64| {
        let tag = format!("{tag}{suffix}");
        let store = store.clone();
        let crowd = config.crowd;
        async move {
            let courses = rush::create_courses(&store, &tag, &crowd, false).await?;
            let requests = rush::crowd(&courses, crowd.students, crowd.choices, &tag, seed)?;
            anyhow::Ok((courses, requests))
        }
    };
    let (courses_alone, alone) = valid("a", 41).await?;
    let (courses_beside, beside) = valid("b", 43).await?;
    let (courses_same, same) = valid("c", 47).await?;
    let (courses_sink, sink_crowd) = valid("d", 53).await?;

    eprintln!(
        "[bench] hostile: {} valid requests alone, at {VALID_RATE}/s",
        alone.len()
    );
    let paced = |requests| {
        load::spawn(
            &services.amqp_url,
            &services.topology,
            requests,
            config.timeout,
            Pace::Rate(VALID_RATE),
        )
    };
    let probe = Probe::start(services).await?;
    let alone_started = Instant::now();
    let alone_report = paced(alone).await.context("the valid crowd failed")??;
    let alone_phase = alone_started..Instant::now();

    let plan = plan(tag, messages);
    let warmup = (messages / 10).clamp(100, 10_000).min(messages);
    let main = messages - warmup;
    eprintln!("[bench] hostile: warm-up with {warmup} hostile messages on lane {FLOOD_LANE}");
    let mut flood = Flood::start(services, tag, Some(FLOOD_LANE)).await?;
    flood.send(&plan[..warmup]).await?;
    flood.settle(&plan[..warmup]).await;
    let before = worker.usage().context("reading the worker's memory")?;

    eprintln!(
        "[bench] hostile: {main} hostile messages on lane {FLOOD_LANE} beside {} valid requests",
        beside.len()
    );
    let servers = crate::cpu::Servers::of(&services.amqp_url, &services.database_url, "");
    let cpu_before = servers.before();
    let crowd = paced(beside);
    let started = Instant::now();
    let mut peak = before.rss;
    // In two halves: the worker's memory half-way and at the end say whether it grows with
    // the number of messages, or only fills its buffers once.
    let half = warmup + main / 2;
    flood
        .send_watching(&plan[warmup..half], &worker, &mut peak)
        .await?;
    let mid = worker.usage().unwrap_or(before);
    flood
        .send_watching(&plan[half..], &worker, &mut peak)
        .await?;
    let publish = started.elapsed();
    let beside_report = crowd.await.context("the valid crowd failed")??;
    flood.settle(&plan).await;
    let after = worker.usage().unwrap_or(before);
    let flood_s = started.elapsed().as_secs_f64();
    let flood_phase = started..Instant::now();
    let worker_cpu = after.cpu.saturating_sub(before.cpu);
    let cpu = cpu_before.per_request(main, Some(worker_cpu));
    peak = peak.max(after.rss);
    flood.close().await;

    // The same flood again, on the lane the valid students use.
    let same_tag = format!("{tag}s");
    let same_plan = self::plan(&same_tag, main);
    eprintln!(
        "[bench] hostile: {main} hostile messages on the valid students' lane beside {} valid requests",
        same.len()
    );
    let mut same_flood = Flood::start(services, &same_tag, None).await?;
    let crowd = paced(same);
    let same_started = Instant::now();
    same_flood
        .send_watching(&same_plan, &worker, &mut peak)
        .await?;
    let same_publish = same_started.elapsed();
    let same_report = crowd.await.context("the valid crowd failed")??;
    same_flood.settle(&same_plan).await;
    let same_phase = same_started..Instant::now();
    same_flood.close().await;

    // The same flood a third time, into queues that only ack it.
    let sink_tag = format!("{tag}k");
    let sink_plan = self::plan(&sink_tag, main);
    eprintln!(
        "[bench] hostile: {main} hostile messages into queues that only ack them, beside {} valid requests",
        sink_crowd.len()
    );
    let sink_services = Services {
        topology: Topology {
            prefix: format!("{}-sink-{tag}", services.topology.prefix),
            lanes: Vec::new(),
            ..services.topology.clone()
        },
        ..services.clone()
    };
    let sink = Sink::start(
        &sink_services.amqp_url,
        &sink_services.topology,
        seatrush_core::worker::WorkerConfig::DEFAULT_PREFETCH,
    )
    .await?;
    let sunk = async {
        let sink_flood = Flood::start(&sink_services, &sink_tag, None).await?;
        let cpu_before = servers.before();
        let worker_before = worker.usage().map(|u| u.cpu);
        let crowd = paced(sink_crowd);
        let started = Instant::now();
        let sent = sink_flood.send(&sink_plan).await;
        let publish = started.elapsed();
        let report = crowd.await.context("the valid crowd failed");
        let delivered = sink
            .drained(main, tokio::time::Instant::now() + QUIET)
            .await;
        let phase = started..Instant::now();
        let worker_cpu = worker
            .usage()
            .zip(worker_before)
            .map(|(after, before)| after.cpu.saturating_sub(before));
        let cpu = cpu_before.per_request(main, worker_cpu);
        sink_flood.close().await;
        sent?;
        anyhow::Ok((report??, delivered, publish, phase, cpu))
    }
    .await;
    // The sink's topology goes whatever happened.
    let stopped = sink.stop().await;
    let (sink_report, sink_delivered, sink_publish, sink_phase, sink_cpu) = sunk?;
    stopped.context("stopping the sink")?;
    let probed = probe.finish().await?;
    let worker_alive = worker.usage().is_some();

    let valid_alone = valid_figures(&store, &alone_report, &courses_alone).await?;
    let valid_beside = valid_figures(&store, &beside_report, &courses_beside).await?;
    let same_beside = valid_figures(&store, &same_report, &courses_same).await?;
    let sink_beside = valid_figures(&store, &sink_report, &courses_sink).await?;
    let violations = store.audit().await?.len();
    if let Err(e) = worker.stop(Duration::from_secs(60)).await {
        eprintln!("[bench] hostile: the worker did not stop cleanly: {e:#}");
    }
    store.close().await;

    let by_kind = flood.figures(&plan);
    let total = |f: fn(&KindFigures) -> usize| by_kind.values().map(f).sum::<usize>();
    let same_by_kind = same_flood.figures(&same_plan);
    let same_total = |f: fn(&KindFigures) -> usize| same_by_kind.values().map(f).sum::<usize>();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    Ok(HostileReport {
        scenario: "hostile",
        messages,
        answered: total(|k| k.answered),
        dead_lettered: total(|k| k.dead_lettered),
        unaccounted: total(|k| k.unaccounted),
        by_kind: by_kind
            .into_iter()
            .map(|(k, v)| (kind_name(k), v))
            .collect(),
        dead_without_reason: flood.dead_without_reason,
        publish_s: publish.as_secs_f64(),
        publish_rps: main as f64 / publish.as_secs_f64().max(1e-9),
        warmup_messages: warmup,
        rss_before_mib: mib(before.rss),
        rss_mid_mib: mib(mid.rss),
        rss_after_mib: mib(after.rss),
        rss_growth_mib: mib(after.rss) - mib(mid.rss),
        rss_growth_from_warmup_mib: mib(after.rss) - mib(before.rss),
        peak_rss_mib: mib(peak),
        worker_cpu_us_per_message: worker_cpu.as_secs_f64() * 1e6 / main.max(1) as f64,
        flood_s,
        cpu_us_per_message: cpu,
        worker_alive,
        flood_lane: FLOOD_LANE,
        valid_alone,
        valid_beside,
        same_lane: SameLaneFigures {
            messages: main,
            answered: same_total(|k| k.answered),
            dead_lettered: same_total(|k| k.dead_lettered),
            dead_without_reason: same_flood.dead_without_reason,
            unaccounted: same_total(|k| k.unaccounted),
            publish_rps: main as f64 / same_publish.as_secs_f64().max(1e-9),
            valid_beside: same_beside,
        },
        broker_only: BrokerOnlyFigures {
            messages: main,
            delivered: sink_delivered,
            publish_rps: main as f64 / sink_publish.as_secs_f64().max(1e-9),
            flood_s: (sink_phase.end - sink_phase.start).as_secs_f64(),
            cpu_us_per_message: sink_cpu,
            valid_beside: sink_beside,
        },
        probe_confirm: ProbeFigures {
            alone: Probe::during(&probed, &alone_phase),
            flood_own_lane: Probe::during(&probed, &flood_phase),
            flood_same_lane: Probe::during(&probed, &same_phase),
            flood_broker_only: Probe::during(&probed, &sink_phase),
        },
        violations,
    })
}

/// Writes into the run's probe queue, one every 50 ms, each awaited, until finished.
struct Probe {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<Vec<(Instant, Duration)>>>,
}

impl Probe {
    async fn start(services: &Services) -> anyhow::Result<Self> {
        let broker = Broker::connect(&services.amqp_url, "seatrush-probe")
            .await
            .context("connecting to RabbitMQ")?;
        broker.declare_probe(&services.topology).await?;
        let publisher = broker.confirmed_publisher().await?;
        let to = ReplyTo::single(services.topology.probe_queue(), None);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let at = Instant::now();
                publisher
                    .send_confirmed(Outgoing::reply(&to, b"probe".to_vec()))
                    .await
                    .context("writing into the probe queue")?;
                samples.push((at, at.elapsed()));
            }
            broker.close().await;
            Ok(samples)
        });
        Ok(Self { stop, task })
    }

    async fn finish(self) -> anyhow::Result<Vec<(Instant, Duration)>> {
        self.stop.cancel();
        self.task.await.context("the probe failed")?
    }

    /// The confirm times of the writes started within `phase`.
    fn during(samples: &[(Instant, Duration)], phase: &std::ops::Range<Instant>) -> Latency {
        Latency::of(
            samples
                .iter()
                .filter(|(at, _)| phase.contains(at))
                .map(|(_, took)| *took)
                .collect(),
        )
    }
}

fn kind_name(kind: Kind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn valid_figures(
    store: &seatrush_core::store::Store,
    report: &load::Report,
    courses: &[seatrush_core::domain::CourseId],
) -> anyhow::Result<ValidFigures> {
    let held = store.seats_held(courses).await?;
    let latency = report.latency(Stage::Final);
    let provisional = report.latency(Stage::Provisional);
    Ok(ValidFigures {
        requests: report.answered.len(),
        lost: report.lost(),
        duplicated: report.duplicated(),
        contradicted: report.contradicted(),
        mismatched_seats: rush::mismatched_seats(report, &held),
        provisional_p50_ms: provisional.p50_ms,
        provisional_p99_ms: provisional.p99_ms,
        final_p50_ms: latency.p50_ms,
        final_p99_ms: latency.p99_ms,
    })
}

/// The publisher of the hostile messages and the readers of what became of them: final
/// answers on its reply queue, by request id, and dead letters, by original routing key (each
/// message's own: `<tag>-<index>`).
struct Flood {
    broker: Broker,
    topology: Topology,
    reply_queue: String,
    replies: seatrush_core::amqp::Deliveries,
    dead: seatrush_core::amqp::Deliveries,
    tag: String,
    /// The named lane it publishes on; `None` for the default one.
    lane: Option<&'static str>,
    answers: HashMap<String, usize>,
    /// The messages dead-lettered, by index.
    dead_indexes: HashSet<usize>,
    dead_without_reason: usize,
}

impl Flood {
    async fn start(
        services: &Services,
        tag: &str,
        lane: Option<&'static str>,
    ) -> anyhow::Result<Self> {
        let broker = Broker::connect(&services.amqp_url, "seatrush-hostile")
            .await
            .context("connecting to RabbitMQ")?;
        let (reply_queue, replies) = broker.reply_queue().await?;
        let dead = broker
            .consume(
                &services.topology.dead_queue(),
                "seatrush-hostile-dead",
                500,
            )
            .await?;
        Ok(Self {
            broker,
            topology: services.topology.clone(),
            reply_queue,
            replies,
            dead,
            tag: tag.to_owned(),
            lane,
            answers: HashMap::new(),
            dead_indexes: HashSet::new(),
            dead_without_reason: 0,
        })
    }

    /// Publishes `plan` as fast as the broker confirms it.
    async fn send(&self, plan: &[(usize, Hostile)]) -> anyhow::Result<()> {
        let publisher = self.broker.confirmed_publisher().await?;
        let (outbox, sending) = Outbox::start(publisher, WINDOW);
        let mut confirms = FuturesUnordered::new();
        for (index, hostile) in plan {
            let to = ReplyTo::single(
                match &hostile.reply_to {
                    Reply::Ours => self.reply_queue.as_str(),
                    Reply::Elsewhere(queue) => queue.as_str(),
                },
                None,
            );
            let message = Outgoing::raw_request(
                &self.topology,
                &format!("{}-{index}", self.tag),
                hostile.message_id.as_deref(),
                Some(&to),
                hostile.body.clone(),
            )
            .with_headers(hostile.headers.clone())
            .on_lane(&self.topology, self.lane);
            confirms.push(outbox.post_confirmed(message).await?.confirmed());
            while confirms.len() >= WINDOW {
                if let Some(confirmed) = confirms.next().await {
                    confirmed.context("publishing a hostile message")?;
                }
            }
        }
        while let Some(confirmed) = confirms.next().await {
            confirmed.context("publishing a hostile message")?;
        }
        drop(outbox);
        sending.await.context("the hostile outbox failed")?;
        Ok(())
    }

    /// Sends `part`, sampling the worker's memory into `peak` meanwhile.
    async fn send_watching(
        &self,
        part: &[(usize, Hostile)],
        worker: &WorkerProcess,
        peak: &mut u64,
    ) -> anyhow::Result<()> {
        let sending = self.send(part);
        tokio::pin!(sending);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                sent = &mut sending => return sent,
                _ = tick.tick() => {
                    *peak = (*peak).max(worker.usage().map_or(0, |u| u.rss));
                }
            }
        }
    }

    /// Reads answers and dead letters until every message of `plan` is accounted for, or
    /// nothing more arrives for a while. The accounting is redone once a second, not per
    /// message.
    async fn settle(&mut self, plan: &[(usize, Hostile)]) {
        let mut last_read = Instant::now();
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                Some(Ok(message)) = self.replies.next() => {
                    for answer in parse_answers(&message.body).unwrap_or_default() {
                        if answer.stage == Stage::Final {
                            *self.answers.entry(answer.request_id).or_default() += 1;
                        }
                    }
                    last_read = Instant::now();
                }
                Some(Ok(message)) = self.dead.next() => {
                    self.dead_letter(message).await;
                    last_read = Instant::now();
                }
                _ = check.tick() => {
                    if self.unaccounted(plan) == 0 || last_read.elapsed() > QUIET {
                        return;
                    }
                }
            }
        }
    }

    /// Records (and acks) one dead letter: whether it has a reason, and whose it is.
    async fn dead_letter(&mut self, mut message: seatrush_core::amqp::Incoming) {
        let letter = DeadLetter::of(&message);
        let ack = std::mem::replace(&mut message.ack, seatrush_core::amqp::AckHandle::detached());
        if let Err(e) = ack.ack().await {
            eprintln!("[bench] hostile: acking a dead letter: {e:#}");
        }
        if letter.source != "seatrush" || letter.reason.trim().is_empty() {
            self.dead_without_reason += 1;
        }
        let index = letter
            .routing_key
            .strip_prefix(&format!("{}-", self.tag))
            .and_then(|i| i.parse().ok());
        if let Some(index) = index {
            self.dead_indexes.insert(index);
        }
    }

    fn unaccounted(&self, plan: &[(usize, Hostile)]) -> usize {
        self.figures(plan).values().map(|k| k.unaccounted).sum()
    }

    /// Whether each message was dead-lettered (its own routing key says which) and whether it
    /// was answered (messages sharing an id, duplicates, share that id's answers, one each).
    fn figures(&self, plan: &[(usize, Hostile)]) -> BTreeMap<Kind, KindFigures> {
        let mut left = self.answers.clone();
        let mut by_kind: BTreeMap<Kind, KindFigures> = BTreeMap::new();
        for (index, hostile) in plan {
            let figures = by_kind.entry(hostile.kind).or_default();
            figures.sent += 1;
            let dead = self.dead_indexes.contains(index);
            let answered = hostile
                .message_id
                .as_ref()
                .and_then(|id| left.get_mut(id))
                .filter(|n| **n > 0)
                .map(|n| *n -= 1)
                .is_some();
            figures.dead_lettered += usize::from(dead);
            figures.answered += usize::from(answered);
            figures.unaccounted += usize::from(!dead && !answered);
        }
        by_kind
    }

    async fn close(&self) {
        self.replies.cancel().await;
        self.dead.cancel().await;
        self.broker.close().await;
    }
}

/// The run's hostile messages, in the order they are sent, each with its index.
fn plan(tag: &str, count: usize) -> Vec<(usize, Hostile)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let kinds: Vec<Kind> = MIX
        .iter()
        .flat_map(|(kind, n)| std::iter::repeat_n(*kind, *n))
        .collect();
    let mut plan: Vec<(usize, Hostile)> = Vec::with_capacity(count);
    for index in 0..count {
        let kind = kinds[index % kinds.len()];
        let earlier = plan.len().saturating_sub(20)..plan.len();
        let previous = (!earlier.is_empty()).then(|| &plan[rng.random_range(earlier)].1);
        let hostile = match (kind, previous) {
            (Kind::Duplicate, Some(previous)) => Hostile {
                kind,
                ..previous.clone()
            },
            _ => hostile(kind, &format!("{tag}-{index}"), &mut rng),
        };
        plan.push((index, hostile));
    }
    plan
}

/// One message of `kind`; `id` is a valid request id of its own.
fn hostile(kind: Kind, id: &str, rng: &mut impl Rng) -> Hostile {
    let mut message = Hostile {
        kind,
        message_id: Some(id.to_owned()),
        reply_to: Reply::Ours,
        headers: FieldTable::default(),
        body: Vec::new(),
    };
    let enroll = |course: &str, student: &str| {
        format!(r#"{{"action":"enroll","course_id":"{course}","student_id":"{student}"}}"#)
            .into_bytes()
    };
    match kind {
        Kind::RandomBytes => {
            let len = rng.random_range(0..600);
            message.body = (0..len).map(|_| rng.random()).collect();
        }
        Kind::Oversized => {
            let len = rng.random_range(seatrush_core::protocol::MAX_BODY_BYTES + 1..16_384);
            let mut body = enroll("c1", "s1");
            body.resize(len, b' ');
            message.body = body;
        }
        Kind::HugeHeaders => {
            for k in 0..250 {
                let value: String = (0..120).map(|_| rng.random_range('a'..='z')).collect();
                message.headers.insert(
                    format!("x-junk-{k}").into(),
                    AMQPValue::LongString(LongString::from(value.into_bytes())),
                );
            }
            message.headers.insert(
                seatrush_core::protocol::BATCH_HEADER.into(),
                AMQPValue::LongString(LongString::from(vec![b'?'; 4096])),
            );
            // A request otherwise well formed, for a course nobody created: answered.
            message.body = enroll(&format!("nosuch{}", rng.random::<u32>()), id);
        }
        Kind::WrongTypes => {
            const BODIES: [&str; 12] = [
                r#"{"action":1,"course_id":"c1","student_id":"s1"}"#,
                r#"{"action":"enroll","course_id":123,"student_id":"s1"}"#,
                r#"{"action":"enroll","course_id":"c1","student_id":null}"#,
                r#"{"action":"enroll","course_id":{"$ne":null},"student_id":"s1"}"#,
                r#"{"action":"configure","course_id":"c1","seats":-5}"#,
                r#"{"action":"enroll","course_id":"c1","student_id":"s1","seats":"many"}"#,
                r#"{"action":["enroll"],"course_id":"c1","student_id":"s1"}"#,
                "[]",
                "\"enroll\"",
                "42",
                "null",
                "{}",
            ];
            message.body = BODIES[rng.random_range(0..BODIES.len())]
                .as_bytes()
                .to_vec();
        }
        Kind::DeepJson => {
            let depth = rng.random_range(129..1900);
            message.body = if rng.random() {
                format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
            } else {
                format!(
                    r#"{{"action":"enroll","course_id":"c1","student_id":"s1","x":{}1{}}}"#,
                    r#"{"a":"#.repeat(depth),
                    "}".repeat(depth)
                )
                .into_bytes()
            };
        }
        Kind::BrokenIds => {
            let n = rng.random_range(0..12);
            // Over the id limit, yet within what an AMQP short string carries.
            let long = "a".repeat(seatrush_core::domain::MAX_ID_LEN + 100);
            let (message_id, body) = match n {
                0 => (None, enroll("c1", "s1")),
                1 => (Some(String::new()), enroll("c1", "s1")),
                2 => (Some(format!("{id}{long}")), enroll("c1", "s1")),
                3 => (Some(format!("{id} space")), enroll("c1", "s1")),
                4 => (Some(format!("{id}.dot")), enroll("c1", "s1")),
                5 => (Some(format!("{id}\u{e9}\u{0}")), enroll("c1", "s1")),
                6 => (Some(format!("draw-{id}")), enroll("c1", "s1")),
                7 => (Some(format!("swap-{id}")), enroll("c1", "s1")),
                8 => (Some(id.to_owned()), enroll("c1", "")),
                9 => (Some(id.to_owned()), enroll("c1", &long)),
                10 => (Some(id.to_owned()), enroll("a/b", "s1")),
                _ => (Some(id.to_owned()), enroll("", "s\\n1")),
            };
            message.message_id = message_id;
            message.body = body;
        }
        Kind::UnknownAction => {
            let action = match rng.random_range(0..4) {
                0 => "steal".to_owned(),
                1 => "ENROLL".to_owned(),
                2 => String::new(),
                _ => "x".repeat(2000),
            };
            message.body = format!(r#"{{"action":"{action}","course_id":"c1","student_id":"s1"}}"#)
                .into_bytes();
        }
        Kind::Forged => {
            let n = rng.random_range(0..5);
            message.body = match n {
                // Course changes and releases must carry the broker-checked user: these do not.
                0 => br#"{"action":"configure","course_id":"c1","seats":100000}"#.to_vec(),
                1 => br#"{"action":"release","course_id":"c1","student_id":"s1"}"#.to_vec(),
                _ => br#"{"action":"steal","course_id":"c1","student_id":"s1"}"#.to_vec(),
            };
            if n == 1 {
                message.message_id = Some(format!("swap-{id}"));
            }
            // Answers asked for where nobody listens, or at the broker's direct reply-to
            // address of a channel that does not exist. (A plain `amq.rabbitmq.reply-to` is
            // refused by the broker at the publish, before any worker sees it.)
            message.reply_to = match n {
                2 => Reply::Elsewhere("amq.rabbitmq.reply-to.garbage".to_owned()),
                3 => Reply::Elsewhere("amq.rabbitmq.reply-to.g2dkAAZub2JvZHkAAAAB".to_owned()),
                4 => Reply::Elsewhere(format!("nobody-listens-{id}")),
                _ => Reply::Ours,
            };
            message.headers.insert(
                seatrush_core::protocol::BATCH_HEADER.into(),
                AMQPValue::Boolean(true),
            );
            message.headers.insert(
                seatrush_core::protocol::REASON_HEADER.into(),
                AMQPValue::LongString(LongString::from(b"forged".to_vec())),
            );
        }
        Kind::Duplicate => {
            message.body = enroll("c1", "s p a c e");
        }
        Kind::BadEncoding => {
            let n = rng.random_range(0..4);
            message.body = match n {
                0 => b"{\"action\":\"enroll\",\"course_id\":\"c\xff\xfe\",\"student_id\":\"s1\"}"
                    .to_vec(),
                1 => {
                    let mut body = b"\xef\xbb\xbf".to_vec();
                    body.extend(enroll("c1", "s1"));
                    body
                }
                2 => {
                    b"{\"action\":\"enroll\0\",\"course_id\":\"c1\",\"student_id\":\"s1\"}".to_vec()
                }
                _ => enroll("c1", "s1").iter().flat_map(|b| [*b, 0]).collect(),
            };
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use seatrush_core::protocol::parse_request;

    #[test]
    fn a_hostile_message_that_parses_names_no_course_of_the_run() {
        // Huge headers carry a well-formed request; deep JSON in a field the request does not
        // have, under the size limit, is skipped; either names a course nobody created.
        for (_, hostile) in plan("hostiletest", 2000) {
            match parse_request(hostile.message_id.as_deref(), None, &hostile.body) {
                Ok(request) => {
                    assert!(
                        matches!(
                            hostile.kind,
                            Kind::HugeHeaders | Kind::DeepJson | Kind::Duplicate
                        ),
                        "{:?} parsed: {request:?}",
                        hostile.kind
                    );
                    assert!(!request.course_id.as_str().starts_with("hostiletest"));
                }
                Err(invalid) => assert!(!invalid.why.is_empty()),
            }
        }
    }

    #[test]
    fn every_kind_is_in_the_plan_and_duplicates_repeat_an_earlier_message() {
        let plan = plan("t", 200);
        for (kind, _) in MIX {
            assert!(plan.iter().any(|(_, h)| h.kind == kind), "{kind:?}");
        }
        for (index, duplicate) in plan.iter().filter(|(_, h)| h.kind == Kind::Duplicate) {
            assert!(
                plan[..*index]
                    .iter()
                    .any(|(_, h)| h.message_id == duplicate.message_id && h.body == duplicate.body),
                "duplicate {index}"
            );
        }
    }
}
