//! What the people running seatrush see: metrics that match what happened, readiness that
//! follows the broker, and JSON logs that parse and never show a password.

use std::collections::HashMap;

use seatrush_core::amqp::Outgoing;
use seatrush_core::domain::CourseSettings;

use crate::helpers::{TestEnv, WAIT, eventually};
use crate::servers::{Kind, OwnServer, free_port, wait_ready};

/// One sample of a Prometheus text exposition: `name{labels}` to value.
struct Scrape(HashMap<String, f64>);

impl Scrape {
    async fn of(addr: &str) -> Self {
        let (status, body) = seatrush_core::worker::health::probe(addr, "/metrics", WAIT)
            .await
            .expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        let samples = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        Self(samples)
    }

    /// The sum over every series of `name` whose labels contain all of `labels`.
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
                n == name && labels.iter().all(|l| rest.contains(l))
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.0
            .keys()
            .any(|series| series.split('{').next() == Some(name))
    }
}

/// The database URL with a password in it (the one it has, or one added: the test servers
/// trust loopback connections, so any password is accepted), and that password.
fn with_password(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (credentials, host) = rest.split_once('@').expect("a user in the URL");
    match credentials.split_once(':') {
        Some((_, password)) => (url.to_owned(), password.to_owned()),
        None => {
            let password = "Db-pw-7f3a9c".to_owned();
            (
                format!("{scheme}://{credentials}:{password}@{host}"),
                password,
            )
        }
    }
}

