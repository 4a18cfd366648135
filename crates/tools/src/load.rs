//! A crowd of requests fired at the workers exactly as producers would publish them, with every
//! answer collected and timed. The demo and the integration tests use it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::stats::Latency;
use seatrush_core::amqp::{Broker, Deliveries, Outbox, Outgoing, Publisher, ReplyTo, Topology};
use seatrush_core::client::parse_answers;
use seatrush_core::domain::Request;
use seatrush_core::protocol::{Answer, Stage, request_body};

/// Numbers each request by its request id (copies share a number); returns the numbers and
/// how many distinct ids there are.
fn id_groups(requests: &[Request]) -> (Vec<usize>, usize) {
    let mut numbers: HashMap<&str, usize> = HashMap::new();
    let groups = requests
        .iter()
        .map(|r| {
            let next = numbers.len();
            *numbers.entry(r.request_id.as_str()).or_insert(next)
        })
        .collect();
    (groups, numbers.len())
}

/// How long answers are still collected after publishing stopped early.
const INTERRUPTED_GRACE: Duration = Duration::from_secs(5);

/// Publishes not yet confirmed at most; bounds the publisher's memory and keeps the broker's
/// flow control out of the way.
const CONFIRM_WINDOW: usize = 2000;

/// How fast to publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Everything, as fast as the broker confirms.
    Burst,
    /// This many requests per second.
    Rate(f64),
}

/// How a crowd publishes: its pace, and whether it asks for its answers in batches
/// (`x-seatrush-batch`), as a web back end sharing one reply queue would.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fire {
    pub pace: Pace,
    pub batch: bool,
}

impl From<Pace> for Fire {
    fn from(pace: Pace) -> Self {
        Self { pace, batch: false }
    }
}

/// Counters a progress display can read while a crowd runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub published: AtomicUsize,
    pub provisional: AtomicUsize,
    pub finals: AtomicUsize,
}

/// The answers to one published message.
#[derive(Debug, Clone)]
pub struct Answered {
    pub request: Request,
    /// When it was published, from the first publish.
    pub sent: Duration,
    /// The provisional answer and its latency from publish.
    pub provisional: Option<(Answer, Duration)>,
    /// Every final answer received (exactly one when all is well) and its latency.
    pub finals: Vec<(Answer, Duration)>,
    /// Promotion events for this request (it was waitlisted, then took a freed seat).
    pub promotions: Vec<Answer>,
}

/// What a crowd saw.
#[derive(Debug, Clone)]
pub struct Report {
    /// When the first request was published; `sent` and latencies count from here.
    pub started: Instant,
    pub answered: Vec<Answered>,
    /// From the first publish to the last confirm.
    pub publish_time: Duration,
    /// From the first publish to the last final answer (or the timeout).
    pub total_time: Duration,
    /// Whether every message got a final answer before the timeout.
    pub complete: bool,
    /// Why publishing stopped early (the connection died, the broker refused a publish); the
    /// report then holds what was published and answered until then.
    pub interrupted: Option<String>,
}

impl Report {
    /// Request ids that got no final answer on any of their publishes (a client keys answers
    /// by request id: after a crash, a duplicate publish of an id already answered is acked
    /// without an answer of its own).
    pub fn lost(&self) -> usize {
        self.answered_ids()
            .values()
            .filter(|answered| !**answered)
            .count()
    }

    /// Messages that got more than one final answer.
    pub fn duplicated(&self) -> usize {
        self.answered.iter().filter(|a| a.finals.len() > 1).count()
    }

    /// Final answers that contradict the provisional one sent earlier.
    pub fn contradicted(&self) -> usize {
        self.contradictions().count()
    }

