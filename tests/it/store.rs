//! The store against a real PostgreSQL: the group commit's bookkeeping.

use std::time::Duration;

use seatrush::course::Effect;
use seatrush::domain::{Outcome, Partition, Verdict};
use seatrush::store::Pending;

use crate::helpers::{TestEnv, enroll};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_knows_whether_its_final_answer_was_already_sent() {
    // Arrange: this test owns every partition, as a worker would.
    let env = TestEnv::new().await;
    let courses = env.add_courses("st", 1, 5).await;
    let leases = env
        .store
        .acquire_partitions("store-test", Duration::from_secs(30), 4)
        .await
        .expect("acquire");
    let lease = leases[0];
    let request = enroll("st-r1", &courses[0], "s1");
    let decided = Verdict::new(Outcome::Enrolled, None, 4);
    let pending = |replay: bool, effect: Effect| Pending {
        request: request.clone(),
        provisional: decided.clone(),
        effect,
        replay,
        partition: lease.partition,
        epoch: lease.epoch,
        reply_to: None,
    };

    // Act
    let first = env
        .store
        .commit("store-test", &[&pending(false, Effect::Enroll)])
        .await
        .expect("first commit");
    let before_marking = env
        .store
        .commit("store-test", &[&pending(true, Effect::None)])
        .await
        .expect("replay before the answer is recorded");
    let batch = first[0].batch_id.expect("a fresh outcome has its batch");
    env.store
        .mark_answered(&[batch])
        .await
        .expect("mark answered");
    let after_marking = env
        .store
        .commit("store-test", &[&pending(true, Effect::None)])
        .await
        .expect("replay after the answer is recorded");
    let stale = env
        .store
        .commit(
            "store-test",
            &[&Pending {
                partition: Partition(lease.partition.0),
                epoch: lease.epoch - 1,
                ..pending(true, Effect::None)
            }],
        )
        .await;

    // Assert
    assert!(!first[0].replayed && !first[0].answered);
    assert!(before_marking[0].replayed && !before_marking[0].answered);
    assert!(after_marking[0].replayed && after_marking[0].answered);
    assert_eq!(after_marking[0].verdict, decided);
    assert!(
        matches!(stale, Err(seatrush::store::StoreError::Fenced { .. })),
        "a commit under an old epoch is refused: {stale:?}"
    );
    assert!(env.store.audit().await.expect("audit").is_empty());
    env.cleanup().await;
}
