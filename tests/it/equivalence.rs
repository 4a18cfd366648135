//! One rule, two places, proven equal: the course rules live in Rust (`CourseState::decide`,
//! the actor's immediate answer) and in SQL (`apply_effects`, the final arbiter). This property
//! test drives the same random requests through both and asserts they agree.
//!
//! Each case opens a few courses, lets the pure logic decide a random sequence of requests
//! (enrolls, drops, course changes with seats and waitlists up and down, windows, repeated
//! request ids, the same student twice, drops of students who hold nothing, waitlisted students
//! leaving), and commits the decisions through the real store in random batch splits. After
//! every batch: no decision diverged or was revised, the database promoted the students the
//! actor promoted in the same order, and each committed course (settings, counters, enrolled
//! students, waitlist order) equals the pure state. At the end of a case the stored outcomes
//! are the verdicts decided and the audit is clean.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use seatrush_core::course::CourseState;
use seatrush_core::domain::{
    Action, CourseId, CoursePatch, CourseSettings, Decision, Outcome, ReplyTo, Request, StudentId,
    Verdict,
};
use seatrush_core::store::{Committed, Lease, Pending};

use crate::helpers::{TestEnv, request};

/// The instant every request is decided at; windows are placed around it.
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 9, 1, 9, 0, 0)
        .single()
        .expect("a valid instant")
}

fn minutes_from_now(minutes: i64) -> Option<DateTime<Utc>> {
    Some(now() + chrono::Duration::minutes(minutes))
}

#[derive(Debug, Clone)]
enum Op {
    Enroll(u8),
    Drop(u8),
    Configure(CoursePatch),
}

#[derive(Debug, Clone)]
struct Step {
    /// Which of the case's courses the request is for.
    course: usize,
    op: Op,
    /// The request id, from a small pool per course, so ids repeat.
    id: u8,
    /// Whether the client gave a reply address (kept with a waitlist place).
    listens: bool,
    /// Whether a batch ends after this request.
    cut: bool,
}

#[derive(Debug, Clone)]
struct Case {
    /// The initial seats and waitlist capacity of each course.
    courses: Vec<(u32, u32)>,
    steps: Vec<Step>,
}

fn arb_patch() -> impl Strategy<Value = CoursePatch> {
    let seats = prop::option::weighted(0.8, 0u32..7);
    let waitlist = prop::option::weighted(0.7, 0u32..5);
    (seats, waitlist, 0u8..10).prop_map(|(seats, waitlist, window)| {
        let (opens_at, closes_at) = match window {
            0 => (Some(None), Some(None)),
            1 => (Some(minutes_from_now(-60)), Some(minutes_from_now(60))),
            // Opens after it closes: refused by both.
            2 => (Some(minutes_from_now(120)), Some(minutes_from_now(60))),
            // Closed a minute ago, or not open for another half hour.
            3 => (None, Some(minutes_from_now(-1))),
            4 => (Some(minutes_from_now(30)), None),
            _ => (None, None),
        };
        CoursePatch {
            seats,
            waitlist,
            opens_at,
            closes_at,
            ..CoursePatch::default()
        }
    })
}

fn arb_op() -> impl Strategy<Value = Op> {
    // A pool of eight students makes re-enrolls, drops of waitlisted students and drops of
    // students holding nothing common.
    prop_oneof![
        6 => (0u8..8).prop_map(Op::Enroll),
        3 => (0u8..8).prop_map(Op::Drop),
        1 => arb_patch().prop_map(Op::Configure),
    ]
}

fn arb_case() -> impl Strategy<Value = Case> {
    prop::collection::vec((0u32..5, 0u32..4), 1..=3).prop_flat_map(|courses| {
        let step = (
            0..courses.len(),
            arb_op(),
            0u8..30,
            any::<bool>(),
            prop::bool::weighted(0.2),
        )
            .prop_map(|(course, op, id, listens, cut)| Step {
                course,
                op,
                id,
                listens,
                cut,
            });
        (Just(courses), prop::collection::vec(step, 1..48))
            .prop_map(|(courses, steps)| Case { courses, steps })
    })
}

/// One case's courses, in memory and in the database.
struct World<'a> {
    env: &'a TestEnv,
    lease: Lease,
    /// Distinguishes this case's course and request ids from every other case's.
    tag: String,
    courses: Vec<CourseId>,
    states: Vec<CourseState>,
    /// The first verdict and the promotions of every request id decided, by id.
    first: HashMap<String, (Verdict, Vec<String>)>,
}

