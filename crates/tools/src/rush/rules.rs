//! The registration rules' cost, measured: the same crowd (courses with credits and clashing
//! meetings, choices fired at once, one student in ten also swapping) run twice in one
//! invocation, without a student registry and with one, each in a fresh database of its own
//! (a registry, once loaded, stays on for its database), and the throughputs compared.

use anyhow::Context;
use serde::Serialize;

use super::{RulesCrowd, Rush, RushConfig, RushReport};

/// The two runs and the throughput with the rules as a share of the throughput without.
#[derive(Debug, Clone, Serialize)]
pub struct RulesComparison {
    pub without_registry: RushReport,
    pub with_registry: RushReport,
    pub throughput_ratio: f64,
}

impl RulesComparison {
    pub fn passed(&self) -> bool {
        self.without_registry.passed()
            && self.with_registry.passed()
            && self.with_registry.contradicted == 0
    }
}

/// Runs the crowd of `config` without and then with a registry.
pub async fn compare(config: RushConfig, show_progress: bool) -> anyhow::Result<RulesComparison> {
    let without = phase(&config, false, show_progress).await?;
    let with = phase(&config, true, show_progress).await?;
    let ratio = with.report.throughput_rps / without.report.throughput_rps.max(1e-9);
    Ok(RulesComparison {
        without_registry: without.report,
        with_registry: with.report,
        throughput_ratio: ratio,
    })
}

/// One run, in a database created for it and dropped after.
async fn phase(config: &RushConfig, registry: bool, show_progress: bool) -> anyhow::Result<Rush> {
    let suffix = if registry { "rules" } else { "plain" };
    let name = format!("{}_{suffix}", config.tag.replace('-', "_")).to_lowercase();
    let admin_url = config.services.database_url.clone();
    admin(&admin_url, &format!("CREATE DATABASE {name}"))
        .await
        .context("creating a database for the run (the role needs CREATEDB)")?;
    let mut config = config.clone();
    config.services.database_url = with_database(&admin_url, &name);
    config.tag = format!("{}-{suffix}", config.tag);
    config.rules = Some(RulesCrowd { registry });
    let rush = super::run(config, show_progress).await;
    admin(
        &admin_url,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await?;
    rush
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

/// The comparison as a short text for people.
pub fn describe(c: &RulesComparison) -> String {
    format!(
        "without a registry:\n{}\nwith a registry of {} students:\n{}\nthroughput with the rules: \
         {:.2} of the throughput without (target at least 0.70)\n",
        super::describe(&c.without_registry),
        c.with_registry.students,
        super::describe(&c.with_registry),
        c.throughput_ratio
    )
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