    /// The messages whose first final answer contradicts their provisional answer, each as the
    /// instants it was published and finally answered.
    pub fn contradictions(&self) -> impl Iterator<Item = (Instant, Instant)> + '_ {
        self.answered
            .iter()
            .filter_map(|a| match (&a.provisional, a.finals.first()) {
                (Some((p, _)), Some((f, latency)))
                    if p.outcome != f.outcome || p.reason != f.reason =>
                {
                    let sent = self.started + a.sent;
                    Some((sent, sent + *latency))
                }
                _ => None,
            })
    }

    /// This crowd followed by `later` (a client publishing again what got no final answer), as
    /// one report timed from this one's start.
    pub fn then(mut self, later: Report) -> Report {
        let offset = later.started.saturating_duration_since(self.started);
        self.answered
            .extend(later.answered.into_iter().map(|mut a| {
                a.sent += offset;
                a
            }));
        self.publish_time = offset + later.publish_time;
        self.total_time = offset + later.total_time;
        self.complete = self.lost() == 0;
        self.interrupted = later.interrupted;
        self
    }

    /// The requests of `requests`, one per request id, whose id got no final answer here
    /// (including those never published): what a client publishes again after losing its
    /// connection.
    pub fn unanswered(&self, requests: &[Request]) -> Vec<Request> {
        let answered = self.answered_ids();
        let mut seen = std::collections::HashSet::new();
        requests
            .iter()
            .filter(|r| {
                let id = r.request_id.as_str();
                !answered.get(id).copied().unwrap_or(false) && seen.insert(id)
            })
            .cloned()
            .collect()
    }

    /// Whether each request id published got a final answer on any of its publishes.
    fn answered_ids(&self) -> HashMap<&str, bool> {
        let mut answered: HashMap<&str, bool> = HashMap::new();
        for a in &self.answered {
            *answered.entry(a.request.request_id.as_str()).or_default() |= !a.finals.is_empty();
        }
        answered
    }

    /// The report, or an error if publishing stopped early (for callers that need every
    /// request published).
    pub fn fully_published(self) -> anyhow::Result<Self> {
        match &self.interrupted {
            Some(why) => anyhow::bail!("publishing the crowd stopped early: {why}"),
            None => Ok(self),
        }
    }

    /// Requests per second, end to end.
    pub fn throughput(&self) -> f64 {
        self.answered.len() as f64 / self.total_time.as_secs_f64().max(1e-9)
    }

    /// The latencies of one stage, from publish to answer.
    pub fn latencies(&self, stage: Stage) -> Vec<Duration> {
        self.answered
            .iter()
            .filter_map(|a| match stage {
                Stage::Provisional => a.provisional.as_ref().map(|(_, d)| *d),
                Stage::Final => a.finals.first().map(|(_, d)| *d),
            })
            .collect()
    }

    /// The latency summary of one stage.
    pub fn latency(&self, stage: Stage) -> Latency {
        Latency::of(self.latencies(stage))
    }

    /// How many final answers had each outcome (`outcome` or `outcome/reason`).
    pub fn outcomes(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for (answer, _) in self.answered.iter().filter_map(|a| a.finals.first()) {
            let key = match &answer.reason {
                Some(reason) => format!("{}/{reason}", answer.outcome),
                None => answer.outcome.clone(),
            };
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    }
}

/// Publishes every request (persistent, confirmed, as fast as the broker confirms) and waits up
/// to `timeout` for every final answer.
pub async fn fire(
    amqp_url: &str,
    topology: &Topology,
    requests: Vec<Request>,
    timeout: Duration,
) -> anyhow::Result<Report> {
    fire_with(
        amqp_url,
        topology,
        requests,
        timeout,
        Pace::Burst,
        Arc::new(Progress::default()),
    )
    .await
}

/// Like `fire_with`, in the background (so that faults can be injected meanwhile); the task
/// yields the report.
pub fn spawn(
    amqp_url: &str,
    topology: &Topology,
    requests: Vec<Request>,
    timeout: Duration,
    pace: Pace,
) -> tokio::task::JoinHandle<anyhow::Result<Report>> {
    let amqp_url = amqp_url.to_owned();
    let topology = topology.clone();
    tokio::spawn(async move {
        fire_with(
            &amqp_url,
            &topology,
            requests,
            timeout,
            pace,
            Default::default(),
        )
        .await
    })
}

