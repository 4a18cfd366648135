//! Idempotency keys (draft-ietf-httpapi-idempotency-key-header).
//!
//! A key is the caller's: the request id it becomes is derived from the caller and the key, so
//! two students' keys never meet, and a retry of the same key anywhere names the same request
//! (whose effect the workers take at most once). Before a request is published, its key is
//! recorded in Postgres with a fingerprint of the request, so that any gateway can tell a
//! replay from a key reused for another request, or from one still in flight. Keys arriving
//! together are recorded in one statement.

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use seatrush_core::store::{KeyClaim, KeyStanding, Store};

/// The database could not record a key (answered 503); the recorder logged why.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the idempotency key could not be recorded")]
pub struct Unavailable;

/// The longest key taken.
pub const MAX_KEY_LEN: usize = 255;

/// Keys recorded in one statement at most.
const KEYS_AT_ONCE: usize = 512;

/// The request id a caller's key names: `gw-` and 40 hex digits of a hash of both.
pub fn request_id(caller: &str, key: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"seatrush-gateway\n")
        .chain_update(caller.as_bytes())
        .chain_update(b"\n")
        .chain_update(key.as_bytes())
        .finalize();
    let mut id = String::with_capacity(43);
    id.push_str("gw-");
    for byte in &digest[..20] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// Whether a key is acceptable: 1 to 255 visible ASCII characters.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

/// The fingerprint of a request: a hash of its canonical body.
pub fn fingerprint(body: &[u8]) -> Vec<u8> {
    Sha256::digest(body).to_vec()
}

type Reply = oneshot::Sender<Result<KeyStanding, Unavailable>>;

/// The handle of the key recorder; cheap to clone.
#[derive(Clone)]
pub struct KeyBook {
    tx: mpsc::Sender<(KeyClaim, Reply)>,
}

impl KeyBook {
    /// Starts the recorder on `tasks`; it stops when every handle is gone.
    pub fn start(store: Store, tasks: &tokio_util::task::TaskTracker) -> Self {
        let (tx, rx) = mpsc::channel(4 * KEYS_AT_ONCE);
        tasks.spawn(record(store, rx));
        Self { tx }
    }

    /// Records a key, or says where it stands.
    pub async fn offer(&self, claim: KeyClaim) -> Result<KeyStanding, Unavailable> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send((claim, reply)).await.is_err() {
            return Err(Unavailable);
        }
        answer.await.unwrap_or(Err(Unavailable))
    }
}

/// Takes whatever keys are waiting, up to [`KEYS_AT_ONCE`], and records them in one statement;
/// a key that waits does so only behind the statement in progress.
async fn record(store: Store, mut rx: mpsc::Receiver<(KeyClaim, Reply)>) {
    let mut waiting = Vec::with_capacity(KEYS_AT_ONCE);
    while rx.recv_many(&mut waiting, KEYS_AT_ONCE).await > 0 {
        let (claims, replies): (Vec<_>, Vec<_>) = waiting.drain(..).unzip();
        match store.record_keys(&claims).await {
            Ok(standings) => {
                for (reply, standing) in replies.into_iter().zip(standings) {
                    let _ = reply.send(Ok(standing));
                }
            }
            Err(e) => {
                tracing::warn!(error = %seatrush_core::telemetry::chain(&e), "recording idempotency keys failed");
                for reply in replies {
                    let _ = reply.send(Err(Unavailable));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_one_request_per_caller() {
        let a = request_id("s1", "k");
        assert_eq!(a, request_id("s1", "k"));
        assert_ne!(a, request_id("s2", "k"));
        assert_ne!(a, request_id("s1", "k2"));
        assert_eq!(a.len(), 43);
        assert!(seatrush_core::domain::RequestId::parse(a).is_ok());
    }

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        assert!(valid_key("0b6c1c1e-1d2a-4a4e-9d0e-3c1c5a1d2e3f"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert!(!valid_key(&"k".repeat(256)));
        assert!(!valid_key("é"));
    }
}
