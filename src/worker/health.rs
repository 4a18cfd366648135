//! Liveness and readiness, over HTTP, for an orchestrator.
//!
//! `/livez` answers while the process runs. `/readyz` answers 200 only while the worker has a
//! broker session and its database answered a ping within the last seconds; otherwise 503, with
//! which of the two is missing. A worker that is not ready holds no partition it could serve:
//! an orchestrator should wait, not route, and restart it only if it stays unready.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// What readiness is made of; shared by the session (broker) and the database watcher.
#[derive(Debug, Default)]
pub struct Health {
    broker: AtomicBool,
    database: AtomicBool,
}

/// The body of `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub broker: bool,
    pub database: bool,
}

impl Health {
    pub fn set_broker(&self, up: bool) {
        self.broker.store(up, Ordering::SeqCst);
    }

    pub fn set_database(&self, up: bool) {
        self.database.store(up, Ordering::SeqCst);
    }

    pub fn readiness(&self) -> Readiness {
        let broker = self.broker.load(Ordering::SeqCst);
        let database = self.database.load(Ordering::SeqCst);
        Readiness {
            ready: broker && database,
            broker,
            database,
        }
    }
}

/// How often the database is pinged, and how long a ping may take before it counts as down.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_WITHIN: Duration = Duration::from_secs(2);

/// Pings the database until `shutdown` and records whether it answers. A change is logged once.
pub async fn watch_database(store: Store, health: Arc<Health>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let up = match tokio::time::timeout(PING_WITHIN, store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                if was_up != Some(false) {
                    tracing::warn!(error = %crate::telemetry::chain(&e), "database unreachable; not ready");
                }
                false
            }
            Err(_) => {
                if was_up != Some(false) {
                    tracing::warn!(within = ?PING_WITHIN, "database did not answer a ping; not ready");
                }
                false
            }
        };
        if up && was_up == Some(false) {
            tracing::info!("database reachable again");
        }
        health.set_database(up);
        was_up = Some(up);
    }
}

/// Serves `/livez` and `/readyz` on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route(
            "/livez",
            get(|| async { Json(serde_json::json!({ "live": true })) }),
        )
        .route("/readyz", get(readyz))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the health endpoint to {addr}"))?;
    tracing::info!(%addr, "health endpoint listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving the health endpoint")
}

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, Json<Readiness>) {
    let readiness = health.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}
