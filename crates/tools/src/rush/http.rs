//! The web edge's cost, measured: the same crowd run twice in one invocation, each in a fresh
//! database, once published over AMQP as a producer would and once through a `seatrush
//! gateway` process by HTTP clients with keep-alive (each request waits for its final answer
//! with `Prefer: wait`). Then, on the same gateway, as many event streams as asked are opened
//! and held, and its memory growth per stream is read. Every HTTP answer is checked against
//! the outcome stored in Postgres for its request id.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;
use tokio::process::{Child, Command};

use seatrush_core::domain::{Action, Request, RequestId};
use seatrush_core::protocol::Answer;
use seatrush_core::store::Store;

use super::{Rush, RushConfig, RushReport, Services, Usage, usage_of};
use crate::load::{self, Progress};

/// Where the crowd reaches the gateway, and how.
#[derive(Debug, Clone)]
pub struct HttpEdge {
    pub base_url: String,
    /// The gateway's HS256 secret, to sign each student's token.
    pub secret: String,
    /// HTTP connections (kept alive) the crowd uses at once.
    pub connections: usize,
}

/// What `--via http` needs besides the rush's own settings.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub exe: PathBuf,
    pub connections: usize,
    /// Event streams to open and hold on the gateway after the crowd.
    pub streams: usize,
}

/// The two runs, their ratio, and the gateway's own figures.
#[derive(Debug, Clone, Serialize)]
pub struct HttpComparison {
    pub over_amqp: RushReport,
    pub over_http: RushReport,
    /// Throughput over HTTP as a share of the throughput over AMQP.
    pub throughput_ratio: f64,
    pub gateway: GatewayFigures,
    /// Every HTTP final answer against the outcome stored for its request id.
    pub postgres_check: PostgresCheck,
}

