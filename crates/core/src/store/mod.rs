//! The store: the only module that speaks SQL (invariant I7).
//!
//! Postgres is the source of truth. The store loads a course for its actor, writes batches of
//! decisions in one transaction (`commit`), keeps partition ownership (`ownership`) and checks
//! the invariants on the live database (`audit`).

mod audit;
mod commit;
mod courses;
mod gateway;
mod hosts;
mod ownership;
mod student_seats;
mod students;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub use audit::Violation;
pub use commit::{Committed, Pending};
pub use courses::{CourseDetail, CourseRow, DrawView, Entrant};
pub use gateway::{KeyClaim, KeyStanding, NewEvent, Standing, StudentEvent, WaitlistPlace};
pub use hosts::writable_url;
pub use ownership::{Lease, Membership, PartitionRow, WorkerRow};
pub use students::{HeldCourse, StudentDetail, WaitingFor};

/// Embedded migrations; sqlx takes an advisory lock while applying them, so several workers
/// starting at once are safe.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Errors at the store's edge.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the database was set up with {recorded} partitions but this worker was started with \
         {requested}; start it with --partitions {recorded} (changing the count would move courses \
         between partitions under running workers)"
    )]
    PartitionMismatch { recorded: u16, requested: u16 },
    #[error("fenced: this worker no longer owns partition(s) {partitions:?} at the epoch it holds")]
    Fenced { partitions: Vec<u16> },
    #[error("inconsistent batch: {0}")]
    Inconsistent(String),
    #[error("course {0} already exists")]
    CourseExists(String),
    #[error("none of the database hosts {0} takes writes (each is down or a standby)")]
    NoWritableHost(String),
}

impl StoreError {
    /// Whether retrying later may succeed: a lost connection, a restarting server, a
    /// serialization failure or deadlock, an exhausted resource. A broken constraint or a bad
    /// statement is not transient: retrying would fail the same way.
    pub fn is_transient(&self) -> bool {
        let StoreError::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // SQLSTATE classes: 08 connection, 40 rollback (serialization, deadlock),
                // 53 insufficient resources, 57 operator intervention (shutdown), 58 system;
                // and 25P03, the server ending a transaction that sat idle (this worker was
                // paused or cut off mid-commit): the batch can be retried on a new connection.
                // 25006, a write refused as read-only: the host was a primary and is now a
                // standby; the store moves to the new primary (`hosts`).
                code == "25P03"
                    || code == "25006"
                    || ["08", "40", "53", "57", "58"]
                        .iter()
                        .any(|class| code.starts_with(class))
            }),
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    /// The group commit's own connections (the commit, and recording its answers as sent).
    /// In a rush every course actor loads its course at once, hundreds of reads through
    /// `pool`; a commit queued behind them held every decision of its batch back (the first
    /// commit of a 10,000-request burst waited 140 ms). Opened on first use, so a store that
    /// never commits never connects them.
    commits: PgPool,
}

/// Connections of the group commit: one commits while the finalizer records the previous
/// batch as answered.
pub const COMMIT_CONNECTIONS: u32 = 2;

impl Store {
    /// Connects a pool. `max_connections` bounds what one process holds open.
    /// The group commit has [`COMMIT_CONNECTIONS`] more of its own.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        // A worker paused mid-transaction (stopped, swapped out, cut off) must not hold its
        // row locks past its lease: the server ends such a transaction after this long, so
        // another worker can take the partitions over, and the paused one's commit fails and
        // is retried under the fence. A commit's statements follow each other at once, so no
        // healthy transaction idles this long.
        //
        // Every statement is planned for its own arguments: a rush starts on empty tables, and
        // a plan cached then (a scan of the whole table, cheap while it is empty) was seen to
        // be kept for a prepared statement as the table grew, making a lookup of a batch's
        // ids by key take a second.
        let hosts = hosts::host_urls(url)
            .iter()
            .map(|u| {
                let options: PgConnectOptions = u.parse()?;
                Ok(options.application_name("seatrush").options([
                    ("idle_in_transaction_session_timeout", "2000"),
                    ("plan_cache_mode", "force_custom_plan"),
                ]))
            })
            .collect::<Result<Vec<_>>>()?;
        let at = if hosts.len() > 1 {
            hosts::writable(&hosts)
                .await
                .ok_or_else(|| StoreError::NoWritableHost(crate::telemetry::redact(url)))?
        } else {
            0
        };
        // Only pools that may move to another host check each connection's age on acquire.
        let moved = (hosts.len() > 1).then(hosts::Moved::default);
        let pool = pool_options(max_connections, moved.as_ref())
            .connect_with(hosts[at].clone())
            .await?;
        let commits =
            pool_options(COMMIT_CONNECTIONS, moved.as_ref()).connect_lazy_with(hosts[at].clone());
        if let Some(moved) = moved {
            tokio::spawn(hosts::follow(
                [pool.clone(), commits.clone()],
                hosts,
                at,
                moved,
            ));
        }
        Ok(Self { pool, commits })
    }

    /// How many of these request ids have a stored outcome.
    pub async fn count_outcomes(&self, request_ids: &[&str]) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM outcomes WHERE request_id = ANY($1)")
                .bind(request_ids)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// A read-only transaction that sees one snapshot for all its reads.
    async fn snapshot(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        // Opened with its isolation in one statement: a course load at a rush's start is one
        // of hundreds, and each round trip counts there.
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?)
    }

    /// A round trip to the database, for readiness.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Applies any pending migration.
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Records the partition count on first setup, or checks it against the recorded one, and
    /// makes sure every partition has an ownership row.
    pub async fn ensure_partitions(&self, requested: u16) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO topology (partitions) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(i32::from(requested))
            .execute(&mut *tx)
            .await?;
        let recorded: i32 = sqlx::query_scalar("SELECT partitions FROM topology")
            .fetch_one(&mut *tx)
            .await?;
        let recorded = u16::try_from(recorded).unwrap_or(0);
        if recorded != requested {
            return Err(StoreError::PartitionMismatch {
                recorded,
                requested,
            });
        }
        sqlx::query(
            "INSERT INTO partitions (partition) SELECT generate_series(0, $1 - 1) \
             ON CONFLICT DO NOTHING",
        )
        .bind(i32::from(requested))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// How many transactions have written decisions so far.
    pub async fn decision_batches(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM decision_batches")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        tokio::join!(self.pool.close(), self.commits.close());
    }
}

fn pool_options(max_connections: u32, moved: Option<&hosts::Moved>) -> PgPoolOptions {
    let options = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10));
    let Some(moved) = moved.cloned() else {
        return options;
    };
    // A connection to the host the pool left (a demoted primary) is closed, not reused.
    options.before_acquire(move |_, meta| {
        let keep = moved.keeps(meta.age);
        Box::pin(async move { Ok(keep) })
    })
}
