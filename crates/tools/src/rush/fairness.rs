//! `seatrush rush --opening first-come|draw`: who gets the seats of one course when students
//! arrive over the minutes before its opening, half of them on fast connections and half on
//! slow ones (each of their requests leaves a fixed delay later).
//!
//! Under `first-come` a request before the opening is refused `not_open`, and each student
//! retries at the opening instant the answer names, as a real client would: the seats go to
//! whoever's retry lands first, so the fast half takes them. Under `draw` an early request is an
//! entry, and the draw at the opening ranks entrants by a keyed hash of their ids: one request
//! per student, and each half wins its share within sampling error.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::mpsc;

use seatrush_core::amqp::{Broker, Outgoing, Publisher, ReplyTo};
use seatrush_core::client::parse_answers;
use seatrush_core::domain::{
    Action, CourseId, CourseSettings, DrawSeed, Opening, Request, RequestId, StudentId,
};
use seatrush_core::protocol::{Answer, Stage, request_body};

use super::workers::{Services, WorkerProcess};

/// One fairness run.
#[derive(Debug, Clone)]
pub struct FairnessConfig {
    pub services: Services,
    pub opening: Opening,
    pub students: usize,
    pub seats: u32,
    /// Students arrive uniformly over this long before the opening.
    pub arrive_over: Duration,
    /// The added delay of every request of a slow student.
    pub slow_delay: Duration,
    pub exe: PathBuf,
    pub tag: String,
    pub seed: u64,
    pub log_dir: PathBuf,
    /// How long after the opening to wait for the last final answer.
    pub timeout: Duration,
}

/// What one run measured; serialized as the `--json` file.
#[derive(Debug, Clone, Serialize)]
pub struct FairnessReport {
    pub opening: String,
    pub course_id: String,
    pub students: usize,
    pub fast_students: usize,
    pub slow_students: usize,
    pub seats: u32,
    pub arrive_over_secs: f64,
    pub slow_delay_ms: u64,
    /// Requests the students sent, in all and per student.
    pub requests_sent: usize,
    pub requests_per_student: f64,
    pub max_requests_per_student: usize,
    /// Seats won by each half, and each half's share of the seats won.
    pub seats_won_fast: usize,
    pub seats_won_slow: usize,
    pub fast_share: f64,
    pub slow_share: f64,
    /// Half the width of the 95% interval around an even split, for this many seats: a share
    /// within 0.5 ± this is what a fair lottery gives.
    pub fair_margin: f64,
    /// Students without a final answer when the run ended.
    pub unanswered: usize,
    pub audit_violations: usize,
    /// When the students' final answers (under `draw`, the draw's outcomes) arrived, in
    /// milliseconds after the opening: the first and the last.
    pub first_final_after_opening_ms: Option<i64>,
    pub last_final_after_opening_ms: Option<i64>,
}

impl FairnessReport {
    /// Every student answered and the database audit clean.
    pub fn passed(&self) -> bool {
        self.unanswered == 0 && self.audit_violations == 0
    }
}

/// What happened to one student.
#[derive(Debug, Clone, Default)]
struct Outcome {
    requests: usize,
    won: bool,
    answered: bool,
    /// When the final answer arrived.
    at: Option<DateTime<Utc>>,
}

/// Runs the experiment against one worker process it starts and stops.
pub async fn run(config: FairnessConfig) -> anyhow::Result<FairnessReport> {
    check(&config)?;
    let services = &config.services;
    let store = super::prepared_store(services).await?;
    let course = CourseId::parse(format!("{}-fair", config.tag))?;
    let lead = Duration::from_secs(3);
    let opens_at = Utc::now() + chrono::Duration::from_std(lead + config.arrive_over)?;
    let settings = CourseSettings {
        capacity: config.seats,
        opens_at: Some(opens_at),
        opening: config.opening,
        entries_open_at: (config.opening == Opening::Draw).then(Utc::now),
        draw_seed: (config.opening == Opening::Draw).then(DrawSeed::generate),
        ..CourseSettings::default()
    };
    store.add_course(&course, &settings).await?;
    std::fs::create_dir_all(&config.log_dir)?;
    let worker = WorkerProcess::start_observed(
        &config.exe,
        services,
        &format!("{}-w0", config.tag),
        config.log_dir.join(format!("{}-w0.log", config.tag)),
        &[],
        &[],
    )?;
    super::wait_for_partitions(&store, services.topology.partitions).await?;

    let outcomes = crowd(&config, &course, opens_at).await;
    let stopped = worker.stop(Duration::from_secs(60)).await;
    let audit = store.audit().await?;
    store.close().await;
    stopped.context("the worker did not stop cleanly")?;
    Ok(report_of(
        &config,
        &course,
        opens_at,
        &outcomes?,
        audit.len(),
    ))
}

