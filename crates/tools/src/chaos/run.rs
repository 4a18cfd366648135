//! `seatrush chaos`: a rush with faults injected on a schedule, and the proof that nothing was
//! lost.
//!
//! Worker processes reach a single broker and database through loopback proxies, so the links
//! can be cut, stalled and refused for real. On top of that a worker is killed with SIGKILL and
//! started again, and, when the operator passes the commands for them, the database and the
//! broker are restarted. On clusters, given their control commands (see [`super::cluster`]),
//! the workers connect to the nodes themselves and the clusters' own faults replace the links':
//! the broker node leading the most queues killed and restarted, a node cut off and healed,
//! every node restarted in turn, the database primary killed and its standby promoted. After
//! each fault a probe request measures how long a student asking at that moment waits for a
//! final answer. At the end every request id must have one outcome, the same on every answer
//! and in Postgres, and the audit must be clean.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use serde::Serialize;

use super::cluster::{Control, host_count};
use super::proxy::Proxy;
use crate::load::{self, Pace, Report};
use crate::rush::{self, Crowd, Services, WorkerProcess};
use seatrush_core::client::Client;
use seatrush_core::domain::{Action, CourseId, CourseSettings, Request, RequestId, StudentId};
use seatrush_core::store::{Store, Violation};

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub services: Services,
    pub crowd: Crowd,
    /// Requests published per second (the crowd must span the faults).
    pub rate: f64,
    pub workers: usize,
    pub exe: PathBuf,
    pub log_dir: PathBuf,
    /// A shell command that restarts the database server, if it may be restarted.
    pub restart_database: Option<String>,
    /// A shell command that restarts the broker, if it may be restarted.
    pub restart_broker: Option<String>,
    /// The broker cluster's control command, when `AMQP_URL` lists its nodes.
    pub broker_control: Option<String>,
    /// The database cluster's control command, when `DATABASE_URL` lists its hosts.
    pub database_control: Option<String>,
    pub timeout: Duration,
}

/// How long a student asking right after a fault waited, and what the fault did to the crowd.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub fault: String,
    pub recovery_ms: f64,
    /// Crowd requests caught in this fault (in flight at some point between its start and the
    /// recovery) whose final answer contradicted their provisional one.
    pub contradicted: usize,
    /// From the fault's start until a student asking was answered; `None` for the reference
    /// probe before any fault.
    #[serde(skip)]
    window: Option<(Instant, Instant)>,
}

impl Recovery {
    /// Whether a request in flight from `sent` to `answered` was caught in this fault.
    fn caught(&self, sent: Instant, answered: Instant) -> bool {
        self.window
            .is_some_and(|(start, end)| sent <= end && answered >= start)
    }
}

/// What a chaos run found; serialized by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub tag: String,
    pub requests: usize,
    pub request_ids: usize,
    pub faults: Vec<Recovery>,
    /// Request ids without a final answer at the client.
    pub lost: usize,
    /// Request ids whose final answers disagree.
    pub disagreeing: usize,
    /// Request ids without an outcome in Postgres.
    pub missing_in_postgres: usize,
    /// Final enrolled answers that do not match the seats held (either way).
    pub mismatched_seats: usize,
    /// Provisional answers a final answer contradicted (allowed for requests caught in a fault).
    pub contradicted: usize,
    /// Of those, the ones not caught in any fault: a bug if not zero.
    pub contradicted_outside_faults: usize,
    pub violations: Vec<Violation>,
}

impl ChaosReport {
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.disagreeing == 0
            && self.missing_in_postgres == 0
            && self.mismatched_seats == 0
            && self.contradicted_outside_faults == 0
            && self.violations.is_empty()
    }
}

/// The `host:port` of a URL such as `amqp://user:pass@127.0.0.1:5672/%2f`.
pub fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

/// The URL with its `host:port` replaced by `to`.
pub fn through(url: &str, to: SocketAddr) -> String {
    url.replacen(authority(url), &to.to_string(), 1)
}

