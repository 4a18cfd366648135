//! The routes of `/v1`, the probes, and the problems (RFC 9457) every failure is answered with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use seatrush_core::protocol::{Answer, parse_request, request_body};
use seatrush_core::store::{KeyClaim, KeyStanding, Standing, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::auth::{AuthError, Identity, Verifier};
use crate::config::Limits;
use crate::courier::{Courier, Progress, PublishError};
use crate::courses::Courses;
use crate::events::Hub;
use crate::keys::{self, KeyBook};
use crate::limits::Guard;

/// Everything a handler reaches; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub verifier: Arc<Verifier>,
    pub keys: KeyBook,
    pub courier: Arc<Courier>,
    pub hub: Arc<Hub>,
    pub courses: Arc<Courses>,
    pub store: Store,
    pub guard: Arc<Guard>,
    pub limits: Limits,
    pub metrics: Option<PrometheusHandle>,
    /// Whether this instance's event recorder is consuming.
    pub recording: Arc<std::sync::atomic::AtomicBool>,
    pub shutdown: CancellationToken,
}

/// The largest request body taken (a request is under 300 bytes; a course change under 1 KiB).
pub const MAX_BODY: usize = 4096;

/// A key older than this with no outcome is taken to be lost between its record and its
/// publish (a gateway that stopped then), and its request is published again: a second copy
/// of a request is decided once.
const REPUBLISH_AFTER: f64 = 10.0;

pub fn router(state: AppState) -> Router {
    let guarded = Router::new()
        .route("/v1/requests", post(post_request))
        .route("/v1/requests/{key}", get(get_request))
        .route("/v1/courses", get(list_courses))
        .route("/v1/courses/{course_id}", get(get_course))
        .route("/v1/me", get(me))
        .route("/v1/dev/token", post(dev_token))
        .layer(axum::middleware::from_fn_with_state(state.clone(), bounded))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            received,
        ));
    Router::new()
        .merge(guarded)
        .route("/v1/events", get(events))
        .route("/v1/config", get(config))
        .route("/v1/openapi.json", get(openapi))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/", get(crate::page::index))
        .route("/app.js", get(crate::page::script))
        .route("/style.css", get(crate::page::style))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "Not Found", "no such route") })
        .layer(axum::middleware::from_fn(measured))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Problems.

/// An error as `application/problem+json` (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status and title say what happened.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Seconds to wait before retrying, also sent as `Retry-After` (429 and 503).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// The same key is still in flight: its request is not decided yet.
    fn in_flight() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            "a request with this key is still in flight",
        )
    }

    /// The database could not be asked; a retry may find it again. The error it replaces is
    /// logged and counted, so that an operator tells an outage from an error of another kind
    /// (a permission, a schema not migrated) that the client sees as the same 503.
    fn database_unreachable<E: std::error::Error + 'static>(error: E) -> Self {
        tracing::warn!(error = %seatrush_core::telemetry::chain(&error), "a database call failed; answering 503");
        metrics::counter!("seatrush_gateway_rejections_total", "reason" => "database").increment(1);
        Self::unavailable("the database is not reachable from this gateway", 2)
    }

    /// The key was recorded with another request.
    fn key_reused() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Unprocessable Content",
            "this idempotency key was used for another request",
        )
    }

    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank",
            title,
            status: status.as_u16(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad Request", detail)
    }

    fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", detail)
    }

    fn unavailable(detail: impl Into<String>, retry_after: u64) -> Self {
        let mut p = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            detail,
        );
        p.retry_after = Some(retry_after);
        p
    }

    fn too_many(retry_after: Duration) -> Self {
        let mut p = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests",
            "this student is sending requests faster than allowed",
        );
        p.retry_after = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
        p
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(&self)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        response
    }
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Middleware.

/// Counts and times every request by route and status.
async fn measured(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let began = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("seatrush_gateway_requests_total", "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!("seatrush_gateway_request_seconds", "route" => route)
        .record(began.elapsed().as_secs_f64());
    response
}

/// A request's method as a metric label. Any token is a valid method on the wire, and every
/// distinct label value is a series the recorder keeps for good: methods outside the standard
/// ones are counted together.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::PATCH, "PATCH"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("other", |(_, label)| label)
}