impl World<'_> {
    fn request(&self, step: &Step) -> Request {
        let course = &self.courses[step.course];
        let id = format!("{}c{}r{}", self.tag, step.course, step.id);
        let (action, student) = match &step.op {
            Op::Enroll(s) => (Action::Enroll, format!("s{s}")),
            Op::Drop(s) => (Action::Drop, format!("s{s}")),
            Op::Configure(patch) => (
                Action::Configure(Box::new(patch.clone())),
                "registrar".to_owned(),
            ),
        };
        request(&id, action, course, &student)
    }

    /// Decides a request in memory, as the course actor would, and returns what it hands to
    /// the committer.
    fn decide(&mut self, step: &Step) -> Pending {
        let request = self.request(step);
        let Decision {
            verdict,
            effect,
            replay,
            ..
        } = self.states[step.course].decide(&request, now());
        let reply_to = step.listens.then(|| ReplyTo {
            queue: format!("{}-replies", self.tag),
            correlation_id: Some(request.request_id.to_string()),
            batch: false,
        });
        if !replay {
            let promoted = effect.promoted().iter().map(|s| s.to_string()).collect();
            self.first
                .insert(request.request_id.to_string(), (verdict.clone(), promoted));
        }
        Pending {
            request,
            provisional: verdict,
            effect,
            replay,
            partition: self.lease.partition,
            epoch: self.lease.epoch,
            reply_to,
            ruled: false,
            skipped: Vec::new(),
        }
    }

    /// Commits a batch and checks every decision in it against what the database did.
    async fn commit(&self, batch: &[Pending]) -> Result<Vec<Committed>, TestCaseError> {
        let items: Vec<&Pending> = batch.iter().collect();
        let committed = self
            .env
            .store
            .commit("equivalence", &items)
            .await
            .map_err(|e| TestCaseError::fail(format!("commit: {e:?}")))?;
        prop_assert_eq!(committed.len(), batch.len());
        let mut announced = HashSet::new();
        for (pending, done) in batch.iter().zip(&committed) {
            self.check_decision(pending, done, &mut announced)?;
        }
        Ok(committed)
    }

    /// The database did what the pure logic decided for one request: the same verdict, the
    /// same effect applied, the same students promoted in the same order.
    fn check_decision(
        &self,
        pending: &Pending,
        done: &Committed,
        announced: &mut HashSet<String>,
    ) -> Result<(), TestCaseError> {
        let id = pending.request.request_id.to_string();
        let context = format!("{id} ({:?}): {done:?}", pending.effect);
        prop_assert!(!done.diverged, "diverged: {}", context);
        prop_assert!(!done.revised, "revised: {}", context);
        prop_assert_eq!(done.replayed, pending.replay, "{}", &context);
        prop_assert_eq!(done.verdict.outcome, pending.provisional.outcome);
        prop_assert_eq!(done.verdict.reason, pending.provisional.reason);
        let promoted: Vec<&str> = done
            .promotions
            .iter()
            .map(|p| p.student_id.as_str())
            .collect();
        if pending.replay {
            // A replay announces the first decision's promotions again (this test never
            // confirms answers), once per batch, in the order they were made.
            let first = self.first[&id].1.iter().map(String::as_str);
            if announced.insert(id.clone()) {
                prop_assert!(first.eq(promoted.iter().copied()), "{}", &context);
            } else {
                prop_assert!(promoted.is_empty(), "{}", &context);
            }
        } else {
            let expected = pending.effect.promoted().iter().map(|s| s.as_str());
            prop_assert!(expected.eq(promoted.iter().copied()), "{}", &context);
            prop_assert!(done.promotions.iter().all(|p| p.promoted_by == id));
        }
        Ok(())
    }

    /// Each committed course equals its pure state.
    async fn check_courses(&self) -> Result<(), TestCaseError> {
        for (course, state) in self.courses.iter().zip(&self.states) {
            let detail = self
                .env
                .store
                .course_detail(course)
                .await
                .map_err(|e| TestCaseError::fail(format!("course detail: {e:?}")))?
                .ok_or_else(|| TestCaseError::fail(format!("{course} is gone")))?;
            let row = &detail.course;
            let settings = state.settings();
            prop_assert_eq!(
                (
                    row.capacity,
                    row.waitlist_capacity,
                    row.opens_at,
                    row.closes_at
                ),
                (
                    settings.capacity,
                    settings.waitlist,
                    settings.opens_at,
                    settings.closes_at
                ),
                "settings of {}",
                course
            );
            prop_assert_eq!(
                (row.enrolled, row.waitlisted),
                (state.enrolled_count(), state.waitlisted_count()),
                "counters of {}",
                course
            );
            let waitlist: Vec<String> = state.waitlist().map(|s| s.to_string()).collect();
            prop_assert_eq!(&detail.waitlist, &waitlist, "waitlist of {}", course);
            // As many seat rows as the counter says, each a student the pure state enrolled.
            let seats = u32::try_from(detail.enrolled_students.len()).expect("a small count");
            prop_assert_eq!(seats, row.enrolled);
            for student in &detail.enrolled_students {
                let id = StudentId::parse(student.as_str())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(
                    state.is_enrolled(&id),
                    "{} holds a seat in {}",
                    student,
                    course
                );
            }
        }
        Ok(())
    }

    /// A fresh waitlisted verdict ends with the student's place after its batch, or the place
    /// the decision gave when a later decision of the batch promoted them.
    fn check_positions(
        &self,
        batch: &[Pending],
        committed: &[Committed],
    ) -> Result<(), TestCaseError> {
        for (pending, done) in batch.iter().zip(committed) {
            if pending.replay || done.verdict.outcome != Outcome::Waitlisted {
                continue;
            }
            let request = &pending.request;
            let course = self
                .courses
                .iter()
                .position(|c| *c == request.course_id)
                .ok_or_else(|| TestCaseError::fail("a request for another course"))?;
            let expected = self.states[course]
                .position(&request.student_id)
                .or(pending.provisional.waitlist_position);
            prop_assert_eq!(
                done.verdict.waitlist_position,
                expected,
                "position of {}",
                request.request_id
            );
        }
        Ok(())
    }

    /// The outcomes stored for each course are the verdicts the pure logic decided.
    async fn check_outcomes(&self) -> Result<(), TestCaseError> {
        let mut stored = HashMap::new();
        for course in &self.courses {
            let snapshot = self
                .env
                .store
                .load_course(course)
                .await
                .map_err(|e| TestCaseError::fail(format!("load: {e:?}")))?
                .ok_or_else(|| TestCaseError::fail(format!("{course} is gone")))?;
            stored.extend(
                snapshot
                    .decided
                    .into_iter()
                    .map(|(id, v)| (id.to_string(), (v.outcome, v.reason))),
            );
        }
        let decided: HashMap<String, _> = self
            .first
            .iter()
            .map(|(id, (v, _))| (id.clone(), (v.outcome, v.reason)))
            .collect();
        prop_assert_eq!(stored, decided);
        Ok(())
    }
}

