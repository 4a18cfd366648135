//! The rush: the seeds' flash crowd fired at real workers exactly as producers would, with every
//! answer timed and the invariants checked at the end.

pub mod fairness;
pub mod fresh;
pub mod http;
mod plan;
mod progress;
pub mod rules;
mod workers;

use std::collections::BTreeMap;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use plan::{course_ids, crowd, meetings_of, with_duplicates, with_swaps};
pub use workers::{Profile, Services, Usage, WorkerProcess, usage_of};

use crate::load::{self, Pace, Progress};
use seatrush_core::domain::{CourseId, CourseSettings, Request};
use seatrush_core::protocol::Stage;
use seatrush_core::store::Store;
use seatrush_core::telemetry::metrics;

/// Who runs the workers.
#[derive(Debug, Clone)]
pub enum Workers {
    /// Start this many worker processes from `exe` and stop them at the end.
    Spawn {
        count: usize,
        exe: PathBuf,
        args: Vec<String>,
    },
    /// Use workers that are already running.
    External,
}

/// The shape of a crowd: how many courses of how many seats, how many students asking for how
/// many courses each.
#[derive(Debug, Clone, Copy)]
pub struct Crowd {
    pub courses: usize,
    pub seats: u32,
    /// Waitlist places per course.
    pub waitlist: u32,
    pub students: usize,
    pub choices: usize,
}

/// A crowd under the registration rules: every course worth 3 credits and meeting in one of
/// 30 weekly slots (so courses clash), one student in ten also sending a swap, and, with
/// `registry`, every student imported first: a cap of three courses' credits, one in twenty
/// with a hold, time tickets in four groups a minute apart (the last at the start).
#[derive(Debug, Clone, Copy)]
pub struct RulesCrowd {
    pub registry: bool,
}

#[derive(Debug, Clone)]
pub struct RushConfig {
    pub services: Services,
    pub crowd: Crowd,
    pub pace: Pace,
    /// Whether the crowd asks for its answers in batches (`x-seatrush-batch`), as a web back
    /// end would; on by default.
    pub batch: bool,
    /// Server processes whose CPU to sample around the crowd (the benchmark's).
    pub servers: Option<crate::cpu::Servers>,
    pub workers: Workers,
    /// Names the courses and students; a fresh one per run unless given.
    pub tag: String,
    pub seed: u64,
    /// How long to wait for the last final answer.
    pub timeout: Duration,
    /// Where worker logs go.
    pub log_dir: PathBuf,
    /// Courses with credits and meetings, swaps, and perhaps a student registry.
    pub rules: Option<RulesCrowd>,
    /// Fire through a web gateway by HTTP instead of publishing over AMQP.
    pub via: Option<http::HttpEdge>,
}

impl RushConfig {
    /// A burst against `workers` processes started from `exe`, seed 1, logs in `log_dir`.
    pub fn burst(
        services: Services,
        crowd: Crowd,
        workers: usize,
        exe: PathBuf,
        tag: String,
        log_dir: PathBuf,
    ) -> Self {
        Self {
            services,
            crowd,
            pace: Pace::Burst,
            batch: true,
            servers: None,
            workers: Workers::Spawn {
                count: workers,
                exe,
                args: Vec::new(),
            },
            tag,
            seed: 1,
            timeout: Duration::from_secs(600),
            log_dir,
            rules: None,
            via: None,
        }
    }
}