/// Runs every student to their final answer; by student index.
async fn crowd(
    config: &FairnessConfig,
    course: &CourseId,
    opens_at: DateTime<Utc>,
) -> anyhow::Result<Vec<Outcome>> {
    let broker = Broker::connect(&config.services.amqp_url, "seatrush-fairness").await?;
    let publisher = Arc::new(broker.confirmed_publisher().await?);
    let (queue, mut replies) = broker.reply_queue().await?;
    // One channel per student; the dispatcher hands each answer to its student by request id
    // (`<tag>-s<index>-<attempt>`).
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..config.students)
        .map(|_| mpsc::unbounded_channel::<Answer>())
        .unzip();
    let tag = config.tag.clone();
    let dispatcher = tokio::spawn(async move {
        while let Some(Ok(message)) = replies.next().await {
            let Ok(answers) = parse_answers(&message.body) else {
                continue;
            };
            for answer in answers {
                if let Some(i) = student_of(&tag, &answer.request_id)
                    && let Some(to) = senders.get(i)
                {
                    let _ = to.send(answer);
                }
            }
        }
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let start = tokio::time::Instant::now();
    let deadline = start + config.arrive_over + Duration::from_secs(3) + config.timeout;
    let mut tasks = Vec::with_capacity(config.students);
    for (i, answers) in receivers.into_iter().enumerate() {
        let student = Student {
            index: i,
            // Alternate, so the halves are equal and independent of the arrival times.
            slow: i % 2 == 1,
            arrives: start + config.arrive_over.mul_f64(rng.random::<f64>()),
            delay: config.slow_delay,
            course: course.clone(),
            tag: config.tag.clone(),
            opens_at,
            reply: queue.clone(),
            publisher: publisher.clone(),
            services_topology: config.services.topology.clone(),
        };
        tasks.push(tokio::spawn(student.run(answers, deadline)));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.context("a student's task")??);
    }
    dispatcher.abort();
    broker.close().await;
    Ok(outcomes)
}

/// The student index a request id of this run names.
fn student_of(tag: &str, request_id: &str) -> Option<usize> {
    let rest = request_id.strip_prefix(tag)?.strip_prefix("-s")?;
    rest.split('-').next()?.parse().ok()
}

struct Student {
    index: usize,
    slow: bool,
    arrives: tokio::time::Instant,
    delay: Duration,
    course: CourseId,
    tag: String,
    opens_at: DateTime<Utc>,
    reply: String,
    publisher: Arc<Publisher>,
    services_topology: seatrush_core::amqp::Topology,
}

