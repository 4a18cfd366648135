//! The command-line surface: one module per command group, each with its flags, the call into
//! the library and the rendering of what it prints. The tooling's commands exist only with the
//! `tools` feature (on by default); a build without it is the worker and the operator's commands.

mod common;
mod course;
mod gateway;
mod ops;
mod parse;
mod request;
mod students;
#[cfg(feature = "tools")]
mod tools;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use seatrush_core::domain::Action;

#[derive(Parser)]
#[command(
    name = "seatrush",
    version,
    about = "Course enrollment that survives the flash crowd"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: common::Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database migrations.
    Migrate,
    /// Run a worker until SIGINT or SIGTERM.
    Worker(worker::WorkerArgs),
    /// Run the web gateway (HTTP API, live events, the student's page) until SIGINT or SIGTERM.
    Gateway(gateway::GatewayArgs),
    /// Manage courses.
    #[command(subcommand)]
    Course(course::CourseCommand),
    /// The term's student registry.
    #[command(subcommand)]
    Students(students::StudentsCommand),
    /// Enroll a student and print the provisional and final answers.
    Enroll(request::RequestArgs),
    /// Drop a student's seat and print the provisional and final answers.
    Drop(request::RequestArgs),
    /// Print final events as they happen.
    Watch(request::WatchArgs),
    /// List dead letters with their reasons (they stay in the queue); `replay` re-publishes
    /// the ones that were fixed.
    Deadletters(ops::DeadArgs),
    /// Live workers, who owns which partition at which epoch, queue depths and unacked counts.
    Status(ops::StatusArgs),
    /// Ask a worker's `/readyz` (for container health checks); exit 0 when it is ready.
    Healthcheck(ops::HealthcheckArgs),
    /// Check the invariants on the live database; exit 1 on any violation.
    Audit(ops::AuditArgs),
    /// Fire a flash crowd at real workers, measure it, and check every answer and the audit.
    #[cfg(feature = "tools")]
    Rush(tools::RushArgs),
    /// Compare seatrush with the broker's limits, a naive Postgres design and a Redis design, in one run.
    #[cfg(feature = "tools")]
    Bench(tools::BenchArgs),
    /// A rush with faults on a schedule (links cut, stalled and refused, a worker killed, and
    /// the servers restarted if you pass the commands), then the proof that nothing was lost.
    /// Loopback servers only.
    #[cfg(feature = "tools")]
    Chaos(tools::ChaosArgs),
    /// The demo: two workers, a flash crowd with progress, the report and the audit.
    #[cfg(feature = "tools")]
    Demo(tools::DemoArgs),
    /// Hold a steady load for minutes, sampling memory, queue depths and the final p99; exit 1
    /// if memory grows, the latency drifts or a request goes unanswered.
    #[cfg(feature = "tools")]
    Soak(tools::SoakArgs),
}

/// The async runtime the command runs on: the worker's may be given a number of threads.
pub fn runtime(cli: &Cli) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Command::Worker(args) = &cli.command
        && let Some(threads) = args.runtime_threads
    {
        builder.worker_threads(threads);
    }
    builder.build()
}

/// Runs the parsed command; the exit code says whether what it checked passed.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let common = &cli.common;
    match cli.command {
        Command::Migrate => ops::migrate(common).await,
        Command::Worker(args) => worker::run(common, args).await,
        Command::Gateway(args) => gateway::run(common, args).await,
        Command::Course(command) => course::run(common, command).await,
        Command::Students(command) => students::run(common, command).await,
        Command::Enroll(args) => request::request(common, Action::Enroll, args).await,
        Command::Drop(args) => request::request(common, Action::Drop, args).await,
        Command::Watch(args) => request::watch(common, args).await,
        Command::Deadletters(args) => ops::deadletters(common, args).await,
        Command::Status(args) => ops::status(common, args).await,
        Command::Healthcheck(args) => ops::healthcheck(args).await,
        Command::Audit(args) => ops::audit(common, args).await,
        #[cfg(feature = "tools")]
        Command::Rush(args) => tools::rush(common, args).await,
        #[cfg(feature = "tools")]
        Command::Bench(args) => tools::bench(common, args).await,
        #[cfg(feature = "tools")]
        Command::Chaos(args) => tools::chaos(common, args).await,
        #[cfg(feature = "tools")]
        Command::Demo(args) => tools::demo(common, args).await,
        #[cfg(feature = "tools")]
        Command::Soak(args) => tools::soak(common, args).await,
    }
}
