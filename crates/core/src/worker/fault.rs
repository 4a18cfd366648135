//! A session's fault: the first error any of its tasks meets ends the session.

use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// Lets any task of the session end it with an error (a lost connection, a refused publish).
#[derive(Clone, Default)]
pub(super) struct Fault {
    token: CancellationToken,
    error: Arc<Mutex<Option<anyhow::Error>>>,
}

impl Fault {
    pub(super) fn raise(&self, error: anyhow::Error) {
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(error);
        }
        self.token.cancel();
    }

    /// Resolves once a fault was raised.
    pub(super) async fn raised(&self) {
        self.token.cancelled().await;
    }

    pub(super) fn is_raised(&self) -> bool {
        self.token.is_cancelled()
    }

    /// A token cancelled when a fault is raised, for tasks that stop on it.
    pub(super) fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub(super) fn take(&self) -> Option<anyhow::Error> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}
