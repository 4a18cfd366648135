//! Poison messages and the dead-letter queue: a request its course keeps crashing on is
//! dead-lettered without blocking anything else, listed with its reason, and replayed once
//! fixed.

use std::time::Duration;

use seatrush::amqp::Outgoing;

use crate::helpers::{Listener, TestEnv, enroll};

const WAIT: Duration = Duration::from_secs(60);

async fn deadletters(env: &TestEnv, args: &[&str]) -> serde_json::Value {
    let out = env
        .seatrush()
        .arg("deadletters")
        .args(args)
        .arg("--json")
        .output()
        .await
        .expect("run seatrush deadletters");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_request_is_dead_lettered_listed_and_replayed_once_fixed() {
    // Arrange: one course crashes its actor on every request; another is healthy.
    let mut env = TestEnv::new().await;
    let prefix = format!("{}d", env.topology.prefix);
    let courses = env.add_courses(&prefix, 2, 5).await;
    let (poisoned, healthy) = (courses[0].clone(), courses[1].clone());
    let point = format!("course-decide-{poisoned}");
    fail::cfg_callback(point.clone(), || panic!("injected bug in the course actor"))
        .expect("configure the fail point");
    let mut config = env.worker_config();
    config.restarts.window = Duration::from_secs(60);
    env.start_worker(config).await;
    let mut client = Listener::new(&env, None).await;
    let broker = env.broker().await;
    let publisher = broker.confirmed_publisher().await.expect("publisher");
    publisher
        .send_confirmed(Outgoing::raw_request(
            &env.topology,
            healthy.as_str(),
            Some("not-json"),
            None,
            b"{oops".to_vec(),
        ))
        .await
        .expect("publish an invalid request");

    // Act 1: the poison request, then one for the healthy course.
    client.send(&[enroll("poison-1", &poisoned, "s1")]).await;
    client.send(&[enroll("healthy-1", &healthy, "s1")]).await;
    client
        .until(WAIT, |c| c.finals().contains_key("healthy-1"))
        .await;
    let start = std::time::Instant::now();
    let listed = loop {
        let listed = deadletters(&env, &[]).await;
        if listed.as_array().map_or(0, Vec::len) >= 2 || start.elapsed() > WAIT {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let again = deadletters(&env, &[]).await;

    // Assert 1: the healthy course was answered; both dead letters are listed with their
    // reasons, and listing does not consume them.
    assert_eq!(client.finals()["healthy-1"].outcome, "enrolled");
    let letters = listed.as_array().expect("a list");
    let poison = letters
        .iter()
        .find(|l| l["message_id"] == "poison-1")
        .unwrap_or_else(|| panic!("poison-1 is not listed: {listed:#}"));
    assert!(
        poison["reason"]
            .as_str()
            .is_some_and(|r| r.contains("crashed")),
        "{poison:#}"
    );
    assert_eq!(poison["source"], "seatrush");
    assert_eq!(poison["routing_key"], poisoned.as_str());
    let invalid = letters
        .iter()
        .find(|l| l["message_id"] == "not-json")
        .unwrap_or_else(|| panic!("the invalid request is not listed: {listed:#}"));
    assert!(
        invalid["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not a valid request"))
    );
    assert_eq!(again.as_array().map(Vec::len), Some(letters.len()));

    // Act 2: the bug is fixed; the operator replays the poison request only.
    fail::remove(&point);
    let replayed = deadletters(&env, &["replay", "--reason-contains", "crashed"]).await;
    client
        .until(WAIT, |c| c.finals().contains_key("poison-1"))
        .await;

    // Assert 2: decided and answered on its original reply address; the invalid one stays.
    assert_eq!(replayed.as_array().map(Vec::len), Some(1), "{replayed:#}");
    assert_eq!(client.finals()["poison-1"].outcome, "enrolled");
    let left = deadletters(&env, &[]).await;
    let left: Vec<&str> = left
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|l| l["message_id"].as_str())
        .collect();
    assert_eq!(left, ["not-json"]);
    assert!(env.store.audit().await.expect("audit").is_empty());

    broker.close().await;
    client.close().await;
    env.cleanup().await;
}
