//! The flags every command shares: where the broker and the database are, the topology's
//! name and size, and the log format.

use anyhow::Context;
use clap::Args;

use super::parse::at_least;
use seatrush_core::amqp::Topology;
use seatrush_core::store::Store;
use seatrush_core::telemetry::LogFormat;

#[derive(Args, Clone)]
pub struct Common {
    /// RabbitMQ URL (amqp:// or amqps://).
    #[arg(long, env = "AMQP_URL", global = true, hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// PostgreSQL URL (sslmode and the rest as URL parameters).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Prefix of every exchange and queue name.
    #[arg(
        long,
        env = "SEATRUSH_PREFIX",
        default_value = Topology::DEFAULT_PREFIX,
        global = true,
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    pub prefix: String,
    /// Number of partition queues; fixed at first setup.
    #[arg(
        long,
        env = "SEATRUSH_PARTITIONS",
        default_value_t = Topology::DEFAULT_PARTITIONS,
        value_parser = at_least::<u16>(1),
        global = true
    )]
    pub partitions: u16,
    /// Log line format.
    #[arg(
        long,
        env = "SEATRUSH_LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    pub log_format: LogFormat,
}

impl Common {
    pub fn amqp_url(&self) -> anyhow::Result<String> {
        self.amqp_url.clone().context(
            "no broker: set AMQP_URL or pass --amqp-url (scripts/services.sh start prints one)",
        )
    }

    pub fn database_url(&self) -> anyhow::Result<String> {
        self.database_url.clone().context(
            "no database: set DATABASE_URL or pass --database-url (scripts/services.sh start prints one)",
        )
    }

    /// The topology with the default queue limits; a worker sets its own.
    pub fn topology(&self) -> Topology {
        Topology::new(self.prefix.clone(), self.partitions)
    }

    pub async fn store(&self) -> anyhow::Result<Store> {
        Store::connect(&self.database_url()?, 4)
            .await
            .context("connecting to PostgreSQL")
    }
}