/// Reads a request's body whole, within the header timeout, before the request takes one of
/// the in-flight places: a client that sends its headers and then its body slowly, or never,
/// holds a connection (which the connection limit bounds), not a place the requests being
/// handled share. A body over [`MAX_BODY`] gets 413 here, one that does not arrive in time 408.
async fn received(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let within = state.limits.header_timeout;
    let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, MAX_BODY));
    match tokio::time::timeout(within, read).await {
        Ok(Ok(collected)) => {
            let body = Body::from(collected.to_bytes());
            next.run(Request::from_parts(parts, body)).await
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload Too Large",
            format!("the body is refused: it is larger than {MAX_BODY} bytes"),
        )
        .into_response(),
        Ok(Err(e)) => {
            Problem::bad_request(format!("the body could not be read: {e}")).into_response()
        }
        Err(_) => Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "Request Timeout",
            format!("the body did not arrive within {within:?}"),
        )
        .into_response(),
    }
}

/// Bounds the requests in flight on this instance: past the bound, 503 at once.
async fn bounded(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match state.guard.enter() {
        Some(_permit) => next.run(request).await,
        None => {
            metrics::counter!("seatrush_gateway_rejections_total", "reason" => "busy").increment(1);
            Problem::unavailable("this gateway has as many requests in flight as it takes", 1)
                .into_response()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Authentication.

/// The authenticated caller. Read from `Authorization: Bearer`, or on the event stream also
/// from the `access_token` query parameter (RFC 6750 §2.3), since a browser's `EventSource`
/// cannot send headers.
pub struct Caller(pub Identity);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let from_header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .map(str::to_owned);
        let token = match from_header {
            Some(token) => token,
            None if parts.uri.path() == "/v1/events" => parts
                .uri
                .query()
                .and_then(|q| {
                    q.split('&')
                        .find_map(|pair| pair.strip_prefix("access_token="))
                })
                .map(str::to_owned)
                .ok_or(AuthError::Missing)?,
            None => return Err(AuthError::Missing.into()),
        };
        let identity = state.verifier.verify(&token).inspect_err(|_| {
            metrics::counter!("seatrush_gateway_rejections_total", "reason" => "unauthorized")
                .increment(1);
        })?;
        Ok(Self(identity))
    }
}

fn admit(state: &AppState, caller: &Identity) -> Result<(), Problem> {
    state.guard.admit(caller.student.as_str()).map_err(|wait| {
        metrics::counter!("seatrush_gateway_rejections_total", "reason" => "rate").increment(1);
        Problem::too_many(wait)
    })
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// A request: the fields of the wire protocol's body, without `student_id`, which is the
/// caller's (an admin may name another student, and change courses with `configure` and the
/// settings of protocol §11).
#[derive(Debug, Deserialize, ToSchema)]
#[expect(
    dead_code,
    reason = "documents the body; the handler reads it as a JSON object, so that a course \
              change's settings pass through to the worker's own validation"
)]
pub struct RequestInput {
    /// `enroll`, `drop`, `swap`, or for admins `configure`.
    pub action: String,
    pub course_id: String,
    /// The course given up by a `swap`.
    #[serde(default)]
    pub drop_course_id: Option<String>,
    /// Admins only: the student acted for.
    #[serde(default)]
    pub student_id: Option<String>,
}

/// Where a request stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestView {
    /// The idempotency key it was sent with.
    pub key: String,
    /// The request id the key names (the workers' idempotency key).
    pub request_id: String,
    /// `pending` (accepted, no answer yet), `provisional` or `final`.
    pub state: &'static str,
    pub answer: Option<Answer>,
}

impl RequestView {
    fn of(key: String, request_id: String, progress: &Progress) -> Self {
        let (state, answer) = match (&progress.final_answer, &progress.provisional) {
            (Some(a), _) => ("final", Some(a.clone())),
            (None, Some(a)) => ("provisional", Some(a.clone())),
            (None, None) => ("pending", None),
        };
        Self {
            key,
            request_id,
            state,
            answer,
        }
    }

