//! The `seatrush` command: parses arguments, sets up logging and calls into the library.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use chrono::{DateTime, Utc};
use seatrush::admin;
use seatrush::amqp::Topology;
use seatrush::client::Client;
use seatrush::course::RestartPolicy;
use seatrush::domain::{
    Action, CourseId, CoursePatch, CourseSettings, Request, RequestId, StudentId,
};
use seatrush::load::Pace;
use seatrush::rush::{Crowd, RushConfig, Services, Workers};
use seatrush::store::Store;
use seatrush::telemetry::{self, LogFormat};
use seatrush::worker::{self, WorkerConfig};

#[derive(Parser)]
#[command(
    name = "seatrush",
    version,
    about = "Course enrollment that survives the flash crowd"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// RabbitMQ URL (amqp:// or amqps://).
    #[arg(long, env = "AMQP_URL", global = true, hide_env_values = true)]
    amqp_url: Option<String>,
    /// PostgreSQL URL (sslmode and the rest as URL parameters).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// Prefix of every exchange and queue name.
    #[arg(
        long,
        env = "SEATRUSH_PREFIX",
        default_value = "seatrush",
        global = true,
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    prefix: String,
    /// Number of partition queues; fixed at first setup.
    #[arg(long, env = "SEATRUSH_PARTITIONS", default_value_t = 16, global = true)]
    partitions: u16,
    /// Log line format.
    #[arg(
        long,
        env = "SEATRUSH_LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    log_format: LogFormat,
}

impl Common {
    fn amqp_url(&self) -> anyhow::Result<String> {
        self.amqp_url.clone().context(
            "no broker: set AMQP_URL or pass --amqp-url (scripts/services.sh start prints one)",
        )
    }

    fn database_url(&self) -> anyhow::Result<String> {
        self.database_url.clone().context(
            "no database: set DATABASE_URL or pass --database-url (scripts/services.sh start prints one)",
        )
    }

    fn topology(&self, delivery_limit: u32, max_queue_length: u32) -> Topology {
        Topology {
            prefix: self.prefix.clone(),
            partitions: self.partitions,
            delivery_limit,
            max_queue_length,
        }
    }

    fn services(&self) -> anyhow::Result<Services> {
        Ok(Services {
            amqp_url: self.amqp_url()?,
            database_url: self.database_url()?,
            topology: self.topology(20, 1_000_000),
        })
    }

