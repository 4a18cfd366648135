//! The test harness itself: what it promises every other test.

use crate::helpers::{TestEnv, WAIT, eventually, required};
use seatrush_core::amqp::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_that_panics_leaves_no_database_or_queue_behind() {
    // Arrange: a test environment whose test panics before its cleanup.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let failing = tokio::spawn(async move {
        let env = TestEnv::new().await;
        let broker = env.broker().await;
        broker.declare(&env.topology).await.expect("declare");
        broker.close().await;
        let queue = env
            .topology
            .partition_queue(seatrush_core::domain::Partition(0));
        let _ = tx.send((env.database_name().to_owned(), queue));
        panic!("a deliberate failure");
    });

    // Act
    let ended = failing.await;
    let (database, queue) = rx.await.expect("the test got as far as its assertion");

    // Assert: it panicked, and its database and queues are gone.
    assert!(ended.is_err_and(|e| e.is_panic()));
    let admin = sqlx::PgPool::connect(&required("DATABASE_URL"))
        .await
        .expect("connect");
    eventually("the database is dropped", WAIT, || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(&database)
            .fetch_one(&admin)
            .await
            .ok()?;
        (left == 0).then_some(())
    })
    .await;
    admin.close().await;
    let broker = Broker::connect(&required("AMQP_URL"), "seatrush-test")
        .await
        .expect("connect");
    let depth = broker.queue_depth(&queue).await.expect("ask the broker");
    assert!(depth.is_none(), "{queue} is left behind: {depth:?}");
    broker.close().await;
}