    fn respond(self, preference_applied: Option<u64>) -> Response {
        let status = if self.state == "final" {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        let location = format!("/v1/requests/{}", encode_segment(&self.key));
        let mut response = (status, Json(self)).into_response();
        if let Ok(location) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        if let Some(wait) = preference_applied
            && let Ok(applied) = HeaderValue::from_str(&format!("wait={wait}"))
        {
            response.headers_mut().insert("preference-applied", applied);
        }
        response
    }
}

#[utoipa::path(
    post, path = "/v1/requests", tag = "requests",
    request_body = RequestInput,
    params(
        ("Idempotency-Key" = String, Header, description = "1 to 255 visible ASCII characters; a retry sends the same key"),
        ("Prefer" = Option<String>, Header, description = "`wait=N`: hold the response until the final answer, up to N seconds"),
    ),
    responses(
        (status = 200, description = "The final answer (with `Prefer: wait`, or a replay)", body = RequestView),
        (status = 202, description = "Accepted: the provisional answer, or `pending`", body = RequestView),
        (status = 400, description = "No or bad key, or a bad request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Acting for another student, or changing a course, without being an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The same key is still in flight", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive in time", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The key was used for another request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the student's rate", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Broker or database unreachable, queue full, or gateway busy", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn post_request(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    // Read whole already, and at most `MAX_BODY` long (`received`).
    body: Bytes,
) -> Result<Response, Problem> {
    admit(&state, &caller)?;
    let key = idempotency_key(&headers)?;
    let wait = prefer_wait(&headers, state.limits.max_wait);
    let request_id = keys::request_id(caller.student.as_str(), &key);
    let (request, canonical, as_operator) = worker_request(&state, &caller, &request_id, &body)?;

    let Some(progress) = state.courier.track(&request_id) else {
        return decided_meanwhile(&state, key, request_id, &canonical).await;
    };
    // From here on, this instance is waiting for the key's answers. If the request is not
    // published, it stops waiting on the way out; once published, it waits until the final
    // answer comes (a retry meanwhile is in flight: 409).
    let mut waiting = Waiting {
        courier: &state.courier,
        request_id: &request_id,
        published: false,
    };
    let claim = KeyClaim {
        request_id: request_id.clone(),
        fingerprint: keys::fingerprint(&canonical),
    };
    let standing = state
        .keys
        .offer(claim)
        .await
        .map_err(Problem::database_unreachable)?;
    match standing {
        KeyStanding::Fresh => {}
        KeyStanding::Mismatch => {
            return Err(Problem::key_reused());
        }
        KeyStanding::Decided => {
            let stored = state
                .store
                .stored_answer(&request_id)
                .await
                .map_err(Problem::database_unreachable)?;
            return Ok(replayed(key, request_id.clone(), stored));
        }
        KeyStanding::Undecided { accepted_secs_ago } if accepted_secs_ago < REPUBLISH_AFTER => {
            return Err(Problem::in_flight());
        }
        KeyStanding::Undecided { .. } => {}
    }

    if let Err(e) = state
        .courier
        .publish(
            request.course_id.as_str(),
            &request_id,
            canonical,
            as_operator,
        )
        .await
    {
        if standing == KeyStanding::Fresh {
            // Not published: the key is free for the retry the 503 asks for.
            let _ = state.store.forget_key(&request_id).await;
        }
        metrics::counter!("seatrush_gateway_rejections_total", "reason" => "broker").increment(1);
        let retry_after = match e {
            PublishError::Refused => 2,
            PublishError::Unavailable => 1,
        };
        return Err(Problem::unavailable(e.to_string(), retry_after));
    }
    waiting.published = true;

    let progress = match wait {
        Some(wait) => await_final(&state, progress, &request_id, wait).await,
        None => await_first(progress, state.limits.provisional_wait).await,
    };
    drop(waiting);
    Ok(RequestView::of(key, request_id, &progress).respond(wait.map(|w| w.as_secs())))
}

/// A retry reaching the instance that still waits for its key's final answer. The answer leaves
/// the worker after the commit, so the database may hold it already: the retry then gets it,
/// as `GET` does, instead of a 409. Read only: the key was recorded by the request in flight.
async fn decided_meanwhile(
    state: &AppState,
    key: String,
    request_id: String,
    canonical: &[u8],
) -> Result<Response, Problem> {
    let recorded = state.store.key_fingerprint(&request_id).await;
    match recorded.map_err(Problem::database_unreachable)? {
        Some(recorded) if recorded != keys::fingerprint(canonical) => {
            return Err(Problem::key_reused());
        }
        Some(_) => {}
        // Not recorded yet: the request in flight has not got that far.
        None => return Err(Problem::in_flight()),
    }
    let stored = state.store.stored_answer(&request_id).await;
    match stored.map_err(Problem::database_unreachable)? {
        Some(stored) => Ok(replayed(key, request_id, Some(stored))),
        None => Err(Problem::in_flight()),
    }
}

/// The answer to a retry of a decided request: its stored final answer.
fn replayed(key: String, request_id: String, stored: Option<Answer>) -> Response {
    let progress = Progress {
        provisional: None,
        final_answer: stored,
    };
    RequestView::of(key, request_id, &progress).respond(None)
}

/// Ends this instance's wait for a request's answers when its handler ends, however it ends
/// (an answer, an error, or the client going away): at once if the request was not published,
/// otherwise once its final answer is here.
struct Waiting<'a> {
    courier: &'a Courier,
    request_id: &'a str,
    published: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.published {
            self.courier.release(self.request_id);
        } else {
            self.courier.forget(self.request_id);
        }
    }
}