    async fn store(&self) -> anyhow::Result<Store> {
        Store::connect(&self.database_url()?, 4)
            .await
            .context("connecting to PostgreSQL")
    }
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database migrations.
    Migrate,
    /// Run a worker until SIGINT or SIGTERM.
    Worker(WorkerArgs),
    /// Manage courses.
    #[command(subcommand)]
    Course(CourseCommand),
    /// Enroll a student and print the provisional and final answers.
    Enroll(RequestArgs),
    /// Drop a student's seat and print the provisional and final answers.
    Drop(RequestArgs),
    /// Print final events as they happen.
    Watch {
        #[arg(long)]
        course: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List dead letters with their reasons (they stay in the queue); `replay` re-publishes
    /// the ones that were fixed.
    Deadletters(DeadArgs),
    /// Live workers, who owns which partition at which epoch, queue depths and unacked counts.
    Status {
        #[arg(long)]
        json: bool,
        /// The workers' lease (`--lease-ms`): a worker silent for longer is not counted live.
        #[arg(long, env = "SEATRUSH_LEASE_MS", default_value_t = 6000)]
        lease_ms: u64,
    },
    /// Ask a worker's `/readyz` (for container health checks); exit 0 when it is ready.
    Healthcheck {
        /// The worker's `--http-addr`.
        #[arg(long, env = "SEATRUSH_HTTP_ADDR", default_value = "127.0.0.1:9090")]
        addr: String,
        /// The path to ask (`/livez` for liveness).
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
    /// Check the invariants on the live database; exit 1 on any violation.
    Audit {
        #[arg(long)]
        json: bool,
    },
    /// Fire a flash crowd at real workers, measure it, and check every answer and the audit.
    Rush(RushArgs),
    /// Compare seatrush with the broker's ceiling and a naive Postgres design, in one run.
    Bench(BenchArgs),
    /// A rush with faults on a schedule (links cut, stalled and refused, a worker killed, and
    /// the servers restarted if you pass the commands), then the proof that nothing was lost.
    /// Loopback servers only.
    Chaos(ChaosArgs),
    /// The demo: two workers, a flash crowd with progress, the report and the audit.
    Demo {
        #[command(flatten)]
        crowd: CrowdArgs,
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
}

#[derive(Args)]
struct WorkerArgs {
    /// This worker's id (default: random).
    #[arg(long, env = "SEATRUSH_WORKER_ID")]
    worker_id: Option<String>,
    /// Unacked deliveries per partition.
    #[arg(long, env = "SEATRUSH_PREFETCH", default_value_t = 250)]
    prefetch: u16,
    /// Requests a course actor's mailbox holds.
    #[arg(long, env = "SEATRUSH_MAILBOX", default_value_t = 512)]
    mailbox: usize,
    /// Live course actors at most.
    #[arg(long, env = "SEATRUSH_MAX_ACTORS", default_value_t = 5000)]
    max_actors: usize,
    /// Seconds a course actor may sit idle before it stops.
    #[arg(long, env = "SEATRUSH_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    idle_timeout_secs: u64,
    /// Most decisions per transaction.
    #[arg(long, env = "SEATRUSH_BATCH_MAX", default_value_t = 1000)]
    batch_max: usize,
    /// Milliseconds to wait for more decisions before committing a batch that is not full.
    #[arg(long, env = "SEATRUSH_BATCH_LINGER_MS", default_value_t = 5)]
    batch_linger_ms: u64,
    /// Milliseconds a partition lease lasts without renewal.
    #[arg(long, env = "SEATRUSH_LEASE_MS", default_value_t = 6000)]
    lease_ms: u64,
    /// Seconds a graceful shutdown waits for in-flight requests.
    #[arg(long, env = "SEATRUSH_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    drain_timeout_secs: u64,
    /// Milliseconds between the last ack and closing the channels on shutdown, so the broker
    /// applies the acks first.
    #[arg(long, env = "SEATRUSH_SETTLE_GRACE_MS", default_value_t = 1000)]
    settle_grace_ms: u64,
    /// Deliveries of one message before the broker dead-letters it.
    #[arg(long, env = "SEATRUSH_DELIVERY_LIMIT", default_value_t = 20)]
    delivery_limit: u32,
    /// Messages a partition queue holds before publishes are refused.
    #[arg(long, env = "SEATRUSH_MAX_QUEUE_LENGTH", default_value_t = 1_000_000)]
    max_queue_length: u32,
    /// Database connections of this worker.
    #[arg(long, env = "SEATRUSH_DB_CONNECTIONS", default_value_t = 8)]
    db_connections: u32,
    /// Broker users whose course changes (`configure` requests) are applied, comma-separated
    /// (default: the user of the worker's AMQP URL).
    #[arg(long, env = "SEATRUSH_ADMIN_USERS", value_delimiter = ',')]
    admin_users: Vec<String>,
    /// Serve `/livez` and `/readyz` on this address (for example 127.0.0.1:9090).
    #[arg(long, env = "SEATRUSH_HTTP_ADDR")]
    http_addr: Option<std::net::SocketAddr>,
}

/// The crowd of a rush or the demo; the defaults are the seeds' opening day.
#[derive(Args)]
struct CrowdArgs {
    /// Courses to create.
    #[arg(long, default_value_t = 300)]
    courses: usize,
    /// Seats per course.
    #[arg(long, default_value_t = 30)]
    seats: u32,
    /// Waitlist places per course (0: no waitlist).
    #[arg(long, default_value_t = 0)]
    waitlist: u32,
    /// Students in the crowd.
    #[arg(long, default_value_t = 40_000)]
    students: usize,
    /// Courses each student asks for (popularity is skewed).
    #[arg(long, default_value_t = 3)]
    choices: usize,
}

impl CrowdArgs {
    fn crowd(&self) -> Crowd {
        Crowd {
            courses: self.courses,
            seats: self.seats,
            waitlist: self.waitlist,
            students: self.students,
            choices: self.choices,
        }
    }
}

#[derive(Args)]
struct RushArgs {
    #[command(flatten)]
    crowd: CrowdArgs,
    /// Publish everything as fast as the broker confirms (the default).
    #[arg(long, conflicts_with = "rate")]
    burst: bool,
    /// Publish this many requests per second instead.
    #[arg(long)]
    rate: Option<f64>,
    /// Start this many worker processes and stop them at the end.
    #[arg(long, default_value_t = 1, conflicts_with = "external")]
    workers: usize,
    /// Use workers that are already running.
    #[arg(long)]
    external: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Name for this run's courses and students (default: fresh); reusing one reuses them.
    #[arg(long)]
    tag: Option<String>,
    /// Seed of the crowd's choices and arrival order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds to wait for the last final answer.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// The same burst through the broker alone, a naive Postgres design, and seatrush.
    Burst,
    /// Requests naming random unknown courses: the worker's memory must stay flat.
    Junk,
}

#[derive(Args)]
struct BenchArgs {
    #[arg(long, value_enum, default_value = "burst")]
    scenario: Scenario,
    /// Where report.md, bench.json (or junk.json) and the charts go.
    #[arg(long, default_value = "bench-out")]
    out: std::path::PathBuf,
    #[arg(long, default_value_t = 300)]
    courses: usize,
    #[arg(long, default_value_t = 30)]
    seats: u32,
    /// Students in the burst; with one choice each, the seeds' 10,000 requests at once.
    #[arg(long, default_value_t = 10_000)]
    students: usize,
    #[arg(long, default_value_t = 1)]
    choices: usize,
    /// seatrush worker processes.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Connections of the naive design.
    #[arg(long, default_value_t = 32)]
    naive_connections: u32,
    /// Requests of the junk scenario.
    #[arg(long, default_value_t = 1_000_000)]
    junk_requests: usize,
    /// Seconds to wait for the last answer of each run.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
}

#[derive(Subcommand)]
enum CourseCommand {
    /// Create a course.
    Add {
        id: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Change a course through its course actor (waits for a worker to apply it). Raising the
    /// seats promotes from the waitlist at once; going below what is held is refused.
    Set {
        id: String,
        #[command(flatten)]
        settings: SettingsArgs,
        #[arg(long)]
        json: bool,
        /// Seconds to wait for a worker's answer.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// Show one course: settings, enrolled students, the waitlist in order.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List courses with their seat counts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Create a term's courses from a CSV file (course_id,seats,waitlist,opens_at,closes_at);
    /// existing courses get the file's settings through their actors.
    Import {
        file: std::path::PathBuf,
        #[arg(long)]
        json: bool,
        /// Seconds to wait for a worker's answer to each change of an existing course.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
}

/// A course's settings on the command line; instants are RFC 3339, `none` clears one.
#[derive(Args)]
struct SettingsArgs {
    #[arg(long)]
    seats: Option<u32>,
    /// Places on the waitlist (0: none).
    #[arg(long)]
    waitlist: Option<u32>,
    /// Requests before this instant are rejected as not open (RFC 3339, or `none`).
    #[arg(long)]
    opens_at: Option<admin::InstantArg>,
    /// Requests from this instant on are rejected as closed (RFC 3339, or `none`).
    #[arg(long)]
    closes_at: Option<admin::InstantArg>,
}

impl SettingsArgs {
    fn patch(&self) -> CoursePatch {
        CoursePatch {
            seats: self.seats,
            waitlist: self.waitlist,
            opens_at: self.opens_at.map(|a| a.0),
            closes_at: self.closes_at.map(|a| a.0),
        }
    }
}

#[derive(Args)]
struct ChaosArgs {
    /// Courses to create.
    #[arg(long, default_value_t = 300)]
    courses: usize,
    /// Seats per course.
    #[arg(long, default_value_t = 30)]
    seats: u32,
    /// Waitlist places per course.
    #[arg(long, default_value_t = 5)]
    waitlist: u32,
    /// Students; each asks for `--choices` courses, and every tenth request is published twice.
    #[arg(long, default_value_t = 10_000)]
    students: usize,
    #[arg(long, default_value_t = 2)]
    choices: usize,
    /// Requests published per second, so that the crowd spans the faults.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Shell command that restarts the database server (for example
    /// `SEATRUSH_PG_PORT=26432 scripts/services.sh restart-db`); without it, no restart.
    #[arg(long)]
    restart_database: Option<String>,
    /// Shell command that restarts the broker; without it, no restart.
    #[arg(long)]
    restart_broker: Option<String>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Seconds to wait for the crowd's answers.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[derive(Args)]
struct DeadArgs {
    #[command(subcommand)]
    command: Option<DeadCommand>,
    #[arg(long)]
    json: bool,
    /// Dead letters to read at most.
    #[arg(long, default_value_t = 100)]
    max: usize,
}

#[derive(Subcommand)]
enum DeadCommand {
    /// Re-publish dead letters to the request exchange (same message id, reply address and
    /// routing key) and remove them from the dead-letter queue. Replaying a request that was
    /// already decided only replays its stored outcome.
    Replay {
        /// Only those whose reason contains this text.
        #[arg(long)]
        reason_contains: Option<String>,
        /// Only these message ids (repeatable).
        #[arg(long)]
        message_id: Vec<String>,
        #[arg(long)]
        json: bool,
        /// Dead letters to look at, at most.
        #[arg(long, default_value_t = 100)]
        max: usize,
    },
}

#[derive(Args)]
struct RequestArgs {
    course: String,
    student: String,
    /// The request id (default: random); reuse one to retry safely.
    #[arg(long)]
    request_id: Option<String>,
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the final answer.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    telemetry::init(cli.common.log_format, "info,sqlx=warn,lapin=warn");
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let common = cli.common;
    match cli.command {
        Command::Migrate => {
            let store = common.store().await?;
            store.migrate().await?;
            store.ensure_partitions(common.partitions).await?;
            println!("database is up to date");
        }
        Command::Worker(args) => {
            let config = worker_config(&common, args)?;
            let shutdown = CancellationToken::new();
            cancel_on_signal(&shutdown)?;
            worker::run(config, shutdown).await?;
        }
        Command::Course(command) => return course(&common, command).await,
        Command::Enroll(args) => return request(&common, Action::Enroll, args).await,
        Command::Drop(args) => return request(&common, Action::Drop, args).await,
        Command::Watch { course, json } => {
            let course = course.map(CourseId::parse).transpose()?;
            let client = Client::connect(&common.amqp_url()?, common.topology(0, 0)).await?;
            let mut events = client.watch(course.as_ref()).await?;
            let shutdown = CancellationToken::new();
            cancel_on_signal(&shutdown)?;
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    event = events.next() => event,
                };
                let Some(event) = event else { break };
                let event = event?;
                if json {
                    println!("{}", serde_json::to_string(&event)?);
                } else {
                    println!("{}", describe(&event));
                }
            }
        }
        Command::Deadletters(args) => return deadletters(&common, args).await,
        Command::Healthcheck { addr, path } => {
            // A worker listening on every interface is asked on loopback.
            let addr = addr.replace("0.0.0.0", "127.0.0.1");
            let (status, body) =
                seatrush::worker::health::probe(&addr, &path, Duration::from_secs(3)).await?;
            println!("{status} {}", body.trim());
            if status != 200 {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Command::Status { json, lease_ms } => {
            let store = common.store().await?;
            let broker = seatrush::amqp::Broker::connect(&common.amqp_url()?, "seatrush-status")
                .await
                .context("connecting to RabbitMQ")?;
            let status = seatrush::status::gather(
                &store,
                &broker,
                &common.topology(0, 0),
                Duration::from_millis(lease_ms),
            )
            .await;
            broker.close().await;
            let status = status?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", seatrush::status::describe(&status));
            }
        }
        Command::Chaos(args) => return chaos(&common, args).await,
        Command::Audit { json } => {
            let violations = common.store().await?.audit().await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "clean": violations.is_empty(), "violations": violations })
                );
            } else if violations.is_empty() {
                println!(
                    "audit clean: no course over capacity, counters match, no student twice, waitlists contiguous, outcomes agree"
                );
            } else {
                println!("{} violation(s):", violations.len());
                for v in &violations {
                    println!("  {}: {}", v.check, v.detail);
                }
            }
            if !violations.is_empty() {
                return Ok(std::process::ExitCode::from(1));
            }
        }
        Command::Rush(args) => return rush(&common, args).await,
        Command::Bench(args) => return bench(&common, args).await,
        Command::Demo { crowd, workers } => {
            seatrush::demo::run(seatrush::demo::DemoConfig {
                services: common.services()?,
                crowd: crowd.crowd(),
                workers,
                exe: std::env::current_exe().context("locating the seatrush binary")?,
                log_dir: std::env::temp_dir().join("seatrush-demo"),
            })
            .await?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn bench(common: &Common, args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    let config = seatrush::bench::BenchConfig {
        services: common.services()?,
        crowd: Crowd {
            courses: args.courses,
            seats: args.seats,
            waitlist: 0,
            students: args.students,
            choices: args.choices,
        },
        workers: args.workers.max(1),
        naive_connections: args.naive_connections.max(1),
        exe: std::env::current_exe().context("locating the seatrush binary")?,
        out: args.out.clone(),
        timeout: Duration::from_secs(args.timeout_secs),
    };
    match args.scenario {
        Scenario::Burst => {
            let (report, samples) = seatrush::bench::burst(&config).await?;
            seatrush::bench::write_outputs(&args.out, &report, &samples)?;
            print!("{}", seatrush::bench::markdown(&report));
            println!("\nwritten to {}", args.out.display());
            Ok(if report.seatrush.passed() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            })
        }
        Scenario::Junk => {
            let report = seatrush::bench::junk(&config, args.junk_requests).await?;
            seatrush::bench::write_junk(&args.out, &report)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if report.answered == report.requests {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            })
        }
    }
}

async fn rush(common: &Common, args: RushArgs) -> anyhow::Result<std::process::ExitCode> {
    let workers = if args.external {
        Workers::External
    } else {
        Workers::Spawn {
            count: args.workers.max(1),
            exe: std::env::current_exe().context("locating the seatrush binary")?,
            args: Vec::new(),
        }
    };
    let pace = match args.rate {
        Some(rate) if !args.burst => Pace::Rate(rate),
        _ => Pace::Burst,
    };
    let done = seatrush::rush::run(
        RushConfig {
            services: common.services()?,
            crowd: args.crowd.crowd(),
            pace,
            workers,
            tag: args
                .tag
                .unwrap_or_else(|| seatrush::rush::fresh_tag("rush")),
            seed: args.seed,
            timeout: Duration::from_secs(args.timeout_secs),
            log_dir: std::env::temp_dir().join("seatrush-rush"),
        },
        true,
    )
    .await?;
    print!("{}", seatrush::rush::describe(&done.report));
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&done.report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if done.report.passed() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

fn worker_config(common: &Common, args: WorkerArgs) -> anyhow::Result<WorkerConfig> {
    let mut config = WorkerConfig::new(common.amqp_url()?, common.database_url()?);
    config.topology = common.topology(args.delivery_limit, args.max_queue_length);
    if let Some(id) = args.worker_id {
        config.worker_id = id;
    }
    config.prefetch = args.prefetch;
    config.mailbox = args.mailbox.max(1);
    config.max_actors = args.max_actors.max(1);
    config.idle_timeout = Duration::from_secs(args.idle_timeout_secs);
    config.batch_max = args.batch_max.max(1);
    config.batch_linger = Duration::from_millis(args.batch_linger_ms);
    config.lease = Duration::from_millis(args.lease_ms.max(300));
    config.drain_timeout = Duration::from_secs(args.drain_timeout_secs);
    config.settle_grace = Duration::from_millis(args.settle_grace_ms);
    config.db_connections = args.db_connections.max(2);
    config.http_addr = args.http_addr;
    if !args.admin_users.is_empty() {
        config.admin_users = args.admin_users;
    }
    config.restarts = RestartPolicy {
        max_restarts: 5,
        window: Duration::from_secs(30),
    };
    Ok(config)
}

async fn course(common: &Common, command: CourseCommand) -> anyhow::Result<std::process::ExitCode> {
    match command {
        CourseCommand::Add { id, settings } => {
            let course = CourseId::parse(id)?;
            let Some(seats) = settings.seats else {
                anyhow::bail!("--seats is required to create a course");
            };
            let settings = CourseSettings {
                capacity: seats,
                ..CourseSettings::default()
            }
            .patched(&settings.patch());
            admin::check_settings(&course, &settings)?;
            common.store().await?.add_course(&course, &settings).await?;
            println!("course {course} added: {}", describe_settings(&settings));
        }
        CourseCommand::Set {
            id,
            settings,
            json,
            timeout_secs,
        } => {
            let course = CourseId::parse(id)?;
            let patch = settings.patch();
            if patch == CoursePatch::default() {
                anyhow::bail!(
                    "nothing to change: give --seats, --waitlist, --opens-at or --closes-at"
                );
            }
            let client = Client::connect(&common.amqp_url()?, common.topology(0, 0)).await?;
            let answers =
                admin::configure(&client, &course, patch, Duration::from_secs(timeout_secs)).await;
            client.close().await;
            let answer = answers?.final_answer;
            if json {
                println!("{}", serde_json::to_string(&answer)?);
            } else {
                println!("{}", describe(&answer));
            }
            if answer.reason.is_some() {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        CourseCommand::Show { id, json } => {
            let course = CourseId::parse(id)?;
            let Some(detail) = common.store().await?.course_detail(&course).await? else {
                anyhow::bail!("no course {course}");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                let c = &detail.course;
                println!("course {}", c.course_id);
                println!(
                    "  seats {} ({} enrolled, {} left), waitlist {} of {}",
                    c.capacity, c.enrolled, c.seats_left, c.waitlisted, c.waitlist_capacity
                );
                let at = |t: Option<DateTime<Utc>>| t.map_or("-".to_owned(), |t| t.to_rfc3339());
                println!("  opens {}, closes {}", at(c.opens_at), at(c.closes_at));
                println!("  enrolled: {}", detail.enrolled_students.join(" "));
                for (i, student) in detail.waitlist.iter().enumerate() {
                    println!("  waitlist {:>4}. {student}", i + 1);
                }
            }
        }
        CourseCommand::List { json } => {
            let courses = common.store().await?.list_courses().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&courses)?);
            } else {
                println!(
                    "{:<24} {:>8} {:>8} {:>10} {:>10}",
                    "course", "seats", "enrolled", "seats left", "waitlisted"
                );
                for c in courses {
                    println!(
                        "{:<24} {:>8} {:>8} {:>10} {:>5} of {:<4}",
                        c.course_id,
                        c.capacity,
                        c.enrolled,
                        c.seats_left,
                        c.waitlisted,
                        c.waitlist_capacity
                    );
                }
            }
        }
        CourseCommand::Import {
            file,
            json,
            timeout_secs,
        } => {
            let courses = admin::read_course_file(&file)?;
            let store = common.store().await?;
            let client = Client::connect(&common.amqp_url()?, common.topology(0, 0)).await?;
            let imported =
                admin::import(&store, &client, courses, Duration::from_secs(timeout_secs)).await;
            client.close().await;
            let imported = imported?;
            if json {
                println!("{}", serde_json::to_string_pretty(&imported)?);
            } else {
                println!(
                    "{} courses created, {} changed, {} refused",
                    imported.created.len(),
                    imported.changed.len(),
                    imported.refused.len()
                );
                for (course, reason) in &imported.refused {
                    println!("  {course}: refused ({reason})");
                }
            }
            if !imported.refused.is_empty() {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn chaos(common: &Common, args: ChaosArgs) -> anyhow::Result<std::process::ExitCode> {
    let config = seatrush::chaos::ChaosConfig {
        services: common.services()?,
        crowd: Crowd {
            courses: args.courses,
            seats: args.seats,
            waitlist: args.waitlist,
            students: args.students,
            choices: args.choices,
        },
        rate: args.rate,
        workers: args.workers,
        exe: std::env::current_exe().context("locating the seatrush binary")?,
        log_dir: std::env::temp_dir().join("seatrush-chaos"),
        restart_database: args.restart_database,
        restart_broker: args.restart_broker,
        timeout: Duration::from_secs(args.timeout_secs),
    };
    let report = seatrush::chaos::run(config).await?;
    print!("{}", seatrush::chaos::describe(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.passed() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

async fn deadletters(common: &Common, args: DeadArgs) -> anyhow::Result<std::process::ExitCode> {
    let topology = common.topology(0, 0);
    let broker = seatrush::amqp::Broker::connect(&common.amqp_url()?, "seatrush-deadletters")
        .await
        .context("connecting to RabbitMQ")?;
    let wait = Duration::from_millis(500);
    let (letters, json, verb) = match args.command {
        None => (
            broker.peek_dead_letters(&topology, args.max, wait).await,
            args.json,
            "dead letters",
        ),
        Some(DeadCommand::Replay {
            reason_contains,
            message_id,
            json,
            max,
        }) => {
            let pick = |letter: &seatrush::amqp::DeadLetter| {
                reason_contains
                    .as_deref()
                    .is_none_or(|text| letter.reason.contains(text))
                    && (message_id.is_empty()
                        || letter
                            .message_id
                            .as_ref()
                            .is_some_and(|id| message_id.contains(id)))
            };
            let replayed = broker.replay_dead_letters(&topology, max, wait, pick).await;
            (replayed, json, "replayed")
        }
    };
    broker.close().await;
    let letters = letters.context("reading the dead-letter queue")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&letters)?);
    } else {
        println!("{} {verb}", letters.len());
        for l in &letters {
            println!(
                "  {} -> {} [{}] {}: {}",
                l.message_id.as_deref().unwrap_or("(no message id)"),
                l.routing_key,
                l.source,
                l.reason,
                l.body.chars().take(120).collect::<String>()
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn describe_settings(s: &CourseSettings) -> String {
    let mut line = format!("{} seats, waitlist {}", s.capacity, s.waitlist);
    if let Some(at) = s.opens_at {
        line.push_str(&format!(", opens {}", at.to_rfc3339()));
    }
    if let Some(at) = s.closes_at {
        line.push_str(&format!(", closes {}", at.to_rfc3339()));
    }
    line
}

async fn request(
    common: &Common,
    action: Action,
    args: RequestArgs,
) -> anyhow::Result<std::process::ExitCode> {
    let request = Request {
        request_id: RequestId::parse(
            args.request_id
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
        )?,
        action,
        course_id: CourseId::parse(args.course)?,
        student_id: StudentId::parse(args.student)?,
    };
    let client = Client::connect(&common.amqp_url()?, common.topology(0, 0)).await?;
    let answers = client
        .request(&request, Duration::from_secs(args.timeout_secs))
        .await;
    client.close().await;
    let answers = answers?;
    if args.json {
        if let Some(p) = &answers.provisional {
            println!("{}", serde_json::to_string(p)?);
        }
        println!("{}", serde_json::to_string(&answers.final_answer)?);
    } else {
        if let Some(p) = &answers.provisional {
            println!("provisional: {}", describe(p));
        }
        println!("final:       {}", describe(&answers.final_answer));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn describe(a: &seatrush::protocol::Answer) -> String {
    let mut line = format!(
        "{} {} {} -> {}",
        a.action, a.course_id, a.student_id, a.outcome
    );
    if let Some(reason) = &a.reason {
        line.push_str(&format!(" ({reason})"));
    }
    if let Some(position) = a.waitlist_position {
        line.push_str(&format!(" at position {position}"));
    }
    if let Some(at) = a.opens_at.as_ref().or(a.closes_at.as_ref()) {
        line.push_str(&format!(" ({at})"));
    }
    line.push_str(&format!(
        ", {} seats left, request {}",
        a.seats_left, a.request_id
    ));
    if a.replayed {
        line.push_str(", replayed");
    }
    if a.revised {
        line.push_str(", revised from the provisional answer");
    }
    if let Some(detail) = &a.detail {
        line.push_str(&format!(": {detail}"));
    }
    line
}

/// Cancels `shutdown` on SIGINT or SIGTERM. The SIGTERM handler is registered before this
/// returns, so a signal that comes early drains instead of killing the process.
fn cancel_on_signal(shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        shutdown.cancel();
    });
    Ok(())
}
