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
    "ratio_to_intake_ceiling",
    "ratio_to_stream_intake_ceiling",
    "ratio_to_naive",
    "ratio_to_redis",
    "ratio_to_redis_everysec",
    "worker_publishes_per_request",
    "final_p99_budget_ms",
];

/// Runs `seatrush bench` with `args` into a directory of the test's own; its report, parsed.
async fn bench(env: &TestEnv, name: &str, args: &[&str], report: &str) -> serde_json::Value {
    let out = env
        .log_dir()
        .join(format!("{}-{name}", env.topology.prefix));
    let output = env
        .seatrush()
        .arg("bench")
        .args(args)
        .args(["--naive-connections", "4,8", "--out"])
        .arg(&out)
        .output()
        .await
        .expect("run seatrush bench");
    assert!(
        output.status.success(),
        "bench {name} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&std::fs::read(out.join(report)).expect("the report")).expect("JSON")
}

/// Every design of every round measured something and kept its invariants.
fn assert_rounds_kept_their_invariants(report: &serde_json::Value, rounds: usize) {
    let all = report["rounds"].as_array().expect("rounds");
    assert_eq!(all.len(), rounds);
    for round in all {
        for design in [
            "ceiling",
            "naive",
            "redis",
            "redis_everysec",
            "seatrush",
            "seatrush_single",
        ] {
            assert!(
                round[design]["throughput_rps"].as_f64().unwrap_or(0.0) > 0.0,
                "{design} in {round:#}"
            );
        }
        for intake in ["intake_ceiling", "stream_intake_ceiling"] {
            assert_eq!(round[intake]["complete"], true, "{intake}");
            assert_eq!(round[intake]["delivered"], round[intake]["published"]);
        }
        assert_eq!(round["naive"]["violations"], 0);
        for redis in ["redis", "redis_everysec"] {
            for check in ["violations", "lost", "duplicated", "contradicted"] {
                assert_eq!(round[redis][check], 0, "{redis} {check}");
            }
        }
        for seatrush in ["seatrush", "seatrush_single"] {
            for check in ["lost", "duplicated", "contradicted", "violations"] {
                assert_eq!(round[seatrush][check], 0, "{seatrush} {check}");
            }
        }
        assert_eq!(round["seatrush"]["batched_answers"], true);
        assert_eq!(round["seatrush_single"]["batched_answers"], false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_bench_runs_every_design_in_every_round_and_reports_medians() {
    // Arrange
    let env = TestEnv::new().await;

    // Act
    let args = [
        "--rounds",
        "2",
        "--courses",
        "20",
        "--seats",
        "10",
        "--students",
        "800",
    ];
    let report = bench(&env, "bench", &args, "bench.json").await;

    // Assert: the fields, every round's invariants, batched answers costing fewer messages
    // than single ones, and the report and charts written.
    for field in BENCH_FIELDS.iter().chain(RUSH_FIELDS) {
        assert!(report[field].is_number(), "field {field} in {report:#}");
    }
    assert_rounds_kept_their_invariants(&report, 2);
    assert_eq!(report["requests"], 800);
    assert_eq!(report["scenario"], "burst");
    let publishes = |r: &serde_json::Value| r["worker_publishes_per_request"].as_f64();
    let (batched, single) = (publishes(&report), publishes(&report["seatrush_single"]));
    assert!(
        matches!((batched, single), (Some(b), Some(s)) if b < s && s >= 2.0),
        "publishes per request: batched {batched:?}, single {single:?}"
    );
    // Every stage was measured, and the parts add up to the worker's CPU (the rest is what is
    // left of it, never below zero).
    let stages = &report["worker_cpu_by_stage_us_per_request"];
    let parts = [
        "parse",
        "route",
        "decide",
        "serialize",
        "publish",
        "commit",
        "ack",
        "broker_client_thread",
        "rest",
    ];
    let values: Vec<f64> = parts
        .iter()
        .map(|part| stages[part].as_f64().unwrap_or(-1.0))
        .collect();
    assert!(values.iter().all(|v| *v >= 0.0), "stages: {stages:#}");
    for measured in ["parse", "decide", "serialize", "publish", "commit", "ack"] {
        assert!(
            stages[measured].as_f64() > Some(0.0),
            "{measured} measured: {stages:#}"
        );
    }
    let run = &report["rounds"][0]["seatrush"];
    let (cpu, run_stages) = (
        run["worker_cpu_us_per_request"].as_f64().unwrap_or(0.0),
        &run["worker_cpu_by_stage_us_per_request"],
    );
    // The rest is what the measured parts leave of the worker's CPU, never below zero.
    let measured: f64 = parts[..parts.len() - 1]
        .iter()
        .filter_map(|p| run_stages[p].as_f64())
        .sum();
    let rest = run_stages["rest"].as_f64().unwrap_or(-1.0);
    assert!(
        (rest - (cpu - measured).max(0.0)).abs() < 1e-6,
        "a round's rest ({rest}) is its worker CPU ({cpu}) less its parts ({measured}): \
         {run_stages:#}"
    );
    let out = env.log_dir().join(format!("{}-bench", env.topology.prefix));
    for file in ["report.md", "latency.svg", "throughput.svg"] {
        assert!(out.join(file).is_file(), "{file} is written");
    }
    let svg = std::fs::read_to_string(out.join("latency.svg")).expect("chart");
    assert!(svg.starts_with("<svg") && svg.contains("seatrush") && svg.contains("Redis"));
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.contains("ratio_to_intake_ceiling") && md.contains("naive Postgres"));
    assert!(md.contains("by stage") && md.contains("broker client thread"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_and_opening_scenarios_keep_every_invariant() {
    let env = TestEnv::new().await;
    let hot = bench(
        &env,
        "hot",
        &["--scenario", "hot", "--rounds", "1", "--students", "600"],
        "bench.json",
    )
    .await;
    assert_eq!(hot["scenario"], "hot");
    assert_eq!(hot["courses"], 1);
    assert_eq!(
        hot["outcomes"]["enrolled"], 30,
        "one course of 30 seats: {hot:#}"
    );
    assert_rounds_kept_their_invariants(&hot, 1);
    let opening = bench(
        &env,
        "opening",
        &[
            "--scenario",
            "opening",
            "--rounds",
            "1",
            "--students",
            "300",
            "--courses",
            "40",
        ],
        "bench.json",
    )
    .await;
    assert_eq!(opening["scenario"], "opening");
    assert_eq!(opening["requests"], 900, "three choices each");
    assert_rounds_kept_their_invariants(&opening, 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crash_scenario_counts_what_each_design_lost() {
    let env = TestEnv::new().await;
    let script = format!("{}/scripts/services.sh", env!("CARGO_MANIFEST_DIR"));
    let args = [
        "--scenario",
        "crash",
        "--students",
        "800",
        "--courses",
        "20",
        "--services-script",
        &script,
    ];
    let report = bench(&env, "crash", &args, "crash.json").await;
    let seatrush = &report["seatrush"];
    assert_eq!(seatrush["requests"], 800);
    for check in [
        "lost",
        "answers_changed",
        "provisional_revised_outside_window",
        "violations",
    ] {
        assert_eq!(seatrush[check], 0, "seatrush {check}: {report:#}");
    }
    assert!(seatrush["killed_at_ms"].as_f64().unwrap_or(0.0) > 0.0);
    for redis in ["redis", "redis_everysec"] {
        assert!(
            report[redis]["told"].as_u64().unwrap_or(0) > 0,
            "{redis}: {report:#}"
        );
        assert_eq!(
            report[redis]["violations"], 0,
            "{redis}: seats never exceeded"
        );
    }
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

/// Runs `seatrush rush` with these arguments (a comparison of two runs, each in a fresh
/// database), requires it to pass, and returns its JSON report.
async fn compared_rush(
    env: &TestEnv,
    name: &str,
    mode: &[&str],
    crowd: &[&str],
) -> serde_json::Value {
    let json = env.log_dir().join(format!("{name}.json"));
    let output = env
        .seatrush()
        .arg("rush")
        .args(mode)
        .args(crowd)
        .arg("--json")
        .arg(&json)
        .output()
        .await
        .expect("run seatrush rush");
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&std::fs::read(&json).expect("the report")).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_rush_runs_one_crowd_without_and_with_the_rules_and_compares() {
    // Arrange: a small crowd of the rules' shape, five choices each.
    let env = TestEnv::new().await;

    // Act
    let report = compared_rush(
        &env,
        "rules",
        &["--registry", "--courses", "40", "--seats", "10"],
        &["--students", "600", "--choices", "5"],
    )
    .await;

    // Assert: both runs keep every invariant, the rules refused what they should, every
    // refused swap kept its old seat, and the ratio is reported.
    for run in ["without_registry", "with_registry"] {
        let r = &report[run];
        assert_eq!(
            r["requests"], 3060,
            "600 students, five choices, 60 swaps: {r:#}"
        );
        for check in ["lost", "duplicated", "contradicted", "violations"] {
            assert_eq!(r[check], 0, "{run} {check}: {r:#}");
        }
        assert_eq!(r["swaps"]["sent"], 60);
        assert_eq!(r["swaps"]["refused_and_lost_old_seat"], 0);
    }
    let outcomes = &report["with_registry"]["outcomes"];
    assert_eq!(
        outcomes["rejected/hold"], 150,
        "one student in twenty: {outcomes:#}"
    );
    assert!(report["without_registry"]["outcomes"]["rejected/hold"].is_null());
    assert!(report["throughput_ratio"].as_f64().is_some_and(|r| r > 0.0));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_rush_runs_one_crowd_over_amqp_and_through_a_gateway_and_compares() {
    // Arrange: a small crowd, few connections and streams.
    let env = TestEnv::new().await;

    // Act
    let report = compared_rush(
        &env,
        "http",
        &["--via", "http", "--courses", "20", "--seats", "5"],
        &[
            "--students",
            "400",
            "--choices",
            "2",
            "--http-connections",
            "50",
            "--streams",
            "200",
        ],
    )
    .await;

    // Assert: both runs keep every invariant, every HTTP answer matches Postgres, the streams
    // were held, and the ratio and the gateway's CPU are reported.
    for run in ["over_amqp", "over_http"] {
        let r = &report[run];
        assert_eq!(r["requests"], 800, "400 students, two choices: {r:#}");
        for check in ["lost", "duplicated", "contradicted", "violations"] {
            assert_eq!(r[check], 0, "{run} {check}: {r:#}");
        }
        assert!(
            r["cpu_us_per_request"]["broker"]
                .as_f64()
                .is_some_and(|c| c > 0.0),
            "{r:#}"
        );
    }
    let check = &report["postgres_check"];
    assert_eq!(check["request_ids"], 800, "{check:#}");
    for miss in ["unanswered", "without_outcome", "disagreeing"] {
        assert_eq!(check[miss], 0, "{miss}: {check:#}");
    }
    let gateway = &report["gateway"];
    assert_eq!(gateway["streams"]["opened"], 200, "{gateway:#}");
    assert!(
        gateway["cpu_us_per_request"]
            .as_f64()
            .is_some_and(|c| c > 0.0)
    );
    assert!(report["throughput_ratio"].as_f64().is_some_and(|r| r > 0.0));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_minute_soak_keeps_memory_and_latency_flat_and_answers_everything() {
    // Arrange
    let env = TestEnv::new().await;
    let out = env.log_dir().join("soak");

    // Act: the soak's short form, at a rate this shared machine holds beside the suite.
    let output = env
        .seatrush()
        .args([
            "soak",
            "--minutes",
            "1",
            "--rate",
            "400",
            "--sample-secs",
            "3",
        ])
        .args(["--courses", "30", "--seats", "10", "--out"])
        .arg(&out)
        .output()
        .await
        .expect("run seatrush soak");

    // Assert: it passed its own checks, sampled all along, and drew its charts.
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("soak.json")).expect("soak.json"))
            .expect("JSON");
    assert_eq!(report["unanswered"], 0, "{report:#}");
    assert!(
        report["requests"].as_u64().is_some_and(|n| n >= 20_000),
        "{report:#}"
    );
    let samples = report["samples"].as_array().expect("samples");
    assert!(samples.len() >= 15, "a sample every 3 s: {}", samples.len());
    assert!(
        samples
            .iter()
            .all(|s| s["worker_rss_mib"].as_f64().is_some_and(|m| m > 0.0)),
        "{samples:#?}"
    );
    for (chart, line) in [("soak-memory.svg", "workers"), ("soak-latency.svg", "p99")] {
        let svg = std::fs::read_to_string(out.join(chart)).expect(chart);
        assert!(
            svg.contains("<svg") && svg.contains(line),
            "{chart} draws {line}"
        );
    }
    env.cleanup().await;
}
