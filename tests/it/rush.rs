//! The rush and the benchmark as a user runs them: invariants and report fields, never times.

use crate::helpers::TestEnv;

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
    let output = env
        .seatrush()
        .args(["rush", "--workers", "2", "--courses", "30", "--seats", "20"])
        .args(["--waitlist", "5"])
        .args(["--students", "1500", "--choices", "2", "--json"])
        .arg(&json)
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
    let waitlisted = report["outcomes"]["waitlisted"].as_u64().unwrap_or(0);
    assert!(
        (1..=30 * 5).contains(&waitlisted),
        "waitlisted {waitlisted}: some, and no more than the places"
    );
    assert_eq!(report["waitlist"], 5);
    assert!(report["transactions"].as_i64().unwrap_or(0) > 0);
    env.cleanup().await;
}

const BENCH_FIELDS: &[&str] = &[
    "ratio_to_ceiling",
    "ratio_to_same_messages",
    "ratio_to_naive",
    "final_p99_budget_ms",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_bench_writes_its_report_charts_and_ratios() {
    // Arrange
    let env = TestEnv::new().await;
    let out = env.log_dir().join(format!("{}-bench", env.topology.prefix));

    // Act
    let output = env
        .seatrush()
        .args([
            "bench",
            "--courses",
            "20",
            "--seats",
            "10",
            "--students",
            "800",
        ])
        .args(["--naive-connections", "8", "--out"])
        .arg(&out)
        .output()
        .await
        .expect("run seatrush bench");

    // Assert
    assert!(
        output.status.success(),
        "bench failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for file in ["report.md", "bench.json", "latency.svg", "throughput.svg"] {
        assert!(out.join(file).is_file(), "{file} is written");
    }
    let svg = std::fs::read_to_string(out.join("latency.svg")).expect("chart");
    assert!(svg.starts_with("<svg") && svg.contains("seatrush") && svg.contains("broker ceiling"));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("bench.json")).expect("bench.json"))
            .expect("JSON");
    for field in BENCH_FIELDS.iter().chain(RUSH_FIELDS) {
        assert!(report[field].is_number(), "field {field} in {report:#}");
    }
    assert!(report["ceiling"]["throughput_rps"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(report["naive"]["throughput_rps"].as_f64().unwrap_or(0.0) > 0.0);
    assert_eq!(report["naive"]["violations"], 0);
    assert_eq!(report["requests"], 800);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["violations"], 0);
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.contains("ratio_to_ceiling") && md.contains("naive Postgres"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_junk_scenario_answers_every_unknown_course_and_reports_memory() {
    // Arrange
    let env = TestEnv::new().await;
    let out = env.log_dir().join(format!("{}-junk", env.topology.prefix));

    // Act
    let output = env
        .seatrush()
        .args([
            "bench",
            "--scenario",
            "junk",
            "--junk-requests",
            "3000",
            "--out",
        ])
        .arg(&out)
        .output()
        .await
        .expect("run seatrush bench --scenario junk");

    // Assert
    assert!(
        output.status.success(),
        "junk failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("junk.json")).expect("junk.json"))
            .expect("JSON");
    assert_eq!(report["requests"], 3000);
    assert_eq!(report["answered"], 3000);
    for field in [
        "rss_before_mib",
        "rss_after_mib",
        "rss_growth_mib",
        "peak_rss_mib",
    ] {
        assert!(report[field].as_f64().unwrap_or(0.0).is_finite(), "{field}");
    }
    assert!(report["rss_before_mib"].as_f64().unwrap_or(0.0) > 0.0);
    // Unknown courses start no actor: nothing is enrolled anywhere.
    let courses = env.store.list_courses().await.expect("courses");
    assert!(courses.is_empty(), "junk created courses: {courses:?}");
    env.cleanup().await;
}