impl HttpComparison {
    pub fn passed(&self) -> bool {
        self.over_amqp.passed()
            && self.over_http.passed()
            && self.postgres_check.without_outcome == 0
            && self.postgres_check.disagreeing == 0
            && self.postgres_check.unanswered == 0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GatewayFigures {
    pub connections: usize,
    /// The gateway's CPU (user + system) over the HTTP run, per request.
    pub cpu_us_per_request: f64,
    pub peak_rss_mib: f64,
    pub streams: StreamFigures,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamFigures {
    pub asked: usize,
    pub opened: usize,
    pub rss_before_mib: f64,
    pub rss_held_mib: f64,
    /// Resident memory the gateway grew by per open stream.
    pub kib_per_stream: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PostgresCheck {
    pub request_ids: usize,
    /// Requests the crowd got no final answer for over HTTP.
    pub unanswered: usize,
    /// Request ids with no stored outcome.
    pub without_outcome: usize,
    /// HTTP final answers whose outcome or reason differs from the stored one.
    pub disagreeing: usize,
}

/// Runs the crowd over AMQP, then over HTTP, each in a fresh database.
pub async fn compare(
    mut config: RushConfig,
    options: HttpOptions,
    show_progress: bool,
) -> anyhow::Result<HttpComparison> {
    // Every process on the machine shares its cores: the broker's and the database's CPU per
    // request in each run say where the difference goes.
    config.servers = Some(crate::cpu::Servers::of(
        &config.services.amqp_url,
        &config.services.database_url,
        "",
    ));
    let amqp =
        super::fresh::in_fresh_database(&config, "amqp", |c| super::run(c, show_progress)).await?;
    let (http, gateway, postgres_check) = super::fresh::in_fresh_database(&config, "http", |c| {
        http_phase(c, &options, show_progress)
    })
    .await?;
    let ratio = http.report.throughput_rps / amqp.report.throughput_rps.max(1e-9);
    Ok(HttpComparison {
        over_amqp: amqp.report,
        over_http: http.report,
        throughput_ratio: ratio,
        gateway,
        postgres_check,
    })
}

async fn http_phase(
    mut config: RushConfig,
    options: &HttpOptions,
    show_progress: bool,
) -> anyhow::Result<(Rush, GatewayFigures, PostgresCheck)> {
    raise_open_files();
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::create_dir_all(&config.log_dir)?;
    let gateway = GatewayProcess::start(
        &options.exe,
        &config.services,
        &secret,
        config.log_dir.join(format!("{}-gateway.log", config.tag)),
    )?;
    gateway.ready(Duration::from_secs(60)).await?;
    config.via = Some(HttpEdge {
        base_url: gateway.base_url(),
        secret: secret.clone(),
        connections: options.connections,
    });
    let database_url = config.services.database_url.clone();
    let before = gateway.usage().unwrap_or_default();
    let rush = super::run(config, show_progress).await;
    let after = gateway.usage().unwrap_or_default();
    let rush = match rush {
        Ok(rush) => rush,
        Err(e) => {
            gateway.stop().await;
            return Err(e);
        }
    };
    let check = check_against_postgres(&database_url, &rush.load).await;
    let streams = hold_streams(&gateway, &secret, options.streams).await;
    let peak = gateway.usage().map_or(0, |u| u.peak_rss);
    gateway.stop().await;
    let requests = rush.load.answered.len().max(1);
    let figures = GatewayFigures {
        connections: options.connections,
        cpu_us_per_request: after.cpu.saturating_sub(before.cpu).as_secs_f64() * 1e6
            / requests as f64,
        peak_rss_mib: mib(peak),
        streams: streams?,
    };
    Ok((rush, figures, check?))
}

/// Fires the crowd at the gateway: each request a `POST /v1/requests` with the request's id
/// as its idempotency key and `Prefer: wait`, at most `connections` at once. The requests
/// come back renamed to the ids the gateway gives them, with their answers.
pub async fn fire(
    edge: &HttpEdge,
    requests: Vec<Request>,
    timeout: Duration,
    progress: Arc<Progress>,
) -> anyhow::Result<load::Report> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(edge.connections)
        .http1_only()
        .tcp_nodelay(true)
        .timeout(timeout)
        .build()
        .context("building the HTTP client")?;
    let mut tokens: HashMap<String, Arc<str>> = HashMap::new();
    let mut prepared = Vec::with_capacity(requests.len());
    for request in requests {
        let student = request.student_id.as_str().to_owned();
        let token = match tokens.get(&student) {
            Some(token) => Arc::clone(token),
            None => {
                let token: Arc<str> = seatrush_gateway::hs256_token(
                    edge.secret.as_bytes(),
                    &student,
                    timeout + Duration::from_secs(600),
                )?
                .into();
                tokens.insert(student.clone(), Arc::clone(&token));
                token
            }
        };
        let key = request.request_id.to_string();
        let mut renamed = request;
        renamed.request_id = RequestId::parse(seatrush_gateway::request_id_of_key(&student, &key))
            .map_err(|e| anyhow::anyhow!("a gateway request id: {e}"))?;
        prepared.push((renamed, key, token));
    }
    let start = Instant::now();
    let url = format!("{}/v1/requests", edge.base_url);
    let answered: Vec<load::Answered> = futures::stream::iter(prepared)
        .map(|(request, key, token)| {
            let (client, url, progress) = (&client, &url, &progress);
            async move {
                let sent = start.elapsed();
                let answer =
                    post_until_final(client, url, &request, &key, &token, start + timeout).await;
                progress.published.fetch_add(1, Ordering::Relaxed);
                let finals = match answer {
                    Some(answer) => {
                        progress.finals.fetch_add(1, Ordering::Relaxed);
                        vec![(answer, start.elapsed().saturating_sub(sent))]
                    }
                    None => Vec::new(),
                };
                load::Answered {
                    request,
                    sent,
                    provisional: None,
                    finals,
                    promotions: Vec::new(),
                }
            }
        })
        .buffered(edge.connections)
        .collect()
        .await;
    let total_time = start.elapsed();
    let complete = answered.iter().all(|a| !a.finals.is_empty());
    Ok(load::Report {
        started: start,
        answered,
        publish_time: total_time,
        total_time,
        complete,
        interrupted: None,
    })
}

/// One request until its final answer: retried under the same key after a connection error,
/// a 429 or a 503 (after `Retry-After`), and followed with `GET` while it is in flight.
async fn post_until_final(
    client: &reqwest::Client,
    url: &str,
    request: &Request,
    key: &str,
    token: &str,
    deadline: Instant,
) -> Option<Answer> {
    let body = body_of(request);
    let state_url = format!("{url}/{key}");
    let mut posted = false;
    while Instant::now() < deadline {
        let sent = if posted {
            client.get(&state_url).bearer_auth(token).send().await
        } else {
            client
                .post(url)
                .bearer_auth(token)
                .header("idempotency-key", key)
                .header("prefer", "wait=60")
                .json(&body)
                .send()
                .await
        };
        let response = match sent {
            Ok(response) => response,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let view: serde_json::Value = response.json().await.unwrap_or_default();
        match status {
            200 => return serde_json::from_value(view["answer"].clone()).ok(),
            // Accepted but not final within the wait, or in flight from an earlier attempt.
            202 | 409 => {
                posted = true;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            429 | 503 => {
                tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1))).await;
            }
            _ => {
                tracing::warn!(status, %view, "the gateway refused a request of the crowd");
                return None;
            }
        }
    }
    None
}

fn body_of(request: &Request) -> serde_json::Value {
    let mut body = serde_json::json!({
        "action": request.action.as_str(),
        "course_id": request.course_id.as_str(),
    });
    if let Action::Swap(old) = &request.action {
        body["drop_course_id"] = old.as_str().into();
    }
    body
}

/// Every request's HTTP final answer against the outcome stored for its id.
async fn check_against_postgres(
    database_url: &str,
    fired: &load::Report,
) -> anyhow::Result<PostgresCheck> {
    let store = Store::connect(database_url, 2).await?;
    let ids: Vec<&str> = fired
        .answered
        .iter()
        .map(|a| a.request.request_id.as_str())
        .collect();
    let mut stored: HashMap<String, Answer> = HashMap::new();
    for chunk in ids.chunks(5000) {
        for answer in store.stored_answers(chunk).await? {
            stored.insert(answer.request_id.clone(), answer);
        }
    }
    store.close().await;
    let mut check = PostgresCheck {
        request_ids: ids.len(),
        ..PostgresCheck::default()
    };
    for answered in &fired.answered {
        let id = answered.request.request_id.as_str();
        let Some(kept) = stored.get(id) else {
            check.without_outcome += 1;
            continue;
        };
        match answered.finals.first() {
            None => check.unanswered += 1,
            Some((got, _)) if (&got.outcome, &got.reason) != (&kept.outcome, &kept.reason) => {
                check.disagreeing += 1;
            }
            Some(_) => {}
        }
    }
    Ok(check)
}

/// Opens `count` event streams (one per student) on the gateway and holds them, reading its
/// resident memory before and while they are held.
async fn hold_streams(
    gateway: &GatewayProcess,
    secret: &str,
    count: usize,
) -> anyhow::Result<StreamFigures> {
    let mut figures = StreamFigures {
        asked: count,
        ..StreamFigures::default()
    };
    if count == 0 {
        return Ok(figures);
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .http1_only()
        .build()?;
    // Settle what the crowd left (connections closing, buffers returned) before the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = gateway.usage().unwrap_or_default().rss;
    let url = format!("{}/v1/events", gateway.base_url());
    let mut held = Vec::with_capacity(count);
    let opened: Vec<Option<reqwest::Response>> = futures::stream::iter(0..count)
        .map(|n| {
            let (client, url) = (&client, &url);
            async move {
                let token = seatrush_gateway::hs256_token(
                    secret.as_bytes(),
                    &format!("listener-{n}"),
                    Duration::from_secs(3600),
                )
                .ok()?;
                let response = client.get(url).bearer_auth(token).send().await.ok()?;
                (response.status().as_u16() == 200).then_some(response)
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    held.extend(opened.into_iter().flatten());
    figures.opened = held.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = gateway.usage().unwrap_or_default().rss;
    figures.rss_before_mib = mib(before);
    figures.rss_held_mib = mib(during);
    figures.kib_per_stream =
        during.saturating_sub(before) as f64 / 1024.0 / figures.opened.max(1) as f64;
    drop(held);
    Ok(figures)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Each held stream and each crowd connection is a descriptor: take as many as allowed.
fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// A `seatrush gateway` child process on a free loopback port.
pub struct GatewayProcess {
    addr: std::net::SocketAddr,
    child: Child,
}

impl GatewayProcess {
    pub fn start(
        exe: &std::path::Path,
        services: &Services,
        secret: &str,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let addr = super::workers::free_addr()?;
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(exe)
            .arg("gateway")
            .args(["--listen", &addr.to_string()])
            .env("SEATRUSH_JWT_HS256_SECRET", secret)
            .env("AMQP_URL", &services.amqp_url)
            .env("DATABASE_URL", &services.database_url)
            .env("SEATRUSH_PREFIX", &services.topology.prefix)
            .env("SEATRUSH_LOG_FORMAT", "json")
            .env_remove("SEATRUSH_JWKS")
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .context("starting the gateway process")?;
        Ok(Self { addr, child })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn usage(&self) -> Option<Usage> {
        usage_of(self.child.id()?)
    }

    /// Waits until `/readyz` says yes.
    pub async fn ready(&self, within: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        let url = format!("{}/readyz", self.base_url());
        while Instant::now() < deadline {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!("the gateway was not ready within {within:?}")
    }

    /// SIGTERM by pid, then waits (SIGKILL after 15 s).
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The comparison as a short text for people.
pub fn describe(c: &HttpComparison) -> String {
    let g = &c.gateway;
    let p = &c.postgres_check;
    format!(
        "over AMQP:\n{}\nover HTTP (one gateway, {} keep-alive connections):\n{}\n\
         throughput over HTTP: {:.2} of the throughput over AMQP (target at least 0.80)\n\
         CPU per request, µs: over AMQP {}; over HTTP {}, gateway {:.0}\n\
         gateway CPU: {:.1} µs per request; peak memory {:.1} MiB\n\
         event streams: {} of {} opened and held; memory {:.1} → {:.1} MiB, {:.1} KiB per stream\n\
         checked against Postgres: {} request ids, {} unanswered, {} without an outcome, {} disagreeing\n",
        super::describe(&c.over_amqp),
        g.connections,
        super::describe(&c.over_http),
        c.throughput_ratio,
        cpu_line(&c.over_amqp),
        cpu_line(&c.over_http),
        g.cpu_us_per_request,
        g.cpu_us_per_request,
        g.peak_rss_mib,
        g.streams.opened,
        g.streams.asked,
        g.streams.rss_before_mib,
        g.streams.rss_held_mib,
        g.streams.kib_per_stream,
        p.request_ids,
        p.unanswered,
        p.without_outcome,
        p.disagreeing,
    )
}

/// A run's CPU per request by process, as `broker B, database D, crowd C, worker W`.
fn cpu_line(r: &RushReport) -> String {
    match r.cpu_us_per_request {
        Some(c) => format!(
            "broker {:.0}, database {:.0}, crowd {:.0}, worker {:.0}",
            c.broker, c.database, c.bench, c.workers
        ),
        None => "not measured".to_owned(),
    }
}