/// The figures of one rush; serialized as the `--json` file.
#[derive(Debug, Clone, Serialize)]
pub struct RushReport {
    pub tag: String,
    pub requests: usize,
    pub courses: usize,
    pub seats: u32,
    /// Waitlist places per course.
    pub waitlist: u32,
    pub students: usize,
    pub choices: usize,
    pub workers: Option<usize>,
    pub pace: String,
    pub publish_rps: f64,
    pub throughput_rps: f64,
    pub elapsed_s: f64,
    pub provisional_p50_ms: f64,
    pub provisional_p90_ms: f64,
    pub provisional_p99_ms: f64,
    pub provisional_max_ms: f64,
    pub final_p50_ms: f64,
    pub final_p90_ms: f64,
    pub final_p99_ms: f64,
    pub final_max_ms: f64,
    pub transactions: i64,
    pub requests_per_commit: f64,
    /// Worker CPU (user + system) per request, for workers this rush started.
    pub worker_cpu_us_per_request: Option<f64>,
    /// Messages the workers published (answers, batches of answers, events) per request.
    pub worker_publishes_per_request: Option<f64>,
    /// Where the workers' CPU per request went: each stage of the request path, the broker
    /// client's own thread, and the rest (the runtime's scheduling and hand-offs between
    /// tasks), for workers this rush started.
    pub worker_cpu_by_stage_us_per_request: Option<StageShare>,
    /// Whether the crowd asked for batched answers.
    pub batched_answers: bool,
    /// CPU per request of the broker, the database, Redis, this process and the workers over
    /// the crowd, when the rush was asked to watch the servers (the benchmark does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_request: Option<crate::cpu::CpuShare>,
    /// The largest peak resident memory among the workers this rush started.
    pub worker_peak_rss_mib: Option<f64>,
    pub lost: usize,
    pub duplicated: usize,
    pub contradicted: usize,
    /// Audit violations plus final answers that disagree with the enrollment rows.
    pub violations: usize,
    pub outcomes: BTreeMap<String, usize>,
    /// Under the rules: what the swaps did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swaps: Option<SwapFigures>,
    pub audit: Vec<seatrush_core::store::Violation>,
}

/// What the swaps of a crowd under the rules did, checked student by student at the end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SwapFigures {
    pub sent: usize,
    /// Took the new seat (and gave the old one back).
    pub took_seat: usize,
    pub refused: usize,
    /// Refused swaps whose student had the old seat (a final `enrolled`) and no longer holds
    /// it: must be 0.
    pub refused_and_lost_old_seat: usize,
}

impl SwapFigures {
    fn of(fired: &load::Report, held: &[(String, String)]) -> Option<Self> {
        use seatrush_core::domain::Action;
        let held: HashSet<(&str, &str)> =
            held.iter().map(|(c, s)| (c.as_str(), s.as_str())).collect();
        let enrolled: HashSet<(&str, &str)> = fired
            .answered
            .iter()
            .filter(|a| a.request.action == Action::Enroll)
            .filter_map(|a| a.finals.first())
            .filter(|(f, _)| f.outcome == "enrolled")
            .map(|(f, _)| (f.course_id.as_str(), f.student_id.as_str()))
            .collect();
        let mut figures = Self::default();
        for answered in &fired.answered {
            let Action::Swap(old) = &answered.request.action else {
                continue;
            };
            figures.sent += 1;
            let Some((answer, _)) = answered.finals.first() else {
                continue;
            };
            if answer.outcome == "enrolled" && answer.reason.is_none() {
                figures.took_seat += 1;
                continue;
            }
            figures.refused += 1;
            let pair = (old.as_str(), answered.request.student_id.as_str());
            if enrolled.contains(&pair) && !held.contains(&pair) {
                figures.refused_and_lost_old_seat += 1;
            }
        }
        (figures.sent > 0).then_some(figures)
    }
}

impl RushReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.violations == 0
            && self
                .swaps
                .as_ref()
                .is_none_or(|s| s.refused_and_lost_old_seat == 0)
    }
}

/// A finished rush: the report and the raw answers (for charts).
pub struct Rush {
    pub report: RushReport,
    pub load: load::Report,
}

