//! The design a forum thread proposes instead of seatrush ("just use Redis"), done as well as it
//! can be done, so the benchmark compares seatrush with its best version.
//!
//! Each request is decided by one Lua script that Redis runs atomically (loaded once, sent as
//! EVALSHA): a request id decided before gets its stored answer; a student already seated gets
//! `duplicate`; otherwise a seat is taken if one is left (`enrolled`), or not (`full`). The
//! script's answer is the provisional answer, given at once. In the same atomic step the script
//! appends the decision to a Redis stream, and one writer task (`writer`) stores the stream in
//! Postgres in batches; a request's final answer is the moment its batch commits. Redis keeps
//! its state in its append-only file, synced every second (`Fsync::EverySec`, the forum's
//! suggestion) or before every answer (`Fsync::Always`).
//!
//! [`run`] measures the design on a stream. [`crash`] does the same on a Redis server of its
//! own, kills it with SIGKILL in the middle of the burst, starts it again, and counts the
//! students whose answer was lost or changed. A SIGKILL is a crash of the Redis process, not
//! of the machine: what Redis wrote to its AOF survives in the kernel's page cache whatever
//! the fsync policy, so this run measures the process crash; a power loss would also take
//! what `everysec` had not yet synced, which no test here can cause.
//!
//! The parts: `decide` (the keys and the script), `crowd` (the clients, with their retries),
//! `writer` (stream to Postgres), `ledger` (the Postgres schema of its own), `server` (the crash
//! run's server, through `scripts/services.sh`), `tally` (the checks, without I/O).

mod crowd;
mod decide;
mod ledger;
mod server;
mod tally;
mod writer;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, RetryMethod};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::DesignFigures;
use crate::stats::Latency;
use crowd::{Asked, Crowd, Pace};
use decide::Registrar;
use ledger::{Ledger, Records};
use seatrush_core::domain::{CourseId, Request};
use seatrush_core::telemetry::redact;
use server::Running;
use tally::Tally;
use writer::{Writer, WriterLog};

pub use server::OwnServer;
pub use tally::Aftermath;

/// How long a whole run may take before it fails.
const RUN_LIMIT: Duration = Duration::from_secs(600);
/// How long the writer may take to store what is left once the clients are done.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// How long a command may wait for its answer. Far above what a healthy server takes, so a
/// slow shared machine does not turn answers into errors; a dead server fails at once anyway.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at a setup, check or clean-up command whose connection was lost.
const ADMIN_ATTEMPTS: u32 = 50;
/// In the crash run, the requests arrive over this long and the server is killed halfway.
const CRASH_SPREAD: Duration = Duration::from_secs(2);

/// When Redis syncs its append-only file to disk (`appendfsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Once a second, in the background. Redis still writes its AOF to the kernel before it
    /// answers, so a crash of the Redis process alone (SIGKILL) loses nothing it answered,
    /// unless a slow sync made it postpone that write (up to 2 s); a crash of the machine
    /// loses up to about a second of answers.
    EverySec,
    /// Before answering: nothing answered is lost even if the machine crashes, at the cost of
    /// a sync per event-loop turn.
    Always,
}

impl Fsync {
    /// The value of Redis's `appendfsync` setting.
    pub fn as_config(self) -> &'static str {
        match self {
            Fsync::EverySec => "everysec",
            Fsync::Always => "always",
        }
    }
}

/// What the design answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisOutcome {
    Enrolled,
    Full,
    /// The student already held a seat in the course.
    Duplicate,
}

impl RedisOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisOutcome::Enrolled => "enrolled",
            RedisOutcome::Full => "full",
            RedisOutcome::Duplicate => "duplicate",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "enrolled" => Some(RedisOutcome::Enrolled),
            "full" => Some(RedisOutcome::Full),
            "duplicate" => Some(RedisOutcome::Duplicate),
            _ => None,
        }
    }

    /// Whether the answer tells the student they hold a seat.
    pub fn holds_seat(self) -> bool {
        matches!(self, RedisOutcome::Enrolled | RedisOutcome::Duplicate)
    }
}

