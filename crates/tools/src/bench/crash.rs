//! The crash scenario: the burst spread over two seconds, and halfway through, the design's
//! stateful server killed with SIGKILL and started again: for the Redis design its Redis server
//! (its clients retry what got no answer, as a web back end would), for seatrush its worker.
//! Counted per design: the students whose answer was lost (told something, no record after) or
//! changed afterwards.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;
use serde::Serialize;

use super::BenchConfig;
use super::redis::{self, CrashFigures, Fsync, OwnServer, Setup, Shape};
use crate::load::{self, Fire, Pace, Progress};
use crate::rush::{self, WorkerProcess};
use seatrush_core::store::Store;

/// How long the crowd's publishing is spread over; the kill comes halfway.
const SPREAD: Duration = Duration::from_secs(2);

/// What a SIGKILL of seatrush's worker in the middle of the burst did.
#[derive(Debug, Clone, Serialize)]
pub struct SeatrushCrash {
    pub requests: usize,
    /// When the worker was killed, since the first publish.
    pub killed_at_ms: f64,
    /// The first final answer after the kill: when the new worker had taken the partitions
    /// over and answered again.
    pub back_at_ms: f64,
    /// Requests told something (a provisional or a final answer).
    pub told: usize,
    /// Requests with no final answer at the end.
    pub lost: usize,
    /// Final answers that disagree with the records, or a second final answer that differs.
    pub answers_changed: usize,
    /// Provisional answers that the final one revised, in all and outside the crash window (the
    /// window: requests published before the kill and finally answered after it, whose
    /// provisional answer came from the killed worker's memory).
    pub provisional_revised: usize,
    pub provisional_revised_outside_window: usize,
    /// Requests published after the kill, and their longest wait for a final answer.
    pub asked_after_kill: usize,
    pub longest_wait_after_kill_ms: f64,
    pub violations: usize,
}

/// The crash scenario's report, written as `crash.json`.
#[derive(Debug, Clone, Serialize)]
pub struct CrashReport {
    pub scenario: &'static str,
    pub seatrush: SeatrushCrash,
    pub redis: CrashFigures,
    pub redis_everysec: CrashFigures,
}

impl CrashReport {
    /// seatrush lost no answer and changed none outside the crash window, and kept its seats.
    pub fn passed(&self) -> bool {
        let s = &self.seatrush;
        s.lost == 0
            && s.answers_changed == 0
            && s.provisional_revised_outside_window == 0
            && s.violations == 0
    }
}

/// Runs the crash round of every design that has a server to kill.
pub async fn run(config: &BenchConfig, services_script: PathBuf) -> anyhow::Result<CrashReport> {
    eprintln!("[bench] crash: seatrush, its worker killed mid-burst");
    let seatrush = seatrush(config).await?;
    let super::round::Stream {
        courses, requests, ..
    } = super::round::stream(config, "crash")?;
    let state_dir = config.out.join("redis-crash");
    std::fs::create_dir_all(&state_dir)?;
    let redis = async |fsync: Fsync| {
        eprintln!("[bench] crash: Redis ({fsync:?}), its server killed mid-burst");
        let setup = Setup {
            database_url: &config.services.database_url,
            courses: &courses,
            seats: config.crowd.seats,
            fsync,
            shape: Shape::default(),
        };
        let server = OwnServer {
            services_script: &services_script,
            state_dir: &state_dir,
        };
        redis::crash(server, &setup, &requests)
            .await
            .with_context(|| format!("the Redis design's crash round ({fsync:?})"))
    };
    Ok(CrashReport {
        scenario: "crash",
        redis: redis(Fsync::Always).await?,
        redis_everysec: redis(Fsync::EverySec).await?,
        seatrush,
    })
}

/// The burst through one worker that is SIGKILLed halfway and replaced by a new one.
async fn seatrush(config: &BenchConfig) -> anyhow::Result<SeatrushCrash> {
    let services = &config.services;
    let tag = rush::fresh_tag("crash");
    let store = Store::connect(&services.database_url, 4).await?;
    let courses = rush::create_courses(&store, &tag, &config.crowd, false).await?;
    let requests = rush::crowd(
        &courses,
        config.crowd.students,
        config.crowd.choices,
        &tag,
        1,
    )?;
    let n = requests.len();
    let logs = config.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let start_worker = |name: &str| {
        let id = format!("{tag}-{name}");
        WorkerProcess::start_observed(
            &config.exe,
            services,
            &id,
            logs.join(format!("{id}.log")),
            &[],
            &[],
        )
    };
    let doomed = start_worker("doomed")?;
    rush::wait_for_partitions(&store, services.topology.partitions).await?;

    let fire = Fire {
        pace: Pace::Rate(n as f64 / SPREAD.as_secs_f64()),
        batch: true,
    };
    let crowd = tokio::spawn({
        let (url, topology, timeout) = (
            services.amqp_url.clone(),
            services.topology.clone(),
            config.timeout,
        );
        async move {
            load::fire_with(
                &url,
                &topology,
                requests,
                timeout,
                fire,
                Arc::new(Progress::default()),
            )
            .await
        }
    });
    let started = Instant::now();
    tokio::time::sleep(SPREAD / 2).await;
    doomed.signal(Signal::SIGKILL)?;
    let killed_at = started.elapsed();
    let successor = start_worker("successor")?;
    let report = crowd.await.context("the crowd failed")??;
    let held = store.seats_held(&courses).await?;
    let audit = store.audit().await?;
    successor.stop(Duration::from_secs(60)).await?;
    store.close().await;
    Ok(tally(&report, killed_at, &held, audit.len()))
}

/// Counts what the students of a crashed burst were told against the records.
fn tally(
    report: &load::Report,
    killed_at: Duration,
    held: &[(String, String)],
    audit_violations: usize,
) -> SeatrushCrash {
    let kill = report.started + killed_at;
    let finals_after_kill = report.answered.iter().flat_map(|a| {
        a.finals
            .iter()
            .map(move |(_, latency)| a.sent + *latency)
            .filter(|at| *at > killed_at)
    });
    let back_at = finals_after_kill.min().unwrap_or(killed_at);
    let changed_finals = report
        .answered
        .iter()
        .filter(|a| {
            a.finals
                .windows(2)
                .any(|w| w[0].0.outcome != w[1].0.outcome || w[0].0.reason != w[1].0.reason)
        })
        .count();
    let after: Vec<_> = report
        .answered
        .iter()
        .filter(|a| report.started + a.sent > kill)
        .collect();
    let longest_after = after
        .iter()
        .filter_map(|a| a.finals.first().map(|(_, latency)| *latency))
        .max()
        .unwrap_or_default();
    SeatrushCrash {
        requests: report.answered.len(),
        killed_at_ms: killed_at.as_secs_f64() * 1000.0,
        back_at_ms: back_at.as_secs_f64() * 1000.0,
        told: report
            .answered
            .iter()
            .filter(|a| a.provisional.is_some() || !a.finals.is_empty())
            .count(),
        lost: report.lost(),
        answers_changed: changed_finals + rush::mismatched_seats(report, held),
        provisional_revised: report.contradicted(),
        provisional_revised_outside_window: report
            .contradictions()
            .filter(|(sent, answered)| *sent > kill || *answered < kill)
            .count(),
        asked_after_kill: after.len(),
        longest_wait_after_kill_ms: longest_after.as_secs_f64() * 1000.0,
        violations: audit_violations,
    }
}