/// [`fire`] at a chosen pace, counting progress as it goes.
pub async fn fire_with(
    amqp_url: &str,
    topology: &Topology,
    requests: Vec<Request>,
    timeout: Duration,
    fire: impl Into<Fire>,
    progress: Arc<Progress>,
) -> anyhow::Result<Report> {
    let fire = fire.into();
    let broker = Broker::connect(amqp_url, "seatrush-crowd")
        .await
        .context("connecting to RabbitMQ")?;
    let publisher = broker.confirmed_publisher().await?;
    let (queue, replies) = broker.reply_queue().await?;
    let start = Instant::now();
    let (groups, ids) = id_groups(&requests);
    // Set when publishing stops early: what was published gets a short while to be answered.
    let interrupted = tokio_util::sync::CancellationToken::new();
    let collector = tokio::spawn(collect(
        replies,
        Collecting {
            groups: groups.clone(),
            ids,
            expected: requests.len(),
            deadline: tokio::time::Instant::from_std(start + timeout),
            publishing_stopped: interrupted.clone(),
            counters: progress.clone(),
        },
    ));

    let mut sent_at = Vec::with_capacity(requests.len());
    let published = publish_all(
        &publisher,
        topology,
        &queue,
        requests.iter().map(Cow::Borrowed),
        fire,
        |_| {
            sent_at.push(Instant::now());
            progress.published.fetch_add(1, Ordering::Relaxed);
        },
    )
    .await;
    let publish_time = start.elapsed();
    let interrupted = published.err().map(|e| {
        interrupted.cancel();
        format!("{e:#}")
    });

    // On timeout the collector returns what arrived; the rest counts as lost.
    let got = collector.await.context("the answer collector failed")?;
    let (complete, total_time) = completion(&got, &groups, ids, start);
    broker.close().await;
    Ok(Report {
        started: start,
        answered: answered_of(requests, &sent_at, got, start),
        publish_time,
        total_time,
        complete: complete && interrupted.is_none(),
        interrupted,
    })
}

/// What the answer collector needs to know about the crowd.
struct Collecting {
    /// Each published position's request id, numbered.
    groups: Vec<usize>,
    /// How many distinct request ids.
    ids: usize,
    expected: usize,
    deadline: tokio::time::Instant,
    publishing_stopped: tokio_util::sync::CancellationToken,
    counters: Arc<Progress>,
}

/// One message received: the position it answers, the answer, when it arrived.
type Received = (usize, Answer, Instant);

/// Notes when each answer arrives (latencies are computed at the end against the publish
/// instants) until every request id has a final answer, the deadline passes, or the connection
/// dies; what arrived until then is kept.
async fn collect(mut replies: Deliveries, crowd: Collecting) -> Vec<Received> {
    let mut got: Vec<Received> = Vec::with_capacity(crowd.expected * 2);
    // Request ids with a final answer: the crowd is done when every id has one (a duplicate
    // final, after a crash, must not make it look done while another id waits).
    let mut has_final = vec![false; crowd.ids];
    let mut finals = 0usize;
    // Once every id has its final answer, stragglers (the other copies' answers) are still
    // collected for a short while.
    let mut until = crowd.deadline;
    loop {
        if finals == crowd.ids {
            let grace = tokio::time::Instant::now() + Duration::from_millis(300);
            until = until.min(grace);
        }
        let next = tokio::select! {
            next = tokio::time::timeout_at(until, replies.next()) => next,
            _ = crowd.publishing_stopped.cancelled(), if until > tokio::time::Instant::now() + INTERRUPTED_GRACE => {
                until = tokio::time::Instant::now() + INTERRUPTED_GRACE;
                continue;
            }
        };
        // The stream ends when the connection dies: what arrived until then is kept.
        let Ok(Some(Ok(message))) = next else {
            break;
        };
        let Ok(answers) = parse_answers(&message.body) else {
            continue;
        };
        let at = Instant::now();
        for answer in answers {
            // A batched answer carries its correlation id inside; a single one as the property.
            let index = answer
                .correlation_id
                .as_deref()
                .or(message.correlation_id.as_deref())
                .and_then(|c| c.parse::<usize>().ok());
            if let Some(index) = index {
                crowd.note(&mut has_final, &mut finals, index, &answer);
                got.push((index, answer, at));
            }
        }
    }
    // Cancel before the channel closes: an answer still arriving on a closing channel makes
    // the client library fail the whole connection.
    replies.cancel().await;
    replies.close().await;
    got
}

