//! What one instance takes on: requests in flight, and each student's rate.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;

/// The per-student rate limit and the bound on requests in flight.
pub struct Guard {
    rate: DefaultKeyedRateLimiter<String>,
    in_flight: Arc<Semaphore>,
}

impl Guard {
    pub fn new(limits: &Limits) -> Self {
        let per_second = NonZeroU32::new(limits.rate_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.rate_burst).unwrap_or(per_second);
        Self {
            rate: DefaultKeyedRateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
        }
    }

    /// Counts one request of `student`; if over the rate, how long until the next is allowed.
    pub fn admit(&self, student: &str) -> Result<(), Duration> {
        self.rate
            .check_key(&student.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// A place among the requests in flight, or `None` if all are taken.
    pub fn enter(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.in_flight).try_acquire_owned().ok()
    }

    /// Forgets students not seen lately, so the limiter's memory follows the active crowd.
    pub fn tidy(&self) {
        self.rate.retain_recent();
        self.rate.shrink_to_fit();
    }
}