/// The worker's request for this caller: validated exactly as a worker will, with the caller as
/// the student. Returns it, its canonical body, and whether it is published as an operator's.
fn worker_request(
    state: &AppState,
    caller: &Identity,
    request_id: &str,
    body: &[u8],
) -> Result<(seatrush_core::domain::Request, Vec<u8>, bool), Problem> {
    let mut fields: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("the body is not a JSON object: {e}")))?;
    let action = fields
        .get("action")
        .and_then(|a| a.as_str())
        .unwrap_or_default()
        .to_owned();
    match action.as_str() {
        "enroll" | "drop" | "swap" => {}
        "configure" if caller.admin => {}
        "configure" => return Err(Problem::forbidden("only admins change courses")),
        other => {
            return Err(Problem::bad_request(format!(
                "action must be enroll, drop or swap (or, for admins, configure), not {other:?}"
            )));
        }
    }
    let operator = action == "configure";
    match fields.get("student_id") {
        Some(serde_json::Value::String(other))
            if other != caller.student.as_str() && !caller.admin =>
        {
            return Err(Problem::forbidden("a student acts only for themselves"));
        }
        Some(serde_json::Value::String(_)) if !operator => {}
        Some(_) if !operator => {
            return Err(Problem::bad_request("student_id must be a string"));
        }
        _ => {
            fields.insert(
                "student_id".into(),
                serde_json::Value::String(caller.student.to_string()),
            );
        }
    }
    if operator {
        fields.remove("student_id");
    }
    let body = serde_json::to_vec(&fields).unwrap_or_default();
    let user = operator.then(|| state.courier.user()).flatten();
    let request = parse_request(Some(request_id), user, &body)
        .map_err(|invalid| Problem::bad_request(invalid.why))?;
    let canonical = request_body(&request);
    Ok((request, canonical, operator))
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let key = headers
        .get("idempotency-key")
        .ok_or_else(|| Problem::bad_request("the Idempotency-Key header is required"))?
        .to_str()
        .map_err(|_| Problem::bad_request("the Idempotency-Key must be visible ASCII"))?;
    // The draft's keys are Structured Field strings; both quoted and bare forms are taken.
    let key = key
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .unwrap_or(key);
    if !keys::valid_key(key) {
        return Err(Problem::bad_request(
            "the Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(key.to_owned())
}

/// `Prefer: wait=N` (RFC 7240), capped; `None` without it.
fn prefer_wait(headers: &HeaderMap, max: Duration) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|pref| {
            let (name, value) = pref.trim().split_once('=')?;
            (name.trim().eq_ignore_ascii_case("wait")).then_some(value.trim().trim_matches('"'))
        })
        .and_then(|secs| secs.parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).min(max))
}

/// Waits for the first answer (provisional, or final if it comes first), up to `wait`.
async fn await_first(mut progress: watch::Receiver<Progress>, wait: Duration) -> Progress {
    let heard = progress.wait_for(|p| p.provisional.is_some() || p.final_answer.is_some());
    let _ = tokio::time::timeout(wait, heard).await;
    progress.borrow().clone()
}

