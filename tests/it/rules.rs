//! Registration rules across courses (a student registry loaded), against real workers,
//! RabbitMQ and Postgres: unknown students, holds, time tickets, credit caps and clashes
//! judged at decision time, promotions that pass over a student the rules forbid, and a
//! student's simultaneous choices on two workers kept within the cap.

use std::collections::{HashMap, HashSet};

use chrono::{Duration as Span, Utc};
use sqlx::{Connection, PgConnection, Row};

use seatrush_core::domain::{Action, CourseId, CourseSettings, Meetings, StudentId, StudentRecord};
use seatrush_core::protocol::{Answer, Stage};

use crate::helpers::{Listener, TestEnv, WAIT, enroll, request};

fn course_with(credits: u32, meetings: &str, capacity: u32, waitlist: u32) -> CourseSettings {
    CourseSettings {
        capacity,
        waitlist,
        credits,
        meetings: Meetings::parse(meetings).expect("valid meetings"),
        ..CourseSettings::default()
    }
}

async fn add(env: &TestEnv, id: &str, settings: CourseSettings) -> CourseId {
    let course = CourseId::parse(format!("{}{id}", env.topology.prefix)).expect("valid id");
    env.store
        .add_courses(&[(course.clone(), settings)])
        .await
        .expect("add course");
    course
}

fn student(max_credits: u32) -> StudentRecord {
    StudentRecord {
        max_credits,
        ..StudentRecord::default()
    }
}

async fn import(env: &TestEnv, students: &[(&str, StudentRecord)]) {
    let rows: Vec<(StudentId, StudentRecord)> = students
        .iter()
        .map(|(id, record)| (StudentId::parse(*id).expect("valid id"), record.clone()))
        .collect();
    env.store.import_students(&rows).await.expect("import");
}

async fn db(env: &TestEnv) -> PgConnection {
    PgConnection::connect(&env.database_url)
        .await
        .expect("connect")
}

/// No final answer contradicts the provisional one sent for the same request.
fn assert_none_contradicted(received: &[Answer]) {
    let mut provisional: HashMap<&str, &Answer> = HashMap::new();
    for answer in received.iter().filter(|a| a.stage == Stage::Provisional) {
        provisional.insert(&answer.request_id, answer);
    }
    for answer in received
        .iter()
        .filter(|a| a.stage == Stage::Final && !a.is_waitlist_event())
    {
        if let Some(early) = provisional.get(answer.request_id.as_str()) {
            assert_eq!(
                (&early.outcome, &early.reason),
                (&answer.outcome, &answer.reason),
                "the final answer to {} contradicts its provisional one",
                answer.request_id
            );
            assert!(!answer.revised, "{answer:?}");
        }
    }
}

