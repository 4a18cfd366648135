//! Bad input gets its documented answer or dead-letter reason, and harms nothing else.

use std::time::Duration;

use seatrush_core::amqp::{Outgoing, ReplyTo};
use seatrush_core::client::parse_answer;
use seatrush_core::protocol::{REASON_HEADER, Stage};

use crate::helpers::{TestEnv, assert_exactly_one_final, enroll};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_or_dead_lettered_and_the_worker_goes_on() {
    // Arrange
    let mut env = TestEnv::new().await;
    let courses = env.add_courses("ok", 1, 5).await;
    env.start_worker(env.worker_config()).await;
    let broker = env.broker().await;
    let publisher = broker.confirmed_publisher().await.expect("publisher");
    let (queue, mut replies) = broker.reply_queue().await.expect("reply queue");
    let to = ReplyTo {
        queue,
        correlation_id: None,
        batch: false,
    };
    let good = br#"{"action":"enroll","course_id":"ok000","student_id":"s1"}"#.to_vec();
    let cases: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        (
            "ok000",
            Some("bad-json"),
            b"{\"action\": \"enroll\", oops".to_vec(),
        ),
        ("ok000", None, good.clone()),
        ("ok000", Some("huge"), vec![b'x'; 1 << 20]),
        (
            "ok000",
            Some("bad-student"),
            br#"{"action":"enroll","course_id":"ok000","student_id":"s p a c e"}"#.to_vec(),
        ),
        (
            "ok000",
            Some("bad-action"),
            br#"{"action":"steal","course_id":"ok000","student_id":"s1"}"#.to_vec(),
        ),
        ("ok000", Some("bad.request.id"), good.clone()),
        (
            "nope",
            Some("unknown-course"),
            br#"{"action":"enroll","course_id":"nope","student_id":"s1"}"#.to_vec(),
        ),
    ];

    // Act
    for (key, id, body) in cases {
        publisher
            .send_confirmed(Outgoing::raw_request(
                &env.topology,
                key,
                id,
                Some(&to),
                body,
            ))
            .await
            .expect("publish");
    }

    // One more, answerable but asking for its answer where nobody listens.
    let nobody = ReplyTo {
        queue: format!("{}-nobody-listens", env.topology.prefix),
        correlation_id: None,
        batch: false,
    };
    publisher
        .send_confirmed(Outgoing::raw_request(
            &env.topology,
            "ok000",
            Some("huge-unheard"),
            Some(&nobody),
            vec![b'x'; 1 << 20],
        ))
        .await
        .expect("publish");

    // Assert: answers for what can be answered (valid message_id and a reply address).
    let mut finals = std::collections::HashMap::new();
    while finals.len() < 5 {
        let message = tokio::time::timeout(Duration::from_secs(30), replies.next())
            .await
            .expect("answers arrive")
            .expect("reply queue open")
            .expect("delivery");
        crate::schema::assert_valid_answer(&message.body);
        let answer = parse_answer(&message.body).expect("answers are JSON");
        if answer.stage == Stage::Final {
            finals.insert(answer.request_id.clone(), answer);
        }
    }
    for id in ["bad-json", "huge", "bad-student", "bad-action"] {
        let answer = &finals[id];
        assert_eq!(answer.outcome, "rejected", "{id}");
        assert_eq!(answer.reason.as_deref(), Some("invalid"), "{id}");
        assert!(answer.detail.is_some(), "{id} says why");
    }
    assert_eq!(
        finals["unknown-course"].reason.as_deref(),
        Some("unknown_course")
    );
    assert_eq!(finals["bad-student"].student_id, "s p a c e");

    // Dead letters: what could not be answered (no valid id, or nobody listening at its
    // reply address), each with its reason; what was answered is not copied.
    let dead = broker
        .drain_dead_letters(&env.topology, 10, Duration::from_secs(5))
        .await
        .expect("dead letters");
    let reasons: Vec<(Option<String>, String)> = dead
        .iter()
        .map(|m| {
            let reason = m
                .headers
                .iter()
                .find(|(k, _)| k == REASON_HEADER)
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            (m.message_id.clone(), reason)
        })
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:#?}");
    let reason_of = |id: Option<&str>| {
        reasons
            .iter()
            .find(|(m, _)| m.as_deref() == id)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("no dead letter for {id:?}: {reasons:#?}"))
    };
    assert!(reason_of(None).contains("message_id is missing"));
    assert!(reason_of(Some("bad.request.id")).contains("request_id"));
    assert!(reason_of(Some("huge-unheard")).contains("limit"));
    let huge = dead
        .iter()
        .find(|m| m.message_id.as_deref() == Some("huge-unheard"));
    assert_eq!(
        huge.map(|m| m.body.len()),
        Some(1 << 20),
        "the body is kept for inspection"
    );

    // The worker is still there and nothing else was affected.
    let report = env.fire(vec![enroll("after", &courses[0], "s2")]).await;
    assert_exactly_one_final(&report);
    assert_eq!(report.outcomes().get("enrolled"), Some(&1));
    assert!(env.store.audit().await.expect("audit").is_empty());
    broker.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_flood_is_answered_or_dead_lettered_beside_valid_students() {
    // Arrange
    let env = TestEnv::new().await;
    let out = env
        .log_dir()
        .join(format!("{}-hostile", env.topology.prefix));

    // Act: the bench's hostile scenario, small: every kind of bad message, valid students
    // alone and then beside them.
    let run = env
        .seatrush()
        .args([
            "bench",
            "--scenario",
            "hostile",
            "--hostile-messages",
            "3000",
            "--courses",
            "10",
            "--students",
            "400",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .await
        .expect("run seatrush bench");

    // Assert
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "hostile failed: {stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("hostile.json")).expect("the JSON report"))
            .expect("JSON");
    assert_eq!(report["messages"], 3000);
    assert_eq!(report["unaccounted"], 0, "{report:#}");
    assert_eq!(report["dead_without_reason"], 0, "{report:#}");
    assert_eq!(report["worker_alive"], true);
    let answered = report["answered"].as_u64().expect("answered");
    let dead = report["dead_lettered"].as_u64().expect("dead letters");
    assert!(answered + dead >= 3000, "{report:#}");
    let kinds = report["by_kind"].as_object().expect("kinds");
    assert_eq!(kinds.len(), 10, "{kinds:?}");
    for (kind, figures) in kinds {
        assert!(figures["sent"].as_u64() > Some(0), "{kind}");
    }
    // Each message is answered (valid id, answer taken by a queue) or else dead-lettered,
    // never both and never neither.
    for (kind, figures) in kinds {
        assert_eq!(
            figures["answered"].as_u64().unwrap_or(0)
                + figures["dead_lettered"].as_u64().unwrap_or(0),
            figures["sent"].as_u64().unwrap_or(u64::MAX),
            "{kind}: {figures}"
        );
    }
    assert_eq!(
        kinds["huge_headers"]["answered"],
        kinds["huge_headers"]["sent"]
    );
    // Forged course changes answered at addresses nobody listens on are dead-lettered.
    assert!(
        kinds["forged"]["dead_lettered"].as_u64() > Some(0),
        "{kinds:?}"
    );
    // The same flood again on the valid students' own lane (the first came on its own),
    // accounted for as fully.
    let same = &report["same_lane"];
    assert_eq!(report["flood_lane"], "flood");
    assert_eq!(
        same["messages"],
        3000 - report["warmup_messages"].as_u64().expect("warm-up")
    );
    assert_eq!(same["unaccounted"], 0, "{report:#}");
    assert_eq!(same["dead_without_reason"], 0, "{report:#}");
    for (name, valid) in [
        ("alone", &report["valid_alone"]),
        ("beside", &report["valid_beside"]),
        ("beside on the same lane", &same["valid_beside"]),
        (
            "beside the flood nobody read",
            &report["broker_only"]["valid_beside"],
        ),
    ] {
        assert_eq!(valid["requests"], 400, "{name}");
        for field in ["lost", "duplicated", "contradicted", "mismatched_seats"] {
            assert_eq!(valid[field], 0, "{name}: {field} in {report:#}");
        }
    }
    // The third flood, into queues that only ack it: every message taken in once.
    let broker_only = &report["broker_only"];
    assert_eq!(broker_only["messages"], same["messages"]);
    assert_eq!(
        broker_only["delivered"], broker_only["messages"],
        "{report:#}"
    );
    assert_eq!(report["violations"], 0);
    env.cleanup().await;
}
