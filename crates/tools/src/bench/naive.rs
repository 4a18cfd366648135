//! Drives the naive design: every request of the stream is issued at time zero, and
//! `connections` tasks take them in order, one transaction each.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
