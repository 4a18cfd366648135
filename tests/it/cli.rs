//! The command line, run as a user would run it, and the worker's start-up checks.

use std::process::Output;

use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::helpers::TestEnv;

async fn seatrush(env: &TestEnv, args: &[&str]) -> Output {
    env.seatrush()
        .args(args)
        .output()
        .await
        .expect("run seatrush")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_drop_list_and_audit_from_the_command_line() {
    // Arrange
    let mut env = TestEnv::new().await;
    let added = seatrush(&env, &["course", "add", "CLI101", "--seats", "1"]).await;
    assert!(added.status.success(), "{added:?}");
    env.start_worker(env.worker_config()).await;

    // Act
    let first = seatrush(
        &env,
        &["enroll", "CLI101", "ann", "--request-id", "cli-1", "--json"],
    )
    .await;
    let second = seatrush(&env, &["enroll", "CLI101", "bob"]).await;
    let replay = seatrush(&env, &["enroll", "CLI101", "ann", "--request-id", "cli-1"]).await;
    let dropped = seatrush(&env, &["drop", "CLI101", "ann"]).await;
    let listed = seatrush(&env, &["course", "list", "--json"]).await;
    let audit = seatrush(&env, &["audit", "--json"]).await;

    // Assert
    assert!(first.status.success(), "{first:?}");
    let answers: Vec<serde_json::Value> = stdout(&first)
        .lines()
        .inspect(|l| crate::schema::assert_valid_answer(l.as_bytes()))
        .map(|l| serde_json::from_str(l).expect("one JSON answer per line"))
        .collect();
    assert_eq!(answers.len(), 2, "provisional and final");
    assert_eq!(answers[0]["stage"], "provisional");
    assert_eq!(answers[1]["stage"], "final");
    assert_eq!(answers[1]["outcome"], "enrolled");
    assert!(stdout(&second).contains("rejected (full)"), "{second:?}");
    assert!(stdout(&replay).contains("replayed"), "{replay:?}");
    assert!(stdout(&dropped).contains("-> dropped"), "{dropped:?}");
    let courses: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON list");
    assert_eq!(courses[0]["course_id"], "CLI101");
    assert_eq!(courses[0]["enrolled"], 0);
    assert!(audit.status.success(), "{audit:?}");
    assert!(stdout(&audit).contains("\"clean\":true"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_without_a_worker_times_out_with_a_clear_message() {
    // Arrange: the topology exists (declared by a worker that has stopped), no worker runs.
    let mut env = TestEnv::new().await;
    env.start_worker(env.worker_config()).await;
    env.stop_workers().await;

    // Act
    let output = seatrush(&env, &["enroll", "X1", "ann", "--timeout-secs", "1"]).await;

    // Assert
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("no final answer"), "{message}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_another_partition_count_refuses_to_start() {
    // Arrange: the database was set up with 4 partitions.
    let env = TestEnv::new().await;
    let mut config = env.worker_config();
    config.topology.partitions = 8;

    // Act
    let refused = seatrush_core::worker::run(config, CancellationToken::new()).await;

    // Assert
    let message = format!("{:#}", refused.expect_err("the worker must refuse"));
    assert!(message.contains("set up with 4 partitions"), "{message}");
    assert!(message.contains("--partitions 4"), "{message}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_each_final_event_of_the_course() {
    // Arrange: a watcher process on one course.
    let mut env = TestEnv::new().await;
    env.add_courses("w", 2, 5).await;
    env.start_worker(env.worker_config()).await;
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_seatrush"))
        .args(["watch", "--course", "w000", "--json"])
        .env("AMQP_URL", &env.amqp_url)
        .env("SEATRUSH_PREFIX", &env.topology.prefix)
        .stdout(std::process::Stdio::piped())
        .stderr(env.log_file("watch.log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start watch");
    let stdout = watcher.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    // The watcher's queue must be bound before the events are published; its first event
    // proves it, so keep enrolling until one shows up.
    let mut seen = Vec::new();
    for attempt in 0..50 {
        let course = if attempt % 2 == 0 { "w000" } else { "w001" };
        let out = seatrush(&env, &["enroll", course, &format!("s{attempt}")]).await;
        assert!(out.status.success(), "{out:?}");
        if let Ok(Ok(Some(line))) =
            tokio::time::timeout(std::time::Duration::from_millis(200), lines.next_line()).await
        {
            seen.push(line);
            break;
        }
    }

    // Assert: the event is the final answer of a w000 request, in JSON.
    let event: serde_json::Value =
        serde_json::from_str(seen.first().expect("an event arrives")).expect("JSON");
    crate::schema::assert_valid_answer(seen[0].as_bytes());
    assert_eq!(event["stage"], "final");
    assert_eq!(event["course_id"], "w000");
    assert_eq!(event["outcome"], "enrolled");
    watcher.kill().await.expect("stop watch");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_safe_when_several_processes_run_them_at_once() {
    // Arrange
    let mut env = TestEnv::new().await;
    let fresh = env.empty_database().await;

    // Act: three concurrent `seatrush migrate` on an empty database.
    let runs = (0..3).map(|_| {
        Command::new(env!("CARGO_BIN_EXE_seatrush"))
            .arg("migrate")
            .env("DATABASE_URL", &fresh)
            .env("SEATRUSH_PARTITIONS", "4")
            .output()
    });
    let outputs = futures::future::join_all(runs).await;

    // Assert
    for output in outputs {
        let output = output.expect("run migrate");
        assert!(output.status.success(), "{output:?}");
    }
    let store = seatrush_core::store::Store::connect(&fresh, 1)
        .await
        .expect("connect");
    assert!(store.audit().await.expect("schema in place").is_empty());
    store.close().await;
    env.cleanup().await;
}

#[tokio::test]
async fn values_a_worker_cannot_run_with_are_refused_with_their_limit() {
    // Arrange: each bad value, and what the refusal must say.
    let cases: [(&[&str], &str); 10] = [
        (&["worker", "--prefetch", "0"], "must be at least 1"),
        (&["worker", "--lanes", "web,Batch"], "a-z, 0-9"),
        (
            &["worker", "--lanes", "a,b,c,d,e,f,g,h,i"],
            "at most 8 beside the default one",
        ),
        (&["enroll", "--lane", "no.dots", "C1", "s1"], "a-z, 0-9"),
        (&["worker", "--runtime-threads", "0"], "must be at least 1"),
        (&["worker", "--lease-ms", "10"], "must be at least 300"),
        (&["worker", "--db-connections", "1"], "must be at least 2"),
        (&["worker", "--partitions", "0"], "must be at least 1"),
        (&["rush", "--rate=-1"], "must be a number above 0"),
        (&["bench", "--workers", "0"], "must be at least 1"),
    ];
    for (args, why) in cases {
        // Act: no server is needed to refuse a flag.
        let out = Command::new(crate::helpers::exe())
            .args(args)
            .env_remove("AMQP_URL")
            .env_remove("DATABASE_URL")
            .output()
            .await
            .expect("run seatrush");

        // Assert: a usage error (exit 2) naming the flag and its limit, before anything starts.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
        assert!(
            stderr.contains(
                args[1]
                    .trim_start_matches('-')
                    .split('=')
                    .next()
                    .unwrap_or("")
            ),
            "{args:?} names the flag: {stderr}"
        );
    }
}
