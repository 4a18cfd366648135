//! The tables of a peer design (the naive one, the Redis design's ledger), made afresh for
//! each run in a schema of their own.

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPool;

use seatrush_core::domain::CourseId;

/// Drops `schema` with whatever a previous run left in it, creates it again with `tables` (its
/// `CREATE TABLE` statements, which must include `<schema>.courses (course_id, capacity, …)`),
/// and gives every course `seats` seats; all in one transaction.
pub(super) async fn create(
    pool: &PgPool,
    schema: &str,
    tables: &[&'static str],
    courses: &[CourseId],
    seats: u32,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for statement in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        sqlx::query(AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await?;
    }
    for &statement in tables {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    let ids: Vec<&str> = courses.iter().map(CourseId::as_str).collect();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.courses (course_id, capacity) \
         SELECT id, $2 FROM UNNEST($1::text[]) AS id"
    )))
    .bind(&ids)
    .bind(i32::try_from(seats).unwrap_or(i32::MAX))
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
