//! The tooling's commands (with the default `tools` feature): `rush`, `bench`, `chaos` and
//! `demo`. Each spawns worker processes of this same binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::common::Common;
use super::parse::{at_least, positive_rate};
use seatrush_core::domain::Opening;
use seatrush_tools::load::Pace;
use seatrush_tools::rush::{Crowd, RushConfig, Services, Workers};

/// The crowd of a rush or the demo; the defaults are the seeds' opening day.
#[derive(Args)]
pub struct CrowdArgs {
    /// Courses to create.
    #[arg(long, default_value_t = 300, value_parser = at_least::<usize>(1))]
    courses: usize,
    /// Seats per course.
    #[arg(long, default_value_t = 30)]
    seats: u32,
    /// Waitlist places per course (0: no waitlist).
    #[arg(long, default_value_t = 0)]
    waitlist: u32,
    /// Students in the crowd.
    #[arg(long, default_value_t = 40_000, value_parser = at_least::<usize>(1))]
    students: usize,
    /// Courses each student asks for (popularity is skewed).
    #[arg(long, default_value_t = 3, value_parser = at_least::<usize>(1))]
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
pub struct RushArgs {
    #[command(flatten)]
    crowd: CrowdArgs,
    /// Publish everything as fast as the broker confirms (the default).
    #[arg(long, conflicts_with = "rate")]
    burst: bool,
    /// Publish this many requests per second instead.
    #[arg(long, value_parser = positive_rate)]
    rate: Option<f64>,
    /// Start this many worker processes and stop them at the end.
    #[arg(long, default_value_t = 1, conflicts_with = "external",
          value_parser = at_least::<usize>(1))]
    workers: usize,
    /// Use workers that are already running.
    #[arg(long)]
    external: bool,
    /// Ask for one message per answer instead of batched answers (`x-seatrush-batch`, which
    /// the crowd sends by default, as a web back end would).
    #[arg(long)]
    single_answers: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Name for this run's courses and students (default: fresh); reusing one reuses them.
    #[arg(long)]
    tag: Option<String>,
    /// Seed of the crowd's choices and arrival order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds to wait for the last final answer.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Instead of a throughput rush, the fairness of an opening: one course of --seats seats
    /// opening `first-come` or by `draw`, --students students arriving over the minutes
    /// before it, half of them slow; reports requests per student and seats won by each half.
    #[arg(long, value_parser = seatrush_core::admin::parse_opening)]
    opening: Option<Opening>,
    /// With --opening: students arrive uniformly over this many seconds before the opening.
    #[arg(long, default_value_t = 60, requires = "opening")]
    arrive_over_secs: u64,
    /// With --opening: the added delay of every request of a slow student, in milliseconds.
    #[arg(long, default_value_t = 250, requires = "opening")]
    slow_delay_ms: u64,
    /// Instead of one rush, the registration rules' cost: courses worth 3 credits meeting in
    /// one of 30 weekly slots, one student in ten also swapping, run without and then with a
    /// registry of every student (a cap of three courses, 5% with a hold, time tickets in four
    /// groups a minute apart), each in a fresh database (the role needs CREATEDB).
    #[arg(long, conflicts_with = "opening")]
    registry: bool,
    /// `http`: run the crowd over AMQP and then through a `seatrush gateway` by HTTP clients
    /// with keep-alive, each in a fresh database (the role needs CREATEDB), compare the
    /// throughputs, and measure the gateway (CPU per request, memory per event stream).
    #[arg(long, value_enum, default_value = "amqp", conflicts_with_all = ["opening", "registry", "external"])]
    via: Via,
    /// With --via http: HTTP connections the crowd keeps open and uses at once.
    #[arg(long, default_value_t = 1000, value_parser = at_least::<usize>(1))]
    http_connections: usize,
    /// With --via http: event streams to open and hold on the gateway afterwards.
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Via {
    /// Publish over AMQP, as a producer would.
    Amqp,
    /// Through the web gateway, by HTTP (and over AMQP first, to compare).
    Http,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// The seeds' burst: 10,000 requests at once over 300 courses of 30 seats.
    Burst,
    /// The seeds' literal question: 10,000 students at one 30-seat course at once.
    Hot,
    /// The seeds' opening day: 40,000 students with 3 choices each (120,000 requests) at once.
    Opening,
    /// The burst spread over two seconds, the Redis server and seatrush's worker killed with
    /// SIGKILL halfway: lost and changed answers per design.
    Crash,
    /// Requests naming random unknown courses: the worker's memory must stay flat.
    Junk,
    /// Malformed, oversized, forged and duplicate messages beside valid students: each
    /// answered or dead-lettered with its reason, the worker's memory flat, the students
    /// unaffected.
    Hostile,
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "burst")]
    scenario: Scenario,
    /// Where report.md, bench.json (or junk.json, crash.json, hostile.json) and the charts go.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Rounds; every design runs once per round, alternated, and the medians are reported.
    #[arg(long, default_value_t = 3, value_parser = at_least::<usize>(1))]
    rounds: usize,
    /// Courses (default: the scenario's).
    #[arg(long, value_parser = at_least::<usize>(1))]
    courses: Option<usize>,
    /// Seats per course (default: the scenario's, 30).
    #[arg(long)]
    seats: Option<u32>,
    /// Students (default: the scenario's).
    #[arg(long, value_parser = at_least::<usize>(1))]
    students: Option<usize>,
    /// Courses each student asks for (default: the scenario's).
    #[arg(long, value_parser = at_least::<usize>(1))]
    choices: Option<usize>,
    /// seatrush worker processes.
    #[arg(long, default_value_t = 1, value_parser = at_least::<usize>(1))]
    workers: usize,
    /// Connection counts the naive design is run with; the best is reported.
    #[arg(long, value_delimiter = ',', default_values_t = [16u32, 32, 64],
          value_parser = at_least::<u32>(1))]
    naive_connections: Vec<u32>,
    /// The Redis server of the Redis design (`scripts/services.sh start` prints a private one).
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Requests of the junk scenario.
    #[arg(long, default_value_t = 1_000_000, value_parser = at_least::<usize>(1))]
    junk_requests: usize,
    /// Messages of the hostile scenario (the valid students beside them are --students).
    #[arg(long, default_value_t = 100_000, value_parser = at_least::<usize>(1))]
    hostile_messages: usize,
    /// The services script the crash scenario starts, kills and stops its own Redis server
    /// with.
    #[arg(long, default_value = "scripts/services.sh")]
    services_script: PathBuf,
    /// Seconds to wait for the last answer of each run.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
}

