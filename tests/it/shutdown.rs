//! Every wait ends: a worker process given SIGTERM stops within its drain timeout plus a few
//! seconds whatever state its database and broker are in (down, stalled, refusing), says in its
//! last log line what it left to the broker, exits with the status that says so (0 after a clean
//! drain, 3 when the drain could not finish), and loses nothing: once the servers are back, a
//! healthy worker gives every request published exactly one final answer.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use seatrush_core::domain::{CourseId, Partition, Request};
use seatrush_tools::chaos::{proxy_for, through};
use seatrush_tools::rush::WorkerProcess;

use crate::helpers::{Listener, TestEnv, WAIT, enroll, eventually};
use crate::servers::{Kind, OwnServer};

/// The drain timeout the workers under test are given.
const DRAIN: Duration = Duration::from_secs(3);
/// What a stop may take beyond the drain timeout: the teardown's bounded steps (closing
/// channels, a release and the deregistration against a database that does not answer).
const TEARDOWN: Duration = Duration::from_secs(8);
/// The exit status of a stop whose drain could not finish (`seatrush worker --help`).
const DRAIN_UNFINISHED: i32 = 3;
/// How long the healthy worker may take to answer everything left behind.
const RECOVERY: Duration = Duration::from_secs(60);

/// How a worker stopped.
struct Stopped {
    status: ExitStatus,
    took: Duration,
    log: String,
}

/// Starts a worker process with a short drain timeout and lease, on the given URLs (the
/// environment's own where `None`).
fn worker(
    env: &TestEnv,
    id: &str,
    database_url: Option<&str>,
    amqp_url: Option<&str>,
) -> WorkerProcess {
    let drain = DRAIN.as_secs().to_string();
    let mut vars = Vec::new();
    if let Some(url) = database_url {
        vars.push(("DATABASE_URL", url));
    }
    if let Some(url) = amqp_url {
        vars.push(("AMQP_URL", url));
    }
    env.launch(
        id,
        &["--drain-timeout-secs", &drain, "--lease-ms", "2000"],
        &vars,
    )
}

/// Sends SIGTERM and waits, bounded, for the process to exit. A worker that does not stop in
/// time fails the test; it is killed when its handle drops.
async fn sigterm(worker: &mut WorkerProcess) -> Stopped {
    let started = Instant::now();
    worker.signal(Signal::SIGTERM).expect("SIGTERM");
    let within = DRAIN + TEARDOWN;
    let status = worker.exited(within).await;
    let took = started.elapsed();
    let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
    let Some(status) = status else {
        panic!("the worker did not stop within {within:?} of SIGTERM; its log:\n{log}");
    };
    eprintln!(
        "{}: stopped {took:?} after SIGTERM with {status}",
        worker.worker_id
    );
    Stopped { status, took, log }
}

impl Stopped {
    /// Asserts it stopped within the drain timeout plus the teardown's bound, with the exit
    /// status `code`, and that its last lines say `says`.
    fn assert(&self, code: i32, says: &str) {
        assert!(self.took <= DRAIN + TEARDOWN, "{:?}", self.took);
        assert_eq!(
            self.status.code(),
            Some(code),
            "exit status; log:\n{}",
            self.log
        );
        assert!(
            self.log.contains(says),
            "the log does not say {says:?}:\n{}",
            self.log
        );
        assert!(
            !self.log.contains("abandoning it"),
            "every step of the teardown ended on its own, none was abandoned:\n{}",
            self.log
        );
    }
}

/// Creates four courses (named after `tag`), starts a worker process on the given URLs (the
/// environment's own where `None`), waits until it holds every partition, and opens a client.
async fn started(
    env: &TestEnv,
    tag: &str,
    id: &str,
    database_url: Option<&str>,
    amqp_url: Option<&str>,
) -> (Vec<CourseId>, WorkerProcess, Listener) {
    let courses = env
        .add_courses(&format!("{}{tag}", env.topology.prefix), 4, 30)
        .await;
    let worker = worker(env, id, database_url, amqp_url);
    env.wait_for_partitions().await;
    (courses, worker, Listener::new(env, None).await)
}

/// A first round of requests, answered and settled, so the course actors are loaded and nothing
/// is left unacked before a fault; returns the round's requests.
async fn warm_up(env: &TestEnv, listener: &mut Listener, courses: &[CourseId]) -> Vec<Request> {
    let warm = requests(courses, 1, "warm");
    listener.send(&warm).await;
    listener
        .until(RECOVERY, |l| l.finals().len() >= warm.len())
        .await;
    wait_settled(env).await;
    warm
}

/// One enroll request per student for each of `courses`, tagged so ids do not collide.
fn requests(courses: &[CourseId], students: usize, tag: &str) -> Vec<Request> {
    courses
        .iter()
        .flat_map(|c| {
            (0..students).map(move |s| enroll(&format!("{tag}-{c}-{s}"), c, &format!("{tag}{s}")))
        })
        .collect()
}

