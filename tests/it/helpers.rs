//! The test environment: a fresh database and topology per test, workers to run against them,
//! the one set of timeouts every test uses, and `eventually` for what no event announces.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use seatrush_core::amqp::{Broker, Outgoing, ReplyTo, Topology};
use seatrush_core::client::EventFilter;
use seatrush_core::domain::{Action, CourseId, CourseSettings, Request, RequestId, StudentId};
use seatrush_core::protocol::{Answer, Stage, request_body};
use seatrush_core::store::Store;
use seatrush_core::worker::{self, WorkerConfig};
use seatrush_tools::load::{self, Report};
use seatrush_tools::rush::{self, Services, WorkerProcess};

/// How long a test waits for something that takes milliseconds when all is well (an answer, a
/// worker taking its partitions, a row appearing): far above that, so a slow shared machine
/// does not fail a test, and bounded, so a broken one does.
pub const WAIT: Duration = Duration::from_secs(60);
/// How long a crowd may take to get every final answer.
pub const CROWD_WAIT: Duration = Duration::from_secs(180);

/// Polls `probe` until it yields a value, for at most `within`; fails the test naming `what`
/// otherwise. For what no signal announces (a row in the database, a line in a log file, a
/// metric): bounded, and never a bare sleep.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// At least `n` decision batches committed in this environment's database.
pub async fn committed_batches(store: &Store, n: i64) {
    eventually(&format!("{n} batches committed"), WAIT, || async {
        (store.decision_batches().await.ok()? >= n).then_some(())
    })
    .await
}

pub fn required(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run scripts/test.sh, which starts private services, or point {var} at a server")
    })
}

/// Where the tests' logs go: `target/test-logs/`, beside cargo's `target/tmp`.
fn logs_root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-logs")
}

/// The running test's log directory, `target/test-logs/<module>/<test>/`, named after the
/// thread libtest runs the test on. The first call of a run empties it (the previous run's logs
/// go); the logs stay after the test, and a failing test names the directory.
fn test_log_dir() -> PathBuf {
    static STARTED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("unnamed");
    let dir = name
        .split("::")
        .fold(logs_root(), |dir, part| dir.join(part));
    let first = STARTED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(dir.clone());
    if first {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// The log of the in-process workers of every test in this run.
fn in_process_log() -> PathBuf {
    logs_root().join("in-process.log")
}

/// Installs the log subscriber of the test binary once (`RUST_LOG` applies, as for `seatrush`).
/// In-process workers log through libtest's captured output, so a passing test prints nothing
/// and a failing one shows its own lines with its output; every line also goes, without colours,
/// to `in_process_log()`. The global `telemetry::init` would write to stderr, which libtest does
/// not capture.
fn init_in_process_logs() {
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        std::fs::create_dir_all(logs_root()).expect("test log directory");
        let file = std::fs::File::create(in_process_log()).expect("in-process log file");
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,seatrush=info"));
        let writer = tracing_subscriber::fmt::TestWriter::new().and(Mutex::new(file));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .with_ansi(false)
            .try_init();
    });
}

