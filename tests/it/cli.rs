//! The command line, run as a user would run it, and the worker's start-up checks.

use std::process::Output;

use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::helpers::TestEnv;

async fn seatrush(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seatrush"))
        .args(args)
        .env("AMQP_URL", &env.amqp_url)
        .env("DATABASE_URL", &env.database_url)
        .env("SEATRUSH_PREFIX", &env.topology.prefix)
        .env("SEATRUSH_PARTITIONS", env.topology.partitions.to_string())
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
    let refused = seatrush::worker::run(config, CancellationToken::new()).await;

    // Assert
    let message = format!("{:#}", refused.expect_err("the worker must refuse"));
    assert!(message.contains("set up with 4 partitions"), "{message}");
    assert!(message.contains("--partitions 4"), "{message}");
    env.cleanup().await;
}