/// Runs a rush; errors only when it could not run (the report says whether its checks passed).
pub async fn run(config: RushConfig, show_progress: bool) -> anyhow::Result<Rush> {
    let store = prepared_store(&config.services).await?;

    let shape = config.crowd;
    let courses = create_courses(&store, &config.tag, &shape, config.rules.is_some()).await?;
    let mut requests = crowd(
        &courses,
        shape.students,
        shape.choices,
        &config.tag,
        config.seed,
    )?;
    if let Some(rules) = config.rules {
        requests = with_swaps(requests, &courses, 10, config.seed)?;
        if rules.registry {
            import_registry(&store, &requests).await?;
        }
    }
    let started = start_workers(&config, &store).await?;
    // Costs are counted from here: start-up (migrations, topology) is not the rush's.
    let cpu_before: Vec<Duration> = started
        .iter()
        .map(|w| w.usage().map(|u| u.cpu).unwrap_or_default())
        .collect();
    let batches_before = store.decision_batches().await?;
    let profile_before = profile(&started).await;
    let servers_before = config.servers.as_ref().map(crate::cpu::Servers::before);

    let fired = fire_showing_progress(&config, requests, show_progress)
        .await?
        .fully_published()?;

    let servers = servers_before.map(|before| {
        let after = before.sample();
        (before, after)
    });
    let measured = Measured {
        servers,
        transactions: store.decision_batches().await? - batches_before,
        profile: profile(&started)
            .await
            .zip(profile_before)
            .map(|(after, before)| after.since(&before)),
        usages: started.iter().map(WorkerProcess::usage).collect(),
        cpu_before,
        held: {
            released(&store, &fired, config.timeout).await?;
            store.seats_held(&courses).await?
        },
        released: store.seats_released().await?,
    };
    let mut stop_errors = Vec::new();
    for worker in started {
        if let Err(e) = worker.stop(Duration::from_secs(60)).await {
            stop_errors.push(format!("{e:#}"));
        }
    }
    let audit = store.audit().await?;
    store.close().await;
    let report = report_of(&config, &fired, measured, audit);
    if !stop_errors.is_empty() {
        anyhow::bail!("workers did not stop cleanly: {}", stop_errors.join("; "));
    }
    Ok(Rush {
        report,
        load: fired,
    })
}

/// Starts the rush's own worker processes, if it has any, and waits until they hold every
/// partition in a balanced way (several workers start by handing partitions over to each
/// other: the rush begins once that has settled, so it measures the steady state).
/// A connection to the services' database, migrated, with its partitions recorded.
pub async fn prepared_store(services: &Services) -> anyhow::Result<Store> {
    let store = Store::connect(&services.database_url, 4)
        .await
        .context("connecting to PostgreSQL")?;
    store.migrate().await?;
    store
        .ensure_partitions(services.topology.partitions)
        .await?;
    Ok(store)
}

pub async fn start_workers(
    config: &RushConfig,
    store: &Store,
) -> anyhow::Result<Vec<WorkerProcess>> {
    let services = &config.services;
    let mut started = Vec::new();
    if let Workers::Spawn { count, exe, args } = &config.workers {
        std::fs::create_dir_all(&config.log_dir)?;
        for n in 0..*count {
            let id = format!("{}-w{n}", config.tag);
            let log = config.log_dir.join(format!("{id}.log"));
            started.push(WorkerProcess::start_observed(
                exe,
                services,
                &id,
                log,
                args,
                &[],
            )?);
        }
    }
    wait_for_partitions(store, services.topology.partitions).await?;
    if !started.is_empty() {
        let ids: Vec<&str> = started.iter().map(|w| w.worker_id.as_str()).collect();
        wait_until_balanced(store, &ids, Duration::from_secs(60)).await?;
    }
    Ok(started)
}

/// Fires the crowd, with progress bars on a terminal when asked.
async fn fire_showing_progress(
    config: &RushConfig,
    requests: Vec<Request>,
    show_progress: bool,
) -> anyhow::Result<load::Report> {
    let progress = Arc::new(Progress::default());
    let done = CancellationToken::new();
    let display = show_progress.then(|| {
        tokio::spawn(progress::show(
            progress.clone(),
            requests.len(),
            done.clone(),
        ))
    });
    let fired = match &config.via {
        Some(edge) => http::fire(edge, requests, config.timeout, progress).await,
        None => {
            load::fire_with(
                &config.services.amqp_url,
                &config.services.topology,
                requests,
                config.timeout,
                load::Fire {
                    pace: config.pace,
                    batch: config.batch,
                },
                progress,
            )
            .await
        }
    };
    done.cancel();
    if let Some(display) = display {
        let _ = display.await;
    }
    fired
}

/// A worker's CPU per request by where it went, in microseconds. The stages are measured
/// around their own code by the worker (`seatrush_stage_busy_nanoseconds_total`), the broker
/// client's thread from `/proc`; `rest` is the worker's CPU less both: the async runtime's
/// scheduling, the hand-offs between tasks, and what no stage covers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageShare {
    /// By stage, under the labels of `Stage` (`parse`, `route`, ... `ack`).
    #[serde(flatten)]
    pub stages: BTreeMap<&'static str, f64>,
    pub broker_client_thread: f64,
    pub rest: f64,
}

