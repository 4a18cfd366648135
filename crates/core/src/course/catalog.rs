//! The catalog of existing course ids, so an unknown course is answered without spawning an
//! actor, and without a database query per request.

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::domain::CourseId;
use crate::store::{Store, StoreError};

/// Known course ids, refreshed from Postgres at most once per `min_interval` when a request names
/// a course it does not know. Its size is that of the real course list: a flood of invented ids
/// costs at most one small query per interval and stores nothing (invariant I6).
pub struct Catalog {
    store: Store,
    known: RwLock<HashSet<CourseId>>,
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    min_interval: Duration,
}

impl Catalog {
    pub fn new(store: Store, min_interval: Duration) -> Self {
        Self {
            store,
            known: RwLock::new(HashSet::new()),
            last_refresh: tokio::sync::Mutex::new(None),
            min_interval,
        }
    }

    fn knows(&self, course: &CourseId) -> bool {
        self.known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(course)
    }

    /// Whether the course exists, as of at most `min_interval` ago.
    pub async fn contains(&self, course: &CourseId) -> Result<bool, StoreError> {
        if self.knows(course) {
            return Ok(true);
        }
        // Single flight: concurrent misses wait for one refresh instead of each querying.
        let mut last = self.last_refresh.lock().await;
        if last.is_none_or(|at| at.elapsed() >= self.min_interval) {
            let ids = self.store.course_ids().await?;
            *self
                .known
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = ids.into_iter().collect();
            *last = Some(Instant::now());
        }
        Ok(self.knows(course))
    }
}