/// Replaces the database name in a Postgres URL.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Runs one statement on the server's admin connection (database creation and removal, which
/// cannot run inside the test database itself).
async fn admin(admin_url: &str, statement: String) {
    // A URL of a primary and its standbys: the statement goes to the primary.
    let admin_url = seatrush_core::store::writable_url(admin_url)
        .await
        .expect("a database host that takes writes");
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect to DATABASE_URL");
    sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

/// One test's private world.
pub struct TestEnv {
    pub amqp_url: String,
    pub database_url: String,
    admin_url: String,
    db_name: String,
    pub topology: Topology,
    pub store: Store,
    extra_databases: Vec<String>,
    workers: Vec<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    /// Set by `cleanup`; a test that ends without it (it panicked) is cleaned up on drop.
    cleaned: bool,
    log_dir: PathBuf,
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::on(required("AMQP_URL"), required("DATABASE_URL")).await
    }

    /// An environment whose topology has `partitions` partitions instead of 4.
    pub async fn with_partitions(partitions: u16) -> Self {
        Self::setup(required("AMQP_URL"), required("DATABASE_URL"), partitions).await
    }

    /// An environment on the given servers (the database URL names a database the role can
    /// create others from).
    pub async fn on(amqp_url: String, admin_url: String) -> Self {
        Self::setup(amqp_url, admin_url, 4).await
    }

    async fn setup(amqp_url: String, admin_url: String, partitions: u16) -> Self {
        init_in_process_logs();
        let log_dir = test_log_dir();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("seatrush_it_{}", &id[..12]);
        admin(&admin_url, format!("CREATE DATABASE {db_name}")).await;
        let database_url = with_database(&admin_url, &db_name);
        let store = Store::connect(&database_url, 4).await.expect("connect");
        store.migrate().await.expect("migrate");
        let topology = Topology {
            prefix: format!("it{}", &id[..12]),
            partitions,
            delivery_limit: 20,
            max_queue_length: 1_000_000,
            lanes: Vec::new(),
        };
        store
            .ensure_partitions(topology.partitions)
            .await
            .expect("record partitions");
        Self {
            amqp_url,
            database_url,
            admin_url,
            db_name,
            topology,
            store,
            extra_databases: Vec::new(),
            workers: Vec::new(),
            cleaned: false,
            log_dir,
        }
    }

    /// Another empty database (no migrations), dropped at cleanup; returns its URL.
    pub async fn empty_database(&mut self) -> String {
        let name = format!("{}_{}", self.db_name, self.extra_databases.len());
        admin(&self.admin_url, format!("CREATE DATABASE {name}")).await;
        self.extra_databases.push(name.clone());
        with_database(&self.admin_url, &name)
    }

    /// A worker configuration for this environment, with test-friendly timings.
    pub fn worker_config(&self) -> WorkerConfig {
        let mut config = WorkerConfig::new(self.amqp_url.clone(), self.database_url.clone());
        config.topology = self.topology.clone();
        config.lease = Duration::from_secs(3);
        config
    }

    /// Starts an in-process worker and waits until it holds every partition.
    pub async fn start_worker(&mut self, config: WorkerConfig) {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(worker::run(config, shutdown.clone()));
        self.workers.push((shutdown, handle));
        self.wait_for_partitions().await;
    }

    pub async fn wait_for_partitions(&self) {
        rush::wait_for_partitions(&self.store, self.topology.partitions)
            .await
            .expect("a worker takes the partitions");
    }

    /// Stops every in-process worker gracefully and checks they exited cleanly.
    pub async fn stop_workers(&mut self) {
        for (shutdown, handle) in self.workers.drain(..) {
            shutdown.cancel();
            handle
                .await
                .expect("worker task")
                .expect("worker exits cleanly");
        }
    }

    /// Where this environment's services are, for worker processes and rushes.
    pub fn services(&self) -> Services {
        Services {
            amqp_url: self.amqp_url.clone(),
            database_url: self.database_url.clone(),
            topology: self.topology.clone(),
        }
    }

    /// Starts a `seatrush worker` process for this environment.
    pub fn worker_process(&self, worker_id: &str) -> WorkerProcess {
        self.worker_process_with_env(worker_id, &[])
    }

    /// Starts a `seatrush worker` process with extra environment (for example `FAILPOINTS`).
    pub fn worker_process_with_env(&self, worker_id: &str, env: &[(&str, &str)]) -> WorkerProcess {
        self.launch(worker_id, &[], env)
    }

    /// Starts a `seatrush worker` process with extra arguments.
    pub fn worker_process_args(&self, worker_id: &str, args: &[&str]) -> WorkerProcess {
        self.launch(worker_id, args, &[])
    }

    /// Starts a `seatrush worker` process with extra arguments and environment.
    pub fn launch(&self, worker_id: &str, args: &[&str], env: &[(&str, &str)]) -> WorkerProcess {
        let log = self
            .log_dir()
            .join(format!("{}-{worker_id}.log", self.topology.prefix));
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        WorkerProcess::start_with_env(&exe(), &self.services(), worker_id, log, &args, env)
            .expect("start a worker process")
    }

    /// The `seatrush` command, pointed at this environment's services and topology.
    pub fn seatrush(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(exe());
        command
            .env("AMQP_URL", &self.amqp_url)
            .env("DATABASE_URL", &self.database_url)
            .env("SEATRUSH_PREFIX", &self.topology.prefix)
            .env("SEATRUSH_PARTITIONS", self.topology.partitions.to_string());
        command
    }

    /// This test's log directory: worker processes' logs and tools' output go here.
    pub fn log_dir(&self) -> PathBuf {
        self.log_dir.clone()
    }

    /// A new file in this test's log directory, for a process's output.
    pub fn log_file(&self, name: &str) -> std::fs::File {
        let path = self.log_dir.join(name);
        std::fs::File::create(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()))
    }

    pub async fn add_courses(&self, prefix: &str, count: usize, seats: u32) -> Vec<CourseId> {
        self.add_courses_with(
            prefix,
            count,
            CourseSettings {
                capacity: seats,
                ..CourseSettings::default()
            },
        )
        .await
    }

    pub async fn add_courses_with(
        &self,
        prefix: &str,
        count: usize,
        settings: CourseSettings,
    ) -> Vec<CourseId> {
        let courses: Vec<CourseId> = (0..count)
            .map(|k| CourseId::parse(format!("{prefix}{k:03}")).expect("valid id"))
            .collect();
        let rows: Vec<(CourseId, CourseSettings)> = courses
            .iter()
            .map(|c| (c.clone(), settings.clone()))
            .collect();
        self.store.add_courses(&rows).await.expect("add courses");
        courses
    }

    /// Publishes requests as a crowd and collects their answers, each checked against the
    /// answer schema.
    pub async fn fire(&self, requests: Vec<Request>) -> Report {
        let report = load::fire(&self.amqp_url, &self.topology, requests, CROWD_WAIT)
            .await
            .expect("fire the crowd");
        crate::schema::assert_valid_report(&report);
        report
    }

    /// Publishes a crowd at `pace` in the background (so faults can be injected meanwhile);
    /// the task yields its report.
    pub fn spawn_crowd(
        &self,
        requests: Vec<Request>,
        pace: load::Pace,
        timeout: Duration,
    ) -> JoinHandle<anyhow::Result<Report>> {
        load::spawn(&self.amqp_url, &self.topology, requests, timeout, pace)
    }

    /// A crowd of `students` each asking for `choices` of `courses`, with every tenth request
    /// published a second time under the same request id.
    pub fn crowd_with_duplicates(
        courses: &[CourseId],
        students: usize,
        choices: usize,
        tag: &str,
        seed: u64,
    ) -> Vec<Request> {
        rush::with_duplicates(rush::crowd(courses, students, choices, tag, seed).expect("plan"))
    }

    pub async fn broker(&self) -> Broker {
        Broker::connect(&self.amqp_url, "seatrush-test")
            .await
            .expect("connect to the broker")
    }

    /// Asserts the audit is clean and final answers match the enrollment rows.
    pub async fn assert_consistent(&self, report: &Report, courses: &[CourseId]) {
        let violations = self.store.audit().await.expect("audit");
        assert!(violations.is_empty(), "audit violations: {violations:#?}");
        let held = self.store.seats_held(courses).await.expect("seats");
        assert_eq!(
            rush::mismatched_seats(report, &held),
            0,
            "final enrolled answers and enrollment rows differ"
        );
    }

    /// Stops workers (checking they exit cleanly), deletes the topology and drops the
    /// databases.
    pub async fn cleanup(mut self) {
        self.stop_workers().await;
        self.store.close().await;
        let broker = self.broker().await;
        broker
            .delete_topology(&self.topology)
            .await
            .expect("delete topology");
        broker.close().await;
        for name in self.databases() {
            admin(
                &self.admin_url,
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
            .await;
        }
        self.cleaned = true;
    }

    /// This test's database.
    pub fn database_name(&self) -> &str {
        &self.db_name
    }

    fn databases(&self) -> Vec<String> {
        let mut names = self.extra_databases.clone();
        names.push(self.db_name.clone());
        names
    }
}

