//! Progress while a crowd runs: bars on a terminal, a plain line every two seconds otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::load::Progress;

/// Shows progress until `done` is cancelled.
pub async fn show(progress: Arc<Progress>, total: usize, done: CancellationToken) {
    if std::io::stderr().is_terminal() {
        bars(progress, total, done).await;
    } else {
        lines(progress, total, done).await;
    }
}

async fn bars(progress: Arc<Progress>, total: usize, done: CancellationToken) {
    let multi = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos:>7}/{len:7} {elapsed:>4}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    let bar = |name: &'static str| {
        let bar = multi.add(ProgressBar::new(total as u64));
        bar.set_style(style.clone());
        bar.set_prefix(name);
        bar
    };
    let (published, provisional, finals) = (bar("published"), bar("provisional"), bar("final"));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let stop = tokio::select! {
            _ = done.cancelled() => true,
            _ = tick.tick() => false,
        };
        published.set_position(progress.published.load(Ordering::Relaxed) as u64);
        provisional.set_position(progress.provisional.load(Ordering::Relaxed) as u64);
        finals.set_position(progress.finals.load(Ordering::Relaxed) as u64);
        if stop {
            break;
        }
    }
    for bar in [published, provisional, finals] {
        bar.finish();
    }
}

async fn lines(progress: Arc<Progress>, total: usize, done: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tick.tick() => {}
        }
        eprintln!(
            "published {}/{total}, provisionally answered {}, finally answered {}",
            progress.published.load(Ordering::Relaxed),
            progress.provisional.load(Ordering::Relaxed),
            progress.finals.load(Ordering::Relaxed),
        );
    }
}