/// Every line of a JSON log file, parsed; panics on a line that is not JSON.
fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("the worker's log")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_logs_and_spans_after_a_small_rush_match_what_happened() {
    // Arrange: a worker process with JSON logs, a password in its database URL, and its HTTP
    // endpoint; ten courses of 5 seats with 2 waitlist places.
    let env = TestEnv::new().await;
    let prefix = format!("{}m", env.topology.prefix);
    let settings = CourseSettings {
        capacity: 5,
        waitlist: 2,
        ..CourseSettings::default()
    };
    let courses = env.add_courses_with(&prefix, 10, settings).await;
    let (database_url, password) = with_password(&env.database_url);
    let http = free_port().to_string();
    let worker = env.launch(
        "metered",
        &["--http-addr", &http, "--log-format", "json"],
        &[("DATABASE_URL", &database_url), ("RUST_LOG", "info")],
    );
    env.wait_for_partitions().await;
    let requests = seatrush_tools::rush::crowd(&courses, 120, 1, &prefix, 7).expect("crowd");

    // Act: the crowd, and one message that is not a request.
    let broker = env.broker().await;
    let publisher = broker.confirmed_publisher().await.expect("publisher");
    publisher
        .send_confirmed(Outgoing::raw_request(
            &env.topology,
            courses[0].as_str(),
            Some("junk-1"),
            None,
            b"{not json".to_vec(),
        ))
        .await
        .expect("publish the junk");
    let report = env.fire(requests).await;
    let transactions = env.store.decision_batches().await.expect("count");
    // The load gauges are sampled once a second; the counters are final already.
    let scrape = eventually("the load gauges settled", WAIT, || async {
        let scrape = Scrape::of(&http).await;
        let settled = scrape.sum("seatrush_in_flight", &[]) == 0.0
            && scrape.sum("seatrush_dead_letters_total", &[]) == 1.0
            && scrape.sum("seatrush_live_actors", &[]) > 0.0;
        settled.then_some(scrape)
    })
    .await;
    worker.stop(WAIT).await.expect("the worker exits 0");

    // Assert: the counters match the rush.
    let outcomes = report.outcomes();
    let answered = |outcome: &str| -> f64 {
        outcomes
            .iter()
            .filter(|(k, _)| k.split('/').next() == Some(outcome))
            .map(|(_, n)| *n as f64)
            .sum()
    };
    assert_eq!(scrape.sum("seatrush_requests_total", &[]), 120.0);
    for outcome in ["enrolled", "waitlisted", "rejected"] {
        let label = format!("outcome=\"{outcome}\"");
        assert_eq!(
            scrape.sum("seatrush_requests_total", &["action=\"enroll\"", &label]),
            answered(outcome),
            "{outcome}: {outcomes:?}"
        );
    }
    assert_eq!(
        scrape.sum("seatrush_decision_duration_seconds_count", &[]),
        120.0
    );
    assert_eq!(
        scrape.sum("seatrush_batch_size_count", &[]),
        transactions as f64
    );
    assert_eq!(scrape.sum("seatrush_batch_size_sum", &[]), 120.0);
    assert_eq!(
        scrape.sum("seatrush_commit_duration_seconds_count", &[]),
        transactions as f64
    );
    assert!(
        scrape.has("seatrush_commit_duration_seconds_bucket"),
        "histograms have buckets"
    );
    assert_eq!(
        scrape.sum("seatrush_commit_duration_seconds_bucket", &["le=\"+Inf\""]),
        transactions as f64
    );
    assert_eq!(scrape.sum("seatrush_owned_partitions", &[]), 4.0);
    let actors = scrape.sum("seatrush_live_actors", &[]);
    assert!((1.0..=10.0).contains(&actors), "{actors} live actors");
    assert_eq!(scrape.sum("seatrush_mailbox_depth", &[]), 0.0);
    assert_eq!(scrape.sum("seatrush_mailbox_depth_max", &[]), 0.0);
    assert_eq!(scrape.sum("seatrush_in_flight", &[]), 0.0);
    assert_eq!(scrape.sum("seatrush_redeliveries_total", &[]), 0.0);
    assert_eq!(scrape.sum("seatrush_promotions_total", &[]), 0.0);
    assert_eq!(
        scrape.sum("seatrush_dead_letters_total", &["reason=\"invalid\""]),
        1.0
    );
    assert_eq!(scrape.sum("seatrush_reconnects_total", &[]), 0.0);
    assert!(scrape.has("seatrush_reconnects_total"), "listed at zero");
    assert_eq!(scrape.sum("seatrush_ready", &["component=\"broker\""]), 1.0);
    assert_eq!(
        scrape.sum("seatrush_ready", &["component=\"database\""]),
        1.0
    );
    for name in seatrush_core::telemetry::metrics::ALL {
        assert!(
            scrape.has(name) || scrape.has(&format!("{name}_count")),
            "{name} is exposed"
        );
    }

    // Assert: every log line is JSON, the URLs are logged without their password, and lines
    // logged while consuming carry their partition.
    let log = env
        .log_dir()
        .join(format!("{}-metered.log", env.topology.prefix));
    let lines = json_lines(&log);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        !text.contains(&password),
        "the database password is in the log"
    );
    let started = lines
        .iter()
        .find(|l| l["fields"]["message"] == "worker started")
        .expect("a start line");
    let logged_url = started["fields"]["database_url"].as_str().expect("the URL");
    assert!(logged_url.contains(":***@"), "{logged_url}");
    assert!(
        lines.iter().any(|l| {
            l["fields"]["message"] == "stopped consuming partition"
                && l["span"]["name"] == "partition"
                && l["span"]["epoch"].as_i64().is_some()
        }),
        "consuming carries the partition span"
    );

    broker.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_broker_login_is_logged_with_its_cause_and_without_the_password() {
    // Arrange: a worker whose broker password is wrong.
    let env = TestEnv::new().await;
    let password = "Amqp-pw-4d2e8b";
    let (scheme, rest) = env.amqp_url.split_once("://").expect("a URL");
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    let wrong = format!("{scheme}://guest:{password}@{host}");
    let http = free_port().to_string();
    let worker = env.launch(
        "refused",
        &["--http-addr", &http, "--log-format", "json"],
        &[("AMQP_URL", &wrong)],
    );

    // Act: let it try a few times; ask its health endpoint as a container would.
    let log = env
        .log_dir()
        .join(format!("{}-refused.log", env.topology.prefix));
    eventually("the worker retried twice", WAIT, || async {
        let retries = json_lines(&log)
            .iter()
            .filter(|l| l["fields"]["message"] == "broker session ended; reconnecting")
            .count();
        (retries >= 2).then_some(())
    })
    .await;
    let health = env
        .seatrush()
        .args(["healthcheck", "--addr", &http])
        .output()
        .await
        .expect("run seatrush healthcheck");
    worker.stop(WAIT).await.expect("the worker exits 0");

    // Assert: not ready; each failure names its cause; the password appears nowhere.
    assert_eq!(health.status.code(), Some(1), "{health:?}");
    assert!(String::from_utf8_lossy(&health.stdout).starts_with("503"));
    let lines = json_lines(&log);
    let failure = lines
        .iter()
        .find(|l| l["fields"]["message"] == "broker session ended; reconnecting")
        .expect("a failure line");
    let error = failure["fields"]["error"].as_str().expect("an error field");
    assert!(
        error.contains("connecting to RabbitMQ") && error.contains(':'),
        "the cause chain: {error}"
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        !text.contains(password),
        "the broker password is in the log"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_false_when_the_broker_stops_and_true_when_it_returns() {
    // Arrange: a RabbitMQ node of this test's own and a worker on it.
    let own = OwnServer::start(Kind::Broker);
    let env = TestEnv::on(own.url.clone(), crate::helpers::required("DATABASE_URL")).await;
    let http = free_port();
    let worker = env.launch("ready", &["--http-addr", &http.to_string()], &[]);
    wait_ready(http, true).await;

    // Act: the broker stops, then starts again.
    own.stop();
    let down = wait_ready(http, false).await;
    let unhealthy = env
        .seatrush()
        .args(["healthcheck", "--addr", &http.to_string()])
        .output()
        .await
        .expect("run seatrush healthcheck");
    own.start_again();
    let up = wait_ready(http, true).await;
    let scrape = Scrape::of(&http.to_string()).await;
    worker.stop(WAIT).await.expect("the worker exits 0");

    // Assert
    assert!(!down.broker && down.database, "{down:?}");
    assert_eq!(unhealthy.status.code(), Some(1), "{unhealthy:?}");
    assert!(up.ready, "{up:?}");
    assert!(
        scrape.sum("seatrush_reconnects_total", &["target=\"broker\""]) >= 1.0,
        "the reconnect is counted"
    );
    env.cleanup().await;
    drop(own);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reaches_broker_and_database_over_verified_tls_set_by_its_urls() {
    // Arrange: a broker and a database of this test's own, each also serving TLS with a
    // certificate from a private CA.
    let db = OwnServer::start_tls(Kind::Database);
    let broker = OwnServer::start_tls(Kind::Broker);
    let env = TestEnv::on(broker.url.clone(), db.url.clone()).await;
    let courses = env.add_courses("T", 2, 5).await;
    let ca = broker.tls_ca.clone().expect("the CA");
    let amqps = broker.amqps_url.clone().expect("an amqps URL");
    // verify-full: encrypted, and the server's certificate checked against the CA and host.
    let verified = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        env.database_url,
        db.tls_ca.as_deref().expect("the CA")
    );

    // Act: a worker given only TLS URLs (the AMQP one on the TLS-only listener; the client
    // library takes the CA from SSL_CERT_FILE), and one whose database URL demands
    // verification without naming the CA.
    let worker = env.launch(
        "tls",
        &[],
        &[
            ("AMQP_URL", &amqps),
            ("DATABASE_URL", &verified),
            ("SSL_CERT_FILE", &ca),
        ],
    );
    env.wait_for_partitions().await;
    let requests: Vec<_> = (0..6)
        .map(|i| crate::helpers::enroll(&format!("tls-{i}"), &courses[i % 2], &format!("s{i}")))
        .collect();
    let report = env.fire(requests).await;
    let unverifiable = format!("{}?sslmode=verify-full", env.database_url);
    let mut refused = env.launch(
        "tls-unverified",
        &[],
        &[("AMQP_URL", &amqps), ("DATABASE_URL", &unverifiable)],
    );
    let refused_exit = refused.exited(WAIT).await;
    worker.stop(WAIT).await.expect("the TLS worker exits 0");

    // Assert: the TLS worker answered everything; the other could not trust the database's
    // certificate and stopped with an error.
    crate::helpers::assert_exactly_one_final(&report);
    assert_eq!(report.outcomes().get("enrolled"), Some(&6));
    let status = refused_exit.expect("the unverified worker exits");
    assert!(!status.success(), "{status}");
    let log = std::fs::read_to_string(
        env.log_dir()
            .join(format!("{}-tls-unverified.log", env.topology.prefix)),
    )
    .expect("log");
    assert!(log.contains("connecting to PostgreSQL"), "{log}");
    env.cleanup().await;
    drop((db, broker));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_health_port_is_taken_refuses_to_start_and_says_why() {
    // Arrange: the port the worker is told to serve its health endpoint on is already taken.
    let env = TestEnv::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("its address").to_string();

    // Act
    let mut worker = env.launch("taken", &["--http-addr", &addr], &[]);
    let status = worker.exited(WAIT).await.expect("the worker exits");

    // Assert: it did not start without its endpoint (where probes would fail unexplained):
    // it exited as a worker that could not start, naming the cause, and took no partition.
    assert_eq!(status.code(), Some(2), "{status}");
    let log = std::fs::read_to_string(
        env.log_dir()
            .join(format!("{}-taken.log", env.topology.prefix)),
    )
    .expect("the worker's log");
    assert!(
        log.contains(&format!("binding the health endpoint to {addr}")),
        "the cause is in the log: {log}"
    );
    assert_eq!(env.store.live_partitions().await.expect("partitions"), 0);
    drop(taken);
    env.cleanup().await;
}