/// A test that panicked says where its logs are (libtest shows it with the test's output), and
/// leaves neither its databases nor its queues behind: they are removed here, on a thread and
/// runtime of their own (the test's runtime is unwinding), best effort and bounded. In-process
/// workers end with the test's runtime; worker processes are killed when their handles drop.
impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "logs of this test: worker processes in {}, in-process workers above and in {}",
                self.log_dir.display(),
                in_process_log().display()
            );
        }
        if self.cleaned {
            return;
        }
        for (shutdown, _) in &self.workers {
            shutdown.cancel();
        }
        let (amqp_url, admin_url) = (self.amqp_url.clone(), self.admin_url.clone());
        let (topology, databases) = (self.topology.clone(), self.databases());
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let work = async {
                    if let Ok(broker) = Broker::connect(&amqp_url, "seatrush-test-cleanup").await {
                        let _ = broker.delete_topology(&topology).await;
                        broker.close().await;
                    }
                    if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                        for name in databases {
                            let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                            let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                                .execute(&mut admin)
                                .await;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(20), work).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// The `seatrush` binary built for these tests.
pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_seatrush"))
}

pub fn enroll(request_id: &str, course: &CourseId, student: &str) -> Request {
    request(request_id, Action::Enroll, course, student)
}

/// Every request id has a final answer, and all final answers of one id agree.
pub fn assert_one_outcome_per_id(report: &seatrush_tools::load::Report) {
    crate::schema::assert_valid_report(report);
    let mut by_id: HashMap<&str, Vec<&Answer>> = HashMap::new();
    for answered in &report.answered {
        by_id
            .entry(answered.request.request_id.as_str())
            .or_default()
            .extend(answered.finals.iter().map(|(a, _)| a));
    }
    let lost: Vec<&&str> = by_id
        .iter()
        .filter(|(_, f)| f.is_empty())
        .map(|(id, _)| id)
        .collect();
    assert!(
        lost.is_empty(),
        "request ids without a final answer: {lost:?}"
    );
    for (id, finals) in &by_id {
        assert!(
            finals
                .iter()
                .all(|f| (&f.outcome, &f.reason) == (&finals[0].outcome, &finals[0].reason)),
            "final answers for {id} disagree: {finals:?}"
        );
    }
}

