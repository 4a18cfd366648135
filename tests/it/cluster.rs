//! Faults of a replicated broker and database mid-rush. On a three-node RabbitMQ cluster of
//! each test's own (quorum queues with a replica on every node): the node leading the partition
//! queues killed and restarted, a node cut off from the others and healed, every node restarted
//! in turn. On a PostgreSQL primary with a synchronous standby of the test's own: the primary
//! killed and the standby promoted. The worker knows every node and host (`AMQP_URL` and
//! `DATABASE_URL` list them) and moves to a live one. Nothing is lost, nothing doubled, no
//! course oversold, and the wait of a student asking meanwhile is reported.

use std::time::{Duration, Instant};

use seatrush_core::domain::{CourseId, Request};
use seatrush_tools::load::Pace;

use seatrush_core::client::Client;

use crate::chaos::courses_and_probe;
use crate::helpers::TestEnv;
use crate::helpers::enroll;
use crate::servers::{OwnCluster, OwnPgPair, free_port, wait_ready};

/// A cluster, a worker on it with its health endpoint, and a paced crowd under way.
struct Rush {
    env: TestEnv,
    courses: Vec<CourseId>,
    probe_course: CourseId,
    requests: Vec<Request>,
    health: std::net::SocketAddr,
    first_try: tokio::task::JoinHandle<anyhow::Result<seatrush_tools::load::Report>>,
}

async fn rush_on(amqp_url: &str, database_url: &str, seed: u64, rate: f64) -> Rush {
    let mut env = TestEnv::on(amqp_url.to_owned(), database_url.to_owned()).await;
    let prefix = format!("{}k", env.topology.prefix);
    let (courses, probe_course) = courses_and_probe(&env, &prefix).await;
    let requests = TestEnv::crowd_with_duplicates(&courses, 1000, 2, &prefix, seed);
    let health = free_port();
    let mut config = env.worker_config();
    config.http_addr = Some(health);
    env.start_worker(config).await;
    let first_try = env.spawn_crowd(requests.clone(), Pace::Rate(rate), Duration::from_secs(120));
    crate::helpers::committed_batches(&env.store, 2).await;
    Rush {
        env,
        courses,
        probe_course,
        requests,
        health,
        first_try,
    }
}