impl BenchArgs {
    /// The crowd: the scenario's, with what the command line overrides.
    fn crowd(&self, scenario: seatrush_tools::bench::Scenario) -> Crowd {
        let base = scenario.crowd();
        Crowd {
            courses: self.courses.unwrap_or(base.courses),
            seats: self.seats.unwrap_or(base.seats),
            waitlist: 0,
            students: self.students.unwrap_or(base.students),
            choices: self.choices.unwrap_or(base.choices),
        }
    }
}

#[derive(Args)]
pub struct ChaosArgs {
    /// Courses to create.
    #[arg(long, default_value_t = 300, value_parser = at_least::<usize>(1))]
    courses: usize,
    /// Seats per course.
    #[arg(long, default_value_t = 30)]
    seats: u32,
    /// Waitlist places per course.
    #[arg(long, default_value_t = 5)]
    waitlist: u32,
    /// Students; each asks for `--choices` courses, and every tenth request is published twice.
    #[arg(long, default_value_t = 10_000, value_parser = at_least::<usize>(1))]
    students: usize,
    #[arg(long, default_value_t = 2, value_parser = at_least::<usize>(1))]
    choices: usize,
    /// Requests published per second, so that the crowd spans the faults.
    #[arg(long, default_value_t = 500.0, value_parser = positive_rate)]
    rate: f64,
    /// Worker processes.
    #[arg(long, default_value_t = 2, value_parser = at_least::<usize>(1))]
    workers: usize,
    /// Shell command that restarts the database server (for example
    /// `SEATRUSH_PG_PORT=26432 scripts/services.sh restart-db`); without it, no restart.
    #[arg(long)]
    restart_database: Option<String>,
    /// Shell command that restarts the broker; without it, no restart.
    #[arg(long)]
    restart_broker: Option<String>,
    /// Control command of the broker cluster whose nodes AMQP_URL lists (for example
    /// `SEATRUSH_BROKER_NODES=3 scripts/services.sh`): run with a verb and a node number to
    /// kill, start, stop, cut off and heal nodes (docs/faults.md gives the verbs). With it (or
    /// --database-control) the workers reach the servers directly and the links' faults are
    /// left out.
    #[arg(long)]
    broker_control: Option<String>,
    /// Control command of the database cluster whose hosts DATABASE_URL lists (for example
    /// `SEATRUSH_PG_STANDBY=1 scripts/services.sh`): kills the primary, promotes a standby and
    /// rejoins the old primary.
    #[arg(long)]
    database_control: Option<String>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seconds to wait for the crowd's answers.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[derive(Args)]
pub struct SoakArgs {
    /// How long to hold the load, in minutes.
    #[arg(long, default_value_t = 20.0, value_parser = positive_rate)]
    minutes: f64,
    /// Requests per second: half of them enrolls of new students, half drops of the
    /// enrollments a window before.
    #[arg(long, default_value_t = 2000.0, value_parser = positive_rate)]
    rate: f64,
    /// Seconds between samples (each starts a window of requests).
    #[arg(long, default_value_t = 5, value_parser = at_least::<u64>(1))]
    sample_secs: u64,
    /// Courses to create.
    #[arg(long, default_value_t = 300, value_parser = at_least::<usize>(1))]
    courses: usize,
    /// Seats per course.
    #[arg(long, default_value_t = 30)]
    seats: u32,
    /// Worker processes.
    #[arg(long, default_value_t = 1, value_parser = at_least::<usize>(1))]
    workers: usize,
    /// Directory for soak.json and the charts (soak-memory.svg, soak-latency.svg).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    crowd: CrowdArgs,
    #[arg(long, default_value_t = 2, value_parser = at_least::<usize>(1))]
    workers: usize,
}

fn services(common: &Common) -> anyhow::Result<Services> {
    Ok(Services {
        amqp_url: common.amqp_url()?,
        database_url: common.database_url()?,
        topology: common.topology(),
    })
}

fn this_binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating the seatrush binary")
}