/// Waits for the final answer up to `wait`; if it did not come on the reply queue (lost with a
/// broker connection, say), looks for it in Postgres.
async fn await_final(
    state: &AppState,
    mut progress: watch::Receiver<Progress>,
    request_id: &str,
    wait: Duration,
) -> Progress {
    let heard = progress.wait_for(|p| p.final_answer.is_some());
    let _ = tokio::time::timeout(wait, heard).await;
    let mut current = progress.borrow().clone();
    if current.final_answer.is_none()
        && let Ok(Some(stored)) = state.store.stored_answer(request_id).await
    {
        current.final_answer = Some(stored);
    }
    current
}

#[utoipa::path(
    get, path = "/v1/requests/{key}", tag = "requests",
    params(("key" = String, Path, description = "The idempotency key the request was sent with")),
    responses(
        (status = 200, description = "The final answer", body = RequestView),
        (status = 202, description = "Accepted, not final yet", body = RequestView),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No request was accepted with this key", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the student's rate", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unreachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn get_request(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(key): Path<String>,
) -> Result<Response, Problem> {
    admit(&state, &caller)?;
    if !keys::valid_key(&key) {
        return Err(Problem::bad_request(
            "the key must be 1 to 255 visible ASCII characters",
        ));
    }
    let request_id = keys::request_id(caller.student.as_str(), &key);
    let mut progress = state.courier.progress(&request_id).unwrap_or_default();
    if progress.final_answer.is_none() {
        progress.final_answer = state
            .store
            .stored_answer(&request_id)
            .await
            .map_err(Problem::database_unreachable)?;
    }
    if progress.final_answer.is_none()
        && progress.provisional.is_none()
        && state
            .store
            .key_fingerprint(&request_id)
            .await
            .map_err(Problem::database_unreachable)?
            .is_none()
    {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "Not Found",
            "no request was accepted with this key",
        ));
    }
    Ok(RequestView::of(key, request_id, &progress).respond(None))
}

// ---------------------------------------------------------------------------------------------
// Events.

#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// For `EventSource`, which cannot send headers; read by [`Caller`].
    #[serde(default)]
    #[allow(dead_code)]
    access_token: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
        ("access_token" = Option<String>, Query, description = "The bearer token, for clients that cannot send headers (EventSource)"),
    ),
    responses(
        (status = 200, description = "A Server-Sent Events stream of the student's final answers (`final`), promotions (`promoted`), skipped promotions (`promotion_skipped`) and draw results (`draw`); each `data` is an answer, each `id` the event's number", content_type = "text/event-stream", body = Answer),
        (status = 400, description = "A bad Last-Event-ID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the student's rate", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "As many streams open as this gateway holds", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn events(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(_query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    admit(&state, &caller)?;
    let after = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| Problem::bad_request("Last-Event-ID must be an event id"))?,
        ),
    };
    if state.hub.open_streams() >= state.limits.max_streams {
        metrics::counter!("seatrush_gateway_rejections_total", "reason" => "streams").increment(1);
        return Err(Problem::unavailable(
            "this gateway holds as many event streams as it takes",
            5,
        ));
    }
    let stream = state
        .hub
        .stream(caller.student.to_string(), after, state.shutdown.clone());
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Proxies must not buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Reading.

#[utoipa::path(
    get, path = "/v1/courses", tag = "courses",
    responses(
        (status = 200, description = "Every course, as of at most a second ago", body = crate::courses::CourseList),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Not read from the database yet", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn list_courses(
    State(state): State<AppState>,
    Caller(_): Caller,
) -> Result<Response, Problem> {
    let list = state
        .courses
        .list()
        .ok_or_else(|| Problem::unavailable("the course list has not been read yet", 1))?;
    Ok(json_bytes(list))
}

#[utoipa::path(
    get, path = "/v1/courses/{course_id}", tag = "courses",
    params(("course_id" = String, Path)),
    responses(
        (status = 200, description = "One course, as of at most a second ago", body = crate::courses::CourseView),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such course", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn get_course(
    State(state): State<AppState>,
    Caller(_): Caller,
    Path(course_id): Path<String>,
) -> Result<Response, Problem> {
    let course = state
        .courses
        .course(&course_id)
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "Not Found", "no such course"))?;
    Ok(json_bytes(course))
}

