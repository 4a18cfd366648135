//! The demo: what the README's first command runs. Two worker processes, a flash crowd sized to
//! take well under a minute here, progress while it runs, then the report and the audit, told so
//! that someone new to seatrush sees what it does.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

use crate::rush::{self, Crowd, RushConfig, Services};

#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub services: Services,
    pub crowd: Crowd,
    pub workers: usize,
    /// The `seatrush` binary the workers are started from.
    pub exe: PathBuf,
    pub log_dir: PathBuf,
}

/// Runs the demo; fails if any check fails.
pub async fn run(config: DemoConfig) -> anyhow::Result<()> {
    let tag = rush::fresh_tag("demo");
    println!("seatrush demo");
    println!();
    println!(
        "Enrollment opens: {} students each want {} of {} courses ({} seats and {} waitlist \
         places each, {} seats in all).",
        config.crowd.students,
        config.crowd.choices,
        config.crowd.courses,
        config.crowd.seats,
        config.crowd.waitlist,
        config.crowd.courses as u64 * u64::from(config.crowd.seats)
    );
    println!(
        "They all ask at the same moment: every request is published to RabbitMQ at once, routed \
         by course to {} partition queues.",
        config.services.topology.partitions
    );
    println!(
        "{} worker processes share the partitions; in each, one actor per course decides from \
         memory and answers at once (provisional), then the decisions are committed to \
         PostgreSQL in batches and confirmed (final).",
        config.workers
    );
    println!("Worker logs: {}", config.log_dir.display());
    println!();
    let mut rush_config = RushConfig::burst(
        config.services,
        config.crowd,
        config.workers,
        config.exe,
        tag,
        config.log_dir,
    );
    rush_config.seed = 7;
    rush_config.timeout = Duration::from_secs(300);
    let rush = rush::run(rush_config, true).await?;
    println!();
    print!("{}", rush::describe(&rush.report));
    let example = rush
        .load
        .answered
        .iter()
        .find_map(|a| match (&a.provisional, &a.finals[..]) {
            (Some((p, pl)), [(f, fl)]) => Some((p, *pl, f, *fl)),
            _ => None,
        });
    if let Some((p, pl, f, fl)) = example {
        println!();
        println!("One student's view, request {}:", p.request_id);
        println!(
            "  after {:>7.1} ms  provisional: {} {} -> {}{}",
            pl.as_secs_f64() * 1000.0,
            p.action,
            p.course_id,
            p.outcome,
            p.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        println!(
            "  after {:>7.1} ms  final:       {} {} -> {}{} (committed in PostgreSQL)",
            fl.as_secs_f64() * 1000.0,
            f.action,
            f.course_id,
            f.outcome,
            f.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
    println!();
    if rush.report.violations == 0 {
        println!(
            "audit: no course over capacity, counters match the rows, no student twice, every outcome agrees with the seats"
        );
    }
    if !rush.report.passed() {
        bail!("the demo found problems (see above)");
    }
    Ok(())
}
