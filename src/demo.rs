//! The demo: a small flash crowd against a real worker process, with a readable report and the
//! audit. `seatrush demo` runs it; the README's first command calls that.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::distr::{Distribution, weighted::WeightedIndex};
use rand::{Rng, SeedableRng};
use tokio::process::{Child, Command};

use crate::amqp::Topology;
use crate::domain::{Action, CourseId, Request, RequestId, StudentId};
use crate::load::{self, Report};
use crate::protocol::Stage;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub amqp_url: String,
    pub database_url: String,
    pub topology: Topology,
    pub courses: usize,
    pub seats: u32,
    pub students: usize,
    /// The `seatrush` binary to start the worker from.
    pub exe: PathBuf,
    pub worker_log: PathBuf,
}

/// Builds a crowd: every student asks for one course, picked with a skewed popularity (course k
/// is wanted about 1/(k+1) as often as the first), so some courses are hammered and others calm.
pub fn crowd(courses: &[CourseId], students: usize, tag: &str, seed: u64) -> Vec<Request> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let weights: Vec<f64> = (0..courses.len()).map(|k| 1.0 / (k as f64 + 1.0)).collect();
    let Ok(pick) = WeightedIndex::new(&weights) else {
        return Vec::new();
    };
    let mut requests: Vec<Request> = (0..students)
        .filter_map(|s| {
            Some(Request {
                request_id: RequestId::parse(format!("{tag}-r{s}")).ok()?,
                action: Action::Enroll,
                course_id: courses[pick.sample(&mut rng)].clone(),
                student_id: StudentId::parse(format!("{tag}-s{s}")).ok()?,
            })
        })
        .collect();
    // Arrival order is random, as in a real crowd.
    for i in (1..requests.len()).rev() {
        requests.swap(i, rng.random_range(0..=i));
    }
    requests
}

/// Starts a worker process with the same broker, database and topology.
pub async fn start_worker(config: &DemoConfig, worker_id: &str) -> anyhow::Result<Child> {
    let log = std::fs::File::create(&config.worker_log)
        .with_context(|| format!("creating {}", config.worker_log.display()))?;
    Command::new(&config.exe)
        .arg("worker")
        .arg("--worker-id")
        .arg(worker_id)
        .env("AMQP_URL", &config.amqp_url)
        .env("DATABASE_URL", &config.database_url)
        .env("SEATRUSH_PREFIX", &config.topology.prefix)
        .env(
            "SEATRUSH_PARTITIONS",
            config.topology.partitions.to_string(),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting the worker process")
}

/// Asks a child process to stop (SIGTERM) and waits for it.
pub async fn stop_worker(mut child: Child, within: Duration) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        let pid = Pid::from_raw(i32::try_from(pid).context("pid out of range")?);
        kill(pid, Signal::SIGTERM).context("signalling the worker")?;
    }
    match tokio::time::timeout(within, child.wait()).await {
        Ok(status) => {
            let status = status?;
            if !status.success() {
                bail!("the worker exited with {status}");
            }
            Ok(())
        }
        Err(_) => {
            child.kill().await?;
            bail!("the worker did not stop within {within:?}")
        }
    }
}

