//! Named lanes: a producer's own exchange and queues beside the default ones, consumed by the
//! partition's owner in turn with the others, against a real worker, RabbitMQ and Postgres.

use std::collections::{BTreeMap, BTreeSet};

use seatrush_core::amqp::{Broker, Outgoing, Topology};
use seatrush_core::domain::{CourseId, Partition, Request};

use crate::helpers::{Listener, TestEnv, WAIT, enroll, eventually};

/// The test's topology with these lanes beside the default one.
fn with_lanes(env: &mut TestEnv, lanes: &[&str]) {
    let lanes: Vec<String> = lanes.iter().map(|l| (*l).to_owned()).collect();
    env.topology = env.topology.clone().with_lanes(&lanes).expect("lane names");
}

/// `count` enrolls over `courses`, each by its own student, ids starting with `tag`.
fn spread(courses: &[CourseId], tag: &str, count: usize) -> Vec<Request> {
    (0..count)
        .map(|i| {
            enroll(
                &format!("{tag}-r{i}"),
                &courses[i % courses.len()],
                &format!("{tag}-s{i}"),
            )
        })
        .collect()
}

/// The partition each routing key of `queue`'s messages landed in, draining it.
async fn drain_keys(
    env: &TestEnv,
    topology: &Topology,
    lane: Option<&str>,
    into: &mut BTreeMap<String, u16>,
) {
    let broker = env.broker().await;
    for p in 0..topology.partitions {
        let queue = topology.lane_queue(lane, Partition(p));
        let ready = broker
            .queue_depth(&queue)
            .await
            .expect("queue depth")
            .map_or(0, |d| d.ready);
        if ready == 0 {
            continue;
        }
        let mut deliveries = broker.consume(&queue, "drain", 512).await.expect("consume");
        for _ in 0..ready {
            let incoming = tokio::time::timeout(WAIT, deliveries.next())
                .await
                .expect("a delivery in time")
                .expect("the consumer lives")
                .expect("a delivery");
            into.insert(incoming.routing_key.clone(), p);
            incoming.ack.ack().await.expect("ack");
        }
        deliveries.close().await;
    }
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_course_lands_in_the_same_partition_in_every_lane() {
    // Arrange: 8 partitions and two lanes, declared as a worker declares them; no worker, so
    // the messages stay where the exchanges routed them.
    let mut env = TestEnv::with_partitions(8).await;
    with_lanes(&mut env, &["web", "batch"]);
    let broker = env.broker().await;
    broker.declare(&env.topology).await.expect("declare");
    let publisher = broker.confirmed_publisher().await.expect("publisher");
    let keys: Vec<String> = (0..400).map(|i| format!("LANE-{i}")).collect();

    // Act: every key once into each lane.
    for lane in env.topology.every_lane() {
        for key in &keys {
            let message = Outgoing::raw_request(&env.topology, key, Some(key), None, Vec::new())
                .on_lane(&env.topology, lane);
            publisher.send_confirmed(message).await.expect("publish");
        }
    }
    let mut placed: Vec<BTreeMap<String, u16>> = Vec::new();
    for lane in env.topology.every_lane() {
        let mut keys_of_lane = BTreeMap::new();
        drain_keys(&env, &env.topology, lane, &mut keys_of_lane).await;
        placed.push(keys_of_lane);
    }

    // Assert: each lane got every key, spread over the partitions, and a key's partition is
    // the same in each (otherwise two workers could hold one course).
    for keys_of_lane in &placed {
        assert_eq!(keys_of_lane.len(), keys.len());
        let used: BTreeSet<u16> = keys_of_lane.values().copied().collect();
        assert!(used.len() > 4, "keys spread over partitions {used:?}");
    }
    assert_eq!(
        placed[0], placed[1],
        "web lane differs from the default one"
    );
    assert_eq!(
        placed[0], placed[2],
        "batch lane differs from the default one"
    );
    broker.close().await;
    env.cleanup().await;
}

/// Each producer sends `per` requests over `courses` under its tag, then waits until it holds
/// `finals` final answers in all.
async fn round(
    producers: &mut [Listener],
    courses: &[CourseId],
    tags: [&str; 3],
    per: usize,
    finals: usize,
) {
    for (producer, tag) in producers.iter_mut().zip(tags) {
        producer.send(&spread(courses, tag, per)).await;
    }
    for producer in producers {
        producer.until(WAIT, |p| p.final_count() == finals).await;
    }
}

/// The consumers of every lane's queue of every partition.
async fn consumers(broker: &Broker, topology: &Topology) -> Vec<Option<u32>> {
    let mut all = Vec::new();
    for p in 0..topology.partitions {
        for queue in topology.partition_queues(Partition(p)) {
            let depth = broker.queue_depth(&queue).await.expect("queue depth");
            all.push(depth.map(|d| d.consumers));
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_every_lane_are_decided_and_move_with_their_partition() {
    // Arrange: a worker consuming two lanes beside the default one, a producer on each.
    let mut env = TestEnv::new().await;
    with_lanes(&mut env, &["web", "batch"]);
    let courses = env.add_courses("LN", 6, 20).await;
    env.start_worker(env.worker_config()).await;
    let mut producers = Vec::new();
    for lane in [None, Some("web"), Some("batch")] {
        let mut producer = Listener::new(&env, None).await;
        producer.lane = lane.map(str::to_owned);
        producers.push(producer);
    }

    // Act 1: each producer sends 60 requests over the six courses (180 for 120 seats).
    round(&mut producers, &courses, ["d1", "w1", "b1"], 60, 60).await;
    let broker = env.broker().await;
    let depths = consumers(&broker, &env.topology).await;

    // Assert 1: every request answered once, every lane's queue of every partition has its
    // one consumer, and the seats add up.
    assert!(depths.iter().all(|c| *c == Some(1)), "consumers {depths:?}");
    assert_eq!(depths.len(), 3 * usize::from(env.topology.partitions));
    let enrolled = |ps: &[Listener]| {
        ps.iter()
            .flat_map(|p| p.finals().into_values())
            .filter(|a| a.outcome == "enrolled")
            .count()
    };
    assert_eq!(
        enrolled(&producers),
        120,
        "six courses of 20 seats, 180 asking"
    );

    // Act 2: a second worker joins, so partitions (with all their lanes) move; then more.
    env.start_worker(env.worker_config()).await;
    eventually("both workers own partitions", WAIT, || async {
        let (_, rows) = env.store.ownership().await.ok()?;
        let owners: BTreeSet<String> = rows.into_iter().filter_map(|r| r.owner).collect();
        (owners.len() == 2).then_some(())
    })
    .await;
    let more_courses = env.add_courses("LM", 4, 10).await;
    round(&mut producers, &more_courses, ["d2", "w2", "b2"], 20, 80).await;
    eventually("every lane queue consumed once", WAIT, || async {
        let all = consumers(&broker, &env.topology).await;
        all.iter().all(|c| *c == Some(1)).then_some(())
    })
    .await;

    // Assert 2: all answered after the move, 40 more seats taken, each held in the database,
    // and the audit (which checks no course is oversold) clean.
    assert_eq!(enrolled(&producers), 160);
    let every_course: Vec<CourseId> = courses.iter().chain(&more_courses).cloned().collect();
    let held = env.store.seats_held(&every_course).await.expect("seats");
    assert_eq!(held.len(), 160);
    let violations = env.store.audit().await.expect("audit");
    assert!(violations.is_empty(), "audit violations: {violations:#?}");
    broker.close().await;
    for producer in producers {
        producer.close().await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_lane_does_not_hold_back_the_others() {
    // Arrange: one partition; 10,000 invalid messages queued on the "flood" lane, then 20 valid
    // requests on the default one, all before any worker runs.
    let mut env = TestEnv::with_partitions(1).await;
    with_lanes(&mut env, &["flood"]);
    let courses = env.add_courses("FL", 2, 30).await;
    let broker = env.broker().await;
    broker.declare(&env.topology).await.expect("declare");
    let publisher = broker.confirmed_publisher().await.expect("publisher");
    const FLOOD: u32 = 10_000;
    let mut confirms = Vec::new();
    for i in 0..FLOOD {
        let message = Outgoing::raw_request(
            &env.topology,
            courses[0].as_str(),
            Some(&format!("junk-{i}")),
            None,
            b"{not json".to_vec(),
        )
        .on_lane(&env.topology, Some("flood"));
        confirms.push(publisher.send(message).await.expect("publish"));
    }
    for confirm in confirms {
        confirm.confirmed().await.expect("confirmed");
    }
    let mut valid = Listener::new(&env, None).await;
    let requests = spread(&courses, "v", 20);
    valid.send(&requests).await;

    // Act: the worker starts on both lanes.
    env.start_worker(env.worker_config()).await;
    let answered = |c: &Listener| {
        let ids: BTreeSet<&str> = c.received.iter().map(|a| a.request_id.as_str()).collect();
        ids.len() == 20
    };
    valid.until(WAIT, answered).await;
    let flood_queue = env.topology.lane_queue(Some("flood"), Partition(0));
    let left = broker
        .queue_depth(&flood_queue)
        .await
        .expect("depth")
        .map_or(0, |d| d.ready);

    // Assert: every valid request was answered (decided) while most of the flood still
    // waited (in one FIFO queue they would have come after all of it); then they are all
    // final, and the flood drains too, each message dead-lettered.
    assert!(
        left > FLOOD / 2,
        "only {left} of {FLOOD} flood messages left when the valid ones were answered"
    );
    valid.until(WAIT, |c| c.final_count() == 20).await;
    assert!(valid.finals().values().all(|a| a.outcome == "enrolled"));
    eventually("the flood is drained", WAIT, || async {
        let depth = broker.queue_depth(&flood_queue).await.ok()??;
        (depth.ready == 0).then_some(())
    })
    .await;
    let dead = eventually("every flood message dead-lettered", WAIT, || async {
        let depth = broker
            .queue_depth(&env.topology.dead_queue())
            .await
            .ok()??;
        (depth.ready >= FLOOD).then_some(depth.ready)
    })
    .await;
    assert_eq!(dead, FLOOD);
    broker.close().await;
    valid.close().await;
    env.cleanup().await;
}
