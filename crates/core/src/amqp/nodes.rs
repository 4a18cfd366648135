//! The broker's nodes: `AMQP_URL` may name every node of a cluster, separated by commas
//! (`amqp://u:p@10.0.0.1:5672/%2f,amqp://u:p@10.0.0.2:5672/%2f`). A connection goes to one
//! live node; the next connection of this process starts at the node after it, so a client
//! whose node died tries another one first, and the processes of a deployment spread over the
//! nodes instead of all starting at the first.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use super::{AmqpError, Result};

/// A node that neither accepts nor refuses within this long (a host gone from the network)
/// is passed over for the next.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the next connection starts; `usize::MAX` until this process has connected once.
static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The node URLs of a comma-separated list, blanks dropped.
pub fn node_urls(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Connects to the first node that answers, trying each once, starting after the node this
/// process last connected to.
pub(super) async fn connect_any(
    urls: &str,
    properties: ConnectionProperties,
) -> Result<Connection> {
    let nodes = node_urls(urls);
    if nodes.is_empty() {
        return Err(AmqpError::NoNode);
    }
    let first = match NEXT.load(Ordering::Relaxed) {
        usize::MAX => std::process::id() as usize,
        next => next,
    };
    let mut failures = Vec::new();
    for step in 0..nodes.len() {
        let at = (first + step) % nodes.len();
        let attempt = Connection::connect(nodes[at], properties.clone());
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(connection)) => {
                NEXT.store(at + 1, Ordering::Relaxed);
                if nodes.len() > 1 {
                    let node = crate::telemetry::redact(nodes[at]);
                    tracing::info!(%node, "connected to a broker node");
                }
                return Ok(connection);
            }
            Ok(Err(e)) if nodes.len() == 1 => return Err(e.into()),
            Ok(Err(e)) => failures.push(format!("{}: {e}", crate::telemetry::redact(nodes[at]))),
            Err(_) => failures.push(format!(
                "{}: no answer within {} s",
                crate::telemetry::redact(nodes[at]),
                CONNECT_TIMEOUT.as_secs()
            )),
        }
    }
    Err(AmqpError::NoLiveNode(failures.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_names_each_node_once_in_order() {
        assert_eq!(
            node_urls("amqp://a:1/%2f, amqp://b:2/%2f,,amqp://c:3/%2f "),
            ["amqp://a:1/%2f", "amqp://b:2/%2f", "amqp://c:3/%2f"]
        );
        assert_eq!(node_urls("amqp://a:1/%2f"), ["amqp://a:1/%2f"]);
        assert!(node_urls(" , ").is_empty());
    }
}
