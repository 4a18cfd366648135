//! Liveness, readiness and metrics, over HTTP, for an orchestrator and Prometheus.
//!
//! `/livez` answers while the process runs. `/readyz` answers 200 only while the worker has a
//! broker session and its database answered a ping within the last seconds; otherwise 503, with
//! which of the two is missing. A worker that is not ready holds no partition it could serve:
//! an orchestrator should wait, not route, and restart it only if it stays unready.

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
use crate::telemetry::metrics::{self, Target};
use axum::http::header::CONTENT_TYPE;
use metrics_exporter_prometheus::PrometheusHandle;

/// What readiness is made of; shared by the session (broker) and the database watcher.
#[derive(Debug, Default)]
pub struct Health {
    broker: AtomicBool,
    database: AtomicBool,
    /// Whether each was ever up: going up again after that counts as a reconnect.
    broker_seen: AtomicBool,
    database_seen: AtomicBool,
}

/// Records a component going up or down: the readiness gauge, and a reconnect when it comes
/// back after having been up before.
fn transition(now: &AtomicBool, seen: &AtomicBool, target: Target, up: bool) {
    let was = now.swap(up, Ordering::SeqCst);
    metrics::ready(target, up);
    if up && !was && seen.swap(true, Ordering::SeqCst) {
        metrics::reconnected(target);
    }
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
        transition(&self.broker, &self.broker_seen, Target::Broker, up);
    }

    pub fn set_database(&self, up: bool) {
        transition(&self.database, &self.database_seen, Target::Database, up);
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
        // Raced with the shutdown too: the worker's stop does not wait out a ping.
        let pinged = tokio::select! {
            _ = shutdown.cancelled() => return,
            pinged = tokio::time::timeout(PING_WITHIN, store.ping()) => pinged,
        };
        let up = match pinged {
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

/// Serves `/livez`, `/readyz` and, given a recorder, `/metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    recorder: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut app = Router::new()
        .route(
            "/livez",
            get(|| async { Json(serde_json::json!({ "live": true })) }),
        )
        .route("/readyz", get(readyz))
        .with_state(health);
    if let Some(recorder) = recorder {
        app = app.route(
            "/metrics",
            get(move || {
                let recorder = recorder.clone();
                async move {
                    (
                        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        metrics::render(&recorder),
                    )
                }
            }),
        );
    }
    let addr = listener
        .local_addr()
        .context("reading the health endpoint's address")?;
    tracing::info!(%addr, "health endpoint listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving the health endpoint")
}

/// `GET path` on a worker's HTTP endpoint at `addr`, within `within`: the status code and the
/// body. For `seatrush healthcheck` (a container's health probe needs no curl) and the tests.
pub async fn probe(addr: &str, path: &str, within: Duration) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    let get = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .context("HTTP handshake")?;
        let driver = tokio::spawn(connection);
        let request = axum::http::Request::get(path)
            .header(axum::http::header::HOST, addr)
            .body(Empty::<axum::body::Bytes>::new())
            .context("building the request")?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading the body")?
            .to_bytes();
        driver.abort();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(within, get)
        .await
        .with_context(|| format!("no answer from {addr}{path} within {within:?}"))?
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
