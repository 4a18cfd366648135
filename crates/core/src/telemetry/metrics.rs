//! The worker's metrics, in Prometheus format on `/metrics`.
//!
//! Every name is defined here, with its buckets, so the dashboard in `docker/grafana/` and the
//! runbook in `docs/operations.md` have one place to match. Counters whose labels are known in
//! advance are registered at zero, so a scrape shows them before the first event.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::{Action, Outcome};

/// Requests decided and committed, by `action` and `outcome`.
pub const REQUESTS: &str = "seatrush_requests_total";
/// Waitlisted students moved into a freed seat.
pub const PROMOTIONS: &str = "seatrush_promotions_total";
/// Time a course actor takes to decide one request, in memory.
pub const DECISION: &str = "seatrush_decision_duration_seconds";
/// Time one group commit takes (one transaction, a whole batch).
pub const COMMIT: &str = "seatrush_commit_duration_seconds";
/// Requests per group commit.
pub const BATCH_SIZE: &str = "seatrush_batch_size";
/// Course actors alive in this worker.
pub const LIVE_ACTORS: &str = "seatrush_live_actors";
/// Partitions this worker owns.
pub const OWNED_PARTITIONS: &str = "seatrush_owned_partitions";
/// Requests waiting in course actors' mailboxes, in all, and in the deepest one.
pub const MAILBOX_DEPTH: &str = "seatrush_mailbox_depth";
pub const MAILBOX_DEPTH_MAX: &str = "seatrush_mailbox_depth_max";
/// Deliveries taken from the broker and not yet settled.
pub const IN_FLIGHT: &str = "seatrush_in_flight";
/// Messages this worker published, by `kind` (reply, event, request, dead_letter): a batch
/// of answers counts once. Divided by the requests decided, the broker's cost per request.
pub const PUBLISHED: &str = "seatrush_published_messages_total";
/// The kinds of message `PUBLISHED` counts, as their labels.
pub const PUBLISHED_KINDS: [&str; 4] = ["reply", "event", "request", "dead_letter"];
/// Deliveries the broker marked as redelivered.
pub const REDELIVERIES: &str = "seatrush_redeliveries_total";
/// Messages this worker dead-lettered, by `reason`.
pub const DEAD_LETTERS: &str = "seatrush_dead_letters_total";
/// Invalid messages answered at their reply address with the reason, which a queue took, so
/// not dead-lettered.
pub const INVALID_ANSWERED: &str = "seatrush_invalid_answered_total";
/// Connections re-established after a failure, by `target` (broker, database).
pub const RECONNECTS: &str = "seatrush_reconnects_total";
/// 1 while the `component` (broker, database) is reachable, else 0.
pub const READY: &str = "seatrush_ready";
/// Time the worker's own threads spent in each `stage` of the request path (the labels of
/// [`Stage`]), in nanoseconds: what the benchmark divides by the requests to say where a
/// worker's CPU per request goes. Measured around code that does not wait (or, for a stage
/// that awaits, around each poll of its future), so waiting for the broker or the database is
/// not counted; the broker client's own thread and the runtime's scheduling are not in any
/// stage.
pub const STAGE_BUSY: &str = "seatrush_stage_busy_nanoseconds_total";

/// Every metric name, for checks (the dashboard, the runbook) against this list. Histograms
/// export `_bucket`, `_sum` and `_count` series of their name.
pub const ALL: [&str; 17] = [
    REQUESTS,
    PROMOTIONS,
    DECISION,
    COMMIT,
    BATCH_SIZE,
    LIVE_ACTORS,
    OWNED_PARTITIONS,
    MAILBOX_DEPTH,
    MAILBOX_DEPTH_MAX,
    IN_FLIGHT,
    REDELIVERIES,
    DEAD_LETTERS,
    INVALID_ANSWERED,
    RECONNECTS,
    READY,
    PUBLISHED,
    STAGE_BUSY,
];

/// Why a message was dead-lettered by this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// Not a valid request (malformed, oversized, missing id...).
    Invalid,
    /// Its course actor crashed on it too often.
    CrashLoop,
    /// The database refused it on its own.
    DatabaseRefused,
}

impl DeadReason {
    const ALL: [DeadReason; 3] = [Self::Invalid, Self::CrashLoop, Self::DatabaseRefused];

    fn label(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::CrashLoop => "crash_loop",
            Self::DatabaseRefused => "database_refused",
        }
    }
}

/// What a connection was re-established to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Broker,
    Database,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Self::Broker => "broker",
            Self::Database => "database",
        }
    }
}

