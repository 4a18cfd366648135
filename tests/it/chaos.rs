//! Faults on the links mid-rush, injected for real through a TCP proxy between the worker and
//! its broker and database: every broker connection cut, the database stalled, the database
//! unreachable. Nothing is lost, nothing doubled, and the time to recover is reported.

use std::time::{Duration, Instant};

use seatrush_core::client::Client;
use seatrush_core::domain::{CourseId, CourseSettings};
use seatrush_tools::chaos::{proxy_for, through};

use crate::helpers::{TestEnv, enroll};
use crate::servers::{Kind, OwnServer, free_port, wait_ready};

/// Thirty courses of 20 seats with a 5-place waitlist for the crowd, and a roomy course for the
/// probes.
pub(crate) async fn courses_and_probe(env: &TestEnv, prefix: &str) -> (Vec<CourseId>, CourseId) {
    let settings = CourseSettings {
        capacity: 20,
        waitlist: 5,
        ..CourseSettings::default()
    };
    let courses = env.add_courses_with(prefix, 30, settings).await;
    let probe = env
        .add_courses(&format!("{prefix}probe"), 1, 100)
        .await
        .remove(0);
    (courses, probe)
}

/// How long a student who asks right now waits for a final answer: the time the service
/// takes to recover from a fault, as a student sees it.
async fn probe(env: &TestEnv, course: &CourseId, n: usize) -> Duration {
    let client = Client::connect(&env.amqp_url, env.topology.clone())
        .await
        .expect("connect a probe client");
    let request = enroll(&format!("probe-{n}"), course, &format!("probe-{n}"));
    let start = Instant::now();
    let answers = client
        .request(&request, false, Duration::from_secs(60))
        .await;
    let waited = start.elapsed();
    client.close().await;
    let answer = answers.expect("the probe is answered").final_answer;
    assert_eq!(answer.outcome, "enrolled", "{answer:?}");
    waited
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_cuts_and_database_stalls_mid_rush_lose_nothing() {
    // Arrange: a worker whose broker and database links go through proxies, and a paced crowd
    // (with duplicates) long enough to span every fault.
    let mut env = TestEnv::new().await;
    let prefix = format!("{}x", env.topology.prefix);
    let (courses, probe_course) = courses_and_probe(&env, &prefix).await;
    let requests = TestEnv::crowd_with_duplicates(&courses, 1500, 2, &prefix, 11);
    let amqp = proxy_for(&env.amqp_url).await.expect("broker proxy");
    let db = proxy_for(&env.database_url).await.expect("database proxy");
    let mut config = env.worker_config();
    config.amqp_url = through(&env.amqp_url, amqp.addr());
    config.database_url = through(&env.database_url, db.addr());
    let health = free_port();
    config.http_addr = Some(health);
    env.start_worker(config).await;
    wait_ready(health, true).await;
    let crowd = env.spawn_crowd(
        requests,
        seatrush_tools::load::Pace::Rate(400.0),
        Duration::from_secs(120),
    );
    probe(&env, &probe_course, 0).await;

    // Act: each fault in turn; after each, a student asks and the wait is measured.
    let mut recoveries = Vec::new();
    amqp.cut();
    recoveries.push((
        "all broker connections cut",
        probe(&env, &probe_course, 1).await,
    ));

    db.stall();
    tokio::time::sleep(Duration::from_secs(3)).await;
    db.resume();
    recoveries.push((
        "database stalled 3 s, after",
        probe(&env, &probe_course, 2).await,
    ));

    db.refuse();
    let unready = wait_ready(health, false).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    db.resume();
    let ready = wait_ready(health, true).await;
    assert!(
        !unready.database && ready.ready,
        "{unready:?} then {ready:?}"
    );
    recoveries.push((
        "database unreachable 2 s, after",
        probe(&env, &probe_course, 3).await,
    ));

    amqp.refuse();
    let unready = wait_ready(health, false).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    amqp.resume();
    wait_ready(health, true).await;
    assert!(!unready.broker, "{unready:?}");
    recoveries.push((
        "broker unreachable 1 s, after",
        probe(&env, &probe_course, 4).await,
    ));

    let report = crowd.await.expect("crowd task").expect("crowd");

    // Assert: every request id has a final answer and all of its final answers agree; the
    // database agrees with them.
    eprintln!("recovery after each fault: {recoveries:?}");
    crate::schema::assert_valid_report(&report);
    crate::helpers::assert_one_outcome_per_id(&report);
    eprintln!(
        "chaos: {} requests, {} provisional answers contradicted by the final one",
        report.answered.len(),
        report.contradicted()
    );
    // The probes' seats are not in the crowd's report; the audit covers their course.
    env.assert_consistent(&report, &courses).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_crash_restart_mid_rush_loses_nothing() {
    // Arrange: a database server of this test's own, a worker on it, a paced crowd.
    let own = OwnServer::start(Kind::Database);
    let mut env = TestEnv::on(crate::helpers::required("AMQP_URL"), own.url.clone()).await;
    let prefix = format!("{}r", env.topology.prefix);
    let (courses, probe_course) = courses_and_probe(&env, &prefix).await;
    let requests = TestEnv::crowd_with_duplicates(&courses, 1000, 2, &prefix, 13);
    let health = free_port();
    let mut config = env.worker_config();
    config.http_addr = Some(health);
    env.start_worker(config).await;
    let crowd = env.spawn_crowd(
        requests,
        seatrush_tools::load::Pace::Rate(400.0),
        Duration::from_secs(120),
    );
    probe(&env, &probe_course, 0).await;

    // Act: PostgreSQL stops without a checkpoint, every client is cut off, and it comes back
    // through crash recovery.
    let restarted = own.restart().await;
    let recovered = probe(&env, &probe_course, 1).await;
    wait_ready(health, true).await;
    let report = crowd.await.expect("crowd task").expect("crowd");

    // Assert
    eprintln!(
        "database crash-restart: server back after {restarted:?}, a student asking then waited {recovered:?}"
    );
    crate::helpers::assert_one_outcome_per_id(&report);
    env.assert_consistent(&report, &courses).await;
    env.cleanup().await;
    drop(own);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_rush_loses_nothing() {
    // Arrange: a RabbitMQ node of this test's own, a worker on it, a paced crowd.
    let own = OwnServer::start(Kind::Broker);
    let mut env = TestEnv::on(own.url.clone(), crate::helpers::required("DATABASE_URL")).await;
    let prefix = format!("{}b", env.topology.prefix);
    let (courses, probe_course) = courses_and_probe(&env, &prefix).await;
    let requests = TestEnv::crowd_with_duplicates(&courses, 1000, 2, &prefix, 17);
    let health = free_port();
    let mut config = env.worker_config();
    config.http_addr = Some(health);
    env.start_worker(config).await;
    let first_try = env.spawn_crowd(
        requests.clone(),
        seatrush_tools::load::Pace::Rate(400.0),
        Duration::from_secs(60),
    );
    crate::helpers::committed_batches(&env.store, 2).await;

    // Act: the node stops (its durable queues keep what they hold) and starts again. The
    // crowd's own connection and reply queue die with it, so, as a web back end would, the
    // client then publishes every request again under the same request id.
    let restarted = own.restart().await;
    let back = Instant::now();
    wait_ready(health, true).await;
    let reconnected = back.elapsed();
    let recovered = probe(&env, &probe_course, 1).await;
    let _ = first_try.await;
    let again: Vec<_> = {
        let mut seen = std::collections::HashSet::new();
        requests
            .into_iter()
            .filter(|r| seen.insert(r.request_id.clone()))
            .collect()
    };
    let report = env.fire(again).await;

    // Assert: every request id has its one outcome, the same on every answer, and the
    // database agrees.
    eprintln!(
        "broker restart: node back after {restarted:?}, worker ready {reconnected:?} later, a student asking then waited {recovered:?}"
    );
    crate::helpers::assert_one_outcome_per_id(&report);
    env.assert_consistent(&report, &courses).await;
    env.cleanup().await;
    drop(own);
}

/// Runs `seatrush chaos` with `args` and its JSON report, and checks what every run must
/// find: it passed, and nothing was lost, disagreed, went missing, or mismatched the seats.
/// Returns the report and the faults it injected.
pub(crate) async fn run_chaos(env: &TestEnv, args: &[&str]) -> (serde_json::Value, Vec<String>) {
    let json = env
        .log_dir()
        .join(format!("{}-chaos.json", env.topology.prefix));
    let out = env
        .seatrush()
        .arg("chaos")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .await
        .expect("run seatrush chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "chaos failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    for field in [
        "lost",
        "disagreeing",
        "missing_in_postgres",
        "mismatched_seats",
        "contradicted_outside_faults",
    ] {
        assert_eq!(report[field], 0, "{field} in {report:#}");
    }
    let faults = report["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .filter_map(|f| f["fault"].as_str().map(str::to_owned))
        .collect();
    (report, faults)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seatrush_chaos_in_its_short_form_finds_nothing_lost() {
    // Arrange
    let env = TestEnv::new().await;

    // Act: the command's own schedule (links cut, stalled, refused; a worker killed), on a
    // small crowd.
    let (report, faults) = run_chaos(
        &env,
        &["--courses", "20", "--students", "600", "--rate", "200"],
    )
    .await;

    // Assert
    assert_eq!(report["requests"], 1320);
    assert_eq!(report["request_ids"], 1200);
    assert!(faults.iter().any(|f| f.contains("SIGKILL")), "{faults:?}");
    assert!(faults.iter().any(|f| f.contains("stalled")), "{faults:?}");
    env.cleanup().await;
}