/// How the clients reach Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shape {
    /// Multiplexed connections (each one socket, requests pipelined on it).
    pub connections: usize,
    /// Requests in flight at once (web back-end workers), spread over the connections.
    pub clients: usize,
}

impl Default for Shape {
    /// The best of the shapes measured on the shared 2-core development machine (1, 2 and 4
    /// connections with 64, 256 and 1,024 clients, 10,000 requests, two sweeps): every shape
    /// fell within 10,600–14,500 requests/s, Redis's own time per script being the limit, and
    /// one connection with 1,024 clients did best on average. One multiplexed connection
    /// pipelines all the clients' requests; more sockets only add system calls.
    fn default() -> Self {
        Self {
            connections: 1,
            clients: 1024,
        }
    }
}

/// What a run works on.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    pub database_url: &'a str,
    pub courses: &'a [CourseId],
    pub seats: u32,
    pub fsync: Fsync,
    pub shape: Shape,
}

/// What the Redis design did with a stream.
#[derive(Debug, Clone, Serialize)]
pub struct RedisFigures {
    /// Throughput over the time until the last final answer (its commit in Postgres); final
    /// latencies from the start of the burst.
    #[serde(flatten)]
    pub figures: DesignFigures,
    pub fsync: Fsync,
    pub connections: usize,
    pub clients: usize,
    pub provisional_p50_ms: f64,
    pub provisional_p99_ms: f64,
    pub enrolled: usize,
    pub full: usize,
    /// Answers to a repeated request id or to a student already seated.
    pub duplicates: usize,
    /// Answers the script gave from its memory of the request id (repeats and retries).
    pub replayed: usize,
    /// Requests that got no answer after their retries.
    pub errors: usize,
    /// The first of those requests' errors.
    pub first_error: Option<String>,
    /// Batches the writer committed.
    pub batches: usize,
    /// Courses whose stored enrollments exceed their seats.
    pub violations: i64,
    /// Request ids with no record in Postgres at the end.
    pub lost: usize,
    /// Request ids Redis decided more than once.
    pub duplicated: usize,
    /// Answers that differ from the stored outcome of their request id.
    pub contradicted: usize,
}

/// What a SIGKILL of Redis in the middle of the burst did.
#[derive(Debug, Clone, Serialize)]
pub struct CrashFigures {
    #[serde(flatten)]
    pub run: RedisFigures,
    /// When the server was killed, and when it answered again, since the burst's start.
    pub killed_at_ms: f64,
    pub back_at_ms: f64,
    /// What the students were told against what holds after the restart.
    #[serde(flatten)]
    pub aftermath: Aftermath,
    /// The writer's reads and deletions that failed while the server was down.
    pub writer_errors: usize,
}

/// Runs the Redis design on `stream` against the Redis server at `redis_url` (which must keep
/// an append-only file), every request at time zero. Returns the figures and the final
/// latencies. The server's `appendfsync` is set for the run and restored after, so two runs
/// must not share a server at once; the run's keys and its Postgres schema are removed.
pub async fn run(
    redis_url: &str,
    setup: &Setup<'_>,
    stream: &[Request],
) -> anyhow::Result<(RedisFigures, Vec<Duration>)> {
    let session = Session::open(redis_url, setup).await?;
    let measured = session.measure(setup, stream, Pace::AtOnce, None).await;
    let closed = session.close(setup.courses).await;
    let measured = measured?;
    closed?;
    let latencies = measured.tally.finals.clone();
    Ok((measured.figures(setup, stream.len()), latencies))
}