/// I8 in Postgres: each registry student's held seats are exactly their enrollments, within
/// their cap, with no clash; the audit is clean.
async fn assert_ledger_matches(env: &TestEnv) {
    let rows = sqlx::query(
        "SELECT s.student_id, coalesce(sum(l.credits), 0)::int AS credits, s.max_credits, \
                count(l.*) FILTER (WHERE NOT l.held)::int AS claims, \
                (SELECT count(*)::int FROM enrollments e WHERE e.student_id = s.student_id) AS seats, \
                count(l.*) FILTER (WHERE l.held)::int AS held \
           FROM students s LEFT JOIN student_seats l ON l.student_id = s.student_id \
          GROUP BY s.student_id, s.max_credits",
    )
    .fetch_all(&mut db(env).await)
    .await
    .expect("read the ledger");
    for row in rows {
        let id: String = row.get("student_id");
        let credits: i32 = row.get("credits");
        let cap: i32 = row.get("max_credits");
        assert!(credits <= cap, "{id} holds {credits} credits over {cap}");
        assert_eq!(
            row.get::<i32, _>("claims"),
            0,
            "{id} keeps an unsettled claim"
        );
        assert_eq!(
            row.get::<i32, _>("seats"),
            row.get::<i32, _>("held"),
            "{id}: enrollments and held seats differ"
        );
    }
    let violations = env.store.audit().await.expect("audit");
    assert!(violations.is_empty(), "audit violations: {violations:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_refuse_with_their_reasons_and_never_contradict_an_answer() {
    // Arrange: six 3-credit courses meeting at different hours, one clashing with the first,
    // a 4-credit course without meetings, one with only waitlist places; students with a cap of 9 credits, a hold, a later
    // time ticket, and plenty.
    let mut env = TestEnv::new().await;
    let mut courses = Vec::new();
    for hour in 0..6 {
        let meets = format!("MO {:02}:00-{:02}:50", 8 + hour, 8 + hour);
        courses.push(add(&env, &format!("A{hour}"), course_with(3, &meets, 10, 5)).await);
    }
    let clash = add(&env, "C", course_with(3, "MO 08:30-09:20", 10, 5)).await;
    let online = add(&env, "O", course_with(4, "", 10, 5)).await;
    let full = add(&env, "F", course_with(3, "TU 08:00-09:00", 0, 5)).await;
    let later_at = Utc::now() + Span::hours(1);
    import(
        &env,
        &[
            ("capped", student(9)),
            (
                "held",
                StudentRecord {
                    holds: vec!["unpaid_fees".into(), "advising".into()],
                    ..student(30)
                },
            ),
            (
                "later",
                StudentRecord {
                    registration_opens_at: Some(later_at),
                    ..student(30)
                },
            ),
            ("plenty", student(30)),
            (
                "earlier",
                StudentRecord {
                    registration_opens_at: Some(Utc::now() - Span::minutes(1)),
                    ..student(30)
                },
            ),
        ],
    )
    .await;
    env.start_worker(env.worker_config()).await;
    let mut client = Listener::new(&env, None).await;

    // Act 1: a capped student fires six choices at once; the others ask once each.
    let mut first: Vec<_> = courses
        .iter()
        .enumerate()
        .map(|(i, c)| enroll(&format!("cap{i}"), c, "capped"))
        .collect();
    first.push(enroll("hold1", &courses[0], "held"));
    first.push(enroll("late1", &courses[0], "later"));
    first.push(enroll("ghost1", &courses[0], "ghost"));
    first.push(request("ghost2", Action::Drop, &courses[0], "ghost"));
    first.push(enroll("plenty1", &courses[0], "plenty"));
    first.push(enroll("early1", &courses[1], "earlier"));
    client.send(&first).await;
    client.until(WAIT, |c| c.final_count() == first.len()).await;

    // Assert 1
    let finals = client.finals();
    let outcome = |id: &str| {
        let a = &finals[id];
        (a.outcome.clone(), a.reason.clone())
    };
    let enrolled = (0..6)
        .filter(|i| finals[&format!("cap{i}")].outcome == "enrolled")
        .count();
    assert_eq!(enrolled, 3, "exactly three courses' credits fit a cap of 9");
    for i in 0..6 {
        let answer = &finals[&format!("cap{i}")];
        if answer.outcome != "enrolled" {
            assert_eq!(answer.reason.as_deref(), Some("credit_limit"), "{answer:?}");
            assert_eq!(
                (
                    answer.credits_held,
                    answer.credits_asked,
                    answer.credits_allowed
                ),
                (Some(9), Some(3), Some(9))
            );
        }
    }
    let hold = &finals["hold1"];
    assert_eq!(outcome("hold1"), ("rejected".into(), Some("hold".into())));
    assert_eq!(
        hold.holds.as_deref(),
        Some(&["unpaid_fees".to_owned(), "advising".to_owned()][..])
    );
    assert_eq!(
        outcome("late1"),
        ("rejected".into(), Some("not_your_turn".into()))
    );
    let ticket = finals["late1"]
        .registration_opens_at
        .as_deref()
        .expect("the time ticket");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(ticket)
            .expect("RFC 3339")
            .timestamp(),
        later_at.timestamp()
    );
    for id in ["ghost1", "ghost2"] {
        assert_eq!(
            outcome(id),
            ("rejected".into(), Some("unknown_student".into()))
        );
    }
    assert_eq!(outcome("plenty1"), ("enrolled".into(), None));
    assert_eq!(
        outcome("early1"),
        ("enrolled".into(), None),
        "a time ticket passed lets the student in"
    );

    // Act 2: a clashing course, a course past the cap that has no seat (a waitlist place is
    // allowed), and one that fits.
    let second = [
        enroll("plenty2", &clash, "plenty"),
        enroll("plenty3", &online, "plenty"),
        enroll("cap-full", &full, "capped"),
        enroll("cap-online", &online, "capped"),
    ];
    client.send(&second).await;
    client
        .until(WAIT, |c| c.final_count() == first.len() + second.len())
        .await;

    // Assert 2
    let finals = client.finals();
    let conflict = &finals["plenty2"];
    assert_eq!(
        (conflict.outcome.as_str(), conflict.reason.as_deref()),
        ("rejected", Some("time_conflict"))
    );
    assert_eq!(
        conflict.conflicts_with.as_deref(),
        Some(courses[0].as_str())
    );
    assert_eq!(finals["plenty3"].outcome, "enrolled");
    assert_eq!(
        finals["cap-full"].outcome, "waitlisted",
        "{:?}",
        finals["cap-full"]
    );
    assert_eq!(finals["cap-online"].reason.as_deref(), Some("credit_limit"));
    assert_none_contradicted(&client.received);
    assert_ledger_matches(&env).await;
    let nothing: i64 =
        sqlx::query_scalar("SELECT count(*) FROM enrollments WHERE student_id = 'ghost'")
            .fetch_one(&mut db(&env).await)
            .await
            .expect("count");
    assert_eq!(nothing, 0, "an unknown student creates no state");

    client.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_passes_over_a_student_the_rules_forbid_and_tells_them() {
    // Arrange: one seat and a waitlist; the first in line already holds 3 of their 3 credits.
    let mut env = TestEnv::new().await;
    let course = add(&env, "P", course_with(3, "WE 10:00-11:00", 1, 5)).await;
    let other = add(&env, "Q", course_with(3, "TH 10:00-11:00", 5, 0)).await;
    import(
        &env,
        &[
            ("first", student(30)),
            ("full-load", student(3)),
            ("next", student(30)),
        ],
    )
    .await;
    env.start_worker(env.worker_config()).await;
    let mut client = Listener::new(&env, None).await;
    let steps = [
        enroll("q-load", &other, "full-load"),
        enroll("p-first", &course, "first"),
        enroll("p-load", &course, "full-load"),
        enroll("p-next", &course, "next"),
    ];
    for (n, step) in steps.iter().enumerate() {
        client.send(std::slice::from_ref(step)).await;
        client.until(WAIT, |c| c.final_count() == n + 1).await;
    }
    let finals = client.finals();
    assert_eq!(
        finals["p-load"].outcome, "waitlisted",
        "a place counts no credits"
    );
    assert_eq!(finals["p-load"].waitlist_position, Some(1));
    assert_eq!(finals["p-next"].waitlist_position, Some(2));

    // Act: the seat is given back.
    client
        .send(&[request("p-drop", Action::Drop, &course, "first")])
        .await;
    client
        .until(WAIT, |c| {
            c.final_count() == 5
                && c.received.iter().any(|a| a.is_promotion())
                && c.received.iter().any(|a| a.outcome == "promotion_skipped")
        })
        .await;

    // Assert: the next in line is promoted; the student over the cap is told why and keeps
    // their place.
    let promoted: Vec<&str> = client
        .received
        .iter()
        .filter(|a| a.is_promotion())
        .map(|a| a.student_id.as_str())
        .collect();
    assert_eq!(promoted, ["next"]);
    let skipped = client
        .received
        .iter()
        .find(|a| a.outcome == "promotion_skipped")
        .expect("the skipped student is told");
    assert_eq!(
        (
            skipped.student_id.as_str(),
            skipped.request_id.as_str(),
            skipped.reason.as_deref(),
            skipped.promoted_by.as_deref()
        ),
        ("full-load", "p-load", Some("credit_limit"), Some("p-drop"))
    );
    assert_eq!(
        (
            skipped.credits_held,
            skipped.credits_asked,
            skipped.credits_allowed
        ),
        (Some(3), Some(3), Some(3))
    );
    let detail = env
        .store
        .course_detail(&course)
        .await
        .expect("read")
        .expect("course");
    assert_eq!(detail.enrolled_students, vec!["next".to_owned()]);
    assert_eq!(detail.waitlist, vec!["full-load".to_owned()]);
    assert_ledger_matches(&env).await;

    // Act 2: the seat is given back again, with only the over-cap student waiting: it stays
    // free, and the next enroll takes it. Then that student gives it back and takes it again at
    // once, before either is committed.
    client
        .send(&[request("p-drop2", Action::Drop, &course, "next")])
        .await;
    client
        .until(WAIT, |c| {
            c.final_count() == 6
                && c.received
                    .iter()
                    .filter(|a| a.outcome == "promotion_skipped")
                    .count()
                    == 2
        })
        .await;
    let free = env
        .store
        .course_detail(&course)
        .await
        .expect("read")
        .expect("course");
    assert!(free.enrolled_students.is_empty(), "the seat stays free");
    assert_eq!(free.waitlist, vec!["full-load".to_owned()]);
    client.send(&[enroll("p-first2", &course, "first")]).await;
    client.until(WAIT, |c| c.final_count() == 7).await;
    assert_eq!(client.finals()["p-first2"].outcome, "enrolled");
    client
        .send(&[
            request("p-drop3", Action::Drop, &course, "first"),
            enroll("p-first3", &course, "first"),
        ])
        .await;
    client.until(WAIT, |c| c.final_count() == 9).await;

    // Assert 2
    let finals = client.finals();
    assert_eq!(finals["p-drop3"].outcome, "dropped");
    assert_eq!(finals["p-first3"].outcome, "enrolled");
    assert_none_contradicted(&client.received);
    assert_ledger_matches(&env).await;

    client.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_choices_on_two_workers_against_a_cap_of_three_enroll_exactly_three() {
    // Arrange: two worker processes sharing 4 partitions, 16 courses of 3 credits at
    // different hours; which worker decides each course is found by asking once for each as
    // a student outside the registry.
    let env = TestEnv::new().await;
    let mut courses = Vec::new();
    for k in 0..16 {
        let meets = format!(
            "{} {:02}:00-{:02}:50",
            ["MO", "TU", "WE", "TH"][k % 4],
            8 + k / 4,
            8 + k / 4
        );
        courses.push(add(&env, &format!("T{k:02}"), course_with(3, &meets, 20, 0)).await);
    }
    import(&env, &[("six", student(9))]).await;
    let a = env.launch("a", &["--lease-ms", "1500"], &[]);
    let b = env.launch("b", &["--lease-ms", "1500"], &[]);
    seatrush_tools::rush::wait_until_balanced(&env.store, &["a", "b"], WAIT)
        .await
        .expect("the two workers share the partitions");
    let mut client = Listener::new(&env, None).await;
    let probes: Vec<_> = courses
        .iter()
        .enumerate()
        .map(|(k, c)| enroll(&format!("probe{k:02}"), c, "probe"))
        .collect();
    client.send(&probes).await;
    client
        .until(WAIT, |c| c.final_count() == probes.len())
        .await;
    let owners: HashMap<String, String> = sqlx::query(
        "SELECT o.course_id, b.worker_id FROM outcomes o \
           JOIN decision_batches b ON b.batch_id = o.batch_id WHERE o.student_id = 'probe'",
    )
    .fetch_all(&mut db(&env).await)
    .await
    .expect("owners")
    .iter()
    .map(|r| (r.get("course_id"), r.get("worker_id")))
    .collect();
    let on = |worker: &str| -> Vec<&CourseId> {
        courses
            .iter()
            .filter(|c| owners.get(c.as_str()).map(String::as_str) == Some(worker))
            .take(3)
            .collect()
    };
    let (on_a, on_b) = (on("a"), on("b"));
    assert_eq!((on_a.len(), on_b.len()), (3, 3), "owners: {owners:?}");

    // Act: six choices at once, three on each worker.
    let choices: Vec<_> = on_a
        .iter()
        .chain(&on_b)
        .enumerate()
        .map(|(i, c)| enroll(&format!("six{i}"), c, "six"))
        .collect();
    client.send(&choices).await;
    client
        .until(WAIT, |c| c.final_count() == probes.len() + choices.len())
        .await;

    // Assert
    let finals = client.finals();
    let outcomes: Vec<(&str, Option<&str>)> = (0..6)
        .map(|i| {
            let a = &finals[&format!("six{i}")];
            (a.outcome.as_str(), a.reason.as_deref())
        })
        .collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == ("enrolled", None))
            .count(),
        3,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == ("rejected", Some("credit_limit")))
            .count(),
        3,
        "{outcomes:?}"
    );
    let deciders: HashSet<String> = sqlx::query_scalar(
        "SELECT DISTINCT b.worker_id FROM outcomes o \
           JOIN decision_batches b ON b.batch_id = o.batch_id WHERE o.student_id = 'six'",
    )
    .fetch_all(&mut db(&env).await)
    .await
    .expect("deciders")
    .into_iter()
    .collect();
    assert_eq!(
        deciders.len(),
        2,
        "both workers decided some of the choices"
    );
    assert_none_contradicted(&client.received);
    assert_ledger_matches(&env).await;

    client.close().await;
    a.stop(WAIT).await.expect("a exits cleanly");
    b.stop(WAIT).await.expect("b exits cleanly");
    env.cleanup().await;
}

