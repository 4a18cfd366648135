//! The stream consumers' offsets in PostgreSQL, committed with a row per batch in one
//! transaction: the stand-in for a worker that commits its decisions and the offset they bring
//! it to together.

use std::collections::HashMap;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::STEP_WITHIN;
use seatrush_core::worker::WorkerConfig;

/// The consumers' offsets in PostgreSQL: a schema of the run's own (dropped after it) holding
/// one row per stream, `(queue, offset)`, and one row per committed batch.
#[derive(Clone)]
pub(super) struct Offsets {
    pool: PgPool,
    schema: String,
}

impl Offsets {
    /// Creates the schema and a row per queue with nothing committed yet (offset -1). The pool's
    /// connections have only that schema on their `search_path`, so every statement but the
    /// schema's creation and removal is static SQL that cannot reach another table.
    pub(super) async fn create(database_url: &str, queues: &[String]) -> anyhow::Result<Self> {
        // Made of hex digits only, so it is a safe identifier to put in the two statements
        // that must name it.
        let schema = format!(
            "bench_intake_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let options: PgConnectOptions = database_url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(WorkerConfig::DEFAULT_DB_CONNECTIONS)
            .acquire_timeout(STEP_WITHIN)
            .connect_with(
                options
                    .application_name("seatrush-bench-intake")
                    .options([("search_path", schema.as_str())]),
            )
            .await?;
        let offsets = Self { pool, schema };
        if let Err(e) = offsets.create_tables(queues).await {
            let _ = offsets.remove().await;
            return Err(e.into());
        }
        Ok(offsets)
    }

    async fn create_tables(&self, queues: &[String]) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA {}",
            self.schema
        )))
        .execute(&mut *tx)
        .await?;
        for statement in [
            r#"CREATE TABLE offsets (queue text PRIMARY KEY, "offset" bigint NOT NULL)"#,
            "CREATE TABLE batches (queue text NOT NULL, first_offset bigint NOT NULL, \
             last_offset bigint NOT NULL, deliveries integer NOT NULL, \
             PRIMARY KEY (queue, first_offset))",
        ] {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        sqlx::query(
            r#"INSERT INTO offsets (queue, "offset") SELECT q, -1 FROM UNNEST($1::text[]) AS q"#,
        )
        .bind(queues)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// Records a batch and moves the stream's offset to its last delivery, in one transaction.
    /// The offset only moves forward from below the batch's first offset, so a batch that was
    /// already committed (a replay after a crash, a second consumer) is refused whole: this is
    /// what makes the intake exactly-once.
    pub(super) async fn commit(
        &self,
        queue: &str,
        (first, last): (i64, i64),
        deliveries: usize,
    ) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        let moved =
            sqlx::query(r#"UPDATE offsets SET "offset" = $3 WHERE queue = $1 AND "offset" < $2"#)
                .bind(queue)
                .bind(first)
                .bind(last)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        anyhow::ensure!(
            moved == 1,
            "offsets {first}..={last} of {queue} are already committed: the batch is refused"
        );
        sqlx::query(
            "INSERT INTO batches (queue, first_offset, last_offset, deliveries) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(queue)
        .bind(first)
        .bind(last)
        .bind(i32::try_from(deliveries).context("a batch larger than i32")?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The last offset committed per stream (streams with nothing committed are left out).
    pub(super) async fn committed(&self) -> sqlx::Result<HashMap<String, i64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as(r#"SELECT queue, "offset" FROM offsets WHERE "offset" >= 0"#)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// Drops the schema and closes the pool, each bounded.
    pub(super) async fn remove(&self) -> anyhow::Result<()> {
        let statement = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        let dropped = tokio::time::timeout(
            STEP_WITHIN,
            sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&self.pool),
        )
        .await;
        // Closing waits for every connection to come back; a consumer that was given up on may
        // still hold one.
        if tokio::time::timeout(STEP_WITHIN, self.pool.close())
            .await
            .is_err()
        {
            tracing::warn!("the offsets' pool did not close in time");
        }
        dropped.with_context(|| format!("dropping schema {} took too long", self.schema))??;
        Ok(())
    }
}
