//! Whether a student registry is loaded, watched: the intake judges requests under the
//! registration rules only then, so a deployment without a registry pays nothing for them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How often the worker looks. Import the registry before the windows open: for up to this
/// long after the first import, a worker may still decide without the rules.
pub const REGISTRY_POLL: Duration = Duration::from_secs(1);

const UNKNOWN: u8 = 0;
const EMPTY: u8 = 1;
const LOADED: u8 = 2;

/// Cheap to clone; every clone sees the same answer.
#[derive(Clone, Default)]
pub struct RegistryWatch {
    state: Arc<AtomicU8>,
}

impl RegistryWatch {
    /// Whether requests must be judged: a registry is loaded, or it is not known yet (the
    /// judgement itself then finds out, and rules nothing when there is none).
    pub fn is_loaded(&self) -> bool {
        self.state.load(Ordering::Relaxed) != EMPTY
    }

    /// Reads the answer once. A failed read keeps the last answer (the rules stay on through a
    /// database outage).
    pub async fn refresh(&self, store: &Store) {
        match store.registry_loaded().await {
            Ok(loaded) => {
                let was = self
                    .state
                    .swap(if loaded { LOADED } else { EMPTY }, Ordering::Relaxed);
                if was != UNKNOWN && (was == LOADED) != loaded {
                    let state = if loaded {
                        "loaded: registration rules on"
                    } else {
                        "empty: registration rules off"
                    };
                    tracing::info!(loaded, "student registry {state}");
                }
            }
            Err(e) => {
                tracing::debug!(error = %crate::telemetry::chain(&e), "cannot tell whether a student registry is loaded");
            }
        }
    }

    /// Keeps the answer current until `stop`.
    pub async fn run(self, store: Store, stop: CancellationToken) {
        loop {
            // A database that does not answer must not hold the session's stop up.
            tokio::select! {
                _ = stop.cancelled() => return,
                () = self.refresh(&store) => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                () = tokio::time::sleep(REGISTRY_POLL) => {}
            }
        }
    }
}