impl StageShare {
    fn of(profile: &Profile, cpu: Duration, requests: usize) -> Self {
        let per_request = |d: Duration| d.as_secs_f64() * 1e6 / requests.max(1) as f64;
        let measured = profile.stages.iter().sum::<Duration>() + profile.broker_client;
        Self {
            stages: metrics::Stage::ALL
                .iter()
                .zip(profile.stages)
                .map(|(stage, busy)| (stage.label(), per_request(busy)))
                .collect(),
            broker_client_thread: per_request(profile.broker_client),
            rest: per_request(cpu.saturating_sub(measured)),
        }
    }

    /// Each part with its name, in the order of the request path.
    pub fn parts(&self) -> Vec<(&'static str, f64)> {
        let stage = |label: &'static str| (label, self.stages.get(label).copied().unwrap_or(0.0));
        metrics::Stage::ALL
            .iter()
            .map(|s| stage(s.label()))
            .chain([
                ("broker client thread", self.broker_client_thread),
                ("rest (runtime, hand-offs)", self.rest),
            ])
            .collect()
    }
}

/// The workers' profiles so far, all together; `None` if one could not say.
async fn profile(workers: &[WorkerProcess]) -> Option<Profile> {
    if workers.is_empty() {
        return None;
    }
    let mut total = Profile::default();
    for worker in workers {
        total = total.plus(&worker.profile().await?);
    }
    Some(total)
}

/// What was measured around the crowd: commits, the workers' costs, the seats held after.
struct Measured {
    /// The servers' CPU before and after the crowd.
    servers: Option<(crate::cpu::Before, crate::cpu::Before)>,
    transactions: i64,
    /// What the workers published, and where their CPU went, during the crowd.
    profile: Option<Profile>,
    usages: Vec<Option<Usage>>,
    cpu_before: Vec<Duration>,
    held: Vec<(String, String)>,
    /// Seats given back by the releases that completed swaps.
    released: Vec<(String, String)>,
}

fn report_of(
    config: &RushConfig,
    fired: &load::Report,
    measured: Measured,
    audit: Vec<seatrush_core::store::Violation>,
) -> RushReport {
    let shape = config.crowd;
    let n = fired.answered.len();
    let cpu: Option<Duration> = measured
        .usages
        .iter()
        .zip(&measured.cpu_before)
        .map(|(u, before)| u.map(|u| u.cpu.saturating_sub(*before)))
        .sum();
    let peak = measured.usages.iter().flatten().map(|u| u.peak_rss).max();
    let provisional = fired.latency(Stage::Provisional);
    let final_ = fired.latency(Stage::Final);
    let mismatched = mismatched_seats_after(fired, &measured.held, &measured.released);
    let transactions = measured.transactions;
    RushReport {
        tag: config.tag.clone(),
        requests: n,
        courses: shape.courses,
        seats: shape.seats,
        waitlist: shape.waitlist,
        students: shape.students,
        choices: shape.choices,
        workers: match &config.workers {
            Workers::Spawn { count, .. } => Some(*count),
            Workers::External => None,
        },
        pace: match config.pace {
            Pace::Burst => "burst".into(),
            Pace::Rate(r) => format!("{r}/s"),
        },
        publish_rps: n as f64 / fired.publish_time.as_secs_f64().max(1e-9),
        throughput_rps: fired.throughput(),
        elapsed_s: fired.total_time.as_secs_f64(),
        provisional_p50_ms: provisional.p50_ms,
        provisional_p90_ms: provisional.p90_ms,
        provisional_p99_ms: provisional.p99_ms,
        provisional_max_ms: provisional.max_ms,
        final_p50_ms: final_.p50_ms,
        final_p90_ms: final_.p90_ms,
        final_p99_ms: final_.p99_ms,
        final_max_ms: final_.max_ms,
        transactions,
        requests_per_commit: n as f64 / transactions.max(1) as f64,
        worker_cpu_us_per_request: cpu.map(|c| c.as_secs_f64() * 1e6 / n.max(1) as f64),
        worker_publishes_per_request: measured
            .profile
            .map(|p| p.published as f64 / n.max(1) as f64),
        worker_cpu_by_stage_us_per_request: measured
            .profile
            .zip(cpu)
            .map(|(profile, cpu)| StageShare::of(&profile, cpu, n)),
        cpu_us_per_request: measured
            .servers
            .as_ref()
            .map(|(before, after)| before.share_until(after, n, cpu)),
        batched_answers: config.batch,
        worker_peak_rss_mib: peak.map(|b| b as f64 / (1024.0 * 1024.0)),
        lost: fired.lost(),
        duplicated: fired.duplicated(),
        contradicted: fired.contradicted(),
        violations: audit.len() + mismatched,
        outcomes: fired.outcomes().into_iter().collect(),
        swaps: SwapFigures::of(fired, &measured.held),
        audit,
    }
}

