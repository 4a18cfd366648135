//! The operator's commands: `migrate`, `status`, `healthcheck`, `audit` and `deadletters`,
//! with their rendering.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::common::Common;
use seatrush_core::amqp::{Broker, DeadLetter};
use seatrush_core::store::Violation;
use seatrush_core::worker::WorkerConfig;

#[derive(Args)]
pub struct StatusArgs {
    #[arg(long)]
    json: bool,
    /// The workers' lease (`--lease-ms`): a worker silent for longer is not counted live.
    #[arg(long, env = "SEATRUSH_LEASE_MS", default_value_t = WorkerConfig::DEFAULT_LEASE_MS)]
    lease_ms: u64,
}

#[derive(Args)]
pub struct HealthcheckArgs {
    /// The worker's `--http-addr`.
    #[arg(long, env = "SEATRUSH_HTTP_ADDR", default_value = "127.0.0.1:9090")]
    addr: String,
    /// The path to ask (`/livez` for liveness).
    #[arg(long, default_value = "/readyz")]
    path: String,
}

#[derive(Args)]
pub struct AuditArgs {
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DeadArgs {
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

pub async fn migrate(common: &Common) -> anyhow::Result<ExitCode> {
    let store = common.store().await?;
    store.migrate().await?;
    store.ensure_partitions(common.partitions).await?;
    println!("database is up to date");
    Ok(ExitCode::SUCCESS)
}

pub async fn status(common: &Common, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let store = common.store().await?;
    let broker = Broker::connect(&common.amqp_url()?, "seatrush-status")
        .await
        .context("connecting to RabbitMQ")?;
    let status = seatrush_core::status::gather(
        &store,
        &broker,
        &common.topology(),
        Duration::from_millis(args.lease_ms),
    )
    .await;
    broker.close().await;
    let status = status?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", seatrush_core::status::describe(&status));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<ExitCode> {
    // A worker listening on every interface is asked on loopback.
    let addr = args.addr.replace("0.0.0.0", "127.0.0.1");
    let (status, body) =
        seatrush_core::worker::health::probe(&addr, &args.path, Duration::from_secs(3)).await?;
    println!("{status} {}", body.trim());
    Ok(if status == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn audit(common: &Common, args: AuditArgs) -> anyhow::Result<ExitCode> {
    let violations = common.store().await?.audit().await?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "clean": violations.is_empty(), "violations": violations })
        );
    } else {
        print!("{}", describe_audit(&violations));
    }
    Ok(if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub async fn deadletters(common: &Common, args: DeadArgs) -> anyhow::Result<ExitCode> {
    let topology = common.topology();
    let broker = Broker::connect(&common.amqp_url()?, "seatrush-deadletters")
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
            let pick = |letter: &DeadLetter| {
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
        print!("{}", describe_dead_letters(&letters, verb));
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_audit(violations: &[Violation]) -> String {
    if violations.is_empty() {
        return "audit clean: no course over capacity, counters match, no student twice, \
                waitlists contiguous, outcomes agree\n"
            .to_owned();
    }
    let mut text = format!("{} violation(s):\n", violations.len());
    for v in violations {
        text.push_str(&format!("  {}: {}\n", v.check, v.detail));
    }
    text
}

fn describe_dead_letters(letters: &[DeadLetter], verb: &str) -> String {
    let mut text = format!("{} {verb}\n", letters.len());
    for l in letters {
        text.push_str(&format!(
            "  {} -> {} [{}] {}: {}\n",
            l.message_id.as_deref().unwrap_or("(no message id)"),
            l.routing_key,
            l.source,
            l.reason,
            l.body.chars().take(120).collect::<String>()
        ));
    }
    text
}