/// Asserts every published message got exactly one final answer.
pub fn assert_exactly_one_final(report: &Report) {
    let summary = format!(
        "lost {}, duplicated {}, complete {}, finals {} for {} requests",
        report.lost(),
        report.duplicated(),
        report.complete,
        report
            .answered
            .iter()
            .map(|a| a.finals.len())
            .sum::<usize>(),
        report.answered.len()
    );
    assert!(report.complete, "not every final answer in time: {summary}");
    assert_eq!(
        report.lost(),
        0,
        "requests without a final answer: {summary}"
    );
    assert_eq!(report.duplicated(), 0, "several final answers: {summary}");
}

/// A client that keeps one reply queue (and optionally an events subscription) open across
/// many requests, as a web back end does; every message it receives is checked against the
/// answer schema.
pub struct Listener {
    broker: Broker,
    publisher: seatrush_core::amqp::Publisher,
    topology: Topology,
    queue: String,
    replies: seatrush_core::amqp::Deliveries,
    events: Option<(seatrush_core::amqp::Deliveries, EventFilter)>,
    /// Ask for answers in batches (`x-seatrush-batch`).
    pub batch: bool,
    /// The named lane requests are published on; `None` for the default one.
    pub lane: Option<String>,
    /// How many messages arrived on the reply queue, and how many of them were batches.
    pub reply_messages: usize,
    pub reply_batches: usize,
    /// Everything received on the reply queue, in order.
    pub received: Vec<Answer>,
    /// Everything received on the events subscription, in order.
    pub seen_events: Vec<Answer>,
}

