//! Runs of one comparison, each in a database created for it and dropped after: what one run
//! leaves (a registry, recorded keys and events) must not weigh on the next.

use std::future::Future;

use anyhow::Context;

use seatrush_core::amqp::{Broker, Topology};

use super::{RushConfig, Services};

/// Runs `run` with `config` moved to a fresh database (and its tag suffixed), then drops the
/// database, whatever `run` returned.
pub async fn in_fresh_database<T, F, Fut>(
    config: &RushConfig,
    suffix: &str,
    run: F,
) -> anyhow::Result<T>
where
    F: FnOnce(RushConfig) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let name = format!("{}_{suffix}", config.tag.replace('-', "_")).to_lowercase();
    let mut config = config.clone();
    config.tag = format!("{}-{suffix}", config.tag);
    let admin_url = config.services.database_url.clone();
    in_database(&admin_url, &name, |url| {
        config.services.database_url = url;
        run(config)
    })
    .await
}

/// Runs `run` on services of its own: a database and a broker topology named `name` beside
/// `services`, both removed after, whatever `run` returned. What a run leaves (outcomes, a
/// backlog in the partition queues) then never weighs on it or on the next.
pub async fn on_own_services<T, F, Fut>(
    services: &Services,
    name: &str,
    run: F,
) -> anyhow::Result<T>
where
    F: FnOnce(Services) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    in_database(&services.database_url, name, |database_url| async move {
        let own = Services {
            amqp_url: services.amqp_url.clone(),
            database_url,
            topology: Topology {
                lanes: services.topology.lanes.clone(),
                ..Topology::new(name, services.topology.partitions)
            },
        };
        let ran = run(own.clone()).await;
        let removed = remove_topology(&own).await;
        let report = ran?;
        removed?;
        Ok(report)
    })
    .await
}

/// Runs `run` on the database `name`, created on the server `admin_url` names and given to it
/// by URL, then drops the database, whatever `run` returned.
async fn in_database<T, F, Fut>(admin_url: &str, name: &str, run: F) -> anyhow::Result<T>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let ran = run(create_database(admin_url, name).await?).await;
    drop_database(admin_url, name).await?;
    ran
}

async fn remove_topology(services: &Services) -> anyhow::Result<()> {
    let broker = Broker::connect(&services.amqp_url, "seatrush-cleanup")
        .await
        .context("connecting to RabbitMQ to remove a run's queues")?;
    broker.delete_topology(&services.topology).await?;
    broker.close().await;
    Ok(())
}

/// Creates the database `name` on the server `admin_url` names; returns its URL.
pub async fn create_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    admin(admin_url, &format!("CREATE DATABASE {name}"))
        .await
        .context("creating a database for the run (the role needs CREATEDB)")?;
    Ok(with_database(admin_url, name))
}

/// Drops the database `name`, closing whatever connections it still has.
pub async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    admin(
        admin_url,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await
    .with_context(|| format!("dropping the run's database {name}"))
}

async fn admin(url: &str, statement: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(&mut connection)
        .await?;
    connection.close().await?;
    Ok(())
}

/// `url` naming the database `name` instead of its own.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let base = match base.rfind('/') {
        Some(slash) if slash > base.find("//").map_or(0, |i| i + 1) => &base[..slash],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_replaced_in_the_url() {
        assert_eq!(
            with_database("postgres://u@h:5432/seatrush", "x_rules"),
            "postgres://u@h:5432/x_rules"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "y"),
            "postgres://u@h/y?sslmode=disable"
        );
    }
}