fn exit_code(passed: bool) -> ExitCode {
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn write_json(path: Option<&PathBuf>, report: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub async fn rush(common: &Common, args: RushArgs) -> anyhow::Result<ExitCode> {
    if let Some(opening) = args.opening {
        return fairness(common, args, opening).await;
    }
    let workers = if args.external {
        Workers::External
    } else {
        Workers::Spawn {
            count: args.workers,
            exe: this_binary()?,
            args: Vec::new(),
        }
    };
    let pace = match args.rate {
        Some(rate) if !args.burst => Pace::Rate(rate),
        _ => Pace::Burst,
    };
    let config = RushConfig {
        services: services(common)?,
        crowd: args.crowd.crowd(),
        pace,
        batch: !args.single_answers,
        servers: None,
        workers,
        tag: args
            .tag
            .unwrap_or_else(|| seatrush_tools::rush::fresh_tag("rush")),
        seed: args.seed,
        timeout: Duration::from_secs(args.timeout_secs),
        log_dir: std::env::temp_dir().join("seatrush-rush"),
        rules: None,
        via: None,
    };
    if args.registry {
        use seatrush_tools::rush::rules;
        let compared = rules::compare(config, true).await?;
        print!("{}", rules::describe(&compared));
        write_json(args.json.as_ref(), &compared)?;
        return Ok(exit_code(compared.passed()));
    }
    if args.via == Via::Http {
        use seatrush_tools::rush::http;
        let options = http::HttpOptions {
            exe: this_binary()?,
            connections: args.http_connections,
            streams: args.streams,
        };
        let compared = http::compare(config, options, true).await?;
        print!("{}", http::describe(&compared));
        write_json(args.json.as_ref(), &compared)?;
        return Ok(exit_code(compared.passed()));
    }
    let done = seatrush_tools::rush::run(config, true).await?;
    print!("{}", seatrush_tools::rush::describe(&done.report));
    write_json(args.json.as_ref(), &done.report)?;
    Ok(exit_code(done.report.passed()))
}

/// `seatrush rush --opening ...`: who wins the seats of one course under a policy.
async fn fairness(common: &Common, args: RushArgs, opening: Opening) -> anyhow::Result<ExitCode> {
    use seatrush_tools::rush::fairness;
    let config = fairness::FairnessConfig {
        services: services(common)?,
        opening,
        students: args.crowd.crowd().students,
        seats: args.crowd.crowd().seats,
        arrive_over: Duration::from_secs(args.arrive_over_secs),
        slow_delay: Duration::from_millis(args.slow_delay_ms),
        exe: this_binary()?,
        tag: args
            .tag
            .unwrap_or_else(|| seatrush_tools::rush::fresh_tag("fair")),
        seed: args.seed,
        log_dir: std::env::temp_dir().join("seatrush-rush"),
        timeout: Duration::from_secs(args.timeout_secs),
    };
    let report = fairness::run(config).await?;
    print!("{}", fairness::describe(&report));
    write_json(args.json.as_ref(), &report)?;
    Ok(exit_code(report.passed()))
}

pub async fn bench(common: &Common, args: BenchArgs) -> anyhow::Result<ExitCode> {
    use seatrush_tools::bench;
    let scenario = match args.scenario {
        Scenario::Burst | Scenario::Junk | Scenario::Crash | Scenario::Hostile => {
            bench::Scenario::Burst
        }
        Scenario::Hot => bench::Scenario::Hot,
        Scenario::Opening => bench::Scenario::Opening,
    };
    let config = bench::BenchConfig {
        services: services(common)?,
        scenario,
        crowd: args.crowd(scenario),
        rounds: args.rounds,
        workers: args.workers,
        naive_connections: args.naive_connections.clone(),
        redis_url: args.redis_url.clone().unwrap_or_default(),
        exe: this_binary()?,
        out: args.out.clone(),
        timeout: Duration::from_secs(args.timeout_secs),
    };
    if args.scenario == Scenario::Junk {
        let report = bench::junk(&config, args.junk_requests).await?;
        bench::write_junk(&args.out, &report)?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(exit_code(report.answered == report.requests));
    }
    if args.scenario == Scenario::Hostile {
        let report = bench::hostile::run(&config, args.hostile_messages).await?;
        bench::write_hostile(&args.out, &report)?;
        print!("{}", bench::report::hostile_markdown(&report));
        return Ok(exit_code(report.passed()));
    }
    if args.scenario == Scenario::Crash {
        let report = bench::crash::run(&config, args.services_script.clone()).await?;
        bench::write_crash(&args.out, &report)?;
        print!("{}", bench::report::crash_markdown(&report));
        return Ok(exit_code(report.passed()));
    }
    anyhow::ensure!(
        !config.redis_url.is_empty(),
        "the Redis design needs a Redis server: set REDIS_URL or --redis-url \
         (`scripts/services.sh start` starts a private one and prints it)"
    );
    let (report, samples) = bench::run(&config).await?;
    bench::write_outputs(&args.out, &report, &samples)?;
    print!("{}", bench::markdown(&report));
    println!("\nwritten to {}", args.out.display());
    Ok(exit_code(report.passed()))
}

pub async fn chaos(common: &Common, args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let config = seatrush_tools::chaos::ChaosConfig {
        services: services(common)?,
        crowd: Crowd {
            courses: args.courses,
            seats: args.seats,
            waitlist: args.waitlist,
            students: args.students,
            choices: args.choices,
        },
        rate: args.rate,
        workers: args.workers,
        exe: this_binary()?,
        log_dir: std::env::temp_dir().join("seatrush-chaos"),
        restart_database: args.restart_database,
        restart_broker: args.restart_broker,
        broker_control: args.broker_control,
        database_control: args.database_control,
        timeout: Duration::from_secs(args.timeout_secs),
    };
    let report = seatrush_tools::chaos::run(config).await?;
    print!("{}", seatrush_tools::chaos::describe(&report));
    write_json(args.json.as_ref(), &report)?;
    Ok(exit_code(report.passed()))
}

pub async fn demo(common: &Common, args: DemoArgs) -> anyhow::Result<ExitCode> {
    seatrush_tools::demo::run(seatrush_tools::demo::DemoConfig {
        services: services(common)?,
        crowd: args.crowd.crowd(),
        workers: args.workers,
        exe: this_binary()?,
        log_dir: std::env::temp_dir().join("seatrush-demo"),
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// `seatrush soak`: a steady load for minutes; fails on memory growth, latency drift or a
/// request left unanswered.
pub async fn soak(common: &Common, args: SoakArgs) -> anyhow::Result<ExitCode> {
    use seatrush_tools::soak;
    let crowd = Crowd {
        courses: args.courses,
        seats: args.seats,
        waitlist: 0,
        students: 1,
        choices: 1,
    };
    let rush = RushConfig::burst(
        services(common)?,
        crowd,
        args.workers,
        this_binary()?,
        seatrush_tools::rush::fresh_tag("soak"),
        std::env::temp_dir().join("seatrush-soak"),
    );
    let report = soak::run(soak::SoakConfig {
        rush,
        duration: Duration::from_secs_f64(args.minutes * 60.0),
        rate: args.rate,
        window: Duration::from_secs(args.sample_secs),
        out: args.out,
    })
    .await?;
    print!("{}", soak::describe(&report));
    Ok(exit_code(report.passed()))
}
