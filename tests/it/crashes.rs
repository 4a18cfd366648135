//! A worker killed at each dangerous instant mid-rush: the next worker finishes the job from
//! what Postgres and the queues hold, and every request keeps one outcome.

use std::time::Duration;

use seatrush_core::client::EventFilter;
use seatrush_core::domain::{Action, CourseSettings};
use seatrush_core::failpoint;

use crate::helpers::{Listener, TestEnv, WAIT, enroll, request};

/// Runs a crowd against a worker that aborts the first time it passes `point`, then against a
/// fresh worker, and checks the outcome.
async fn crash_at(point: &str) {
    // Arrange: courses with a waitlist, a crowd with duplicate request ids.
    let env = TestEnv::new().await;
    let prefix = format!("{}c", env.topology.prefix);
    let settings = CourseSettings {
        capacity: 10,
        waitlist: 5,
        ..CourseSettings::default()
    };
    let courses = env.add_courses_with(&prefix, 20, settings).await;
    let requests = TestEnv::crowd_with_duplicates(&courses, 400, 2, &prefix, 5);
    let action = format!("{point}=1*return(abort)");
    let mut doomed = env.worker_process_with_env("doomed", &[("FAILPOINTS", action.as_str())]);
    env.wait_for_partitions().await;
    let crowd = env.spawn_crowd(
        requests,
        seatrush_tools::load::Pace::Burst,
        Duration::from_secs(120),
    );

    // Act: the worker dies at the point; another takes over once the leases lapse.
    let status = doomed
        .exited(Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("the worker never reached {point}"));
    assert!(!status.success(), "the worker aborted at {point}: {status}");
    let successor = env.worker_process("successor");
    let report = crowd.await.expect("crowd task").expect("crowd");
    successor
        .stop(Duration::from_secs(60))
        .await
        .expect("the successor exits 0");

    // Assert: every request id has a final answer (a client keys answers by request id; a
    // duplicate publish redelivered after its id was answered is acked without a second
    // answer), and all final answers of one id agree. One publish gets two final answers only
    // after a crash between the broker's confirm and its record (then the later one replays).
    // The database is consistent with the answers.
    crate::helpers::assert_one_outcome_per_id(&report);
    if point != failpoint::AFTER_PUBLISH {
        assert_eq!(
            report.duplicated(),
            0,
            "one publish answered twice after a crash at {point}"
        );
    }
    env.assert_consistent(&report, &courses).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_deciding_loses_nothing() {
    crash_at(failpoint::AFTER_DECIDE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_committing_loses_nothing() {
    crash_at(failpoint::AFTER_COMMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_publishing_loses_nothing() {
    crash_at(failpoint::AFTER_PUBLISH).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_before_acking_loses_nothing() {
    crash_at(failpoint::BEFORE_ACK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_is_fenced_out_and_gives_its_partitions_back() {
    // Arrange: a worker with a 2 s lease, paused mid-crowd for longer than that.
    let env = TestEnv::new().await;
    let prefix = format!("{}f", env.topology.prefix);
    let courses = env.add_courses(&prefix, 20, 15).await;
    let requests = TestEnv::crowd_with_duplicates(&courses, 600, 2, &prefix, 9);
    let paused = env.worker_process_args("paused", &["--lease-ms", "2000"]);
    env.wait_for_partitions().await;
    let crowd = env.spawn_crowd(
        requests,
        seatrush_tools::load::Pace::Rate(300.0),
        Duration::from_secs(90),
    );
    crate::helpers::committed_batches(&env.store, 2).await;

    // Act: pause the owner past its lease; another worker takes the partitions; resume it.
    paused
        .signal(nix::sys::signal::Signal::SIGSTOP)
        .expect("pause the worker");
    let taker = env.worker_process_args("taker", &["--lease-ms", "2000"]);
    // The paused owner's lease lapses and the taker acquires every partition.
    crate::helpers::eventually("the taker owns every partition", WAIT, || async {
        let (_, partitions) = env.store.ownership().await.ok()?;
        partitions
            .iter()
            .all(|p| p.owner.as_deref() == Some("taker"))
            .then_some(())
    })
    .await;
    paused
        .signal(nix::sys::signal::Signal::SIGCONT)
        .expect("resume the worker");
    let report = crowd.await.expect("crowd task").expect("crowd");
    let taken = env.store.live_partitions().await.expect("partitions");
    paused
        .stop(Duration::from_secs(60))
        .await
        .expect("the paused worker exits 0");
    taker
        .stop(Duration::from_secs(60))
        .await
        .expect("the taker exits 0");

    // Assert: every request id answered and consistent with the database; the resumed
    // worker's stale commits were refused (it logged being fenced or losing its leases).
    crate::schema::assert_valid_report(&report);
    assert_eq!(report.lost(), 0, "request ids without a final answer");
    assert_eq!(taken, i64::from(env.topology.partitions));
    let log = std::fs::read_to_string(
        env.log_dir()
            .join(format!("{}-paused.log", env.topology.prefix)),
    )
    .expect("the paused worker's log");
    assert!(
        log.contains("lost partition lease"),
        "the resumed worker noticed it lost its partitions"
    );
    env.assert_consistent(&report, &courses).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_redelivered_after_a_crash_still_announces_its_promotion() {
    // Arrange: one seat held by alice, bob first on the waitlist, and a worker that dies right
    // after its third commit, before publishing anything of it.
    let env = TestEnv::new().await;
    let prefix = format!("{}p", env.topology.prefix);
    let settings = CourseSettings {
        capacity: 1,
        waitlist: 1,
        ..CourseSettings::default()
    };
    let course = env.add_courses_with(&prefix, 1, settings).await.remove(0);
    let crash = format!("{}=2*off->1*return(abort)", failpoint::AFTER_COMMIT);
    let mut doomed = env.launch(
        "doomed",
        &["--lease-ms", "800"],
        &[("FAILPOINTS", crash.as_str())],
    );
    env.wait_for_partitions().await;
    let mut client = Listener::new(&env, Some(EventFilter::course(course.clone()))).await;
    client.send(&[enroll("a1", &course, "alice")]).await;
    client.until(WAIT, |c| c.final_count() == 1).await;
    client.send(&[enroll("b1", &course, "bob")]).await;
    client.until(WAIT, |c| c.final_count() == 2).await;

    // Act: alice drops; the drop and bob's promotion are committed, then the worker dies before
    // telling anyone. A successor gets the drop redelivered.
    client
        .send(&[request("a2", Action::Drop, &course, "alice")])
        .await;
    let status = doomed
        .exited(WAIT)
        .await
        .expect("the worker dies after committing the drop");
    assert!(!status.success(), "{status}");
    let committed = env.store.course_detail(&course).await.expect("read");
    let successor = env.launch("successor", &["--lease-ms", "800"], &[]);
    let bob_told = |c: &Listener| {
        c.seen_events
            .iter()
            .any(|e| e.is_promotion() && e.student_id == "bob")
    };
    client
        .until(WAIT, |c| {
            c.finals().contains_key("a2") && !c.promotions().is_empty() && bob_told(c)
        })
        .await;

    // Assert: the drop was durable before the crash; its redelivery replays it and announces
    // bob's promotion, which only the crashed worker knew it had to send, on bob's reply
    // address and on the events exchange.
    let committed = committed.expect("course");
    assert_eq!(committed.enrolled_students, vec!["bob".to_owned()]);
    let drop = &client.finals()["a2"];
    assert_eq!((drop.outcome.as_str(), drop.replayed), ("dropped", true));
    let promotion = &client.promotions()[0];
    assert_eq!(promotion.student_id, "bob");
    assert_eq!(
        promotion.request_id, "b1",
        "told under bob's own request id"
    );
    assert_eq!(promotion.promoted_by.as_deref(), Some("a2"));
    successor.stop(WAIT).await.expect("the successor exits 0");
    assert!(env.store.audit().await.expect("audit").is_empty());
    client.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_and_restarted_under_the_same_id_serves_its_partitions_again() {
    // Arrange: a worker under a fixed id, as a container keeps it, holds every partition.
    let env = TestEnv::new().await;
    let prefix = format!("{}s", env.topology.prefix);
    let courses = env.add_courses(&prefix, 10, 20).await;
    let mut first = env.worker_process_args("fixed", &["--lease-ms", "5000"]);
    env.wait_for_partitions().await;
    let (_, before) = env.store.ownership().await.expect("ownership");

    // Act: kill it and start it again at once under the same id, while the leases of its
    // previous life still run; then a crowd arrives.
    first
        .signal(nix::sys::signal::Signal::SIGKILL)
        .expect("kill the worker");
    first
        .exited(Duration::from_secs(10))
        .await
        .expect("the worker died");
    let again = env.worker_process_args("fixed", &["--lease-ms", "5000"]);
    let requests = (0..200)
        .map(|i| {
            let course = &courses[i % courses.len()];
            enroll(&format!("{prefix}-r{i}"), course, &format!("{prefix}-s{i}"))
        })
        .collect();
    let report = seatrush_tools::load::fire(
        &env.amqp_url,
        &env.topology,
        requests,
        Duration::from_secs(60),
    )
    .await
    .expect("fire the crowd");
    let (_, after) = env.store.ownership().await.expect("ownership");
    again
        .stop(Duration::from_secs(60))
        .await
        .expect("the restarted worker exits 0");

    // Assert: the restarted worker did not keep its previous life's leases alive unconsumed:
    // they lapsed, it took every partition again at a new epoch, and every request was
    // answered.
    assert_eq!(report.lost(), 0, "request ids without a final answer");
    for (was, is) in before.iter().zip(&after) {
        assert_eq!(is.owner.as_deref(), Some("fixed"));
        assert!(
            is.epoch > was.epoch,
            "partition {} still at epoch {}",
            is.partition,
            is.epoch
        );
    }
    env.assert_consistent(&report, &courses).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_fenced_by_a_takeover_is_returned_to_the_queues_without_being_dead_lettered() {
    // Arrange: a worker holding every partition (30 s leases: a heartbeat every 10 s, so only
    // the fence itself can tell it soon that they are gone), and a low delivery limit, so that
    // requests returned to it over and over would be dead-lettered.
    use sqlx::Connection;
    let mut env = TestEnv::new().await;
    env.topology.delivery_limit = 6;
    let prefix = format!("{}t", env.topology.prefix);
    let courses = env.add_courses(&prefix, 8, 50).await;
    let mut config = env.worker_config();
    config.lease = Duration::from_secs(30);
    env.start_worker(config).await;
    let mut db = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("connect");

    // Act: another owner takes every partition behind the worker's back (as when a lease
    // lapsed while the worker could not reach the database), then a crowd arrives: every
    // commit of the worker is fenced. After a while the other owner lets go, and the worker
    // takes the partitions again.
    sqlx::query(
        "UPDATE partitions SET owner = 'elsewhere', epoch = epoch + 1, \
                lease_until = now() + interval '60 seconds'",
    )
    .execute(&mut db)
    .await
    .expect("take the partitions");
    let requests = (0..200)
        .map(|i| {
            let course = &courses[i % courses.len()];
            enroll(&format!("{prefix}-r{i}"), course, &format!("{prefix}-s{i}"))
        })
        .collect();
    let crowd = env.spawn_crowd(
        requests,
        seatrush_tools::load::Pace::Burst,
        Duration::from_secs(60),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    sqlx::query("UPDATE partitions SET owner = NULL, lease_until = NULL WHERE owner = 'elsewhere'")
        .execute(&mut db)
        .await
        .expect("let the partitions go");
    let report = crowd.await.expect("crowd task").expect("crowd");
    let broker = env.broker().await;
    let dead = broker
        .queue_depth(&env.topology.dead_queue())
        .await
        .expect("read the dead-letter queue")
        .map_or(0, |depth| depth.ready);
    broker.close().await;
    env.stop_workers().await;

    // Assert: the fenced requests went back to the queues and were decided once the worker
    // owned their partitions again; none used up its deliveries and was dead-lettered.
    assert_eq!(dead, 0, "requests dead-lettered after being fenced");
    assert_eq!(report.lost(), 0, "request ids without a final answer");
    env.assert_consistent(&report, &courses).await;
    env.cleanup().await;
}
