//! The Postgres side of the Redis design: the record its writer keeps of every decision. It
//! lives in its own schema, created fresh for each run and dropped after, so it never touches
//! seatrush's tables (nor the naive design's).
//!
//! Postgres here is what the forum's design makes of it: the durable copy of what Redis
//! decided, not an arbiter. It refuses a second record of one request id and a second seat for
//! one student in one course, but it does not check capacity; `violations` reports what a
//! Redis that forgot its state would have let through.

use std::collections::{HashMap, HashSet};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::RedisOutcome;
use seatrush_core::domain::CourseId;

type Result<T> = std::result::Result<T, sqlx::Error>;

/// One decision as the writer read it from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// The stream entry's id: the same decision read twice has the same one.
    pub stream_id: String,
    pub request_id: String,
    pub course_id: String,
    pub student_id: String,
    pub outcome: RedisOutcome,
}

/// What Postgres holds at the end of a run.
#[derive(Debug, Default)]
pub(super) struct Records {
    /// The stored outcome of each request id.
    pub outcomes: HashMap<String, RedisOutcome>,
    /// The (course, student) pairs holding a seat.
    pub seated: HashSet<(String, String)>,
    /// Courses holding more students than seats.
    pub violations: i64,
}

/// The design's tables and a small pool (the writer's connection and one for setup and checks).
pub(super) struct Ledger {
    pool: PgPool,
}

impl Ledger {
    /// Creates the schema afresh with the given courses.
    pub async fn create(database_url: &str, courses: &[CourseId], seats: u32) -> Result<Ledger> {
        let options: PgConnectOptions = database_url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options.application_name("seatrush-bench-redis"))
            .await?;
        crate::bench::peer_schema::create(
            &pool,
            "bench_redis",
            &[
                // Ids compare as bytes, as in seatrush's own tables.
                "CREATE TABLE bench_redis.courses (course_id text COLLATE \"C\" PRIMARY KEY, \
                 capacity integer NOT NULL)",
                "CREATE TABLE bench_redis.decisions (request_id text COLLATE \"C\" PRIMARY KEY, \
                 course_id text COLLATE \"C\" NOT NULL, student_id text COLLATE \"C\" NOT NULL, \
                 outcome text NOT NULL, stream_id text NOT NULL)",
                "CREATE TABLE bench_redis.enrollments (course_id text COLLATE \"C\" NOT NULL, \
                 student_id text COLLATE \"C\" NOT NULL, request_id text COLLATE \"C\" NOT NULL, \
                 PRIMARY KEY (course_id, student_id))",
            ],
            courses,
            seats,
        )
        .await?;
        Ok(Ledger { pool })
    }

    /// Stores a batch of decisions in one transaction (one statement) and returns the request
    /// ids it stored: an id already stored keeps its first record, and an enrolled decision for
    /// a student already seated adds no second seat.
    pub async fn store(&self, batch: &[Entry]) -> Result<Vec<String>> {
        let column = |f: fn(&Entry) -> &str| batch.iter().map(f).collect::<Vec<&str>>();
        sqlx::query_scalar(
            "WITH input AS ( \
               SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
                 AS i(request_id, course_id, student_id, outcome, stream_id)), \
             stored AS ( \
               INSERT INTO bench_redis.decisions \
                 SELECT request_id, course_id, student_id, outcome, stream_id FROM input \
               ON CONFLICT (request_id) DO NOTHING \
               RETURNING request_id, course_id, student_id, outcome), \
             seated AS ( \
               INSERT INTO bench_redis.enrollments (course_id, student_id, request_id) \
                 SELECT course_id, student_id, request_id FROM stored \
                 WHERE outcome = 'enrolled' \
               ON CONFLICT DO NOTHING) \
             SELECT request_id FROM stored",
        )
        .bind(column(|e| &e.request_id))
        .bind(column(|e| &e.course_id))
        .bind(column(|e| &e.student_id))
        .bind(column(|e| e.outcome.as_str()))
        .bind(column(|e| &e.stream_id))
        .fetch_all(&self.pool)
        .await
    }

    /// Everything stored, for the checks.
    pub async fn records(&self) -> Result<Records> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT request_id, outcome FROM bench_redis.decisions")
                .fetch_all(&self.pool)
                .await?;
        let outcomes = rows
            .into_iter()
            .filter_map(|(id, o)| Some((id, RedisOutcome::parse(&o)?)))
            .collect();
        let seated: Vec<(String, String)> =
            sqlx::query_as("SELECT course_id, student_id FROM bench_redis.enrollments")
                .fetch_all(&self.pool)
                .await?;
        let violations = sqlx::query_scalar(
            "SELECT count(*) FROM bench_redis.courses c \
             WHERE c.capacity < \
               (SELECT count(*) FROM bench_redis.enrollments e WHERE e.course_id = c.course_id)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Records {
            outcomes,
            seated: seated.into_iter().collect(),
            violations,
        })
    }

    /// Drops the schema and closes the pool.
    pub async fn drop(self) -> Result<()> {
        sqlx::query("DROP SCHEMA IF EXISTS bench_redis CASCADE")
            .execute(&self.pool)
            .await?;
        self.pool.close().await;
        Ok(())
    }
}