/// Runs the Redis design on `stream` against a server of its own (started with
/// `scripts/services.sh` in `server.state_dir`, on a free port), with the requests spread over
/// two seconds; halfway, SIGKILLs the server and starts it again. Clients without an answer
/// retry after reconnecting. Then counts what the students were told against what Postgres and
/// the restarted Redis hold. The server is stopped at the end.
pub async fn crash(
    server: OwnServer<'_>,
    setup: &Setup<'_>,
    stream: &[Request],
) -> anyhow::Result<CrashFigures> {
    let own = Running::start(server, setup.fsync)
        .await
        .context("starting the crash run's Redis server")?;
    let result = crash_on(&own, setup, stream).await;
    let stopped = own.stop().await;
    let figures = result?;
    stopped.context("stopping the crash run's Redis server")?;
    Ok(figures)
}

async fn crash_on(
    own: &Running,
    setup: &Setup<'_>,
    stream: &[Request],
) -> anyhow::Result<CrashFigures> {
    let session = Session::open(&own.url(), setup).await?;
    let measured = session
        .measure(setup, stream, Pace::Over(CRASH_SPREAD), Some(own))
        .await;
    let remembered = match &measured {
        Ok(m) => session.remembered(stream, &m.asked).await,
        Err(_) => Ok(HashSet::new()),
    };
    let closed = session.close(setup.courses).await;
    let measured = measured?;
    let remembered = remembered?;
    closed?;
    let aftermath = tally::aftermath(
        stream,
        &measured.asked,
        &measured.log,
        &measured.records,
        &remembered,
    );
    let (killed, back) = measured.crash.unwrap_or_default();
    Ok(CrashFigures {
        killed_at_ms: killed.as_secs_f64() * 1000.0,
        back_at_ms: back.as_secs_f64() * 1000.0,
        aftermath,
        writer_errors: measured.log.read_errors,
        run: measured.figures(setup, stream.len()),
    })
}

/// A connection that reconnects by itself, with answers awaited for `RESPONSE_TIMEOUT`.
async fn connect(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_with_config(client.clone(), config).await
}

/// Whether an error may go away if the command is sent again: a lost connection, a timeout, a
/// server still loading its AOF. An error the server gave for the command itself may not.
fn transient(error: &redis::RedisError) -> bool {
    !matches!(error.retry_method(), RetryMethod::NoRetry)
}

