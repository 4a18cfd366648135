//! The store against a real PostgreSQL: the group commit's bookkeeping.

use std::time::Duration;

use sqlx::Connection;

use seatrush_core::domain::Effect;
use seatrush_core::domain::Request;
use seatrush_core::domain::{Action, Outcome, Partition, Reason, ReplyTo, StudentId, Verdict};
use seatrush_core::domain::{CourseId, CourseSnapshot};
use seatrush_core::store::{KeyClaim, KeyStanding, Lease, Pending};

use crate::helpers::{TestEnv, enroll, request};

/// The first of every partition's leases, taken as a worker would.
async fn first_lease(env: &TestEnv, worker: &str) -> Lease {
    env.store
        .acquire_partitions(worker, Duration::from_secs(30), 4)
        .await
        .expect("acquire")[0]
}

/// An enrollment decided in memory, ready for the group commit.
fn pending_enrollment(
    request: Request,
    provisional: Verdict,
    effect: Effect,
    replay: bool,
    lease: Lease,
) -> Pending {
    Pending {
        request,
        provisional,
        effect,
        replay,
        partition: lease.partition,
        epoch: lease.epoch,
        reply_to: None,
        ruled: false,
        skipped: Vec::new(),
    }
}

/// `pending`, asking for its final answer at `queue` under `correlation`.
fn answering_at(pending: Pending, queue: &str, correlation: &str) -> Pending {
    Pending {
        reply_to: Some(ReplyTo::single(queue, Some(correlation.to_owned()))),
        ..pending
    }
}

