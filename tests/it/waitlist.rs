//! Waitlists, drops, windows and course changes, against a real worker, RabbitMQ and Postgres.

use std::time::Duration;

use chrono::Utc;
use sqlx::Connection;

use seatrush_core::client::EventFilter;
use seatrush_core::domain::{Action, CourseSettings};

use crate::helpers::{Listener, TestEnv, WAIT, enroll, request};

fn student(i: usize) -> String {
    format!("s{i:03}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_course_waitlists_in_order_and_drops_promote_the_head() {
    // Arrange: 30 seats, 20 waitlist places, 100 students asking in order.
    let mut env = TestEnv::new().await;
    let settings = CourseSettings {
        capacity: 30,
        waitlist: 20,
        ..CourseSettings::default()
    };
    let course = env.add_courses_with("W", 1, settings).await.remove(0);
    env.start_worker(env.worker_config()).await;
    let mut client = Listener::new(&env, Some(EventFilter::course(course.clone()))).await;
    let enrolls: Vec<_> = (0..100)
        .map(|i| enroll(&format!("e{i:03}"), &course, &student(i)))
        .collect();

    // Act 1: the rush.
    client.send(&enrolls).await;
    client.until(WAIT, |c| c.final_count() == 100).await;

    // Assert 1: the first 30 in, the next 20 waitlisted at 1..20 in arrival order, 50 full.
    let finals = client.finals();
    for i in 0..100 {
        let answer = &finals[&format!("e{i:03}")];
        match i {
            0..30 => assert_eq!(
                (answer.outcome.as_str(), answer.reason.as_deref()),
                ("enrolled", None)
            ),
            30..50 => {
                assert_eq!(answer.outcome, "waitlisted", "{answer:?}");
                assert_eq!(
                    answer.waitlist_position,
                    Some(u32::try_from(i - 29).unwrap())
                );
            }
            _ => assert_eq!(
                (answer.outcome.as_str(), answer.reason.as_deref()),
                ("rejected", Some("full"))
            ),
        }
    }

    // Act 2: five enrolled students drop.
    let drops: Vec<_> = (0..5)
        .map(|i| request(&format!("d{i:03}"), Action::Drop, &course, &student(i)))
        .collect();
    client.send(&drops).await;
    client
        .until(WAIT, |c| {
            c.final_count() == 105
                && c.promotions().len() == 5
                && c.seen_events.iter().filter(|e| e.is_promotion()).count() == 5
        })
        .await;

    // Assert 2: the first five on the waitlist are promoted, in order, each told both on the
    // reply address of its enroll and on the events exchange; the rest moved up by five.
    let finals = client.finals();
    for i in 0..5 {
        assert_eq!(finals[&format!("d{i:03}")].outcome, "dropped");
    }
    let promoted: Vec<(String, String, Option<String>)> = client
        .promotions()
        .into_iter()
        .map(|p| (p.student_id, p.request_id, p.promoted_by))
        .collect();
    let expected: Vec<(String, String, Option<String>)> = (0..5)
        .map(|i| {
            (
                student(30 + i),
                format!("e{:03}", 30 + i),
                Some(format!("d{i:03}")),
            )
        })
        .collect();
    assert_eq!(promoted, expected);
    let mut evented: Vec<String> = client
        .seen_events
        .iter()
        .filter(|e| e.is_promotion())
        .map(|e| e.student_id.clone())
        .collect();
    evented.sort();
    assert_eq!(evented, (30..35).map(student).collect::<Vec<_>>());
    let detail = env
        .store
        .course_detail(&course)
        .await
        .expect("read")
        .expect("course");
    assert_eq!(detail.waitlist, (35..50).map(student).collect::<Vec<_>>());
    assert_eq!(detail.course.enrolled, 30);
    for i in 0..5 {
        assert!(!detail.enrolled_students.contains(&student(i)));
        assert!(detail.enrolled_students.contains(&student(30 + i)));
    }

    // Act 3: a waitlisted student asks again, another leaves the waitlist, someone drops what
    // they do not hold, and a drop is re-published.
    client.send(&[enroll("again", &course, &student(40))]).await;
    client.until(WAIT, |c| c.final_count() == 106).await;
    client
        .send(&[
            request("leave", Action::Drop, &course, &student(35)),
            request("nothing", Action::Drop, &course, &student(99)),
            request("d000", Action::Drop, &course, &student(0)),
        ])
        .await;
    client.until(WAIT, |c| c.final_count() == 109).await;

    // Assert 3: true positions at the moment of each answer; no second promotion on replay.
    let finals = client.finals();
    let again = &finals["again"];
    assert_eq!(
        (
            again.outcome.as_str(),
            again.reason.as_deref(),
            again.waitlist_position
        ),
        ("waitlisted", Some("already_waitlisted"), Some(6))
    );
    let leave = &finals["leave"];
    assert_eq!(
        (leave.outcome.as_str(), leave.waitlist_position),
        ("dropped", Some(1))
    );
    assert_eq!(finals["nothing"].reason.as_deref(), Some("not_enrolled"));
    let replay = client
        .received
        .iter()
        .rfind(|a| a.request_id == "d000" && a.stage == seatrush_core::protocol::Stage::Final)
        .expect("the replayed drop's final answer");
    assert!(replay.replayed);
    assert_eq!(client.promotions().len(), 5);
    let detail = env
        .store
        .course_detail(&course)
        .await
        .expect("read")
        .expect("course");
    assert_eq!(detail.waitlist, (36..50).map(student).collect::<Vec<_>>());
    let violations = env.store.audit().await.expect("audit");
    assert!(violations.is_empty(), "{violations:#?}");

    client.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_and_enrolls_racing_in_one_batch_keep_the_counts_right() {
    // Arrange: a long linger, so requests published together are committed together.
    let mut env = TestEnv::new().await;
    let one_seat = CourseSettings {
        capacity: 1,
        waitlist: 1,
        ..CourseSettings::default()
    };
    let tight = env.add_courses_with("R", 1, one_seat).await.remove(0);
    let roomy = env.add_courses("Q", 1, 5).await.remove(0);
    let mut config = env.worker_config();
    config.batch_linger = Duration::from_millis(400);
    env.start_worker(config).await;
    let mut client = Listener::new(&env, None).await;
    client.send(&[enroll("a1", &tight, "alice")]).await;
    client.until(WAIT, |c| c.final_count() == 1).await;

    // Act: join the waitlist, the holder drops (promoting the newcomer), another joins; on the
    // other course the same student enrolls and drops, and another takes a seat.
    let racing = [
        enroll("b1", &tight, "bob"),
        request("a2", Action::Drop, &tight, "alice"),
        enroll("c1", &tight, "carol"),
        enroll("x1", &roomy, "xavier"),
        request("x2", Action::Drop, &roomy, "xavier"),
        enroll("y1", &roomy, "yvonne"),
    ];
    client.send(&racing).await;
    client
        .until(WAIT, |c| c.final_count() == 7 && c.promotions().len() == 1)
        .await;

    // Assert: one batch, every answer as decided, the database in step, the audit clean.
    let mut db = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("connect");
    let ids: Vec<&str> = racing.iter().map(|r| r.request_id.as_str()).collect();
    let batches: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT batch_id) FROM outcomes WHERE request_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(&mut db)
    .await
    .expect("count batches");
    assert_eq!(batches, 1, "the racing requests were committed together");
    let finals = client.finals();
    let said = |id: &str| {
        let a = &finals[id];
        (a.outcome.clone(), a.revised)
    };
    assert_eq!(said("b1"), ("waitlisted".into(), false));
    assert_eq!(said("a2"), ("dropped".into(), false));
    assert_eq!(said("c1"), ("waitlisted".into(), false));
    assert_eq!(finals["c1"].waitlist_position, Some(1));
    assert_eq!(said("x1"), ("enrolled".into(), false));
    assert_eq!(said("x2"), ("dropped".into(), false));
    assert_eq!(said("y1"), ("enrolled".into(), false));
    assert_eq!(client.promotions()[0].student_id, "bob");
    let tight_now = env
        .store
        .course_detail(&tight)
        .await
        .expect("read")
        .expect("course");
    assert_eq!(tight_now.enrolled_students, vec!["bob".to_owned()]);
    assert_eq!(tight_now.waitlist, vec!["carol".to_owned()]);
    let roomy_now = env
        .store
        .course_detail(&roomy)
        .await
        .expect("read")
        .expect("course");
    assert_eq!(roomy_now.enrolled_students, vec!["yvonne".to_owned()]);
    assert_eq!(roomy_now.course.enrolled, 1);
    let violations = env.store.audit().await.expect("audit");
    assert!(violations.is_empty(), "{violations:#?}");

    db.close().await.expect("close");
    client.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outside_the_window_say_when_it_opens_or_closed() {
    // Arrange
    let mut env = TestEnv::new().await;
    let now = Utc::now();
    let later = now + chrono::Duration::hours(1);
    let earlier = now - chrono::Duration::hours(1);
    let soon = now + chrono::Duration::seconds(3);
    let with = |opens_at, closes_at| CourseSettings {
        capacity: 5,
        opens_at,
        closes_at,
        ..CourseSettings::default()
    };
    let not_yet = env
        .add_courses_with("O", 1, with(Some(later), None))
        .await
        .remove(0);
    let closed = env
        .add_courses_with("C", 1, with(None, Some(earlier)))
        .await
        .remove(0);
    let opening = env
        .add_courses_with("S", 1, with(Some(soon), None))
        .await
        .remove(0);
    env.start_worker(env.worker_config()).await;
    let mut client = Listener::new(&env, None).await;

    // Act
    client
        .send(&[
            enroll("early", &not_yet, "s1"),
            enroll("late", &closed, "s1"),
            request("late-drop", Action::Drop, &closed, "s1"),
            enroll("too-soon", &opening, "s1"),
        ])
        .await;
    client.until(WAIT, |c| c.final_count() == 4).await;
    let wait = (soon - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(200);
    tokio::time::sleep(wait).await;
    client.send(&[enroll("on-time", &opening, "s1")]).await;
    client.until(WAIT, |c| c.final_count() == 5).await;

    // Assert
    let finals = client.finals();
    let instant = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let early = &finals["early"];
    assert_eq!(early.reason.as_deref(), Some("not_open"));
    assert_eq!(early.opens_at, Some(instant(later)));
    let late = &finals["late"];
    assert_eq!(late.reason.as_deref(), Some("closed"));
    assert_eq!(late.closes_at, Some(instant(earlier)));
    assert_eq!(finals["late-drop"].reason.as_deref(), Some("closed"));
    assert_eq!(finals["too-soon"].reason.as_deref(), Some("not_open"));
    assert_eq!(finals["on-time"].outcome, "enrolled");

    client.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_limit_nacks_a_producer_instead_of_growing() {
    // Arrange: a tiny per-queue limit and no worker, so the queue fills.
    let mut env = TestEnv::new().await;
    env.topology.max_queue_length = 5;
    let course = env.add_courses("N", 1, 5).await.remove(0);
    let broker = env.broker().await;
    broker.declare(&env.topology).await.expect("declare");
    let publisher = broker.confirmed_publisher().await.expect("publisher");

    // Act
    let mut confirmed = 0;
    let mut nacked = 0;
    for i in 0..12 {
        let r = enroll(&format!("n{i}"), &course, &format!("s{i}"));
        let message = seatrush_core::amqp::Outgoing::request(
            &env.topology,
            course.as_str(),
            r.request_id.as_str(),
            None,
            seatrush_core::protocol::request_body(&r),
        );
        match publisher.send_confirmed(message).await {
            Ok(()) => confirmed += 1,
            Err(seatrush_core::amqp::AmqpError::Nacked(_)) => nacked += 1,
            Err(e) => panic!("unexpected publish error: {e}"),
        }
    }

    // Assert: the broker took about five (a quorum queue checks the limit before it appends,
    // so it may hold one more) and said no to the rest.
    assert!((5..=6).contains(&confirmed), "{confirmed} confirmed");
    assert_eq!(confirmed + nacked, 12);

    broker.close().await;
    env.cleanup().await;
}
