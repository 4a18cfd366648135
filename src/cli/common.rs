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
    /// Named lanes beside the default one, comma-separated (`web,batch`): each has its own
    /// exchange (`<prefix>.lanes.<name>`) and its own queue per partition, which the
    /// partition's owner consumes in turn with the others, so a producer that floods its lane
    /// delays only that lane. Every worker of a deployment must name the same lanes.
    #[arg(
        long,
        env = "SEATRUSH_LANES",
        default_value = "",
        hide_default_value = true,
        value_parser = lane_names,
        global = true
    )]
    pub lanes: LaneNames,
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

/// The named lanes given on the command line, checked.
#[derive(Clone, Debug, Default)]
pub struct LaneNames(pub Vec<String>);

fn lane_names(list: &str) -> Result<LaneNames, String> {
    seatrush_core::amqp::lane_list(list).map(LaneNames)
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
        Topology {
            // Checked when parsed.
            lanes: self.lanes.0.clone(),
            ..Topology::new(self.prefix.clone(), self.partitions)
        }
    }

    pub async fn store(&self) -> anyhow::Result<Store> {
        Store::connect(&self.database_url()?, 4)
            .await
            .context("connecting to PostgreSQL")
    }
}