/// A proxy in front of the server a URL names; refuses anything but loopback.
pub async fn proxy_for(url: &str) -> anyhow::Result<Proxy> {
    let target = tokio::net::lookup_host(authority(url))
        .await
        .with_context(|| format!("resolving {}", authority(url)))?
        .next()
        .context("the server's name resolves to nothing")?;
    if !target.ip().is_loopback() {
        bail!("fault injection only targets loopback servers, not {target}");
    }
    Ok(Proxy::start(target).await?)
}

/// How many times the crowd connects again after its connection died, before the run leaves
/// what is left to the last publish at the end.
const CROWD_RECONNECTS: usize = 20;

/// The crowd as a web back end runs it: when its connection dies with a broker node (or a
/// broker restart), it connects again at once and publishes every request id without a final
/// answer (those never published included) again under its id, at the same pace, so the rush
/// goes on through the faults that follow.
fn spawn_crowd(
    services: &Services,
    requests: Vec<Request>,
    timeout: Duration,
    rate: f64,
) -> tokio::task::JoinHandle<anyhow::Result<Report>> {
    let services = services.clone();
    tokio::spawn(async move {
        let fire = |requests: Vec<Request>| {
            load::fire_with(
                &services.amqp_url,
                &services.topology,
                requests,
                timeout,
                Pace::Rate(rate),
                Default::default(),
            )
        };
        let mut report = fire(requests.clone()).await?;
        for _ in 0..CROWD_RECONNECTS {
            let Some(why) = report.interrupted.clone() else {
                break;
            };
            let again = report.unanswered(&requests);
            if again.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            println!(
                "  the crowd's connection died ({why}); it publishes again the {} request ids \
                 without a final answer",
                again.len()
            );
            match fire(again).await {
                Ok(later) => report = report.then(later),
                Err(e) => println!("  the crowd could not connect again yet: {e:#}"),
            }
        }
        Ok(report)
    })
}

/// How long a probe keeps asking before the run gives up on the service.
const PROBE_PATIENCE: Duration = Duration::from_secs(120);
/// How long one attempt of a probe waits for its final answer.
const PROBE_ATTEMPT: Duration = Duration::from_secs(30);

struct Run {
    config: ChaosConfig,
    store: Store,
    tag: String,
    probe_course: CourseId,
    probes: usize,
    faults: Vec<Recovery>,
}

