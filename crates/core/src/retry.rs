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