/// Waits until the broker has delivered everything published to the partition queues (nothing
/// is ready any more): the worker holds it, unacked.
async fn wait_taken(env: &TestEnv) {
    let broker = env.broker().await;
    eventually("every request delivered to the worker", WAIT, || async {
        let mut ready = 0;
        for p in 0..env.topology.partitions {
            let queue = env.topology.partition_queue(Partition(p));
            ready += broker
                .queue_depth(&queue)
                .await
                .ok()?
                .map_or(0, |d| d.ready);
        }
        (ready == 0).then_some(())
    })
    .await;
    broker.close().await;
}

/// Runs a healthy worker (on the environment's own URLs) until every request has a final
/// answer, and asserts each has exactly one and a stored outcome; then stops it cleanly.
async fn assert_nothing_lost(env: &TestEnv, listener: &mut Listener, published: &[Request]) {
    let healthy = env.worker_process("healthy");
    let n = published.len();
    listener.until(RECOVERY, |l| l.finals().len() >= n).await;
    let finals = listener.finals();
    for request in published {
        assert!(
            finals.contains_key(request.request_id.as_str()),
            "no final answer for {}",
            request.request_id
        );
    }
    assert_eq!(
        listener.final_count(),
        n,
        "one final answer per request: {:#?}",
        listener.received
    );
    let ids: Vec<&str> = published.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(
        env.store.count_outcomes(&ids).await.expect("outcomes"),
        n as i64
    );
    let violations = env.store.audit().await.expect("audit");
    assert!(violations.is_empty(), "audit violations: {violations:#?}");
    healthy
        .stop(RECOVERY)
        .await
        .expect("the healthy worker drains and exits 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_database_down_returns_what_is_in_flight_and_stops_in_time() {
    // Arrange: a database of the test's own, stopped once the worker runs; requests published
    // then are taken by the worker and wait for the catalog it cannot read.
    let db = OwnServer::start(Kind::Database);
    let env = TestEnv::on(crate::helpers::required("AMQP_URL"), db.url.clone()).await;
    let (courses, mut first, mut listener) = started(&env, "d", "db-down", None, None).await;
    db.stop();
    let published = requests(&courses, 5, "down");
    listener.send(&published).await;
    wait_taken(&env).await;

    // Act
    let stopped = sigterm(&mut first).await;

    // Assert: in time, with the deliveries returned and the partitions left to lapse; then
    // nothing is lost once the database is back.
    stopped.assert(
        DRAIN_UNFINISHED,
        "worker stopped without finishing its drain",
    );
    assert!(!stopped.log.contains("returned=0"), "{}", stopped.log);
    db.start_again();
    assert_nothing_lost(&env, &mut listener, &published).await;
    listener.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_database_stalled_mid_commit_stops_in_time() {
    // Arrange: the worker reaches the database through a proxy. Its actors are loaded by a
    // first round; then the database stalls, and the next round is decided (provisional
    // answers) but its commit never returns.
    let env = TestEnv::new().await;
    let proxy = proxy_for(&env.database_url).await.expect("database proxy");
    let via_proxy = through(&env.database_url, proxy.addr());
    let (courses, mut first, mut listener) =
        started(&env, "s", "db-stalled", Some(&via_proxy), None).await;
    let warm = warm_up(&env, &mut listener, &courses).await;
    proxy.stall();
    let stalled = requests(&courses, 5, "stalled");
    listener.send(&stalled).await;
    wait_taken(&env).await;

    // Act
    let stopped = sigterm(&mut first).await;

    // Assert
    stopped.assert(
        DRAIN_UNFINISHED,
        "worker stopped without finishing its drain",
    );
    proxy.resume();
    let mut published = warm;
    published.extend(stalled);
    assert_nothing_lost(&env, &mut listener, &published).await;
    listener.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_down_stops_at_once_and_cleanly() {
    // Arrange: the worker reaches the broker through a proxy that then refuses it, as a broker
    // that is down; requests keep arriving at the broker meanwhile.
    let env = TestEnv::new().await;
    let proxy = proxy_for(&env.amqp_url).await.expect("broker proxy");
    let via_proxy = through(&env.amqp_url, proxy.addr());
    let (courses, mut first, mut listener) =
        started(&env, "b", "broker-down", None, Some(&via_proxy)).await;
    proxy.refuse();
    wait_released(&env).await;
    let published = requests(&courses, 5, "nobroker");
    listener.send(&published).await;

    // Act
    let stopped = sigterm(&mut first).await;

    // Assert: it held nothing (the broker took back what it had when the connection
    // dropped, and the partitions were released), so the stop is clean.
    stopped.assert(
        0,
        "worker stopped: every delivery taken was committed and acked",
    );
    assert_nothing_lost(&env, &mut listener, &published).await;
    listener.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_stalled_stops_in_time() {
    // Arrange: the worker reaches the broker through a proxy that stalls, so its connection
    // stays open and silent. Requests published meanwhile are pushed into the stall: the broker
    // counts them as delivered to this worker, which never sees them.
    let env = TestEnv::new().await;
    let proxy = proxy_for(&env.amqp_url).await.expect("broker proxy");
    let via_proxy = through(&env.amqp_url, proxy.addr());
    let (courses, mut first, mut listener) =
        started(&env, "t", "broker-stalled", None, Some(&via_proxy)).await;
    proxy.stall();
    let published = requests(&courses, 5, "brokerstall");
    listener.send(&published).await;
    wait_taken(&env).await;

    // Act: no cancel, close or confirm is ever answered.
    let stopped = sigterm(&mut first).await;

    // Assert: it held nothing it could settle and released its partitions (the database is
    // fine), so the stop counts as clean; the broker gets the requests back once the stalled
    // connection ends, here when the proxy lets it go.
    stopped.assert(
        0,
        "worker stopped: every delivery taken was committed and acked",
    );
    proxy.resume();
    assert_nothing_lost(&env, &mut listener, &published).await;
    listener.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_down_and_the_database_stalled_stops_in_time() {
    // Arrange: both links through proxies. The database stalls with requests in flight, then
    // the broker goes away: the session ends, and its partitions cannot be released.
    let env = TestEnv::new().await;
    let db = proxy_for(&env.database_url).await.expect("database proxy");
    let amqp = proxy_for(&env.amqp_url).await.expect("broker proxy");
    let (db_url, amqp_url) = (
        through(&env.database_url, db.addr()),
        through(&env.amqp_url, amqp.addr()),
    );
    let (courses, mut first, mut listener) =
        started(&env, "a", "both-down", Some(&db_url), Some(&amqp_url)).await;
    let warm = warm_up(&env, &mut listener, &courses).await;
    db.stall();
    let stalled = requests(&courses, 5, "both");
    listener.send(&stalled).await;
    wait_taken(&env).await;
    amqp.refuse();

    // Act
    let stopped = sigterm(&mut first).await;

    // Assert: the partitions are left to lapse, which the status and the log say.
    stopped.assert(
        DRAIN_UNFINISHED,
        "partitions left to lapse with their lease",
    );
    assert!(
        !stopped.log.contains(" 0 partitions left to lapse"),
        "{}",
        stopped.log
    );
    db.resume();
    amqp.resume();
    let mut published = warm;
    published.extend(stalled);
    assert_nothing_lost(&env, &mut listener, &published).await;
    listener.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_starting_against_a_stalled_database_stops_at_once() {
    // Arrange: the database stalls before the worker connects, so it never gets past startup.
    let env = TestEnv::new().await;
    let proxy = proxy_for(&env.database_url).await.expect("database proxy");
    proxy.stall();
    let via_proxy = through(&env.database_url, proxy.addr());
    let mut first = worker(&env, "starting", Some(&via_proxy), None);
    // The worker logs nothing before the database answers; its signal handler is set up
    // before it connects, a moment after the process starts.
    wait_for_signal_handler(&first).await;

    // Act
    let stopped = sigterm(&mut first).await;

    // Assert: nothing was taken, so the stop is clean, and it does not wait for the database.
    assert!(stopped.took <= Duration::from_secs(2), "{:?}", stopped.took);
    stopped.assert(
        0,
        "stopped before starting: nothing was taken from the broker",
    );
    proxy.resume();
    env.cleanup().await;
}

/// Waits, bounded, until no partition is held any more (a session that lost its broker
/// released them).
async fn wait_released(env: &TestEnv) {
    eventually("the partitions released", WAIT, || async {
        (env.store.live_partitions().await.ok()? == 0).then_some(())
    })
    .await;
}

/// Waits, bounded, until the worker process catches SIGTERM (its `SigCgt` mask in
/// `/proc/<pid>/status` has the bit): sent earlier, the signal would kill it outright.
async fn wait_for_signal_handler(worker: &WorkerProcess) {
    let pid = worker.pid().expect("a running worker");
    let sigterm_bit = 1u64 << (Signal::SIGTERM as i32 - 1);
    eventually("the worker catches SIGTERM", WAIT, || async {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
        let mask = u64::from_str_radix(mask.trim(), 16).ok()?;
        (mask & sigterm_bit != 0).then_some(())
    })
    .await;
}

/// Waits, bounded, until the worker has acked everything it took: a heartbeat written after
/// this call reports nothing unacked on any partition. (A batch is acked only after its answers
/// are recorded; one whose ack a stall caught would be redelivered, and could be answered again.)
async fn wait_settled(env: &TestEnv) {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("connect to the test database");
    let since: f64 = sqlx::query_scalar("SELECT extract(epoch FROM clock_timestamp())::float8")
        .fetch_one(&mut db)
        .await
        .expect("the database's clock");
    let db = tokio::sync::Mutex::new(db);
    eventually("every partition reported settled", WAIT, || async {
        // A heartbeat sets `lease_until` to its own time plus the lease (2 s here).
        let unsettled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM partitions \
             WHERE unacked > 0 OR extract(epoch FROM lease_until)::float8 - 2.0 <= $1",
        )
        .bind(since)
        .fetch_one(&mut *db.lock().await)
        .await
        .ok()?;
        (unsettled == 0).then_some(())
    })
    .await;
    let _ = db.into_inner().close().await;
}