/// How long a student who asks right now waits for a final answer, asking again (the same
/// request id) as a producer does while the cluster cannot take it yet: a refused connection,
/// a publish nacked while a queue elects its new leader.
async fn probe(env: &TestEnv, course: &CourseId, n: usize) -> Duration {
    let request = enroll(&format!("probe-{n}"), course, &format!("probe-{n}"));
    let start = Instant::now();
    let mut failures = Vec::new();
    while start.elapsed() < Duration::from_secs(90) {
        let asked = async {
            let client = Client::connect(&env.amqp_url, env.topology.clone()).await?;
            let answers = client
                .request(&request, false, Duration::from_secs(30))
                .await;
            client.close().await;
            answers
        };
        match asked.await {
            Ok(answers) => {
                let answer = answers.final_answer;
                assert_eq!(answer.outcome, "enrolled", "{answer:?}");
                return start.elapsed();
            }
            Err(e) => {
                failures.push(format!("{e:#}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    panic!("the probe was never answered: {failures:#?}");
}

impl Rush {
    /// After the fault: the crowd's own connection may have died with its node, so, as a web
    /// back end would, every request is published again under the same id; then every id must
    /// have its one outcome, the same on every answer, and the database must agree.
    async fn finish(self) {
        let _ = self.first_try.await;
        let mut seen = std::collections::HashSet::new();
        let again: Vec<_> = self
            .requests
            .into_iter()
            .filter(|r| seen.insert(r.request_id.clone()))
            .collect();
        let report = self.env.fire(again).await;
        crate::helpers::assert_one_outcome_per_id(&report);
        self.env.assert_consistent(&report, &self.courses).await;
        self.env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_leading_the_partitions_killed_mid_rush_loses_nothing() {
    // Arrange
    let cluster = OwnCluster::start(3);
    let rush = rush_on(
        &cluster.url,
        &crate::helpers::required("DATABASE_URL"),
        31,
        300.0,
    )
    .await;
    let leader = cluster.busiest_leader().await;

    // Act: SIGKILL of the node that leads most partition queues; a student asks at once.
    cluster.kill(leader).await;
    let waited = probe(&rush.env, &rush.probe_course, 1).await;
    wait_ready(rush.health, true).await;
    let restarted = cluster.start_node(leader).await;
    let waited_after_restart = probe(&rush.env, &rush.probe_course, 2).await;

    // Assert
    eprintln!(
        "leader node {leader} killed: a student asking then waited {waited:?}; the node \
         rejoined in {restarted:?}, a student asking then waited {waited_after_restart:?}"
    );
    rush.finish().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_others_mid_rush_then_healed_loses_nothing() {
    // Arrange
    let cluster = OwnCluster::start(3);
    let rush = rush_on(
        &cluster.url,
        &crate::helpers::required("DATABASE_URL"),
        37,
        200.0,
    )
    .await;
    let leader = cluster.busiest_leader().await;

    // Act: the node leading most queues is cut off (it pauses, as the minority); a student
    // asks while it is; then the partition heals and another student asks.
    cluster.isolate(leader).await;
    let waited = probe(&rush.env, &rush.probe_course, 1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.heal(leader).await;
    let healed = Instant::now();
    let waited_after_heal = probe(&rush.env, &rush.probe_course, 2).await;
    wait_ready(rush.health, true).await;

    // Assert
    eprintln!(
        "node {leader} cut off: a student asking then waited {waited:?}; after the heal, \
         {waited_after_heal:?} ({:?} after it)",
        healed.elapsed()
    );
    rush.finish().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_mid_rush_loses_nothing() {
    // Arrange: a slower crowd, so that it lasts through the restarts.
    let cluster = OwnCluster::start(3);
    let rush = rush_on(
        &cluster.url,
        &crate::helpers::required("DATABASE_URL"),
        41,
        100.0,
    )
    .await;

    // Act: each node in turn stops (as for an upgrade) and starts again; a student asks while
    // it is down.
    let mut waits = Vec::new();
    for node in 1..=3 {
        cluster.stop_node(node).await;
        waits.push(probe(&rush.env, &rush.probe_course, node).await);
        cluster.start_node(node).await;
    }
    wait_ready(rush.health, true).await;

    // Assert
    eprintln!("rolling restart: a student asking while each node was down waited {waits:?}");
    rush.finish().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_primary_killed_mid_rush_and_its_standby_promoted_loses_nothing() {
    // Arrange: a primary with a synchronous standby; the worker is given both hosts.
    let pair = OwnPgPair::start();
    let rush = rush_on(&crate::helpers::required("AMQP_URL"), &pair.url, 43, 300.0).await;
    let primary = pair.primary().await;
    let standby = 3 - primary;

    // Act: SIGKILL of the primary with commits in flight, the standby promoted at once (as a
    // failover manager would), a student asking then; the old primary rejoins as a standby.
    pair.kill(primary).await;
    let promoted = pair.promote(standby).await;
    let waited = probe(&rush.env, &rush.probe_course, 1).await;
    wait_ready(rush.health, true).await;
    pair.rejoin(primary).await;
    let waited_after_rejoin = probe(&rush.env, &rush.probe_course, 2).await;

    // Assert
    assert_eq!(pair.primary().await, standby);
    eprintln!(
        "database primary killed: the standby promoted in {promoted:?}; a student asking then \
         waited {waited:?}; after the old primary rejoined as a standby, {waited_after_rejoin:?}"
    );
    rush.finish().await;
    drop(pair);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seatrush_chaos_on_a_cluster_and_a_replicated_database_finds_nothing_lost() {
    // Arrange: a three-node cluster and a primary with its standby, each with its control
    // command, and the command's environment naming every node and host.
    let cluster = OwnCluster::start(3);
    let pair = OwnPgPair::start();
    let env = TestEnv::on(cluster.url.clone(), pair.url.clone()).await;

    // Act: the command's cluster schedule (the leading node killed and restarted, a node cut
    // off and healed, a rolling restart, the primary killed and the standby promoted, a worker
    // killed), on a slow crowd that lasts through them.
    let (broker, database) = (cluster.control_command(), pair.control_command());
    let (report, faults) = crate::chaos::run_chaos(
        &env,
        &[
            "--courses",
            "20",
            "--students",
            "500",
            "--rate",
            "40",
            "--broker-control",
            &broker,
            "--database-control",
            &database,
        ],
    )
    .await;

    // Assert
    assert_eq!(report["request_ids"], 1000);
    for expected in [
        "killed with SIGKILL",
        "cut off from the others",
        "rolling restart: broker node 3 of 3",
        "promoted",
        "rejoined as a standby",
    ] {
        assert!(
            faults.iter().any(|f| f.contains(expected)),
            "no fault \"{expected}\" in {faults:?}"
        );
    }
    assert!(!faults.iter().any(|f| f.contains("stalled")), "{faults:?}");
    env.cleanup().await;
    drop((cluster, pair));
}