impl Run {
    /// Publishes one enroll as a student would, now, and measures the wait for its final answer,
    /// asking again under the same id while the service cannot take it yet (a refused
    /// connection, a publish nacked while a queue elects a new leader), as a web back end does;
    /// the fault's window runs from `began` until that answer.
    async fn probe(&mut self, fault: &str, began: Option<Instant>) -> anyhow::Result<()> {
        self.probes += 1;
        let id = format!("{}-probe-{}", self.tag, self.probes);
        let request = Request {
            request_id: RequestId::parse(id.as_str())?,
            action: Action::Enroll,
            course_id: self.probe_course.clone(),
            student_id: StudentId::parse(id.as_str())?,
        };
        let start = Instant::now();
        let services = &self.config.services;
        let waited = loop {
            let asked = async {
                let client = Client::connect(&services.amqp_url, services.topology.clone()).await?;
                let answered = client.request(&request, false, PROBE_ATTEMPT).await;
                client.close().await;
                answered
            };
            match asked.await {
                Ok(_) => break start.elapsed(),
                Err(e) if start.elapsed() >= PROBE_PATIENCE => {
                    return Err(e.context(format!(
                        "the probe after \"{fault}\" got no final answer in {PROBE_PATIENCE:?}"
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        println!("  {fault}: a student asking then waited {waited:.2?}");
        self.faults.push(Recovery {
            fault: fault.to_owned(),
            recovery_ms: waited.as_secs_f64() * 1000.0,
            contradicted: 0,
            window: began.map(|began| (began, Instant::now())),
        });
        Ok(())
    }

    async fn shell(&self, what: &str, command: &str) -> anyhow::Result<()> {
        println!("  {what}: running `{command}`");
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .status()
            .await
            .with_context(|| format!("running {command}"))?;
        if !status.success() {
            bail!("`{command}` failed: {status}");
        }
        Ok(())
    }
}

/// Starts worker processes that reach the servers through the proxies, each with an id of its
/// own (`<tag>-w0`, `-w1`, ...).
struct Launcher {
    exe: PathBuf,
    proxied: Services,
    log_dir: PathBuf,
    tag: String,
    started: AtomicUsize,
}

impl Launcher {
    fn start(&self, env: &[(&str, &str)]) -> anyhow::Result<WorkerProcess> {
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-w{n}", self.tag);
        let log = self.log_dir.join(format!("{id}.log"));
        let args = ["--lease-ms".to_owned(), "3000".to_owned()];
        WorkerProcess::start_observed(&self.exe, &self.proxied, &id, log, &args, env)
    }

    fn start_many(&self, count: usize) -> anyhow::Result<Vec<WorkerProcess>> {
        (0..count).map(|_| self.start(&[])).collect()
    }
}

/// The courses and the crowd of one run.
struct Scenario {
    store: Store,
    tag: String,
    courses: Vec<CourseId>,
    probe_course: CourseId,
    requests: Vec<Request>,
}

/// Creates the run's courses (and the probe's) and plans its crowd, every tenth request twice.
async fn prepare(config: &ChaosConfig) -> anyhow::Result<Scenario> {
    let store = rush::prepared_store(&config.services).await?;
    let tag = rush::fresh_tag("chaos");
    let shape = config.crowd;
    let courses = rush::create_courses(&store, &tag, &shape, false).await?;
    let probe_course = CourseId::parse(format!("{tag}-probe"))?;
    let probe_settings = CourseSettings {
        capacity: 1000,
        ..CourseSettings::default()
    };
    store
        .add_courses(&[(probe_course.clone(), probe_settings)])
        .await?;
    let requests = rush::with_duplicates(rush::crowd(
        &courses,
        shape.students,
        shape.choices,
        &tag,
        23,
    )?);
    Ok(Scenario {
        store,
        tag,
        courses,
        probe_course,
        requests,
    })
}

/// Runs the chaos scenario; errors only when it could not run (the report says what it found).
pub async fn run(config: ChaosConfig) -> anyhow::Result<ChaosReport> {
    let Scenario {
        store,
        tag,
        courses,
        probe_course,
        requests,
    } = prepare(&config).await?;
    let services = config.services.clone();
    let clusters = Clusters::from_config(&config)?;
    // The proxies stand for one server each; the workers connect to a cluster's nodes
    // themselves, and the cluster's own faults replace the links'.
    let proxies = if clusters.any() {
        None
    } else {
        Some((
            proxy_for(&services.amqp_url).await?,
            proxy_for(&services.database_url).await?,
        ))
    };
    std::fs::create_dir_all(&config.log_dir)?;
    let launcher = Launcher {
        exe: config.exe.clone(),
        proxied: match &proxies {
            Some((amqp, db)) => Services {
                amqp_url: through(&services.amqp_url, amqp.addr()),
                database_url: through(&services.database_url, db.addr()),
                topology: services.topology.clone(),
            },
            None => services.clone(),
        },
        log_dir: config.log_dir.clone(),
        tag: tag.clone(),
        started: AtomicUsize::new(0),
    };
    let mut workers = launcher.start_many(config.workers)?;
    rush::wait_for_partitions(&store, services.topology.partitions).await?;

    let distinct = requests
        .iter()
        .map(|r| r.request_id.as_str())
        .collect::<HashSet<_>>()
        .len();
    println!(
        "chaos {tag}: {} requests ({distinct} request ids) over {} courses, {:.0}/s, {} worker(s); faults:",
        requests.len(),
        courses.len(),
        config.rate,
        workers.len()
    );
    let crowd = spawn_crowd(&services, requests.clone(), config.timeout, config.rate);
    while store.decision_batches().await? == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut run = Run {
        config: config.clone(),
        store: store.clone(),
        tag: tag.clone(),
        probe_course,
        probes: 0,
        faults: Vec::new(),
    };
    run.probe("before any fault", None).await?;
    match &proxies {
        Some((amqp, db)) => run.link_faults(amqp, db).await?,
        None => println!(
            "  (no link faults: the workers reach the clusters' nodes directly, and the \
             clusters' own faults follow)"
        ),
    }

    let began = Instant::now();
    let victim = workers.remove(0);
    victim.signal(Signal::SIGKILL)?;
    workers.push(launcher.start(&[])?);
    run.probe(
        "a worker killed with SIGKILL (and a new one started)",
        Some(began),
    )
    .await?;

    // The server restarts come before the crash points, while the crowd is still publishing.
    run.restart_servers().await?;
    if let Some(broker) = &clusters.broker {
        run.broker_node_faults(broker).await?;
    }
    if let Some(database) = &clusters.database {
        run.database_failover(database).await?;
    }
    if seatrush_core::failpoint::ENABLED {
        workers = run.crash_points(&launcher, workers).await?;
    }

    let first = crowd.await.context("the crowd task failed")??;
    let report = run.publish_unanswered_again(first, &requests).await?;
    rush::wait_for_partitions(&store, services.topology.partitions).await?;
    for worker in workers {
        if let Err(e) = worker.stop(Duration::from_secs(60)).await {
            println!("  a worker did not stop cleanly: {e:#}");
        }
    }
    drop(proxies);
    check(&mut run, &courses, &requests, &report).await
}

/// A cluster under the run's faults: its control command and how many members the URL lists.
struct Cluster {
    control: Control,
    members: usize,
}

/// The clusters whose control commands the operator gave.
struct Clusters {
    broker: Option<Cluster>,
    database: Option<Cluster>,
}

impl Clusters {
    fn from_config(config: &ChaosConfig) -> anyhow::Result<Self> {
        let services = &config.services;
        let cluster = |command: &Option<String>, members: usize, what: &str| match command {
            Some(_) if members < 2 => bail!(
                "a control command for the {what} needs its URL to list every member (a \
                 comma-separated list), not one"
            ),
            Some(command) => Ok(Some(Cluster {
                control: Control::new(command.as_str()),
                members,
            })),
            None => Ok(None),
        };
        Ok(Self {
            broker: cluster(
                &config.broker_control,
                seatrush_core::amqp::node_urls(&services.amqp_url).len(),
                "broker (AMQP_URL)",
            )?,
            database: cluster(
                &config.database_control,
                host_count(&services.database_url),
                "database (DATABASE_URL)",
            )?,
        })
    }

    fn any(&self) -> bool {
        self.broker.is_some() || self.database.is_some()
    }
}

impl Run {
    /// The broker cluster's faults: the node leading the most partition queues killed with
    /// SIGKILL, then started again; the node then leading the most cut off from the others,
    /// then healed; every node stopped and started again in turn, a student asking while each
    /// is down.
    async fn broker_node_faults(&mut self, broker: &Cluster) -> anyhow::Result<()> {
        let control = &broker.control;
        let leader = control.member("busiest-broker-node").await?;
        let began = Instant::now();
        control.run("kill-broker-node", Some(leader)).await?;
        self.probe(
            &format!("broker node {leader}, leading the most queues, killed with SIGKILL"),
            Some(began),
        )
        .await?;
        // The fault lasts until the node is back: a request in flight until then may still be
        // caught in it (its worker's connection dies late, its queue's leader moves again).
        let started = Instant::now();
        control.run("start-broker-node", Some(leader)).await?;
        println!(
            "  broker node {leader} rejoined in {:.2?}",
            started.elapsed()
        );
        self.probe(&format!("broker node {leader} restarted"), Some(began))
            .await?;

        let leader = control.member("busiest-broker-node").await?;
        let began = Instant::now();
        control.run("isolate-broker-node", Some(leader)).await?;
        self.probe(
            &format!("broker node {leader}, leading the most queues, cut off from the others"),
            Some(began),
        )
        .await?;
        tokio::time::sleep(PARTITION_HELD).await;
        control.run("heal-broker-node", Some(leader)).await?;
        self.probe(
            &format!("broker node {leader} reconnected to the others"),
            Some(began),
        )
        .await?;

        for node in 1..=broker.members {
            let began = Instant::now();
            control.run("stop-broker-node", Some(node)).await?;
            self.probe(
                &format!(
                    "rolling restart: broker node {node} of {} stopped, as for an upgrade",
                    broker.members
                ),
                Some(began),
            )
            .await?;
            let started = Instant::now();
            control.run("start-broker-node", Some(node)).await?;
            println!("  broker node {node} rejoined in {:.2?}", started.elapsed());
            self.last_fault_lasted_until_now();
        }
        Ok(())
    }

    /// The database primary killed with SIGKILL and a standby promoted, then the old primary
    /// made a standby of the new one. Each fault's window runs from the kill, the cut or the
    /// stop until the member is back and a student asking then is answered.
    async fn database_failover(&mut self, database: &Cluster) -> anyhow::Result<()> {
        let control = &database.control;
        let primary = control.member("db-primary").await?;
        let standby = (1..=database.members)
            .find(|&m| m != primary)
            .context("the database cluster has no standby")?;
        let began = Instant::now();
        control.run("kill-db-member", Some(primary)).await?;
        control.run("promote-db-member", Some(standby)).await?;
        println!(
            "  database member {standby} promoted {:.2?} after the primary died",
            began.elapsed()
        );
        self.probe(
            &format!(
                "database primary (member {primary}) killed with SIGKILL, member {standby} \
                 promoted"
            ),
            Some(began),
        )
        .await?;
        control.run("rejoin-db-member", Some(primary)).await?;
        self.probe(
            &format!("database member {primary} rejoined as a standby"),
            Some(began),
        )
        .await
    }

    /// The last fault went on until now (a node stopped for a rolling restart is back).
    fn last_fault_lasted_until_now(&mut self) {
        if let Some(window) = self.faults.last_mut().and_then(|f| f.window.as_mut()) {
            window.1 = Instant::now();
        }
    }
}

/// How long a node stays cut off from the others.
const PARTITION_HELD: Duration = Duration::from_secs(5);

impl Run {
    /// The links' faults: every broker connection cut, the database stalled, then refused.
    async fn link_faults(&mut self, amqp: &Proxy, db: &Proxy) -> anyhow::Result<()> {
        let began = Instant::now();
        amqp.cut();
        self.probe("every broker connection cut", Some(began))
            .await?;

        let began = Instant::now();
        db.stall();
        tokio::time::sleep(Duration::from_secs(3)).await;
        db.resume();
        self.probe("database stalled for 3 s", Some(began)).await?;

        let began = Instant::now();
        db.refuse();
        tokio::time::sleep(Duration::from_secs(2)).await;
        db.resume();
        self.probe("database unreachable for 2 s", Some(began))
            .await
    }

    /// The servers restarted by the operator's commands, where given.
    async fn restart_servers(&mut self) -> anyhow::Result<()> {
        if let Some(command) = self.config.restart_database.clone() {
            let began = Instant::now();
            self.shell("database restart", &command).await?;
            self.probe("database restarted", Some(began)).await?;
        }
        if let Some(command) = self.config.restart_broker.clone() {
            let began = Instant::now();
            self.shell("broker restart", &command).await?;
            self.probe("broker restarted", Some(began)).await?;
        }
        Ok(())
    }

    /// With the crash points compiled in, a worker also dies at each of them: the others stop
    /// (giving their partitions back), a worker that aborts the first time it passes the point
    /// takes them all, a probe drives it there, and fresh workers finish the job.
    async fn crash_points(
        &mut self,
        launcher: &Launcher,
        mut workers: Vec<WorkerProcess>,
    ) -> anyhow::Result<Vec<WorkerProcess>> {
        let partitions = self.config.services.topology.partitions;
        for point in seatrush_core::failpoint::ALL {
            rush::wait_for_partitions(&self.store, partitions).await?;
            let began = Instant::now();
            for worker in workers.drain(..) {
                // A worker stopped before it set up its signal handler dies of the signal:
                // harmless here, its deliveries return to the queues like a crash's.
                if let Err(e) = worker.stop(Duration::from_secs(60)).await {
                    println!("  {e:#}");
                }
            }
            let action = format!("{point}=1*return(abort)");
            let mut doomed = launcher.start(&[("FAILPOINTS", action.as_str())])?;
            rush::wait_for_partitions(&self.store, partitions).await?;
            let fault = format!("a worker killed at {point} (and new ones started)");
            let count = self.config.workers;
            let replace = async {
                if doomed.exited(Duration::from_secs(60)).await.is_none() {
                    bail!("the worker never reached {point}");
                }
                launcher.start_many(count)
            };
            let (probed, replaced) = tokio::join!(self.probe(&fault, Some(began)), replace);
            workers = replaced?;
            probed?;
        }
        Ok(workers)
    }

    /// The crowd's client dies with its broker node (a restart, a node killed or cut off). What
    /// it was answered until then is kept; like a web back end, it then publishes every request
    /// id it has no final answer for again, under the same id. Those requests were caught in
    /// the fault under way when publishing stopped, whose window therefore lasts until they
    /// are answered.
    async fn publish_unanswered_again(
        &mut self,
        first: Report,
        requests: &[Request],
    ) -> anyhow::Result<Report> {
        let again = first.unanswered(requests);
        if again.is_empty() {
            return Ok(first);
        }
        println!(
            "  the client publishes again the {} request ids without a final answer ({})",
            again.len(),
            first
                .interrupted
                .as_deref()
                .unwrap_or("no answer before the timeout")
        );
        let services = &self.config.services;
        let later = load::fire(
            &services.amqp_url,
            &services.topology,
            again,
            self.config.timeout,
        )
        .await?;
        let stopped = first.started + first.publish_time;
        if let Some(window) = self
            .faults
            .iter_mut()
            .filter_map(|f| f.window.as_mut())
            .filter(|(start, _)| *start <= stopped)
            .last()
        {
            window.1 = Instant::now();
        }
        Ok(first.then(later))
    }
}

async fn check(
    run: &mut Run,
    courses: &[CourseId],
    requests: &[Request],
    report: &Report,
) -> anyhow::Result<ChaosReport> {
    let mut by_id: HashMap<&str, Vec<(&str, Option<&str>)>> = HashMap::new();
    for answered in &report.answered {
        by_id
            .entry(answered.request.request_id.as_str())
            .or_default()
            .extend(
                answered
                    .finals
                    .iter()
                    .map(|(a, _)| (a.outcome.as_str(), a.reason.as_deref())),
            );
    }
    let ids: Vec<&str> = requests
        .iter()
        .map(|r| r.request_id.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let stored = run.store.count_outcomes(&ids).await?;
    let mut contradicted_outside_faults = 0;
    for (sent, answered) in report.contradictions() {
        let mut caught = false;
        for fault in run.faults.iter_mut().filter(|f| f.caught(sent, answered)) {
            fault.contradicted += 1;
            caught = true;
        }
        if !caught {
            contradicted_outside_faults += 1;
        }
    }
    let held = run.store.seats_held(courses).await?;
    Ok(ChaosReport {
        tag: run.tag.clone(),
        requests: requests.len(),
        request_ids: ids.len(),
        faults: run.faults.clone(),
        lost: ids
            .iter()
            .filter(|id| by_id.get(*id).is_none_or(Vec::is_empty))
            .count(),
        disagreeing: by_id
            .values()
            .filter(|finals| finals.iter().any(|f| *f != finals[0]))
            .count(),
        missing_in_postgres: ids
            .len()
            .saturating_sub(usize::try_from(stored).unwrap_or(0)),
        mismatched_seats: rush::mismatched_seats(report, &held),
        contradicted: report.contradicted(),
        contradicted_outside_faults,
        violations: run.store.audit().await?,
    })
}

/// The report in a few lines.
pub fn describe(r: &ChaosReport) -> String {
    let mut out = format!(
        "chaos {}: {} requests, {} request ids\n  lost {}, answers disagreeing {}, missing in \
         Postgres {}, seats not matching the answers {}, provisional answers contradicted {} \
         ({} of them not caught in a fault), audit violations {}\n",
        r.tag,
        r.requests,
        r.request_ids,
        r.lost,
        r.disagreeing,
        r.missing_in_postgres,
        r.mismatched_seats,
        r.contradicted,
        r.contradicted_outside_faults,
        r.violations.len()
    );
    for f in r.faults.iter().filter(|f| f.contradicted > 0) {
        out.push_str(&format!(
            "  contradicted among the requests caught in \"{}\": {}\n",
            f.fault, f.contradicted
        ));
    }
    for v in &r.violations {
        out.push_str(&format!("  violation {}: {}\n", v.check, v.detail));
    }
    out.push_str(if r.passed() {
        "  every request id has one outcome; the audit is clean\n"
    } else {
        "  FAILED\n"
    });
    out
}
