//! The rush and the benchmark as a user runs them: invariants and report fields, never times.

use tokio::process::Command;

use crate::helpers::{TestEnv, exe};

const RUSH_FIELDS: &[&str] = &[
    "requests",
    "throughput_rps",
    "provisional_p50_ms",
    "provisional_p99_ms",
    "final_p50_ms",
    "final_p99_ms",
    "requests_per_commit",
    "worker_cpu_us_per_request",
    "worker_peak_rss_mib",
    "lost",
    "duplicated",
    "contradicted",
    "violations",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_rush_with_two_workers_passes_its_checks() {
    // Arrange
    let env = TestEnv::new().await;
    let json = env
        .log_dir()
        .join(format!("{}-rush.json", env.topology.prefix));

    // Act
    let output = Command::new(exe())
        .args(["rush", "--workers", "2", "--courses", "30", "--seats", "20"])
        .args(["--students", "1500", "--choices", "2", "--json"])
        .arg(&json)
        .env("AMQP_URL", &env.amqp_url)
        .env("DATABASE_URL", &env.database_url)
        .env("SEATRUSH_PREFIX", &env.topology.prefix)
        .env("SEATRUSH_PARTITIONS", env.topology.partitions.to_string())
        .output()
        .await
        .expect("run seatrush rush");

    // Assert
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "rush failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("audit clean"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    for field in RUSH_FIELDS {
        assert!(report[field].is_number(), "field {field} in {report:#}");
    }
    assert_eq!(report["requests"], 3000);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert_eq!(report["violations"], 0);
    assert_eq!(report["workers"], 2);
    let enrolled = report["outcomes"]["enrolled"].as_u64().unwrap_or(0);
    assert!(enrolled <= 30 * 20, "more enrolled than seats: {enrolled}");
    assert!(report["transactions"].as_i64().unwrap_or(0) > 0);
    env.cleanup().await;
}