async fn run_case(
    env: &TestEnv,
    lease: Lease,
    number: usize,
    case: &Case,
) -> Result<(), TestCaseError> {
    let tag = format!("q{number}");
    let rows: Vec<(CourseId, CourseSettings)> = case
        .courses
        .iter()
        .enumerate()
        .map(|(k, &(capacity, waitlist))| {
            let id = CourseId::parse(format!("{tag}c{k}")).expect("valid id");
            let settings = CourseSettings {
                capacity,
                waitlist,
                ..CourseSettings::default()
            };
            (id, settings)
        })
        .collect();
    env.store.add_courses(&rows).await.expect("add courses");
    let mut world = World {
        env,
        lease,
        tag,
        courses: rows.into_iter().map(|(id, _)| id).collect(),
        states: Vec::new(),
        first: HashMap::new(),
    };
    // Both sides start from the same snapshot: what the store loads for the actor.
    for course in &world.courses {
        let snapshot = env
            .store
            .load_course(course)
            .await
            .expect("load")
            .expect("the course exists");
        world
            .states
            .push(CourseState::from_snapshot(course.clone(), snapshot));
    }

    let mut batch = Vec::new();
    for (k, step) in case.steps.iter().enumerate() {
        batch.push(world.decide(step));
        if step.cut || k + 1 == case.steps.len() {
            let committed = world.commit(&batch).await?;
            world.check_courses().await?;
            world.check_positions(&batch, &committed)?;
            batch.clear();
        }
    }
    world.check_outcomes().await?;
    let violations = env.store.audit().await.expect("audit");
    prop_assert!(violations.is_empty(), "audit: {:?}", violations);
    Ok(())
}

#[test]
fn the_database_rules_agree_with_the_course_logic() {
    // Arrange: one database for every case; each case has course and request ids of its own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let env = runtime.block_on(TestEnv::new());
    let lease = runtime
        .block_on(
            env.store
                .acquire_partitions("equivalence", Duration::from_secs(600), 4),
        )
        .expect("acquire")[0];
    let cases = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 40,
        max_shrink_iters: 512,
        failure_persistence: None,
        ..Config::default()
    });

    // Act and assert, case by case.
    let result = runner.run(&arb_case(), |case| {
        let number = cases.fetch_add(1, Ordering::Relaxed);
        runtime.block_on(run_case(&env, lease, number, &case))
    });

    runtime.block_on(env.cleanup());
    if let Err(failure) = result {
        panic!("the database and the course logic disagree: {failure}");
    }
}