/// A fresh tag for a run's course and student names.
/// Creates the crowd's courses (named from `tag`), with the crowd's seats and waitlist, and
/// `with_facts`, 3 credits each and meetings in one of 30 weekly slots.
pub async fn create_courses(
    store: &Store,
    tag: &str,
    shape: &Crowd,
    with_facts: bool,
) -> anyhow::Result<Vec<CourseId>> {
    let courses = course_ids(tag, shape.courses)?;
    let settings = CourseSettings {
        capacity: shape.seats,
        waitlist: shape.waitlist,
        ..CourseSettings::default()
    };
    let rows = courses
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let mut settings = settings.clone();
            if with_facts {
                settings.credits = 3;
                settings.meetings = seatrush_core::domain::Meetings::parse(&meetings_of(k))?;
            }
            Ok((c.clone(), settings))
        })
        .collect::<anyhow::Result<Vec<(CourseId, CourseSettings)>>>()?;
    store.add_courses(&rows).await?;
    Ok(courses)
}

/// Imports every student of the crowd: a cap of 9 credits (three courses), one in twenty
/// with a hold, time tickets in four groups a minute apart, the last one now.
async fn import_registry(store: &Store, requests: &[Request]) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let mut students: Vec<&seatrush_core::domain::StudentId> =
        requests.iter().map(|r| &r.student_id).collect();
    students.sort_unstable();
    students.dedup();
    let registry: Vec<_> = students
        .into_iter()
        .enumerate()
        .map(|(n, id)| {
            let group = i64::try_from(n % 4).unwrap_or(0);
            let record = seatrush_core::domain::StudentRecord {
                max_credits: 9,
                registration_opens_at: Some(now - chrono::Duration::minutes(3 - group)),
                holds: if n % 20 == 7 {
                    vec!["unpaid_fees".to_owned()]
                } else {
                    Vec::new()
                },
            };
            (id.clone(), record)
        })
        .collect();
    for chunk in registry.chunks(5_000) {
        store.import_students(chunk).await?;
    }
    Ok(())
}