/// A stage of the request path whose busy time the worker measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A delivery's body and properties parsed into a request.
    Parse,
    /// A request handed to its course actor's mailbox (finding or starting the actor, and for
    /// a course not seen yet, asking the catalog whether it exists).
    Route,
    /// The worker's judge judging a round of requests under the registration rules (only
    /// while a student registry is loaded).
    Judge,
    /// A course actor deciding from memory.
    Decide,
    /// Answers written as JSON (provisional and final, alone or into a batch).
    Serialize,
    /// The outbox packing a burst and handing its messages to the broker client.
    Publish,
    /// The group commit's work on the worker's side: building the statements' arrays,
    /// talking to the database, reading the results.
    Commit,
    /// Settling the deliveries of a committed and answered batch with the broker.
    Ack,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Self::Parse,
        Self::Route,
        Self::Judge,
        Self::Decide,
        Self::Serialize,
        Self::Publish,
        Self::Commit,
        Self::Ack,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Parse => "parse",
            Self::Route => "route",
            Self::Judge => "judge",
            Self::Decide => "decide",
            Self::Serialize => "serialize",
            Self::Publish => "publish",
            Self::Commit => "commit",
            Self::Ack => "ack",
        }
    }
}

// Deciding is a few microseconds; anything near a millisecond is worth seeing.
const DECISION_BUCKETS: [f64; 11] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 1e-1,
];
// A healthy commit takes milliseconds; a stalled database, seconds.
const COMMIT_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
// From a lone request to a full batch (`--batch-max`, 1000 by default).
const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The `action` labels, as `Action::as_str` spells them, in the order `request_committed`
/// indexes them.
const ACTIONS: [&str; 6] = ["enroll", "drop", "configure", "draw", "swap", "release"];
const OUTCOMES: [Outcome; 9] = [
    Outcome::Enrolled,
    Outcome::Waitlisted,
    Outcome::Rejected,
    Outcome::Dropped,
    Outcome::Configured,
    Outcome::Promoted,
    Outcome::Queued,
    Outcome::Drawn,
    Outcome::PromotionSkipped,
];

/// The handles of the metrics recorded once per request, registered once: looking a metric up
/// by name and labels on every request would hash its key each time on the hot path.
struct PerRequest {
    /// By action, then outcome, in the order of `ACTIONS` and `OUTCOMES`.
    requests: Vec<Vec<Counter>>,
    promotions: Counter,
    decision: Histogram,
    /// In the order of `PUBLISHED_KINDS`.
    published: Vec<Counter>,
    /// In the order of `Stage::ALL`.
    stages: Vec<Counter>,
}

/// Registered right after the recorder is installed; a process that never installs one (a
/// test client, the CLI) gets handles that record nothing.
static PER_REQUEST: OnceLock<PerRequest> = OnceLock::new();

fn per_request() -> &'static PerRequest {
    PER_REQUEST.get_or_init(|| PerRequest {
        requests: ACTIONS
            .iter()
            .map(|action| {
                OUTCOMES
                    .iter()
                    .map(|outcome| {
                        counter!(REQUESTS, "action" => *action, "outcome" => outcome.as_str())
                    })
                    .collect()
            })
            .collect(),
        promotions: counter!(PROMOTIONS),
        decision: histogram!(DECISION),
        published: PUBLISHED_KINDS
            .iter()
            .map(|kind| counter!(PUBLISHED, "kind" => *kind))
            .collect(),
        stages: Stage::ALL
            .iter()
            .map(|stage| counter!(STAGE_BUSY, "stage" => stage.label()))
            .collect(),
    })
}

/// Installs the process-wide recorder once (later calls return the same handle) and registers
/// the counters known in advance at zero. `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(DECISION.into()), &DECISION_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(COMMIT.into()), &COMMIT_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &BATCH_BUCKETS)
                });
            let handle = match builder.map(PrometheusBuilder::install_recorder) {
                Ok(Ok(handle)) => handle,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics buckets refused");
                    return None;
                }
            };
            for reason in DeadReason::ALL {
                counter!(DEAD_LETTERS, "reason" => reason.label()).absolute(0);
            }
            counter!(INVALID_ANSWERED).absolute(0);
            for target in [Target::Broker, Target::Database] {
                counter!(RECONNECTS, "target" => target.label()).absolute(0);
            }
            counter!(REDELIVERIES).absolute(0);
            per_request().promotions.absolute(0);
            for counter in per_request().published.iter().chain(&per_request().stages) {
                counter.absolute(0);
            }
            start_upkeep(handle.clone());
            Some(handle)
        })
        .clone()
}

/// How often the histograms' recorded samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the histograms' samples into their buckets every few seconds, for as long as the
/// process (and so its recorder) lives. The recorder keeps every sample a histogram records
/// until an upkeep: without one, a process nobody scrapes grew by every decision and commit it
/// timed (8 MiB a minute at 6,000 requests/s). On a thread of its own, like the recorder it
/// serves, so it needs no runtime and outlives none.
fn start_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "metrics upkeep not started: histograms grow until scraped");
    }
}