fn swap(
    id: &str,
    into: &CourseId,
    giving_up: &CourseId,
    who: &str,
) -> seatrush_core::domain::Request {
    request(id, Action::Swap(giving_up.clone()), into, who)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_takes_the_new_seat_and_gives_the_old_one_up_or_keeps_it() {
    // Arrange: A (one seat, one student waiting), a full course, a free one clashing with A,
    // one last seat two swaps race for; students with a cap of one course's credits.
    let mut env = TestEnv::new().await;
    let a = add(&env, "A", course_with(3, "MO 09:00-10:00", 1, 3)).await;
    let full = add(&env, "F", course_with(3, "TU 09:00-10:00", 1, 0)).await;
    let free = add(&env, "C", course_with(3, "MO 09:30-10:30", 5, 0)).await;
    let last = add(&env, "L", course_with(3, "WE 09:00-10:00", 1, 0)).await;
    let x = add(&env, "X", course_with(3, "TH 09:00-10:00", 5, 0)).await;
    let y = add(&env, "Y", course_with(3, "FR 09:00-10:00", 5, 0)).await;
    import(
        &env,
        &[
            ("mover", student(3)),
            ("waiting", student(3)),
            ("occupant", student(30)),
            ("racer1", student(3)),
            ("racer2", student(3)),
        ],
    )
    .await;
    env.start_worker(env.worker_config()).await;
    let mut client = Listener::new(&env, None).await;
    let setup = [
        enroll("m-a", &a, "mover"),
        enroll("w-a", &a, "waiting"),
        enroll("o-f", &full, "occupant"),
        enroll("r1-x", &x, "racer1"),
        enroll("r2-y", &y, "racer2"),
    ];
    for (n, step) in setup.iter().enumerate() {
        client.send(std::slice::from_ref(step)).await;
        client.until(WAIT, |c| c.final_count() == n + 1).await;
    }
    assert_eq!(client.finals()["w-a"].outcome, "waitlisted");

    // Act 1: into a full course; giving up a course not held.
    client
        .send(&[
            swap("sw-full", &full, &a, "mover"),
            swap("sw-none", &free, &last, "mover"),
        ])
        .await;
    client.until(WAIT, |c| c.final_count() == 7).await;
    let finals = client.finals();
    assert_eq!(
        (
            finals["sw-full"].outcome.as_str(),
            finals["sw-full"].reason.as_deref()
        ),
        ("rejected", Some("full"))
    );
    let none = &finals["sw-none"];
    assert_eq!(none.reason.as_deref(), Some("not_enrolled"));
    assert_eq!(none.drop_course_id.as_deref(), Some(last.as_str()));
    let held = |course: &CourseId| {
        let course = course.clone();
        let store = env.store.clone();
        async move {
            store
                .course_detail(&course)
                .await
                .expect("read")
                .expect("course")
                .enrolled_students
        }
    };
    assert_eq!(held(&a).await, ["mover"], "the old seat is kept");

    // Act 2: into a free course that clashes with the one given up, with no credits to spare
    // besides it: judged as if the old seat were already dropped.
    client.send(&[swap("sw-free", &free, &a, "mover")]).await;
    client
        .until(WAIT, |c| {
            c.final_count() == 8 && c.received.iter().any(|a| a.is_promotion())
        })
        .await;
    assert_eq!(client.finals()["sw-free"].outcome, "enrolled");
    assert_eq!(held(&free).await, ["mover"]);
    assert_eq!(
        held(&a).await,
        ["waiting"],
        "the old seat went to the head of its waitlist"
    );
    let promoted = client
        .received
        .iter()
        .find(|a| a.is_promotion())
        .expect("a promotion");
    assert_eq!(promoted.request_id, "w-a");
    assert!(
        promoted
            .promoted_by
            .as_deref()
            .is_some_and(|by| by.starts_with("swap-"))
    );

    // Act 3: two swaps race for the last seat.
    client
        .send(&[
            swap("race1", &last, &x, "racer1"),
            swap("race2", &last, &y, "racer2"),
        ])
        .await;
    client.until(WAIT, |c| c.final_count() == 10).await;
    let finals = client.finals();
    let (won, lost, lost_seat) = if finals["race1"].outcome == "enrolled" {
        ("racer1", "race2", &y)
    } else {
        ("racer2", "race1", &x)
    };
    assert_eq!(
        finals[lost].reason.as_deref(),
        Some("full"),
        "{:?}",
        finals[lost]
    );
    crate::helpers::eventually("the winner's old seat released", WAIT, || async {
        let released = held(&x).await.is_empty() || held(&y).await.is_empty();
        released.then_some(())
    })
    .await;
    assert_eq!(held(&last).await, [won]);
    let loser = if won == "racer1" { "racer2" } else { "racer1" };
    assert_eq!(
        held(lost_seat).await,
        [loser],
        "the losing swap keeps its seat"
    );
    assert_none_contradicted(&client.received);
    assert_ledger_matches(&env).await;

    client.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_finds_each_breach_of_the_rules_planted_behind_the_workers_back() {
    // Arrange: a student holding two seats through the workers.
    let mut env = TestEnv::new().await;
    let a = add(&env, "A", course_with(3, "MO 09:00-10:00", 5, 0)).await;
    let b = add(&env, "B", course_with(3, "MO 09:30-10:30", 5, 0)).await;
    let c = add(&env, "C", course_with(3, "TU 09:00-10:00", 5, 0)).await;
    import(&env, &[("s", student(6)), ("t", student(6))]).await;
    env.start_worker(env.worker_config()).await;
    let mut client = Listener::new(&env, None).await;
    client
        .send(&[enroll("s-a", &a, "s"), enroll("s-c", &c, "s")])
        .await;
    client.until(WAIT, |c| c.final_count() == 2).await;
    assert_ledger_matches(&env).await;
    env.stop_workers().await;

    // Act: a seat with no ledger row, a cap lowered under what is held, a ledger row with
    // no seat, and (the constraint set aside) a clashing one.
    let mut db = db(&env).await;
    sqlx::query("UPDATE students SET max_credits = 3 WHERE student_id = 's'")
        .execute(&mut db)
        .await
        .expect("lower the cap");
    let planted: [(&str, &CourseId); 4] = [
        (
            "INSERT INTO enrollments (course_id, student_id, request_id) VALUES ($1, 't', 'planted-1')",
            &b,
        ),
        (
            "UPDATE courses SET enrolled = enrolled + 1 WHERE course_id = $1",
            &b,
        ),
        (
            "DELETE FROM enrollments WHERE course_id = $1 AND student_id = 's'",
            &c,
        ),
        (
            "UPDATE courses SET enrolled = enrolled - 1 WHERE course_id = $1",
            &c,
        ),
    ];
    for (statement, course) in planted {
        sqlx::query(statement)
            .bind(course.as_str())
            .execute(&mut db)
            .await
            .expect(statement);
    }
    let refused = sqlx::query(
        "INSERT INTO student_seats \
           (student_id, course_id, credits, meetings, minutes, request_id, held) \
         VALUES ('s', $1, 0, 'MO 09:30-10:30', '{[570,630)}', 'planted-2', true)",
    )
    .bind(b.as_str())
    .execute(&mut db)
    .await;
    assert!(
        refused.is_err(),
        "Postgres refuses a clashing seat in the ledger"
    );

    // Assert
    let violations = env.store.audit().await.expect("audit");
    let found: HashSet<&str> = violations.iter().map(|v| v.check).collect();
    for check in [
        "seat_without_ledger",
        "credits_over_cap",
        "ledger_without_seat",
    ] {
        assert!(
            found.contains(check),
            "{check} not found in {violations:#?}"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_put_on_mid_rush_refuses_what_follows_and_its_clearing_lets_it_through() {
    // Arrange: a course with room for everyone, 300 students, and a crowd of them asking
    // while an operator puts a hold on one account and clears it.
    let mut env = TestEnv::new().await;
    let course = add(&env, "H", course_with(3, "MO 09:00-10:00", 400, 0)).await;
    let other = add(&env, "I", course_with(3, "TU 09:00-10:00", 400, 0)).await;
    let names: Vec<String> = (0..300).map(|i| format!("crowd{i:03}")).collect();
    let mut registry: Vec<(&str, StudentRecord)> =
        names.iter().map(|n| (n.as_str(), student(9))).collect();
    registry.push(("debtor", student(9)));
    import(&env, &registry).await;
    env.start_worker(env.worker_config()).await;
    let mut client = Listener::new(&env, None).await;
    let crowd: Vec<_> = names
        .iter()
        .map(|n| enroll(&format!("c-{n}"), &course, n))
        .collect();
    let hold = |args: &[&str]| {
        let mut command = env.seatrush();
        command.args(args);
        async move { command.output().await.expect("run seatrush") }
    };

    // Act
    client.send(&crowd[..150]).await;
    let put = hold(&["students", "hold", "debtor", "unpaid_fees", "--json"]).await;
    assert!(put.status.success(), "{put:?}");
    client.send(&[enroll("d-1", &course, "debtor")]).await;
    client.send(&crowd[150..]).await;
    client.until(WAIT, |c| c.final_count() == 301).await;
    let cleared = hold(&["students", "clear-hold", "debtor", "unpaid_fees", "--json"]).await;
    assert!(cleared.status.success(), "{cleared:?}");
    client.send(&[enroll("d-2", &other, "debtor")]).await;
    client.until(WAIT, |c| c.final_count() == 302).await;

    // Assert
    let finals = client.finals();
    let refused = &finals["d-1"];
    assert_eq!(refused.reason.as_deref(), Some("hold"), "{refused:?}");
    assert_eq!(
        refused.holds.as_deref(),
        Some(&["unpaid_fees".to_owned()][..])
    );
    assert_eq!(finals["d-2"].outcome, "enrolled");
    assert!(
        names
            .iter()
            .all(|n| finals[&format!("c-{n}")].outcome == "enrolled"),
        "the crowd around the hold is served as usual"
    );
    assert_none_contradicted(&client.received);
    assert_ledger_matches(&env).await;

    client.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_whose_worker_dies_between_its_commit_and_its_release_completes_on_another() {
    // Arrange: the mover holds A, someone waits for A; a worker that dies right after its
    // third commit (the swap's), before publishing anything of it.
    let env = TestEnv::new().await;
    let a = add(&env, "A", course_with(3, "MO 09:00-10:00", 1, 3)).await;
    let b = add(&env, "B", course_with(3, "MO 09:00-10:00", 5, 0)).await;
    import(&env, &[("mover", student(3)), ("waiting", student(3))]).await;
    let crash = format!(
        "{}=2*off->1*return(abort)",
        seatrush_core::failpoint::AFTER_COMMIT
    );
    let mut doomed = env.launch(
        "doomed",
        &["--lease-ms", "800"],
        &[("FAILPOINTS", crash.as_str())],
    );
    env.wait_for_partitions().await;
    let mut client = Listener::new(&env, None).await;
    client.send(&[enroll("m-a", &a, "mover")]).await;
    client.until(WAIT, |c| c.final_count() == 1).await;
    client.send(&[enroll("w-a", &a, "waiting")]).await;
    client.until(WAIT, |c| c.final_count() == 2).await;

    // Act: the swap is committed, then its worker dies; a successor gets it redelivered.
    client.send(&[swap("sw", &b, &a, "mover")]).await;
    let status = doomed
        .exited(WAIT)
        .await
        .expect("the worker dies after the swap's commit");
    assert!(!status.success(), "{status}");
    let successor = env.launch("successor", &["--lease-ms", "800"], &[]);
    client
        .until(WAIT, |c| {
            c.finals().contains_key("sw") && c.received.iter().any(|a| a.is_promotion())
        })
        .await;

    // Assert: the swap's answer is the committed one, the old seat was given back by the
    // successor and went to the head of its waitlist; the ledger agrees.
    let sw = &client.finals()["sw"];
    assert_eq!(
        (sw.outcome.as_str(), sw.replayed),
        ("enrolled", true),
        "{sw:?}"
    );
    crate::helpers::eventually("the old seat released", WAIT, || async {
        let detail = env
            .store
            .course_detail(&a)
            .await
            .expect("read")
            .expect("course");
        (detail.enrolled_students == ["waiting"]).then_some(())
    })
    .await;
    let in_b = env
        .store
        .course_detail(&b)
        .await
        .expect("read")
        .expect("course");
    assert_eq!(in_b.enrolled_students, ["mover"]);
    assert_none_contradicted(&client.received);
    assert_ledger_matches(&env).await;

    client.close().await;
    successor
        .stop(WAIT)
        .await
        .expect("the successor exits cleanly");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draw_passes_over_an_entrant_the_rules_refuse_and_gives_the_seats_to_the_next() {
    // Arrange: a draw course of 2 seats and 10 waitlist places opening in a few seconds, 8
    // entrants, 4 of whom already hold their 3 credits in another course (so the draw must
    // pass them over whatever their ranks).
    let mut env = TestEnv::new().await;
    let opens_at = Utc::now() + Span::seconds(4);
    let draw = add(
        &env,
        "D",
        CourseSettings {
            capacity: 2,
            waitlist: 10,
            credits: 3,
            meetings: Meetings::parse("FR 09:00-10:00").expect("valid"),
            opens_at: Some(opens_at),
            opening: seatrush_core::domain::Opening::Draw,
            entries_open_at: Some(opens_at - Span::hours(1)),
            draw_seed: Some(seatrush_core::domain::DrawSeed::generate()),
            ..CourseSettings::default()
        },
    )
    .await;
    let other = add(&env, "O", course_with(3, "MO 09:00-10:00", 10, 0)).await;
    let names: Vec<String> = (0..8).map(|i| format!("entrant{i}")).collect();
    let registry: Vec<(&str, StudentRecord)> =
        names.iter().map(|n| (n.as_str(), student(3))).collect();
    import(&env, &registry).await;
    env.start_worker(env.worker_config()).await;
    let mut client = Listener::new(&env, None).await;
    let loaded: Vec<_> = names[..4]
        .iter()
        .map(|n| enroll(&format!("o-{n}"), &other, n))
        .collect();
    client.send(&loaded).await;
    client.until(WAIT, |c| c.final_count() == 4).await;
    let entries: Vec<_> = names
        .iter()
        .map(|n| enroll(&format!("d-{n}"), &draw, n))
        .collect();
    client.send(&entries).await;
    client.until(WAIT, |c| c.final_count() == 12).await;
    assert!(
        names
            .iter()
            .all(|n| client.finals()[&format!("d-{n}")].outcome == "queued"),
        "{:?}",
        client.finals()
    );

    // Act: the opening comes; the draw ranks all eight.
    client
        .until(WAIT, |c| {
            c.received
                .iter()
                .filter(|a| a.stage == Stage::Final && a.draw_position.is_some())
                .count()
                == 8
        })
        .await;

    // Assert: the two seats went to the best-ranked entrants with credits to spare; the others
    // wait; the audit (draw order included) and the ledger agree.
    let detail = env
        .store
        .course_detail(&draw)
        .await
        .expect("read")
        .expect("course");
    assert_eq!(detail.enrolled_students.len(), 2);
    for held in &detail.enrolled_students {
        assert!(names[4..].contains(held), "{held} had no credits to spare");
    }
    let results: HashMap<String, (String, u32)> = client
        .received
        .iter()
        .filter(|a| a.stage == Stage::Final && a.draw_position.is_some())
        .map(|a| {
            (
                a.student_id.clone(),
                (a.outcome.clone(), a.draw_position.unwrap_or(0)),
            )
        })
        .collect();
    let free_ranks: Vec<u32> = names[4..].iter().map(|n| results[n].1).collect();
    let mut best: Vec<u32> = free_ranks.clone();
    best.sort_unstable();
    for n in &names[4..] {
        let (outcome, rank) = &results[n];
        let expected = if best[..2].contains(rank) {
            "enrolled"
        } else {
            "waitlisted"
        };
        assert_eq!(outcome, expected, "{n} ranked {rank}: {results:?}");
    }
    assert_ledger_matches(&env).await;

    client.close().await;
    env.cleanup().await;
}