/// Waits until every swap that took its seat has given the old one back (its release is
/// one more message through the broker after the swap's final answer).
async fn released(store: &Store, fired: &load::Report, within: Duration) -> anyhow::Result<()> {
    let releases: Vec<seatrush_core::domain::RequestId> = fired
        .answered
        .iter()
        .filter(|a| {
            a.finals
                .first()
                .is_some_and(|(f, _)| f.outcome == "enrolled" && f.reason.is_none())
        })
        .filter_map(|a| a.request.swap_release_id())
        .collect();
    let ids: Vec<&str> = releases.iter().map(|id| id.as_str()).collect();
    let start = Instant::now();
    while store.count_outcomes(&ids).await? < i64::try_from(ids.len()).unwrap_or(i64::MAX) {
        if start.elapsed() > within {
            anyhow::bail!("swaps still hold the seats they gave up after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub fn fresh_tag(kind: &str) -> String {
    format!("{kind}{}", &uuid::Uuid::new_v4().simple().to_string()[..6])
}

/// The report as a short text for people.
pub fn describe(r: &RushReport) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "rush {}: {} requests from {} students ({} choices each) over {} courses of {} seats \
         (waitlist {}), {}{}",
        r.tag,
        r.requests,
        r.students,
        r.choices,
        r.courses,
        r.seats,
        r.waitlist,
        r.pace,
        r.workers
            .map_or(", external workers".into(), |w| format!(", {w} worker(s)"))
    ));
    line(format!(
        "  published at {:.0}/s; every final answer in {:.2} s: {:.0} requests/s end to end",
        r.publish_rps, r.elapsed_s, r.throughput_rps
    ));
    line(format!(
        "  provisional answer  p50 {:>8.1} ms  p90 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
        r.provisional_p50_ms, r.provisional_p90_ms, r.provisional_p99_ms, r.provisional_max_ms
    ));
    line(format!(
        "  final answer        p50 {:>8.1} ms  p90 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
        r.final_p50_ms, r.final_p90_ms, r.final_p99_ms, r.final_max_ms
    ));
    line(format!(
        "  {} transactions wrote the decisions: {:.0} requests per commit",
        r.transactions, r.requests_per_commit
    ));
    if let Some(publishes) = r.worker_publishes_per_request {
        line(format!(
            "  the workers published {publishes:.3} messages per request ({})",
            if r.batched_answers {
                "batched answers"
            } else {
                "one message per answer"
            }
        ));
    }
    if let (Some(cpu), Some(rss)) = (r.worker_cpu_us_per_request, r.worker_peak_rss_mib) {
        line(format!(
            "  worker CPU {cpu:.1} µs per request; peak memory {rss:.1} MiB"
        ));
    }
    let outcomes: Vec<String> = r.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    line(format!("  outcomes: {}", outcomes.join(", ")));
    line(format!(
        "  lost {}, duplicated {}, provisional answers contradicted {}, violations {}",
        r.lost, r.duplicated, r.contradicted, r.violations
    ));
    if let Some(s) = &r.swaps {
        line(format!(
            "  swaps: {} sent, {} took their seat, {} refused; refused swaps that lost the old \
             seat: {}",
            s.sent, s.took_seat, s.refused, s.refused_and_lost_old_seat
        ));
    }
    for v in &r.audit {
        line(format!("  audit: {}: {}", v.check, v.detail));
    }
    line(format!(
        "  checks: {}",
        if r.passed() {
            "every request answered exactly once, answers match Postgres, audit clean"
        } else {
            "FAILED"
        }
    ));
    out
}

/// Waits until every partition is held by a live worker.
pub async fn wait_for_partitions(store: &Store, partitions: u16) -> anyhow::Result<()> {
    let start = Instant::now();
    while store.live_partitions().await? < i64::from(partitions) {
        if start.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("no worker took all {partitions} partitions within a minute");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Waits until exactly `workers` own every partition, each floor(P/W) or ceil(P/W) of them;
/// returns how many each owns.
pub async fn wait_until_balanced(
    store: &Store,
    workers: &[&str],
    within: Duration,
) -> anyhow::Result<HashMap<String, usize>> {
    let start = Instant::now();
    let mut expected = workers.to_vec();
    expected.sort_unstable();
    loop {
        let (_, partitions) = store.ownership().await?;
        let owned = seatrush_core::status::owned_by(&partitions);
        let mut owners: Vec<&str> = owned.keys().copied().collect();
        owners.sort_unstable();
        let counts: Vec<usize> = owned.values().copied().collect();
        if owners == expected && seatrush_core::status::is_fair(&counts, partitions.len()) {
            return Ok(owned.into_iter().map(|(w, n)| (w.to_owned(), n)).collect());
        }
        if start.elapsed() > within {
            anyhow::bail!(
                "the partitions were not balanced over {workers:?} within {within:?}: {owned:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Final `enrolled` answers without a seat in Postgres, plus seats without such an answer.
pub fn mismatched_seats(report: &load::Report, held: &[(String, String)]) -> usize {
    mismatched_seats_after(report, held, &[])
}

/// [`mismatched_seats`], where the seats `released` (course, student) were given back by the
/// releases that completed swaps: their enrolls' answers no longer hold a seat.
pub fn mismatched_seats_after(
    report: &load::Report,
    held: &[(String, String)],
    released: &[(String, String)],
) -> usize {
    let released: HashSet<&(String, String)> = released.iter().collect();
    let answered: HashSet<(String, String)> = report
        .answered
        .iter()
        .filter_map(|a| a.finals.first())
        .filter(|(f, _)| f.outcome == "enrolled")
        .map(|(f, _)| (f.course_id.clone(), f.student_id.clone()))
        .filter(|pair| !released.contains(pair))
        .collect();
    let held: HashSet<(String, String)> = held.iter().cloned().collect();
    answered.symmetric_difference(&held).count()
}