impl Collecting {
    /// Counts one received answer for the progress display and the crowd's end.
    fn note(&self, has_final: &mut [bool], finals: &mut usize, index: usize, answer: &Answer) {
        if answer.is_waitlist_event() {
            // Not an answer to this request's publish: it comes on top of the final one.
        } else if answer.stage == Stage::Final {
            if let Some(seen) = self.groups.get(index).and_then(|g| has_final.get_mut(*g))
                && !*seen
            {
                *seen = true;
                *finals += 1;
                self.counters.finals.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            self.counters.provisional.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether every request id got a final answer, and when the last of those first finals came
/// (a late duplicate does not count).
fn completion(got: &[Received], groups: &[usize], ids: usize, start: Instant) -> (bool, Duration) {
    let mut first_final: Vec<Option<Instant>> = vec![None; ids];
    for (index, answer, at) in got {
        if answer.stage == Stage::Final
            && !answer.is_waitlist_event()
            && let Some(slot @ None) = groups.get(*index).and_then(|g| first_final.get_mut(*g))
        {
            *slot = Some(*at);
        }
    }
    let complete = first_final.iter().all(Option::is_some);
    let total_time = first_final
        .iter()
        .flatten()
        .map(|at| at.duration_since(start))
        .max()
        .unwrap_or_else(|| start.elapsed());
    (complete, total_time)
}

/// Each published request with the answers it received, and their latencies from its publish.
fn answered_of(
    requests: Vec<Request>,
    sent_at: &[Instant],
    got: Vec<Received>,
    start: Instant,
) -> Vec<Answered> {
    let mut answered: Vec<Answered> = requests
        .into_iter()
        .zip(sent_at)
        .map(|(request, at)| Answered {
            request,
            sent: at.duration_since(start),
            provisional: None,
            finals: Vec::new(),
            promotions: Vec::new(),
        })
        .collect();
    for (index, answer, at) in got {
        let Some(slot) = answered.get_mut(index) else {
            continue;
        };
        let latency = at.duration_since(sent_at[index]);
        if answer.is_waitlist_event() {
            if answer.is_promotion() {
                slot.promotions.push(answer);
            }
            continue;
        }
        match answer.stage {
            Stage::Provisional => slot.provisional = Some((answer, latency)),
            Stage::Final => slot.finals.push((answer, latency)),
        }
    }
    answered
}

/// Publishes requests, persistent and confirmed, with answers addressed to `queue` and the
/// request's position as correlation id, keeping at most [`CONFIRM_WINDOW`] unconfirmed.
/// `on_sent` sees each position as it is published; returns how many were.
async fn publish_all<'r>(
    publisher: &Publisher,
    topology: &Topology,
    queue: &str,
    requests: impl Iterator<Item = Cow<'r, Request>>,
    fire: Fire,
    mut on_sent: impl FnMut(usize),
) -> anyhow::Result<usize> {
    // Through an outbox, as a worker publishes: the sends of a burst go to the connection in
    // one go instead of one round trip between threads each, so the crowd is not the limit.
    let (outbox, sending) = Outbox::start(publisher.clone(), CONFIRM_WINDOW);
    let start = Instant::now();
    let mut confirms = FuturesUnordered::new();
    let mut published = 0usize;
    for (index, request) in requests.enumerate() {
        if let Pace::Rate(rate) = fire.pace {
            let due = start + Duration::from_secs_f64(index as f64 / rate.max(1e-3));
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        }
        let to = ReplyTo {
            queue: queue.to_owned(),
            correlation_id: Some(index.to_string()),
            batch: fire.batch,
        };
        let message = Outgoing::request(
            topology,
            request.course_id.as_str(),
            request.request_id.as_str(),
            Some(&to),
            request_body(&request),
        );
        on_sent(index);
        confirms.push(outbox.post_confirmed(message).await?.confirmed());
        published += 1;
        while confirms.len() >= CONFIRM_WINDOW {
            if let Some(confirmed) = confirms.next().await {
                confirmed.context("publishing a request")?;
            }
        }
    }
    while let Some(confirmed) = confirms.next().await {
        confirmed.context("publishing a request")?;
    }
    // The outbox ends (and closes its channel) once its last sender is gone.
    drop(outbox);
    sending.await.context("the crowd's outbox failed")?;
    Ok(published)
}

/// What a flood saw: counts only, so a million requests cost no memory here.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    pub published: usize,
    pub finals: usize,
    pub elapsed: Duration,
}

/// Publishes `count` requests from `requests` as fast as the broker confirms and counts final
/// answers until all arrived or `timeout` passed. Keeps nothing per request.
pub async fn flood(
    amqp_url: &str,
    topology: &Topology,
    requests: impl Iterator<Item = Request>,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<Flood> {
    let broker = Broker::connect(amqp_url, "seatrush-flood")
        .await
        .context("connecting to RabbitMQ")?;
    let publisher = broker.confirmed_publisher().await?;
    let (queue, mut replies) = broker.reply_queue().await?;
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + timeout);
    let collector = tokio::spawn(async move {
        let mut finals = 0usize;
        while finals < count {
            let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, replies.next()).await
            else {
                break;
            };
            if let Ok(answers) = parse_answers(&message.body) {
                finals += answers.iter().filter(|a| a.stage == Stage::Final).count();
            }
        }
        replies.cancel().await;
        replies.close().await;
        finals
    });
    let published = publish_all(
        &publisher,
        topology,
        &queue,
        requests.take(count).map(Cow::Owned),
        Pace::Burst.into(),
        |_| {},
    )
    .await?;
    let finals = collector.await.context("the answer collector failed")?;
    broker.close().await;
    Ok(Flood {
        published,
        finals,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use seatrush_core::domain::{Action, CourseId, RequestId, StudentId};

    fn answer(stage: Stage, outcome: &str, reason: Option<&str>) -> Answer {
        let ids = ["r", "c", "s", "enroll"].map(str::to_owned);
        Answer {
            outcome: outcome.into(),
            reason: reason.map(str::to_owned),
            ..Answer::about(ids, stage, seatrush_core::domain::Outcome::Rejected)
        }
    }

    fn answered(
        id: &str,
        provisional: Option<&str>,
        finals: &[(&str, Option<&str>, u64)],
    ) -> Answered {
        Answered {
            request: Request {
                request_id: RequestId::parse(id).unwrap(),
                action: Action::Enroll,
                course_id: CourseId::parse("c").unwrap(),
                student_id: StudentId::parse("s").unwrap(),
            },
            sent: Duration::ZERO,
            provisional: provisional.map(|o| {
                (
                    answer(Stage::Provisional, o, None),
                    Duration::from_millis(1),
                )
            }),
            finals: finals
                .iter()
                .map(|(o, r, ms)| (answer(Stage::Final, o, *r), Duration::from_millis(*ms)))
                .collect(),
            promotions: Vec::new(),
        }
    }

    #[test]
    fn the_report_counts_lost_duplicated_and_contradicted_answers() {
        let report = Report {
            answered: vec![
                answered("r1", Some("enrolled"), &[("enrolled", None, 10)]),
                answered("r2", Some("enrolled"), &[("rejected", Some("full"), 20)]),
                answered("r3", None, &[]),
                // A second copy of r1, acked without an answer of its own: r1 is not lost.
                answered("r1", None, &[]),
                answered(
                    "r4",
                    None,
                    &[
                        ("rejected", Some("full"), 30),
                        ("rejected", Some("full"), 40),
                    ],
                ),
            ],
            publish_time: Duration::from_secs(1),
            total_time: Duration::from_secs(2),
            complete: false,
            interrupted: None,
            started: Instant::now(),
        };
        assert_eq!(report.lost(), 1);
        assert_eq!(report.duplicated(), 1);
        assert_eq!(report.contradicted(), 1);
        assert_eq!(report.throughput(), 2.5);
        assert_eq!(report.outcomes().get("rejected/full"), Some(&2));
        assert_eq!(report.outcomes().get("enrolled"), Some(&1));
        let finals = report.latency(Stage::Final);
        assert_eq!((finals.p50_ms, finals.max_ms), (20.0, 30.0));
    }

    #[test]
    fn a_client_publishing_again_what_got_no_answer_is_one_report() {
        let started = Instant::now();
        let first = Report {
            answered: vec![
                answered("r1", Some("enrolled"), &[("enrolled", None, 10)]),
                answered("r2", Some("enrolled"), &[]),
            ],
            publish_time: Duration::from_secs(1),
            total_time: Duration::from_secs(1),
            complete: false,
            interrupted: Some("connection lost".into()),
            started,
        };
        let all: Vec<Request> = ["r1", "r2", "r2", "r3"]
            .iter()
            .map(|id| answered(id, None, &[]).request)
            .collect();
        let again = first.unanswered(&all);
        let ids: Vec<&str> = again.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(
            ids,
            ["r2", "r3"],
            "each unanswered id once, unpublished ones too"
        );

        let mut r2 = answered("r2", Some("rejected"), &[("enrolled", None, 50)]);
        r2.sent = Duration::from_millis(100);
        let later = Report {
            answered: vec![r2, answered("r3", None, &[("enrolled", None, 5)])],
            publish_time: Duration::from_secs(1),
            total_time: Duration::from_secs(1),
            complete: true,
            interrupted: None,
            started: started + Duration::from_secs(10),
        };
        let both = first.then(later);
        assert_eq!(both.lost(), 0);
        assert!(both.complete);
        assert_eq!(both.interrupted, None);
        assert_eq!(both.answered.len(), 4);
        assert_eq!(both.total_time, Duration::from_secs(11));
        let contradicted: Vec<_> = both.contradictions().collect();
        let sent = started + Duration::from_millis(10_100);
        assert_eq!(contradicted, [(sent, sent + Duration::from_millis(50))]);
    }
}
