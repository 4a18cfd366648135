//! Crashes and restarts: an actor that panics, a worker stopped mid-burst.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::helpers::{TestEnv, assert_exactly_one_final, enroll};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_actor_is_restarted_and_the_message_keeps_its_one_outcome() {
    // Arrange: the course's fail point panics on its first evaluation only.
    let mut env = TestEnv::new().await;
    let courses = env
        .add_courses(&format!("{}p", env.topology.prefix), 1, 3)
        .await;
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    fail::cfg_callback(format!("course-decide-{}", courses[0]), move || {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("injected panic in the course actor");
        }
    })
    .expect("configure the fail point");
    env.start_worker(env.worker_config()).await;
    let requests = (0..5)
        .map(|s| enroll(&format!("p{s}"), &courses[0], &format!("s{s}")))
        .collect();

    // Act
    let report = env.fire(requests).await;

    // Assert
    assert!(
        hits.load(Ordering::SeqCst) >= 2,
        "the fail point did not fire: run the tests with --features failpoints (scripts/test.sh does)"
    );
    assert_exactly_one_final(&report);
    let outcomes = report.outcomes();
    assert_eq!(outcomes.get("enrolled"), Some(&3), "{outcomes:?}");
    assert_eq!(outcomes.get("rejected/full"), Some(&2), "{outcomes:?}");
    env.assert_consistent(&report, &courses).await;
    fail::remove(format!("course-decide-{}", courses[0]));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_then_restart_loses_and_doubles_nothing() {
    // Arrange: a worker process (so it gets a real SIGTERM) and a crowd bigger than one burst.
    let env = TestEnv::new().await;
    let courses = env.add_courses("t", 40, 30).await;
    let first = env.worker_process("first");
    env.wait_for_partitions().await;
    let requests = seatrush_tools::rush::crowd(&courses, 6000, 1, "burst", 3).expect("crowd");
    let ids: Vec<String> = requests.iter().map(|r| r.request_id.to_string()).collect();
    let crowd = {
        let amqp_url = env.amqp_url.clone();
        let topology = env.topology.clone();
        tokio::spawn(async move {
            seatrush_tools::load::fire(&amqp_url, &topology, requests, Duration::from_secs(180))
                .await
        })
    };

    // Act: stop the worker once it has committed part of the crowd, then start another.
    crate::helpers::committed_batches(&env.store, 3).await;
    first
        .stop(Duration::from_secs(60))
        .await
        .expect("the worker drains and exits 0 on SIGTERM");
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let decided_before_restart = env.store.count_outcomes(&ids).await.expect("count");
    let second = env.worker_process("second");
    let report = crowd.await.expect("crowd task").expect("crowd");
    crate::schema::assert_valid_report(&report);
    second
        .stop(Duration::from_secs(60))
        .await
        .expect("the second worker exits 0");

    // Assert
    // The SIGTERM came mid-burst: the first worker left part of the crowd to the second.
    assert!(
        decided_before_restart < ids.len() as i64,
        "the first worker decided all {} requests before its SIGTERM",
        ids.len()
    );
    assert_exactly_one_final(&report);
    env.assert_consistent(&report, &courses).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_and_idle_actors_come_back_with_their_state() {
    // Arrange: six one-seat courses but room for only two live actors, which also stop when idle
    // for 200 ms; so every course actor is stopped and restarted along the way.
    let mut env = TestEnv::new().await;
    let courses = env.add_courses("few", 6, 1).await;
    let mut config = env.worker_config();
    config.max_actors = 2;
    config.idle_timeout = Duration::from_millis(200);
    env.start_worker(config).await;
    let first: Vec<_> = courses
        .iter()
        .map(|c| enroll(&format!("a-{c}"), c, "a"))
        .collect();

    // Act
    let round1 = env.fire(first.clone()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut second: Vec<_> = courses
        .iter()
        .map(|c| enroll(&format!("b-{c}"), c, "b"))
        .collect();
    second.extend(first);
    let round2 = env.fire(second).await;

    // Assert: the seat taken in round 1 and its request id were reloaded from Postgres.
    assert_exactly_one_final(&round1);
    assert_eq!(round1.outcomes().get("enrolled"), Some(&6));
    assert_exactly_one_final(&round2);
    for answered in &round2.answered {
        let (answer, _) = &answered.finals[0];
        if answer.student_id == "b" {
            assert_eq!(
                (answer.outcome.as_str(), answer.reason.as_deref()),
                ("rejected", Some("full"))
            );
        } else {
            assert_eq!(answer.outcome, "enrolled");
            assert!(answer.replayed, "the stored outcome is replayed");
        }
    }
    env.assert_consistent(&round2, &courses).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_request_already_answered_gets_no_second_final_answer() {
    // Arrange: the first ack for this course is lost, as if the worker died right after
    // answering; the broker then redelivers the request.
    let mut env = TestEnv::new().await;
    let courses = env
        .add_courses(&format!("{}l", env.topology.prefix), 1, 3)
        .await;
    fail::cfg(format!("finalize-lose-ack-{}", courses[0]), "1*return")
        .expect("configure the fail point");
    env.start_worker(env.worker_config()).await;
    let broker = env.broker().await;
    let publisher = broker.confirmed_publisher().await.expect("publisher");
    let (queue, mut replies) = broker.reply_queue().await.expect("reply queue");
    let to = seatrush_core::amqp::ReplyTo {
        queue,
        correlation_id: None,
        batch: false,
    };
    let request = enroll("lost-ack-1", &courses[0], "s1");

    // Act
    publisher
        .send_confirmed(seatrush_core::amqp::Outgoing::request(
            &env.topology,
            request.course_id.as_str(),
            request.request_id.as_str(),
            Some(&to),
            seatrush_core::protocol::request_body(&request),
        ))
        .await
        .expect("publish");
    let mut answers = Vec::new();
    let start = std::time::Instant::now();
    // Until the redelivery shows (its replayed provisional answer), then a little longer for
    // any second final answer.
    let mut quiet_until = None;
    while start.elapsed() < Duration::from_secs(30)
        && quiet_until.is_none_or(|t| std::time::Instant::now() < t)
    {
        let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_millis(200), replies.next()).await
        else {
            continue;
        };
        crate::schema::assert_valid_answer(&message.body);
        let answer = seatrush_core::client::parse_answer(&message.body).expect("JSON");
        if answer.stage == seatrush_core::protocol::Stage::Provisional && answer.replayed {
            quiet_until = Some(std::time::Instant::now() + Duration::from_secs(2));
        }
        answers.push(answer);
    }

    // Assert
    let provisional_replays = answers
        .iter()
        .filter(|a| a.stage == seatrush_core::protocol::Stage::Provisional && a.replayed)
        .count();
    let finals: Vec<_> = answers
        .iter()
        .filter(|a| a.stage == seatrush_core::protocol::Stage::Final)
        .collect();
    assert_eq!(
        provisional_replays, 1,
        "the request was redelivered once: {answers:#?}"
    );
    assert_eq!(finals.len(), 1, "one final answer only: {answers:#?}");
    assert_eq!(finals[0].outcome, "enrolled");
    assert!(env.store.audit().await.expect("audit").is_empty());
    fail::remove(format!("finalize-lose-ack-{}", courses[0]));
    broker.close().await;
    env.cleanup().await;
}