/// Runs the demo and prints its report; fails if any check fails.
pub async fn run(config: DemoConfig) -> anyhow::Result<()> {
    let store = Store::connect(&config.database_url, 4)
        .await
        .context("connecting to PostgreSQL")?;
    store.migrate().await?;
    store.ensure_partitions(config.topology.partitions).await?;

    let tag = format!("demo{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let courses: Vec<CourseId> = (0..config.courses)
        .map(|k| CourseId::parse(format!("{tag}-c{k:03}")))
        .collect::<Result<_, _>>()?;
    let rows: Vec<(CourseId, u32)> = courses.iter().map(|c| (c.clone(), config.seats)).collect();
    store.add_courses(&rows).await?;
    println!(
        "created {} courses of {} seats ({tag}-c000 ...)",
        courses.len(),
        config.seats
    );

    let worker = start_worker(&config, &format!("{tag}-worker")).await?;
    println!(
        "started a worker (pid {}, log {})",
        worker.id().unwrap_or(0),
        config.worker_log.display()
    );
    wait_for_partitions(&store, config.topology.partitions).await?;

    let requests = crowd(&courses, config.students, &tag, 7);
    let batches_before = store.decision_batches().await?;
    println!("firing {} enrollment requests at once ...", requests.len());
    let report = load::fire(
        &config.amqp_url,
        &config.topology,
        requests,
        Duration::from_secs(120),
    )
    .await?;
    let batches = store.decision_batches().await? - batches_before;
    let held = store.seats_held(&courses).await?;
    stop_worker(worker, Duration::from_secs(60)).await?;
    let violations = store.audit().await?;

    print_report(&report, batches, config.seats as usize * courses.len());
    let mismatched = mismatched_seats(&report, &held);
    println!("checks:");
    println!(
        "  every request got exactly one final answer: {}",
        yes(report.lost() == 0 && report.duplicated() == 0)
    );
    println!(
        "  final answers match the enrollment rows:    {}",
        yes(mismatched == 0)
    );
    println!(
        "  audit of the whole database:                {}",
        yes(violations.is_empty())
    );
    for v in &violations {
        println!("    {}: {}", v.check, v.detail);
    }
    if report.lost() > 0 || report.duplicated() > 0 || mismatched > 0 || !violations.is_empty() {
        bail!("the demo found problems (see above)");
    }
    Ok(())
}

fn yes(ok: bool) -> &'static str {
    if ok { "yes" } else { "NO" }
}

/// Waits until every partition is held by a live worker.
pub async fn wait_for_partitions(store: &Store, partitions: u16) -> anyhow::Result<()> {
    let start = Instant::now();
    while store.live_partitions().await? < i64::from(partitions) {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("no worker took all {partitions} partitions within a minute");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Final `enrolled` answers without a seat in Postgres, plus seats without such an answer.
pub fn mismatched_seats(report: &Report, held: &[(String, String)]) -> usize {
    let answered: HashSet<(String, String)> = report
        .answered
        .iter()
        .filter_map(|a| a.finals.first())
        .filter(|(f, _)| f.outcome == "enrolled")
        .map(|(f, _)| (f.course_id.clone(), f.student_id.clone()))
        .collect();
    let held: HashSet<(String, String)> = held.iter().cloned().collect();
    answered.symmetric_difference(&held).count()
}

fn print_report(report: &Report, batches: i64, seats: usize) {
    let n = report.answered.len();
    println!();
    println!("report");
    println!("  requests               {n}");
    println!(
        "  publish                {:.2} s ({:.0} requests/s)",
        report.publish_time.as_secs_f64(),
        n as f64 / report.publish_time.as_secs_f64().max(1e-9)
    );
    println!(
        "  all final answers in   {:.2} s ({:.0} requests/s end to end)",
        report.total_time.as_secs_f64(),
        report.throughput()
    );
    for stage in [Stage::Provisional, Stage::Final] {
        println!(
            "  {:<11} latency    p50 {:.1} ms   p90 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
            format!("{stage:?}").to_lowercase(),
            report.latency_ms(stage, 0.5),
            report.latency_ms(stage, 0.9),
            report.latency_ms(stage, 0.99),
            report.latency_ms(stage, 1.0)
        );
    }
    println!(
        "  transactions           {batches} ({:.0} requests per commit)",
        n as f64 / batches.max(1) as f64
    );
    let mut outcomes: Vec<_> = report.outcomes().into_iter().collect();
    outcomes.sort();
    for (outcome, count) in outcomes {
        println!("  {outcome:<22} {count}");
    }
    println!("  seats in all courses   {seats}");
    println!(
        "  lost {}   duplicated {}   provisional answers contradicted {}",
        report.lost(),
        report.duplicated(),
        report.contradicted()
    );
    println!();
}