fn json_bytes(bytes: Bytes) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(bytes),
    )
        .into_response()
}

/// The caller and their seats and waitlist places.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub student_id: String,
    pub admin: bool,
    pub enrolled: Vec<String>,
    pub waitlisted: Vec<WaitlistPlaceView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WaitlistPlaceView {
    pub course_id: String,
    pub position: u32,
}

#[utoipa::path(
    get, path = "/v1/me", tag = "students",
    responses(
        (status = 200, description = "The caller's seats and waitlist places", body = Me),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the student's rate", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unreachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn me(State(state): State<AppState>, Caller(caller): Caller) -> Result<Json<Me>, Problem> {
    admit(&state, &caller)?;
    let Standing {
        enrolled,
        waitlisted,
    } = state
        .store
        .standing(caller.student.as_str())
        .await
        .map_err(Problem::database_unreachable)?;
    Ok(Json(Me {
        student_id: caller.student.to_string(),
        admin: caller.admin,
        enrolled,
        waitlisted: waitlisted
            .into_iter()
            .map(|w| WaitlistPlaceView {
                course_id: w.course_id,
                position: w.position,
            })
            .collect(),
    }))
}

/// What the page needs to know of this gateway.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigView {
    /// Whether `POST /v1/dev/token` signs tokens (a demo).
    pub dev_issuer: bool,
    /// Whether a registrar's rules apply (swaps make sense).
    pub rules: bool,
}

#[utoipa::path(
    get, path = "/v1/config", tag = "students",
    responses((status = 200, description = "This gateway's settings the page needs", body = ConfigView))
)]
async fn config(State(state): State<AppState>) -> Json<ConfigView> {
    Json(ConfigView {
        dev_issuer: state.verifier.dev_issuer().is_some(),
        rules: state.courses.rules(),
    })
}

/// A development token's subject.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DevTokenInput {
    pub sub: String,
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DevToken {
    pub token: String,
    pub expires_in: u64,
}

const DEV_TOKEN_TTL: Duration = Duration::from_secs(3600);

#[utoipa::path(
    post, path = "/v1/dev/token", tag = "students",
    request_body = DevTokenInput,
    responses(
        (status = 200, description = "A token signed by the development issuer", body = DevToken),
        (status = 400, description = "Not a student id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The development issuer is off", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn dev_token(
    State(state): State<AppState>,
    input: Result<Json<DevTokenInput>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<DevToken>, Problem> {
    let Some(issuer) = state.verifier.dev_issuer() else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "Not Found",
            "the development issuer is off (start the gateway with --dev-issuer)",
        ));
    };
    let Json(input) = input.map_err(|e| Problem::bad_request(e.body_text()))?;
    seatrush_core::domain::StudentId::parse(input.sub.as_str())
        .map_err(|e| Problem::bad_request(format!("sub: {e}")))?;
    let token = issuer
        .issue(&input.sub, input.admin, DEV_TOKEN_TTL)
        .map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                format!("{e:#}"),
            )
        })?;
    Ok(Json(DevToken {
        token,
        expires_in: DEV_TOKEN_TTL.as_secs(),
    }))
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::openapi_json(),
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let broker = state.courier.is_ready();
    let database = state.courses.database_reachable();
    let events = state.recording.load(std::sync::atomic::Ordering::Acquire);
    let body = serde_json::json!({"broker": broker, "database": database, "events": events});
    let status = if broker && database && events {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => seatrush_core::telemetry::metrics::render(handle).into_response(),
        None => Problem::new(
            StatusCode::NOT_FOUND,
            "Not Found",
            "metrics are off in this process",
        )
        .into_response(),
    }
}

/// A key as one path segment: visible ASCII but the characters a path gives meaning to.
fn encode_segment(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::method_label;
    use axum::http::Method;

    #[test]
    fn methods_outside_the_standard_ones_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::POST), "POST");
        for token in ["FOO1", "FOO2", "BREW", "get"] {
            let method = Method::from_bytes(token.as_bytes()).expect("a method token");
            assert_eq!(method_label(&method), "other", "{token}");
        }
    }
}
