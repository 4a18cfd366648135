//! Poison messages and the dead-letter queue: a request its course keeps crashing on is
//! dead-lettered without blocking anything else, listed with its reason, and replayed once
//! fixed.

use std::time::Duration;

use seatrush_core::amqp::Outgoing;

use sqlx::Connection;

use crate::helpers::{Listener, TestEnv, WAIT, enroll, eventually};

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
    let listed = eventually("both dead letters listed", WAIT, || async {
        let listed = deadletters(&env, &[]).await;
        (listed.as_array().map_or(0, Vec::len) >= 2).then_some(listed)
    })
    .await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_database_refuses_is_dead_lettered_alone_and_its_batch_commits() {
    // Arrange: the database refuses one request id for good (as a broken constraint or a bug
    // in a migration would); a long linger puts it in one batch with twenty others.
    let mut env = TestEnv::new().await;
    let courses = env.add_courses("P", 2, 50).await;
    let mut db = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("connect");
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF NEW.request_id = 'poison-db' THEN \
             RAISE EXCEPTION 'refused by the test trigger'; \
           END IF; \
           RETURN NEW; \
         END $$; \
         CREATE TRIGGER refuse_poison BEFORE INSERT ON outcomes \
           FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(&mut db)
    .await
    .expect("install the refusing trigger");
    let mut config = env.worker_config();
    config.batch_linger = Duration::from_millis(400);
    env.start_worker(config).await;
    let mut client = Listener::new(&env, None).await;
    let mut requests: Vec<_> = (0..20)
        .map(|i| enroll(&format!("ok-{i}"), &courses[i % 2], &format!("s{i}")))
        .collect();
    requests.insert(7, enroll("poison-db", &courses[1], "mallory"));

    // Act
    client.send(&requests).await;
    client.until(WAIT, |c| c.final_count() == 20).await;
    let listed = eventually("the refused request dead-lettered", WAIT, || async {
        let listed = deadletters(&env, &[]).await;
        (!listed.as_array().is_none_or(Vec::is_empty)).then_some(listed)
    })
    .await;

    // Assert: the twenty were committed as decided, each once; the poison alone is
    // dead-lettered, once, with the database's reason, and has no outcome.
    let finals = client.finals();
    for i in 0..20 {
        let answer = &finals[&format!("ok-{i}")];
        assert_eq!(answer.outcome, "enrolled", "{answer:?}");
        assert!(!answer.revised && !answer.replayed, "{answer:?}");
    }
    assert!(!finals.contains_key("poison-db"));
    let letters = listed.as_array().expect("a list");
    assert_eq!(letters.len(), 1, "{listed:#}");
    assert_eq!(letters[0]["message_id"], "poison-db");
    assert_eq!(letters[0]["source"], "seatrush");
    let reason = letters[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("database refused") && reason.contains("refused by the test trigger"),
        "{reason}"
    );
    let ids: Vec<String> = requests.iter().map(|r| r.request_id.to_string()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(env.store.count_outcomes(&ids).await.expect("count"), 20);
    assert!(env.store.audit().await.expect("audit").is_empty());

    // Act 2: the operator fixes the database and replays the letter.
    sqlx::raw_sql("DROP TRIGGER refuse_poison ON outcomes")
        .execute(&mut db)
        .await
        .expect("drop the trigger");
    deadletters(&env, &["replay"]).await;
    client.until(WAIT, |c| c.final_count() == 21).await;

    // Assert 2: the course actor reloaded after the refusal, so the seat it had counted for
    // the poison in memory was never counted twice.
    assert_eq!(client.finals()["poison-db"].outcome, "enrolled");
    let detail = env
        .store
        .course_detail(&courses[1])
        .await
        .expect("read")
        .expect("course");
    assert_eq!(detail.enrolled_students.len(), 11);
    assert!(env.store.audit().await.expect("audit").is_empty());

    db.close().await.expect("close");
    client.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_kills_every_worker_is_dead_lettered_by_the_broker_delivery_limit() {
    // Arrange: a request that makes the worker process itself die (no supervisor inside it can
    // catch that), a supervisor that restarts the worker each time, and a delivery limit of 2.
    let mut env = TestEnv::new().await;
    env.topology.delivery_limit = 2;
    let prefix = format!("{}k", env.topology.prefix);
    let courses = env.add_courses(&prefix, 2, 5).await;
    let (deadly, healthy) = (courses[0].clone(), courses[1].clone());
    let bug = format!("course-decide-{deadly}=return(abort)");
    let start_worker = |n: usize| {
        env.launch(
            &format!("k{n}"),
            &["--lease-ms", "800"],
            &[("FAILPOINTS", &bug)],
        )
    };
    let mut worker = start_worker(0);
    env.wait_for_partitions().await;
    let mut client = Listener::new(&env, None).await;

    // Act: the deadly request; the worker is restarted whenever it dies, until the broker
    // dead-letters the request.
    client.send(&[enroll("deadly-1", &deadly, "s1")]).await;
    let mut deaths = 0;
    let start = std::time::Instant::now();
    let listed = loop {
        let listed = deadletters(&env, &[]).await;
        if !listed.as_array().is_none_or(Vec::is_empty) {
            break listed;
        }
        assert!(
            start.elapsed() < WAIT,
            "never dead-lettered; {deaths} deaths"
        );
        if worker.exited(Duration::from_millis(500)).await.is_some() {
            deaths += 1;
            worker = start_worker(deaths);
        }
    };
    // The last death may come just after the listing: the next request needs a live worker.
    if worker.exited(Duration::from_secs(2)).await.is_some() {
        deaths += 1;
        worker = start_worker(deaths);
    }
    client.send(&[enroll("healthy-1", &healthy, "s1")]).await;
    client
        .until(WAIT, |c| c.finals().contains_key("healthy-1"))
        .await;

    // Assert: the broker gave up on the request after its delivery limit, said so, and the
    // worker then served the other course.
    let letters = listed.as_array().expect("a list");
    assert_eq!(letters.len(), 1, "{listed:#}");
    assert_eq!(letters[0]["message_id"], "deadly-1");
    assert_eq!(letters[0]["source"], "broker", "{listed:#}");
    assert!(
        letters[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("delivery_limit")),
        "{listed:#}"
    );
    assert_eq!(
        deaths, 3,
        "a delivery limit of 2: one delivery and two redeliveries"
    );
    assert_eq!(client.finals()["healthy-1"].outcome, "enrolled");
    assert_eq!(
        env.store
            .count_outcomes(&["deadly-1"])
            .await
            .expect("count"),
        0
    );

    worker
        .stop(Duration::from_secs(30))
        .await
        .expect("the last worker stops cleanly");
    client.close().await;
    env.cleanup().await;
}
