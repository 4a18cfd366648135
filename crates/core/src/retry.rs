//! Retry delays: exponential, with jitter so that workers restarting together do not retry in
//! step, capped, and without a limit on attempts. Callers retry transient failures only and
//! stop on their own shutdown signal.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Delays from `min` doubling up to `max`, forever.
pub fn delays(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(min)
        .with_max_delay(max)
        .without_max_times()
        .build()
        .chain(std::iter::repeat(max))
}

/// Runs `attempt` until it succeeds, waiting [`delays`] from 50 ms to 1 s between failures, and
/// logs the first failure as a warning about `what` (the retries that follow say nothing new).
/// For a stage with nothing else to do until the database answers; its caller bounds the wait
/// by its own shutdown signal.
pub async fn until_ok<T, E, Fut>(what: &str, mut attempt: impl FnMut() -> Fut) -> T
where
    E: std::error::Error + 'static,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = delays(Duration::from_millis(50), Duration::from_secs(1));
    let mut failed = false;
    loop {
        match attempt().await {
            Ok(done) => return done,
            Err(e) => {
                if !failed {
                    tracing::warn!(error = %crate::telemetry::chain(&e), "{what} failed; retrying");
                    failed = true;
                }
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
            }
        }
    }
}
