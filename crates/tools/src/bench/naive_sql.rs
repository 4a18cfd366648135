//! The naive design the benchmark compares against: one transaction per request, a guarded
//! `UPDATE ... WHERE enrolled < capacity` plus an insert, straight against Postgres. It lives in
//! its own schema, created fresh for each benchmark run, so it never touches seatrush's tables.

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use seatrush_core::domain::{CourseId, Request};

type Result<T> = std::result::Result<T, sqlx::Error>;

/// The naive design's tables and a pool of connections to drive them.
pub struct Naive {
    pool: PgPool,
}

/// What the naive design answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NaiveOutcome {
    Enrolled,
    Full,
    /// The insert hit the primary key: the student already held a seat.
    Duplicate,
}

impl Naive {
    /// Creates the naive schema afresh with the given courses, and a pool of `connections`.
    pub async fn create(
        database_url: &str,
        courses: &[CourseId],
        seats: u32,
        connections: u32,
    ) -> Result<Naive> {
        let options: PgConnectOptions = database_url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .min_connections(connections)
            .connect_with(options.application_name("seatrush-bench-naive"))
            .await?;
        super::peer_schema::create(
            &pool,
            "bench_naive",
            &[
                // Ids compare as bytes, as in seatrush's own tables: the comparison is one of
                // designs, not of collations.
                "CREATE TABLE bench_naive.courses (course_id text COLLATE \"C\" PRIMARY KEY, \
                 capacity integer NOT NULL, enrolled integer NOT NULL DEFAULT 0)",
                "CREATE TABLE bench_naive.enrollments (course_id text COLLATE \"C\" NOT NULL, \
                 student_id text COLLATE \"C\" NOT NULL, PRIMARY KEY (course_id, student_id))",
            ],
            courses,
            seats,
        )
        .await?;
        Ok(Naive { pool })
    }

    /// One request, one transaction.
    pub async fn enroll(&self, request: &Request) -> Result<NaiveOutcome> {
        let mut tx = self.pool.begin().await?;
        let took: Option<i32> = sqlx::query_scalar(
            "UPDATE bench_naive.courses SET enrolled = enrolled + 1 \
             WHERE course_id = $1 AND enrolled < capacity RETURNING enrolled",
        )
        .bind(request.course_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if took.is_none() {
            tx.rollback().await?;
            return Ok(NaiveOutcome::Full);
        }
        let inserted = sqlx::query(
            "INSERT INTO bench_naive.enrollments (course_id, student_id) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
        )
        .bind(request.course_id.as_str())
        .bind(request.student_id.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(NaiveOutcome::Duplicate);
        }
        tx.commit().await?;
        Ok(NaiveOutcome::Enrolled)
    }

    /// Courses holding more students than seats, and counters that disagree with the rows.
    pub async fn violations(&self) -> Result<i64> {
        sqlx::query_scalar(
            "SELECT count(*) FROM bench_naive.courses c \
             WHERE c.enrolled > c.capacity OR c.enrolled <> \
               (SELECT count(*) FROM bench_naive.enrollments e WHERE e.course_id = c.course_id)",
        )
        .fetch_one(&self.pool)
        .await
    }

    /// Drops the naive design's schema and closes the pool.
    pub async fn drop(self) -> Result<()> {
        sqlx::query("DROP SCHEMA IF EXISTS bench_naive CASCADE")
            .execute(&self.pool)
            .await?;
        self.pool.close().await;
        Ok(())
    }
}