impl Student {
    /// Asks until a final answer that is not `not_open` and not `queued`; retries after
    /// `not_open` at the instant the answer names, as a client that read it would.
    async fn run(
        self,
        mut answers: mpsc::UnboundedReceiver<Answer>,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<Outcome> {
        let mut outcome = Outcome::default();
        tokio::time::sleep_until(self.arrives).await;
        self.send(&mut outcome).await?;
        loop {
            let answer = match tokio::time::timeout_at(deadline, answers.recv()).await {
                Ok(Some(answer)) => answer,
                _ => return Ok(outcome),
            };
            if answer.stage != Stage::Final || answer.is_waitlist_event() {
                continue;
            }
            match (answer.outcome.as_str(), answer.reason.as_deref()) {
                ("queued", _) => {}
                ("rejected", Some("not_open")) => {
                    let at = answer
                        .opens_at
                        .as_deref()
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                        .map_or(self.opens_at, |t| t.with_timezone(&Utc));
                    let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                    tokio::time::sleep(wait).await;
                    self.send(&mut outcome).await?;
                }
                (result, _) => {
                    outcome.answered = true;
                    outcome.won = result == "enrolled";
                    outcome.at = Some(Utc::now());
                    return Ok(outcome);
                }
            }
        }
    }

    /// Sends one more request (a slow student's leaves `delay` later).
    async fn send(&self, outcome: &mut Outcome) -> anyhow::Result<()> {
        if self.slow {
            tokio::time::sleep(self.delay).await;
        }
        outcome.requests += 1;
        let request = Request {
            request_id: RequestId::parse(format!(
                "{}-s{}-{}",
                self.tag, self.index, outcome.requests
            ))?,
            action: Action::Enroll,
            course_id: self.course.clone(),
            student_id: StudentId::parse(format!("{}-s{}", self.tag, self.index))?,
        };
        let to = ReplyTo {
            queue: self.reply.clone(),
            correlation_id: None,
            batch: true,
        };
        let message = Outgoing::request(
            &self.services_topology,
            self.course.as_str(),
            request.request_id.as_str(),
            Some(&to),
            request_body(&request),
        );
        self.publisher
            .send_confirmed(message)
            .await
            .context("publishing a student's request")?;
        Ok(())
    }
}

fn report_of(
    config: &FairnessConfig,
    course: &CourseId,
    opens_at: DateTime<Utc>,
    outcomes: &[Outcome],
    violations: usize,
) -> FairnessReport {
    let by_half = |slow: bool| {
        outcomes
            .iter()
            .enumerate()
            .filter(move |(i, _)| (i % 2 == 1) == slow)
            .map(|(_, o)| o)
    };
    let won = |slow: bool| by_half(slow).filter(|o| o.won).count();
    let (fast_won, slow_won) = (won(false), won(true));
    let total_won = (fast_won + slow_won).max(1) as f64;
    let requests: usize = outcomes.iter().map(|o| o.requests).sum();
    let seats = f64::from(config.seats.max(1));
    let after_opening = |at: Option<DateTime<Utc>>| at.map(|t| (t - opens_at).num_milliseconds());
    FairnessReport {
        opening: config.opening.as_str().to_owned(),
        course_id: course.to_string(),
        students: outcomes.len(),
        fast_students: by_half(false).count(),
        slow_students: by_half(true).count(),
        seats: config.seats,
        arrive_over_secs: config.arrive_over.as_secs_f64(),
        slow_delay_ms: u64::try_from(config.slow_delay.as_millis()).unwrap_or(u64::MAX),
        requests_sent: requests,
        requests_per_student: requests as f64 / outcomes.len().max(1) as f64,
        max_requests_per_student: outcomes.iter().map(|o| o.requests).max().unwrap_or(0),
        seats_won_fast: fast_won,
        seats_won_slow: slow_won,
        fast_share: fast_won as f64 / total_won,
        slow_share: slow_won as f64 / total_won,
        fair_margin: 1.96 * (0.25 / seats).sqrt(),
        unanswered: outcomes.iter().filter(|o| !o.answered).count(),
        audit_violations: violations,
        first_final_after_opening_ms: after_opening(outcomes.iter().filter_map(|o| o.at).min()),
        last_final_after_opening_ms: after_opening(outcomes.iter().filter_map(|o| o.at).max()),
    }
}

/// The report as text.
pub fn describe(r: &FairnessReport) -> String {
    let mut text = format!(
        "opening {}: {} students ({} fast, {} slow: +{} ms per request) arriving over {:.0} s \
         for {} seats\n",
        r.opening,
        r.students,
        r.fast_students,
        r.slow_students,
        r.slow_delay_ms,
        r.arrive_over_secs,
        r.seats
    );
    text.push_str(&format!(
        "  requests sent: {} ({:.2} per student, at most {})\n",
        r.requests_sent, r.requests_per_student, r.max_requests_per_student
    ));
    text.push_str(&format!(
        "  seats won: fast {} ({:.1}%), slow {} ({:.1}%); a fair lottery gives 50% ± {:.1}%\n",
        r.seats_won_fast,
        100.0 * r.fast_share,
        r.seats_won_slow,
        100.0 * r.slow_share,
        100.0 * r.fair_margin
    ));
    if let (Some(first), Some(last)) = (
        r.first_final_after_opening_ms,
        r.last_final_after_opening_ms,
    ) {
        text.push_str(&format!(
            "  final answers arrived {first} ms to {last} ms after the opening\n"
        ));
    }
    text.push_str(&format!(
        "  unanswered {}, audit violations {}\n",
        r.unanswered, r.audit_violations
    ));
    text
}

/// Refuses settings that cannot give a meaningful comparison.
fn check(config: &FairnessConfig) -> anyhow::Result<()> {
    if config.students < 2 {
        bail!("a fairness run needs at least two students (one fast, one slow)");
    }
    if config.seats == 0 {
        bail!("a fairness run needs at least one seat");
    }
    Ok(())
}
