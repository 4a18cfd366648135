//! The benchmark's broker-only measurements on the real broker and database: the intake ceiling
//! through quorum queues and through streams (offsets committed to PostgreSQL), and the broker
//! ceiling's echo. Correctness only: every request taken exactly once, every figure adding up,
//! nothing left behind. No timing is asserted.

use sqlx::Connection;

use seatrush_core::domain::{Partition, Request};
use seatrush_core::worker::WorkerConfig;
use seatrush_tools::bench::ceiling::{self, Echo};
use seatrush_tools::bench::intake::{self, IntakeFigures, IntakeQueues};
use seatrush_tools::rush;

use crate::helpers::{CROWD_WAIT, TestEnv, assert_exactly_one_final};

const REQUESTS: usize = 1000;

/// A thousand students asking for one course each out of thirty, skewed as on opening day.
fn crowd(env: &TestEnv) -> Vec<Request> {
    let tag = &env.topology.prefix;
    let courses = rush::course_ids(tag, 30).expect("course ids");
    rush::crowd(&courses, REQUESTS, 1, tag, 7).expect("a crowd")
}

async fn intake_of(env: &TestEnv, queues: IntakeQueues) -> IntakeFigures {
    intake::run(
        &env.amqp_url,
        &env.database_url,
        env.topology.clone(),
        WorkerConfig::DEFAULT_PREFETCH,
        queues,
        crowd(env),
        CROWD_WAIT,
        None,
    )
    .await
    .expect("the intake runs")
}

fn assert_each_request_taken_once(figures: &IntakeFigures) {
    assert!(figures.complete, "not every request delivered: {figures:?}");
    assert_eq!(
        (figures.published, figures.delivered),
        (REQUESTS, REQUESTS),
        "{figures:?}"
    );
    assert_eq!((figures.duplicates, figures.missing), (0, 0), "{figures:?}");
    assert!(
        figures.batches >= 1 && figures.batches <= REQUESTS,
        "{figures:?}"
    );
}

/// Every partition queue of the run is gone.
async fn assert_queues_deleted(env: &TestEnv) {
    let broker = env.broker().await;
    for p in 0..env.topology.partitions {
        let queue = env.topology.partition_queue(Partition(p));
        let depth = broker.queue_depth(&queue).await.expect("a passive declare");
        assert_eq!(depth, None, "{queue} is left behind");
    }
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quorum_intake_takes_every_request_exactly_once() {
    // Arrange
    let env = TestEnv::new().await;

    // Act
    let figures = intake_of(&env, IntakeQueues::Quorum).await;

    // Assert
    assert_each_request_taken_once(&figures);
    assert_eq!(figures.offset_commits, 0, "{figures:?}");
    assert!(figures.streams.is_empty(), "{figures:?}");
    assert_queues_deleted(&env).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_intake_takes_every_request_exactly_once_and_commits_the_last_offsets() {
    // Arrange
    let env = TestEnv::new().await;

    // Act
    let figures = intake_of(&env, IntakeQueues::Stream).await;

    // Assert
    assert_each_request_taken_once(&figures);
    assert_eq!(
        figures.offset_commits, figures.batches,
        "one commit per batch"
    );
    assert_eq!(
        figures.streams.len(),
        usize::from(env.topology.partitions),
        "{figures:?}"
    );
    let delivered: usize = figures.streams.iter().map(|s| s.delivered).sum();
    assert_eq!(delivered, REQUESTS);
    for stream in &figures.streams {
        // A fresh stream numbers its messages from 0, so the last of n is n - 1.
        let last = stream.delivered.checked_sub(1).map(|n| n as i64);
        assert_eq!(stream.last_offset, last, "{stream:?}");
        assert_eq!(stream.committed, stream.last_offset, "{stream:?}");
    }
    assert_queues_deleted(&env).await;
    let mut db = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("connect to the test database");
    let (schemas,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'bench_intake_%'",
    )
    .fetch_one(&mut db)
    .await
    .expect("count schemas");
    drop(db);
    assert_eq!(schemas, 0, "the offsets' schema is dropped after the run");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ceiling_echo_answers_every_request_once() {
    for echo in [Echo::One, Echo::SameAsSeatrush] {
        // Arrange
        let env = TestEnv::new().await;

        // Act
        let (report, _) = ceiling::run(
            &env.amqp_url,
            env.topology.clone(),
            WorkerConfig::DEFAULT_PREFETCH,
            echo,
            crowd(&env),
            CROWD_WAIT,
            None,
        )
        .await
        .expect("the ceiling runs");

        // Assert
        assert_eq!(report.answered.len(), REQUESTS, "{echo:?}");
        assert_exactly_one_final(&report);
        if echo == Echo::SameAsSeatrush {
            let provisional = report
                .answered
                .iter()
                .filter(|a| a.provisional.is_some())
                .count();
            assert_eq!(provisional, REQUESTS, "a provisional answer each");
        }
        assert_queues_deleted(&env).await;
        env.cleanup().await;
    }
}