/// The current values, in Prometheus text format.
pub fn render(handle: &PrometheusHandle) -> String {
    handle.run_upkeep();
    handle.render()
}

/// A committed request.
pub fn request_committed(action: &Action, outcome: Outcome) {
    let a = match action {
        Action::Enroll => 0,
        Action::Drop => 1,
        Action::Configure(_) => 2,
        Action::Draw => 3,
        Action::Swap(_) => 4,
        Action::Release(_) => 5,
    };
    // Exhaustive, so a new outcome cannot be counted under another's label.
    let o = match outcome {
        Outcome::Enrolled => 0,
        Outcome::Waitlisted => 1,
        Outcome::Rejected => 2,
        Outcome::Dropped => 3,
        Outcome::Configured => 4,
        Outcome::Promoted => 5,
        Outcome::Queued => 6,
        Outcome::Drawn => 7,
        Outcome::PromotionSkipped => 8,
    };
    per_request().requests[a][o].increment(1);
}

/// One message published, of the kind labelled `kind` (one of `PUBLISHED_KINDS`).
pub fn published(kind: &str) {
    if let Some(i) = PUBLISHED_KINDS.iter().position(|k| *k == kind)
        && let Some(counter) = per_request().published.get(i)
    {
        counter.increment(1);
    }
}

pub fn promoted(students: usize) {
    if students > 0 {
        per_request().promotions.increment(students as u64);
    }
}

pub fn decided_in(elapsed: Duration) {
    per_request().decision.record(elapsed.as_secs_f64());
    busy(Stage::Decide, elapsed);
}

/// Time spent in `stage`.
pub fn busy(stage: Stage, elapsed: Duration) {
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    // `Stage::ALL` lists every variant in declaration order, so the index is always there.
    if let Some(counter) = per_request().stages.get(stage as usize) {
        counter.increment(nanos);
    }
}

/// Runs `work` and counts its time in `stage`.
pub fn busy_in<T>(stage: Stage, work: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let done = work();
    busy(stage, started.elapsed());
    done
}

/// `future`, with the time spent in each of its polls counted in `stage`: the work it does,
/// not the time it waits.
pub fn busy_while<F: Future>(stage: Stage, future: F) -> Busy<F> {
    Busy { stage, future }
}

pin_project_lite::pin_project! {
    /// A future whose polls are counted in a stage; see [`busy_while`].
    pub struct Busy<F> {
        stage: Stage,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Busy<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let started = Instant::now();
        let polled = this.future.poll(cx);
        busy(*this.stage, started.elapsed());
        polled
    }
}

pub fn committed_batch(size: usize, elapsed: Duration) {
    histogram!(COMMIT).record(elapsed.as_secs_f64());
    histogram!(BATCH_SIZE).record(size as f64);
}

pub fn dead_lettered(reason: DeadReason) {
    counter!(DEAD_LETTERS, "reason" => reason.label()).increment(1);
}

pub fn invalid_answered() {
    counter!(INVALID_ANSWERED).increment(1);
}

pub fn redelivered() {
    counter!(REDELIVERIES).increment(1);
}

pub fn reconnected(target: Target) {
    counter!(RECONNECTS, "target" => target.label()).increment(1);
}

pub fn ready(target: Target, up: bool) {
    gauge!(READY, "component" => target.label()).set(if up { 1.0 } else { 0.0 });
}

pub fn owned_partitions(count: usize) {
    gauge!(OWNED_PARTITIONS).set(count as f64);
}

/// The load gauges, sampled about once a second.
pub fn load(live_actors: usize, mailbox_total: usize, mailbox_max: usize, in_flight: usize) {
    gauge!(LIVE_ACTORS).set(live_actors as f64);
    gauge!(MAILBOX_DEPTH).set(mailbox_total as f64);
    gauge!(MAILBOX_DEPTH_MAX).set(mailbox_max as f64);
    gauge!(IN_FLIGHT).set(in_flight as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_tables_follow_the_domain_spellings_and_the_index_order() {
        assert_eq!(Action::Enroll.as_str(), ACTIONS[0]);
        assert_eq!(Action::Drop.as_str(), ACTIONS[1]);
        assert_eq!(Action::Configure(Box::default()).as_str(), ACTIONS[2]);
        assert_eq!(Action::Draw.as_str(), ACTIONS[3]);
        let course = crate::domain::CourseId::parse("C").expect("valid");
        assert_eq!(Action::Swap(course).as_str(), ACTIONS[4]);
        let user = crate::domain::StudentId::parse("u").expect("valid");
        assert_eq!(Action::Release(user).as_str(), ACTIONS[5]);
        let order: Vec<&str> = OUTCOMES.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            order,
            [
                "enrolled",
                "waitlisted",
                "rejected",
                "dropped",
                "configured",
                "promoted",
                "queued",
                "drawn",
                "promotion_skipped"
            ]
        );
    }
}