impl Listener {
    /// Connects; with `events`, also follows the final events that filter admits, in both
    /// the batched and the per-answer form.
    pub async fn new(env: &TestEnv, events: Option<EventFilter>) -> Self {
        let broker = env.broker().await;
        let publisher = broker.confirmed_publisher().await.expect("publisher");
        let (queue, replies) = broker.reply_queue().await.expect("reply queue");
        let events = match events {
            Some(filter) => Some((
                broker
                    .subscribe(
                        &env.topology.events_exchange(),
                        &[Topology::FINALS_KEY, &filter.pattern()],
                    )
                    .await
                    .expect("subscribe to events"),
                filter,
            )),
            None => None,
        };
        Self {
            broker,
            publisher,
            topology: env.topology.clone(),
            queue,
            replies,
            events,
            batch: false,
            lane: None,
            reply_messages: 0,
            reply_batches: 0,
            received: Vec::new(),
            seen_events: Vec::new(),
        }
    }

    /// Publishes requests in order, each with its request id as correlation id.
    pub async fn send(&self, requests: &[Request]) {
        let mut confirms = Vec::with_capacity(requests.len());
        for request in requests {
            let to = ReplyTo {
                queue: self.queue.clone(),
                correlation_id: Some(request.request_id.to_string()),
                batch: self.batch,
            };
            let message = Outgoing::request(
                &self.topology,
                request.course_id.as_str(),
                request.request_id.as_str(),
                Some(&to),
                request_body(request),
            )
            .on_lane(&self.topology, self.lane.as_deref());
            confirms.push(self.publisher.send(message).await.expect("publish"));
        }
        for confirm in confirms {
            confirm
                .confirmed()
                .await
                .expect("the broker confirms the request");
        }
    }

    /// Receives until `done` says so, or panics after `timeout` with what arrived.
    pub async fn until(&mut self, timeout: Duration, done: impl Fn(&Listener) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(self) {
            let next = async {
                match self.events.as_mut() {
                    Some((events, _)) => tokio::select! {
                        m = self.replies.next() => (false, m),
                        m = events.next() => (true, m),
                    },
                    None => (false, self.replies.next().await),
                }
            };
            let Ok((is_event, Some(Ok(message)))) = tokio::time::timeout_at(deadline, next).await
            else {
                panic!(
                    "timed out; received {:#?}\nevents {:#?}",
                    self.received, self.seen_events
                );
            };
            let answers = crate::schema::assert_valid_answers(&message);
            if let Some((_, filter)) = self.events.as_ref().filter(|_| is_event) {
                let followed = answers.into_iter().filter(|a| filter.admits(a));
                self.seen_events.extend(followed);
            } else {
                self.reply_messages += 1;
                self.reply_batches += usize::from(message.body.first() == Some(&b'['));
                self.received.extend(answers);
            }
        }
    }

    /// The final answer (not a promotion) to each request id received so far.
    pub fn finals(&self) -> HashMap<String, Answer> {
        self.received
            .iter()
            .filter(|a| a.stage == Stage::Final && !a.is_waitlist_event())
            .map(|a| (a.request_id.clone(), a.clone()))
            .collect()
    }

    /// How many final answers (not promotions) arrived.
    pub fn final_count(&self) -> usize {
        self.received
            .iter()
            .filter(|a| a.stage == Stage::Final && !a.is_waitlist_event())
            .count()
    }

    /// Promotions received on the reply queue, in order.
    pub fn promotions(&self) -> Vec<Answer> {
        self.received
            .iter()
            .filter(|a| a.is_promotion())
            .cloned()
            .collect()
    }

    pub async fn close(self) {
        self.broker.close().await;
    }
}

pub fn request(request_id: &str, action: Action, course: &CourseId, student: &str) -> Request {
    Request {
        request_id: RequestId::parse(request_id).expect("valid request id"),
        action,
        course_id: course.clone(),
        student_id: StudentId::parse(student).expect("valid student id"),
    }
}