/// Runs `command` on a clone of `con`, and again after a pause while it fails for a lost
/// connection (the manager reconnects meanwhile): the first command on a connection that sat
/// idle through a server restart fails so, though the server is back.
async fn again_if_lost<T, F, Fut>(con: &ConnectionManager, mut command: F) -> RedisResult<T>
where
    F: FnMut(ConnectionManager) -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    let mut attempt = 1;
    loop {
        match command(con.clone()).await {
            Err(e) if attempt < ADMIN_ATTEMPTS && transient(&e) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Redis's `CONFIG GET <name>`.
async fn config_get(con: &ConnectionManager, name: &str) -> anyhow::Result<String> {
    let pair: Vec<String> = again_if_lost(con, |mut con| async move {
        redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(&mut con)
            .await
    })
    .await
    .with_context(|| format!("CONFIG GET {name}"))?;
    pair.into_iter()
        .nth(1)
        .with_context(|| format!("the server has no setting {name}"))
}

async fn config_set(con: &ConnectionManager, name: &str, value: &str) -> anyhow::Result<()> {
    again_if_lost(con, |mut con| async move {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async::<()>(&mut con)
            .await
    })
    .await
    .with_context(|| format!("CONFIG SET {name} {value}"))
}

/// One run's connections, keys and tables.
struct Session {
    registrar: Arc<Registrar>,
    ledger: Arc<Ledger>,
    /// The clients' connections.
    connections: Vec<ConnectionManager>,
    /// The writer's connection.
    writer: ConnectionManager,
    /// Setup, settings and checks.
    admin: ConnectionManager,
    /// The server's `appendfsync` before the run, restored after it.
    fsync_before: String,
}

/// What one measured burst left.
struct Measured {
    asked: Vec<Asked>,
    log: WriterLog,
    records: Records,
    tally: Tally,
    /// The end of the burst, when nothing else marks it (no final answer at all).
    ended: Duration,
    /// When the server was killed and when it was back, in the crash run.
    crash: Option<(Duration, Duration)>,
}

impl Session {
    /// Connects, checks the server keeps an append-only file, creates the tables, seeds the
    /// courses and sets the run's `appendfsync`.
    async fn open(redis_url: &str, setup: &Setup<'_>) -> anyhow::Result<Session> {
        let client = redis::Client::open(redis_url)
            .with_context(|| format!("parsing the Redis URL {}", redact(redis_url)))?;
        let admin = connect(&client)
            .await
            .with_context(|| format!("connecting to Redis at {}", redact(redis_url)))?;
        let appendonly = config_get(&admin, "appendonly").await?;
        anyhow::ensure!(
            appendonly == "yes",
            "the Redis design needs a server that keeps an append-only file (appendonly yes; \
             scripts/services.sh starts one), and {} has appendonly {appendonly}",
            redact(redis_url)
        );
        let fsync_before = config_get(&admin, "appendfsync").await?;
        let registrar = Registrar::new(&crate::rush::fresh_tag("redis"));
        let ledger = Ledger::create(setup.database_url, setup.courses, setup.seats)
            .await
            .context("creating the Redis design's tables in PostgreSQL")?;
        let mut connections = Vec::with_capacity(setup.shape.connections);
        for _ in 0..setup.shape.connections.max(1) {
            connections.push(connect(&client).await.context("connecting a client")?);
        }
        let writer = connect(&client).await.context("connecting the writer")?;
        let session = Session {
            registrar: Arc::new(registrar),
            ledger: Arc::new(ledger),
            connections,
            writer,
            admin,
            fsync_before,
        };
        // Seeded with every write synced, so a crash run's kill cannot take the seats away.
        let admin = &session.admin;
        let registrar = &session.registrar;
        let seeded = async {
            config_set(admin, "appendfsync", "always").await?;
            again_if_lost(admin, |mut con| async move {
                registrar.seed(&mut con, setup.courses, setup.seats).await
            })
            .await
            .context("seeding the courses in Redis")?;
            config_set(admin, "appendfsync", setup.fsync.as_config()).await
        }
        .await;
        if let Err(e) = seeded {
            // Best effort: the seeding's error is the one worth reporting.
            let _ = session.close(setup.courses).await;
            return Err(e);
        }
        Ok(session)
    }

    /// One burst: the clients ask, the writer stores, and (in the crash run) the server is
    /// killed and started again halfway through the spread.
    async fn measure(
        &self,
        setup: &Setup<'_>,
        stream: &[Request],
        pace: Pace,
        fault: Option<&Running>,
    ) -> anyhow::Result<Measured> {
        let stream_arc = Arc::new(stream.to_vec());
        let crowd = Crowd {
            registrar: self.registrar.clone(),
            connections: self.connections.clone(),
            clients: setup.shape.clients,
            pace,
        };
        let clients_done = CancellationToken::new();
        let start = Instant::now();
        let writer = Writer::new(
            self.writer.clone(),
            self.ledger.clone(),
            self.registrar.log(),
            start,
        );
        let mut writer = tokio::spawn(writer.run(clients_done.clone(), start + RUN_LIMIT));
        let asking = tokio::time::timeout(RUN_LIMIT, crowd.ask_all(stream_arc, start));
        let (asked, crash) = match (fault, pace) {
            (Some(server), Pace::Over(spread)) => {
                let (asked, crash) = tokio::join!(asking, kill_midway(server, spread, start));
                (asked, Some(crash))
            }
            _ => (asking.await, None),
        };
        clients_done.cancel();
        let asked = match asked {
            Ok(Ok(asked)) => asked,
            failed => {
                writer.abort();
                let _ = writer.await;
                return Err(match failed {
                    Ok(Err(e)) => e,
                    _ => anyhow::anyhow!("the clients were not done within {RUN_LIMIT:?}"),
                });
            }
        };
        let log = match tokio::time::timeout(DRAIN_LIMIT, &mut writer).await {
            Ok(joined) => joined.context("the writer task failed")??,
            Err(_) => {
                writer.abort();
                let _ = writer.await;
                anyhow::bail!("the writer was not done within {DRAIN_LIMIT:?}");
            }
        };
        let ended = start.elapsed();
        let crash = crash.transpose()?;
        let records = self
            .ledger
            .records()
            .await
            .context("reading the Redis design's records")?;
        let tally = tally::tally(stream, &asked, &log, &records);
        Ok(Measured {
            asked,
            log,
            records,
            tally,
            ended,
            crash,
        })
    }

    /// The request ids told an answer that Redis still knows.
    async fn remembered(
        &self,
        stream: &[Request],
        asked: &[Asked],
    ) -> anyhow::Result<HashSet<String>> {
        let told: Vec<&str> = stream
            .iter()
            .zip(asked)
            .filter(|(_, a)| a.told.is_some())
            .map(|(r, _)| r.request_id.as_str())
            .collect();
        let (registrar, told) = (&self.registrar, &told);
        again_if_lost(&self.admin, |mut con| async move {
            registrar.remembered(&mut con, told).await
        })
        .await
        .context("reading what Redis remembers after its restart")
    }

    /// Restores `appendfsync`, deletes the run's keys and drops its tables; tries each step
    /// and reports the first failure.
    async fn close(self, courses: &[CourseId]) -> anyhow::Result<()> {
        let restored = config_set(&self.admin, "appendfsync", &self.fsync_before).await;
        let registrar = &self.registrar;
        let cleared = again_if_lost(&self.admin, |mut con| async move {
            registrar.clear(&mut con, courses).await
        })
        .await
        .context("deleting the run's Redis keys");
        // Every task that held the ledger has ended, so this is the last handle.
        let dropped = match Arc::into_inner(self.ledger) {
            Some(ledger) => ledger
                .drop()
                .await
                .context("dropping the Redis design's tables"),
            None => Ok(()),
        };
        restored.and(cleared).and(dropped)
    }
}

/// The crash: halfway through the spread, SIGKILL the server, then start it again. Returns
/// when it was killed and when it answered again.
async fn kill_midway(
    server: &Running,
    spread: Duration,
    start: Instant,
) -> anyhow::Result<(Duration, Duration)> {
    tokio::time::sleep_until((start + spread / 2).into()).await;
    server.kill().await.context("killing Redis mid-burst")?;
    let killed = start.elapsed();
    server
        .start_again()
        .await
        .context("starting Redis again after the kill")?;
    Ok((killed, start.elapsed()))
}

impl Measured {
    fn figures(&self, setup: &Setup<'_>, requests: usize) -> RedisFigures {
        let t = &self.tally;
        let elapsed = t.last_final().unwrap_or(self.ended);
        let provisional = Latency::of(t.provisionals.clone());
        RedisFigures {
            figures: DesignFigures::of(requests, elapsed, Latency::of(t.finals.clone())),
            fsync: setup.fsync,
            connections: setup.shape.connections,
            clients: setup.shape.clients,
            provisional_p50_ms: provisional.p50_ms,
            provisional_p99_ms: provisional.p99_ms,
            enrolled: t.enrolled,
            full: t.full,
            duplicates: t.duplicates,
            replayed: t.replayed,
            errors: t.errors,
            first_error: t.first_error.clone(),
            batches: self.log.batches,
            violations: self.records.violations,
            lost: t.lost,
            duplicated: t.duplicated,
            contradicted: t.contradicted,
        }
    }
}
