//! Drives the naive design: every request of the stream is issued at time zero, and
//! `connections` tasks take them in order, one transaction each. `best_of` runs it at several
//! connection counts, so the comparison is with its best, not with a guess.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::naive_sql::{Naive, NaiveOutcome};
use super::{DesignFigures, NaiveFigures};
use crate::stats::Latency;
use seatrush_core::domain::{CourseId, Request};

pub(super) async fn run(
    database_url: &str,
    courses: &[CourseId],
    seats: u32,
    connections: u32,
    stream: &[Request],
) -> anyhow::Result<(NaiveFigures, Vec<Duration>)> {
    let naive = Arc::new(Naive::create(database_url, courses, seats, connections).await?);
    let stream: Arc<Vec<Request>> = Arc::new(stream.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (naive, stream, next) = (naive.clone(), stream.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(request) = stream.get(i) else { break };
                let outcome = naive.enroll(request).await;
                done.push((outcome.ok(), start.elapsed()));
            }
            done
        }));
    }
    let mut latencies = Vec::with_capacity(stream.len());
    let (mut enrolled, mut full, mut duplicates, mut errors) = (0, 0, 0, 0);
    for task in tasks {
        for (outcome, at) in task.await? {
            latencies.push(at);
            match outcome {
                Some(NaiveOutcome::Enrolled) => enrolled += 1,
                Some(NaiveOutcome::Full) => full += 1,
                Some(NaiveOutcome::Duplicate) => duplicates += 1,
                None => errors += 1,
            }
        }
    }
    let elapsed = start.elapsed();
    let violations = naive.violations().await?;
    // Every task has ended, so this is the last handle.
    if let Some(naive) = Arc::into_inner(naive) {
        naive.drop().await?;
    }
    Ok((
        NaiveFigures {
            figures: DesignFigures::of(stream.len(), elapsed, Latency::of(latencies.clone())),
            connections,
            enrolled,
            full,
            duplicates,
            errors,
            violations,
        },
        latencies,
    ))
}

/// One connection count the naive design ran at, and the throughput it reached.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NaiveTry {
    pub connections: u32,
    pub throughput_rps: f64,
}

/// The best of several runs of the naive design on one stream.
#[derive(Debug, Clone)]
pub struct NaiveBest {
    /// The figures of the run with the highest throughput.
    pub figures: NaiveFigures,
    /// That run's final latencies.
    pub latencies: Vec<Duration>,
    /// Every run's connection count and throughput, in the order run.
    pub tried: Vec<NaiveTry>,
}

/// Runs the naive design on `stream` once at each connection count (each run on a fresh
/// schema) and returns the run with the highest throughput, with every run's throughput.
pub(super) async fn best_of(
    database_url: &str,
    courses: &[CourseId],
    seats: u32,
    connections: &[u32],
    stream: &[Request],
) -> anyhow::Result<NaiveBest> {
    let mut best: Option<(NaiveFigures, Vec<Duration>)> = None;
    let mut tried = Vec::with_capacity(connections.len());
    for &count in connections {
        let (figures, latencies) = run(database_url, courses, seats, count, stream)
            .await
            .with_context(|| format!("the naive design with {count} connections"))?;
        tried.push(NaiveTry {
            connections: count,
            throughput_rps: figures.figures.throughput_rps,
        });
        let better = best
            .as_ref()
            .is_none_or(|(b, _)| figures.figures.throughput_rps > b.figures.throughput_rps);
        if better {
            best = Some((figures, latencies));
        }
    }
    let (figures, latencies) = best.context("no connection count to run the naive design at")?;
    Ok(NaiveBest {
        figures,
        latencies,
        tried,
    })
}