/// What a load found, with its verdicts in id order: verdicts written by one transaction
/// share their batch and instant, so the order of such ties is the database's choice.
fn comparable(snapshot: Option<CourseSnapshot>) -> String {
    let mut snapshot = snapshot;
    if let Some(s) = snapshot.as_mut() {
        s.decided.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    }
    format!("{snapshot:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_knows_whether_its_final_answer_was_already_sent() {
    // Arrange: this test owns every partition, as a worker would.
    let env = TestEnv::new().await;
    let courses = env.add_courses("st", 1, 5).await;
    let lease = first_lease(&env, "store-test").await;
    let request = enroll("st-r1", &courses[0], "s1");
    let decided = Verdict::new(Outcome::Enrolled, None, 4);
    let pending = |replay: bool, effect: Effect| {
        pending_enrollment(request.clone(), decided.clone(), effect, replay, lease)
    };

    // Act
    let first = env
        .store
        .commit("store-test", &[&pending(false, Effect::Enroll)])
        .await
        .expect("first commit");
    let before_marking = env
        .store
        .commit("store-test", &[&pending(true, Effect::None)])
        .await
        .expect("replay before the answer is recorded");
    let batch = first[0].batch_id.expect("a fresh outcome has its batch");
    env.store
        .mark_answered(&[batch], &[])
        .await
        .expect("mark answered");
    let after_marking = env
        .store
        .commit("store-test", &[&pending(true, Effect::None)])
        .await
        .expect("replay after the answer is recorded");
    let stale = env
        .store
        .commit(
            "store-test",
            &[&Pending {
                partition: Partition(lease.partition.0),
                epoch: lease.epoch - 1,
                ..pending(true, Effect::None)
            }],
        )
        .await;

    // Assert
    assert!(!first[0].replayed && !first[0].answered);
    assert!(before_marking[0].replayed && !before_marking[0].answered);
    assert!(after_marking[0].replayed && after_marking[0].answered);
    assert_eq!(after_marking[0].verdict, decided);
    assert!(
        matches!(stale, Err(seatrush_core::store::StoreError::Fenced { .. })),
        "a commit under an old epoch is refused: {stale:?}"
    );
    assert!(env.store.audit().await.expect("audit").is_empty());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_published_again_to_another_address_is_answered_there() {
    // Arrange: a request decided, committed and answered at its client's queue.
    let env = TestEnv::new().await;
    let courses = env.add_courses("sk", 1, 5).await;
    let lease = first_lease(&env, "store-test").await;
    let request = enroll("sk-r1", &courses[0], "s1");
    let decided = Verdict::new(Outcome::Enrolled, None, 4);
    let at = |queue: &str, correlation: &str, replay: bool, effect: Effect| {
        let pending = pending_enrollment(request.clone(), decided.clone(), effect, replay, lease);
        answering_at(pending, queue, correlation)
    };
    let first = env
        .store
        .commit("store-test", &[&at("q-first", "1", false, Effect::Enroll)])
        .await
        .expect("first commit");
    let batch = first[0].batch_id.expect("a fresh outcome has its batch");
    env.store
        .mark_answered(&[batch], &[])
        .await
        .expect("mark answered");

    // Act: copies of the request redelivered, asking at the same address, at a new queue (its
    // client lost the first and published again), and with another correlation id.
    let mut replays = Vec::new();
    for (queue, correlation) in [("q-first", "1"), ("q-second", "1"), ("q-first", "2")] {
        let replayed = env
            .store
            .commit("store-test", &[&at(queue, correlation, true, Effect::None)])
            .await
            .expect("replay");
        replays.push(replayed[0].clone());
    }

    // Assert: only the copy at the address already answered skips its answer.
    assert!(replays.iter().all(|r| r.replayed && r.verdict == decided));
    let answered: Vec<bool> = replays.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [true, false, false]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_copy_answered_from_the_stored_outcome_is_not_answered_again() {
    // Arrange: a request id published twice under two correlation ids. The first copy is
    // decided and answered; the second is answered from the stored outcome, and that answer
    // is confirmed and recorded, as the finalizer does before it acks.
    let env = TestEnv::new().await;
    let courses = env.add_courses("sd", 1, 5).await;
    let lease = first_lease(&env, "store-test").await;
    let request = enroll("sd-r1", &courses[0], "s1");
    let decided = Verdict::new(Outcome::Enrolled, None, 4);
    let at = |correlation: &str, replay: bool, effect: Effect| {
        let pending = pending_enrollment(request.clone(), decided.clone(), effect, replay, lease);
        answering_at(pending, "q", correlation)
    };
    let first = env
        .store
        .commit(
            "store-test",
            &[
                &at("1", false, Effect::Enroll),
                &at("2", false, Effect::Enroll),
            ],
        )
        .await
        .expect("both copies in one commit");
    let batch = first[0].batch_id.expect("a fresh outcome has its batch");
    assert!(
        first[1].replayed && !first[1].answered,
        "the second copy replays the first"
    );
    let second = ReplyTo::single("q", Some("2".to_owned())).key();
    let unrecorded = env
        .store
        .commit("store-test", &[&at("2", true, Effect::None)])
        .await
        .expect("a redelivery before the copy's answer is recorded");
    env.store
        .mark_answered(&[batch], &[("sd-r1".to_owned(), second)])
        .await
        .expect("mark answered");

    // Act: the worker died before its acks; the broker redelivers both copies, and a third
    // copy arrives at a new address.
    let mut redelivered = Vec::new();
    for correlation in ["1", "2", "3"] {
        let replayed = env
            .store
            .commit("store-test", &[&at(correlation, true, Effect::None)])
            .await
            .expect("replay");
        redelivered.push(replayed[0].clone());
    }

    // Assert: both answered copies skip their answer; the new one is answered.
    assert!(!unrecorded[0].answered);
    assert!(
        redelivered
            .iter()
            .all(|r| r.replayed && r.verdict == decided)
    );
    let answered: Vec<bool> = redelivered.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [true, true, false]);
    assert!(env.store.audit().await.expect("audit").is_empty());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn courses_loaded_together_are_what_each_loads_alone() {
    // Arrange: s1 and s2 take the two seats of each of two courses and s3 is refused, a third
    // course untouched, and an id that names no course.
    let env = TestEnv::new().await;
    let courses = env.add_courses("sl", 3, 2).await;
    let lease = first_lease(&env, "store-test").await;
    let asks = [
        ("s1", Outcome::Enrolled, None, Effect::Enroll, 1),
        ("s2", Outcome::Enrolled, None, Effect::Enroll, 0),
        ("s3", Outcome::Rejected, Some(Reason::Full), Effect::None, 0),
    ];
    let mut items = Vec::new();
    for (i, (student, outcome, reason, effect, left)) in asks.into_iter().enumerate() {
        for course in &courses[..2] {
            items.push(pending_enrollment(
                enroll(&format!("sl-r{i}-{course}"), course, student),
                Verdict::new(outcome, reason, left),
                effect.clone(),
                false,
                lease,
            ));
        }
    }
    let refs: Vec<&Pending> = items.iter().collect();
    env.store.commit("store-test", &refs).await.expect("commit");
    let missing = CourseId::parse("sl-nowhere").expect("id");
    let mut asked = courses.clone();
    asked.push(missing.clone());

    // Act
    let together = env.store.load_courses(&asked).await.expect("load together");
    let mut alone = Vec::new();
    for course in &asked {
        alone.push(env.store.load_course(course).await.expect("load alone"));
    }

    // Assert: each course holds its own seats and verdicts, the same either way; the missing
    // course is absent.
    for (course, one) in asked.iter().zip(&alone) {
        assert_eq!(
            comparable(together.get(course).cloned()),
            comparable(one.clone()),
            "course {course}"
        );
    }
    assert!(alone[3].is_none() && !together.contains_key(&missing));
    for course in &courses[..2] {
        let loaded = together.get(course).expect("a course with seats");
        let mut seated: Vec<&str> = loaded.enrolled.iter().map(StudentId::as_str).collect();
        seated.sort_unstable();
        let mut ids: Vec<String> = loaded
            .decided
            .iter()
            .map(|(id, _)| id.to_string())
            .collect();
        ids.sort_unstable();
        assert_eq!(seated, ["s1", "s2"], "course {course}");
        assert_eq!(
            ids,
            (0..3)
                .map(|i| format!("sl-r{i}-{course}"))
                .collect::<Vec<_>>()
        );
    }
    let untouched = together.get(&courses[2]).expect("the untouched course");
    assert!(untouched.enrolled.is_empty() && untouched.decided.is_empty());
    let first = together.get(&courses[0]).expect("the first course");
    assert_eq!((first.enrolled.len(), first.decided.len()), (2, 3));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loader_answers_every_load_asked_together_or_twice() {
    // Arrange: a course with a seat taken, one untouched, an id that names no course; loads
    // asked at once, two of them twice.
    let env = TestEnv::new().await;
    let courses = env.add_courses("sq", 2, 2).await;
    let lease = first_lease(&env, "store-test").await;
    let seat = pending_enrollment(
        enroll("sq-r1", &courses[0], "s1"),
        Verdict::new(Outcome::Enrolled, None, 1),
        Effect::Enroll,
        false,
        lease,
    );
    env.store
        .commit("store-test", &[&seat])
        .await
        .expect("commit");
    let missing = CourseId::parse("sq-nowhere").expect("id");
    let asked = [
        courses[0].clone(),
        courses[1].clone(),
        courses[0].clone(),
        missing.clone(),
        missing,
    ];
    let loads = seatrush_core::course::Loads::start(env.store.clone());

    // Act
    let answers = futures::future::join_all(asked.iter().map(|c| loads.load(c))).await;

    // Assert: every asker gets what a load of its course alone finds.
    for (course, answer) in asked.iter().zip(answers) {
        let alone = env.store.load_course(course).await.expect("load alone");
        let answer = answer.expect("loaded");
        assert_eq!(comparable(answer), comparable(alone), "course {course}");
    }
    let first = loads
        .load(&courses[0])
        .await
        .expect("loaded")
        .expect("a course");
    assert_eq!(first.enrolled.len(), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_decides_promotions_and_refuses_what_memory_got_wrong() {
    // Arrange: one seat held by s1, s2 and s3 waiting, no other waitlist place.
    let env = TestEnv::new().await;
    let course = env
        .add_courses_with(
            "sp",
            1,
            seatrush_core::domain::CourseSettings {
                capacity: 1,
                waitlist: 2,
                ..Default::default()
            },
        )
        .await
        .remove(0);
    let lease = env
        .store
        .acquire_partitions("store-test", Duration::from_secs(30), 4)
        .await
        .expect("acquire")[0];
    let pending =
        |id: &str, action: Action, student: &str, verdict: Verdict, effect: Effect| Pending {
            request: request(id, action, &course, student),
            provisional: verdict,
            effect,
            replay: false,
            partition: lease.partition,
            epoch: lease.epoch,
            reply_to: None,
            ruled: false,
            skipped: Vec::new(),
        };
    let waitlisted = |position| {
        let mut v = Verdict::new(Outcome::Waitlisted, None, 0);
        v.waitlist_position = Some(position);
        v
    };
    let setup = [
        pending(
            "e1",
            Action::Enroll,
            "s1",
            Verdict::new(Outcome::Enrolled, None, 0),
            Effect::Enroll,
        ),
        pending("e2", Action::Enroll, "s2", waitlisted(1), Effect::Waitlist),
        pending("e3", Action::Enroll, "s3", waitlisted(2), Effect::Waitlist),
    ];
    let committed = env
        .store
        .commit("store-test", &setup.iter().collect::<Vec<_>>())
        .await
        .expect("setup commit");
    assert!(committed.iter().all(|c| !c.diverged), "{committed:?}");

    // Act: a memory out of step believes s3 is next, and that the waitlist has room for s4.
    let wrong = [
        pending(
            "d1",
            Action::Drop,
            "s1",
            Verdict::new(Outcome::Dropped, None, 0),
            Effect::Drop {
                promoted: Some(StudentId::parse("s3").expect("id")),
            },
        ),
        pending("e4", Action::Enroll, "s4", waitlisted(2), Effect::Waitlist),
        pending("e5", Action::Enroll, "s5", waitlisted(3), Effect::Waitlist),
    ];
    let committed = env
        .store
        .commit("store-test", &wrong.iter().collect::<Vec<_>>())
        .await
        .expect("commit");

    // Assert: the database promoted its own head, s2; s4 took the freed waitlist place at
    // position 2 (after s3); s5 found no room, revised to full; the actor must reload.
    assert!(
        committed[0].diverged,
        "the promotion differed: {:?}",
        committed[0]
    );
    let promoted: Vec<&str> = committed[0]
        .promotions
        .iter()
        .map(|p| p.student_id.as_str())
        .collect();
    assert_eq!(promoted, ["s2"]);
    assert_eq!(committed[1].verdict.waitlist_position, Some(2));
    assert!(!committed[1].diverged);
    assert_eq!(
        (
            committed[2].verdict.outcome,
            committed[2].verdict.reason,
            committed[2].revised
        ),
        (Outcome::Rejected, Some(Reason::Full), true)
    );
    let detail = env
        .store
        .course_detail(&course)
        .await
        .expect("read")
        .expect("course");
    assert_eq!(detail.enrolled_students, ["s2"]);
    assert_eq!(detail.waitlist, ["s3", "s4"]);
    assert!(env.store.audit().await.expect("audit").is_empty());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_finds_a_broken_waitlist() {
    // Arrange: rows written behind the worker's back, as a buggy tool might.
    let env = TestEnv::new().await;
    let course = env.add_courses("sa", 1, 1).await.remove(0);
    let mut db = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("connect");
    for statement in [
        "UPDATE courses SET waitlist_capacity = 5, enrolled = 1, waitlisted = 2 WHERE course_id = $1",
        "INSERT INTO enrollments (course_id, student_id, request_id) VALUES ($1, 's1', 'x1')",
        "INSERT INTO waitlist (course_id, student_id, position, request_id) VALUES ($1, 's1', 1, 'x2')",
        "INSERT INTO waitlist (course_id, student_id, position, request_id) VALUES ($1, 's2', 3, 'x3')",
    ] {
        sqlx::query(statement)
            .bind(course.as_str())
            .execute(&mut db)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }

    // Act
    let violations = env.store.audit().await.expect("audit");

    // Assert
    let checks: Vec<&str> = violations.iter().map(|v| v.check).collect();
    for expected in [
        "enrolled_and_waitlisted",
        "waitlist_positions_not_contiguous",
        "enrollment_without_outcome",
        "waitlist_without_outcome",
    ] {
        assert!(
            checks.contains(&expected),
            "{expected} missing from {violations:#?}"
        );
    }
    db.close().await.expect("close");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_id_column_compares_as_bytes() {
    // Arrange: the migrated schema.
    let env = TestEnv::new().await;
    let mut db = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("connect");

    // Act: the text columns of the tables that hold ids (a request's, a course's, a
    // student's, a worker's) and are not in the "C" collation.
    let linguistic: Vec<String> = sqlx::query_scalar(
        "SELECT c.table_name || '.' || c.column_name \
         FROM information_schema.columns c \
         JOIN information_schema.tables t USING (table_schema, table_name) \
         WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' \
           AND c.data_type = 'text' \
           AND (c.column_name LIKE '%\\_id' OR c.column_name IN ('owner', 'released_by')) \
           AND c.column_name <> 'correlation_id' \
           AND c.collation_name IS DISTINCT FROM 'C' \
         ORDER BY 1",
    )
    .fetch_all(&mut db)
    .await
    .expect("the id columns");

    // Assert: none; an id column in another collation would also keep joins with the others
    // off their indexes.
    assert!(
        linguistic.is_empty(),
        "id columns not in the \"C\" collation: {linguistic:?}"
    );
    db.close().await.expect("close");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_course_with_students_in_its_seats_cannot_go_and_a_seat_without_a_course_is_found() {
    // Arrange: one course with a student in a seat, one without.
    let env = TestEnv::new().await;
    let courses = env.add_courses("sg", 2, 5).await;
    let (held, empty) = (courses[0].as_str(), courses[1].as_str());
    let mut db = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("connect");
    sqlx::query(
        "INSERT INTO enrollments (course_id, student_id, request_id) VALUES ($1, 's1', 'x1')",
    )
    .bind(held)
    .execute(&mut db)
    .await
    .expect("a seat");

    // Act: an operator deletes or renames the held course by hand; a seat is written for a
    // course that does not exist.
    let deleted = sqlx::query("DELETE FROM courses WHERE course_id = $1")
        .bind(held)
        .execute(&mut db)
        .await;
    let renamed =
        sqlx::query("UPDATE courses SET course_id = course_id || 'x' WHERE course_id = $1")
            .bind(held)
            .execute(&mut db)
            .await;
    let counted = sqlx::query("UPDATE courses SET enrolled = 1 WHERE course_id = $1")
        .bind(held)
        .execute(&mut db)
        .await;
    let gone = sqlx::query("DELETE FROM courses WHERE course_id = $1")
        .bind(empty)
        .execute(&mut db)
        .await;
    sqlx::query(
        "INSERT INTO enrollments (course_id, student_id, request_id) VALUES ($1, 's2', 'x2')",
    )
    .bind(empty)
    .execute(&mut db)
    .await
    .expect("a seat in a course that is gone");
    let violations = env.store.audit().await.expect("audit");

    // Assert: the course with a seat stays, its counter still moves; the seat without a course
    // is reported.
    for refused in [&deleted, &renamed] {
        let code = refused
            .as_ref()
            .err()
            .and_then(|e| e.as_database_error())
            .and_then(|e| e.code().map(|c| c.into_owned()));
        assert_eq!(code.as_deref(), Some("23503"), "{refused:?}");
    }
    assert!(counted.is_ok() && gone.is_ok(), "{counted:?} {gone:?}");
    let seatless: Vec<&str> = violations
        .iter()
        .filter(|v| v.check == "seat_without_course")
        .map(|v| v.detail.as_str())
        .collect();
    assert_eq!(seatless.len(), 1, "{violations:#?}");
    assert!(seatless[0].contains(empty), "{seatless:?}");
    db.close().await.expect("close");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_finds_an_outcome_outside_its_batch_log() {
    // Arrange: one batch committed as a worker does, then an outcome written behind its back
    // under a batch that does not exist, which no foreign key refuses.
    let env = TestEnv::new().await;
    let course = env.add_courses("sb", 1, 5).await.remove(0);
    let lease = first_lease(&env, "store-test").await;
    let committed = Verdict::new(Outcome::Enrolled, None, 4);
    env.store
        .commit(
            "store-test",
            &[&pending_enrollment(
                enroll("sb-r1", &course, "s1"),
                committed,
                Effect::Enroll,
                false,
                lease,
            )],
        )
        .await
        .expect("commit");
    let clean = env.store.audit().await.expect("audit");
    let mut db = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("connect");
    sqlx::query(
        "INSERT INTO outcomes (request_id, course_id, student_id, action, outcome, seats_left, \
                               batch_id) \
         VALUES ('sb-stray', $1, 's2', 'enroll', 'rejected', 0, 987654)",
    )
    .bind(course.as_str())
    .execute(&mut db)
    .await
    .expect("a stray outcome");

    // Act
    let violations = env.store.audit().await.expect("audit");

    // Assert
    assert!(clean.is_empty(), "a committed batch is clean: {clean:#?}");
    assert!(
        violations
            .iter()
            .any(|v| v.check == "batch_log_mismatch" && v.detail.contains("987654")),
        "the stray outcome's batch is named: {violations:#?}"
    );
    db.close().await.expect("close");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_still_commits_through_the_eleven_array_form() {
    // Arrange: one seat and one waitlist place, as a worker of the previous release finds them
    // during a rolling upgrade.
    let env = TestEnv::new().await;
    let course = env
        .add_courses_with(
            "so",
            1,
            seatrush_core::domain::CourseSettings {
                capacity: 1,
                waitlist: 1,
                ..Default::default()
            },
        )
        .await
        .remove(0);
    let mut db = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("connect");
    let none_text: Vec<Option<&str>> = vec![None; 3];
    let none_int: Vec<Option<i32>> = vec![None; 3];
    let none_time: Vec<Option<chrono::DateTime<chrono::Utc>>> = vec![None; 3];

    // Act: s1 enrolls, s2 joins the waitlist, s1 drops, in the previous release's call.
    let rows: Vec<(i32, bool, Option<String>)> = sqlx::query_as(
        "SELECT r_ord, r_applied, r_student \
         FROM apply_effects($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], \
                            $6::text[], $7::text[], $8::int[], $9::int[], \
                            $10::timestamptz[], $11::timestamptz[])",
    )
    .bind([0, 1, 2])
    .bind([course.as_str(); 3])
    .bind(["s1", "s2", "s1"])
    .bind(["o1", "o2", "o3"])
    .bind(["enroll", "waitlist", "drop"])
    .bind(&none_text)
    .bind(&none_text)
    .bind(&none_int)
    .bind(&none_int)
    .bind(&none_time)
    .bind(&none_time)
    .fetch_all(&mut db)
    .await
    .expect("the eleven-array form");

    // Assert: each applied, the drop promoted s2, and the course holds what the typed form
    // would have left.
    let mut rows = rows;
    rows.sort_by_key(|(ord, _, _)| *ord);
    assert_eq!(
        rows,
        [
            (0, true, None),
            (1, true, None),
            (2, true, Some("s2".to_owned()))
        ]
    );
    let detail = env
        .store
        .course_detail(&course)
        .await
        .expect("read")
        .expect("course");
    assert_eq!(detail.enrolled_students, ["s2"]);
    assert!(detail.waitlist.is_empty());
    assert_eq!((detail.course.enrolled, detail.course.waitlisted), (1, 0));
    db.close().await.expect("close");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_every_id_the_protocol_refuses() {
    // Arrange: a course to enroll and wait in; every write below is rolled back.
    let env = TestEnv::new().await;
    let course = env.add_courses("ids", 1, 1).await.remove(0);
    let mut db = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("connect");
    let longest = "a".repeat(64);
    let too_long = "a".repeat(65);
    let writes = [
        "INSERT INTO courses (course_id, capacity) VALUES ($1, 1)",
        "INSERT INTO enrollments (course_id, student_id, request_id) VALUES ($2, $1, 'r')",
        "INSERT INTO waitlist (course_id, student_id, position, request_id) VALUES ($2, $1, 9, 'r')",
        "INSERT INTO outcomes (request_id, course_id, student_id, action, outcome, seats_left, \
                               batch_id) \
         SELECT $1, $2, 's', 'enroll', 'rejected', 0, \
                (SELECT batch_id FROM decision_batches LIMIT 1)",
    ];
    sqlx::query("INSERT INTO decision_batches (worker_id, requests) VALUES ('ids', 1)")
        .execute(&mut db)
        .await
        .expect("a batch to refer to");

    for write in writes {
        for (id, accepted) in [
            ("A-z_09", true),
            (longest.as_str(), true),
            ("", false),
            (too_long.as_str(), false),
            ("a b", false),
            ("a!", false),
            ("é", false),
            ("a\n", false),
        ] {
            // Act
            let mut tx = db.begin().await.expect("begin");
            let result = sqlx::query(write)
                .bind(id)
                .bind(course.as_str())
                .execute(&mut *tx)
                .await;
            tx.rollback().await.expect("rollback");

            // Assert
            assert_eq!(
                result.is_ok(),
                accepted,
                "{write} with id {id:?}: {result:?}"
            );
        }
    }
    db.close().await.expect("close");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_knows_no_draw_gives_no_seat_before_it() {
    // Arrange: a draw course past its opening, not yet drawn, as a worker of the previous
    // release (which knows no draw) finds it during a rolling upgrade.
    let env = TestEnv::new().await;
    let course = env
        .add_courses_with(
            "nd",
            1,
            seatrush_core::domain::CourseSettings {
                capacity: 5,
                waitlist: 5,
                opens_at: Some(chrono::Utc::now() - chrono::Duration::minutes(1)),
                opening: seatrush_core::domain::Opening::Draw,
                draw_seed: Some(seatrush_core::domain::DrawSeed::generate()),
                ..Default::default()
            },
        )
        .await
        .remove(0);
    let mut db = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("connect");

    // Act: its enroll, alone (the set form) and beside a waitlist join (the loop).
    let call = "SELECT r_ord, r_applied FROM apply_effects(ARRAY( \
                  SELECT ROW(t.ord, $1, t.student, t.request, t.kind::effect_kind, NULL, NULL, \
                             NULL, NULL, NULL, NULL)::effect \
                    FROM UNNEST($2::int[], $3::text[], $4::text[], $5::text[]) \
                      AS t(ord, student, request, kind)))";
    let alone: Vec<(i32, bool)> = sqlx::query_as(call)
        .bind(course.as_str())
        .bind([0])
        .bind(["s1"])
        .bind(["o1"])
        .bind(["enroll"])
        .fetch_all(&mut db)
        .await
        .expect("the set form");
    let mixed: Vec<(i32, bool)> = sqlx::query_as(call)
        .bind(course.as_str())
        .bind([0, 1])
        .bind(["s2", "s3"])
        .bind(["o2", "o3"])
        .bind(["enroll", "waitlist"])
        .fetch_all(&mut db)
        .await
        .expect("the loop");

    // Assert: nothing applied; the seats wait for the draw.
    assert_eq!(alone, [(0, false)]);
    assert!(mixed.iter().all(|(_, applied)| !applied), "{mixed:?}");
    let detail = env
        .store
        .course_detail(&course)
        .await
        .expect("read")
        .expect("course");
    assert_eq!((detail.course.enrolled, detail.course.waitlisted), (0, 0));
    db.close().await.expect("close");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_fresh_once_then_mismatched_decided_or_in_flight() {
    // Arrange: a decided request whose key the gateway recorded, and one still in flight.
    let env = TestEnv::new().await;
    let courses = env.add_courses("gk", 1, 5).await;
    let lease = first_lease(&env, "keys-test").await;
    let claim = |id: &str, print: u8| KeyClaim {
        request_id: id.to_owned(),
        fingerprint: vec![print; 32],
    };
    let first = env
        .store
        .record_keys(&[claim("gk-decided", 1), claim("gk-flying", 2)])
        .await
        .expect("first offer");
    let decided = pending_enrollment(
        enroll("gk-decided", &courses[0], "s1"),
        Verdict::new(Outcome::Enrolled, None, 4),
        Effect::Enroll,
        false,
        lease,
    );
    env.store
        .commit("keys-test", &[&decided])
        .await
        .expect("commit");

    // Act: one batch with every case, a new key offered twice among them.
    let again = env
        .store
        .record_keys(&[
            claim("gk-decided", 1),
            claim("gk-flying", 2),
            claim("gk-flying", 3),
            claim("gk-new", 4),
            claim("gk-new", 4),
        ])
        .await
        .expect("second offer");

    // Assert
    assert_eq!(first, [KeyStanding::Fresh, KeyStanding::Fresh]);
    assert_eq!(again[0], KeyStanding::Decided);
    assert!(
        matches!(again[1], KeyStanding::Undecided { accepted_secs_ago } if (0.0..60.0).contains(&accepted_secs_ago)),
        "{:?}",
        again[1]
    );
    assert_eq!(again[2], KeyStanding::Mismatch);
    assert_eq!(again[3], KeyStanding::Fresh);
    assert!(
        matches!(again[4], KeyStanding::Undecided { .. }),
        "the second offer of a key in one batch waits on the first: {:?}",
        again[4]
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_and_commits_over_the_same_partitions_never_deadlock() {
    // Arrange: one worker holds 48 partitions; its heartbeat renews them all while two group
    // commits, each spanning every partition, fence on them. Both lock the same rows, so they
    // must lock them in the same order, or PostgreSQL breaks the cycle by failing one.
    const PARTITIONS: u16 = 48;
    const ROUNDS: usize = 150;
    let env = TestEnv::with_partitions(PARTITIONS).await;
    let courses = env.add_courses("dl", 1, 5).await;
    let leases = env
        .store
        .acquire_partitions("dl-worker", Duration::from_secs(60), PARTITIONS)
        .await
        .expect("acquire");
    assert_eq!(leases.len(), usize::from(PARTITIONS));
    let unacked: Vec<(Lease, usize)> = leases.iter().map(|l| (*l, 1)).collect();
    // Rows rewritten out of order, as a long run leaves them: a scan of the table now meets
    // them in another order than the partition numbers.
    let mut db = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("connect");
    for partition in (0..i32::from(PARTITIONS)).rev() {
        sqlx::query("UPDATE partitions SET unacked = 0 WHERE partition = $1")
            .bind(partition)
            .execute(&mut db)
            .await
            .expect("rewrite a row");
    }
    let full = Verdict::new(Outcome::Rejected, Some(Reason::Full), 0);
    let committer = |name: &'static str| {
        let store = env.store.clone();
        let leases = leases.clone();
        let course = courses[0].clone();
        let full = full.clone();
        tokio::spawn(async move {
            for round in 0..ROUNDS {
                // The batch's items in reverse partition order, as a burst may bring them.
                let items: Vec<Pending> = leases
                    .iter()
                    .rev()
                    .map(|lease| {
                        let id = format!("dl-{name}-{round}-{}", lease.partition.0);
                        pending_enrollment(
                            enroll(&id, &course, &format!("{name}{round}")),
                            full.clone(),
                            Effect::None,
                            false,
                            *lease,
                        )
                    })
                    .collect();
                let refs: Vec<&Pending> = items.iter().collect();
                store.commit("dl-worker", &refs).await?;
            }
            Ok::<(), seatrush_core::store::StoreError>(())
        })
    };
    let heartbeats = {
        let store = env.store.clone();
        tokio::spawn(async move {
            for _ in 0..ROUNDS * 4 {
                let membership = store
                    .heartbeat("dl-worker", Duration::from_secs(60), &unacked)
                    .await?;
                assert_eq!(membership.held.len(), usize::from(PARTITIONS));
            }
            Ok::<(), seatrush_core::store::StoreError>(())
        })
    };

    // Act
    let (first, second) = (committer("a"), committer("b"));
    let results = [
        first.await.expect("join"),
        second.await.expect("join"),
        heartbeats.await.expect("join"),
    ];

    // Assert
    for result in results {
        assert!(result.is_ok(), "no heartbeat or commit fails: {result:?}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_renews_only_the_leases_it_names_and_a_release_only_their_epochs() {
    // Arrange: a worker's previous life (killed, restarted under the same id) left a short
    // lease on every partition.
    let env = TestEnv::new().await;
    let short = Duration::from_millis(800);
    let old = env
        .store
        .acquire_partitions("same-id", short, 4)
        .await
        .expect("acquire");
    assert_eq!(old.len(), 4);

    // Act: its new life beats with a long lease but holds none of them yet, then waits past
    // the old leases' end and takes the partitions.
    let beat = env
        .store
        .heartbeat("same-id", Duration::from_secs(60), &[])
        .await
        .expect("heartbeat");
    tokio::time::sleep(short + Duration::from_millis(400)).await;
    let new = env
        .store
        .acquire_partitions("same-id", Duration::from_secs(60), 4)
        .await
        .expect("acquire again");
    let stale = env
        .store
        .heartbeat("same-id", Duration::from_secs(60), &[(old[0], 0)])
        .await
        .expect("heartbeat with a stale lease");
    env.store
        .release_partitions("same-id", &old)
        .await
        .expect("release the stale leases");
    let after_stale_release = env.store.live_partitions().await.expect("live");
    env.store
        .release_partitions("same-id", &new)
        .await
        .expect("release the new leases");
    let after_release = env.store.live_partitions().await.expect("live");

    // Assert: the beat renewed nothing it did not name, so the old leases lapsed and were
    // taken again at the next epoch; a stale lease is neither renewed nor released.
    assert!(
        beat.held.is_empty(),
        "renewed unnamed leases: {:?}",
        beat.held
    );
    assert_eq!(new.len(), 4, "the old leases lapsed");
    for lease in &new {
        let before = old
            .iter()
            .find(|l| l.partition == lease.partition)
            .expect("same partitions");
        assert_eq!(lease.epoch, before.epoch + 1);
    }
    assert!(
        stale.held.is_empty(),
        "renewed a stale lease: {:?}",
        stale.held
    );
    assert_eq!(after_stale_release, 4, "a stale release freed a partition");
    assert_eq!(after_release, 0);
    env.cleanup().await;
}
