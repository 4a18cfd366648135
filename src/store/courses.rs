//! Courses: administration, the catalog of known ids, and loading one course for its actor.

use sqlx::Row;

use super::{Result, Store, StoreError};
use crate::course::CourseSnapshot;
use crate::domain::{CourseId, Outcome, Reason, RequestId, StudentId, Verdict};

/// A course as listed to operators.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CourseRow {
    pub course_id: String,
    pub capacity: u32,
    pub enrolled: u32,
    pub seats_left: u32,
}

impl Store {
    /// Creates a course; refuses one that exists.
    pub async fn add_course(&self, course: &CourseId, seats: u32) -> Result<()> {
        let capacity = i32::try_from(seats).unwrap_or(i32::MAX);
        let inserted = sqlx::query(
            "INSERT INTO courses (course_id, capacity) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(course.as_str())
        .bind(capacity)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::CourseExists(course.to_string()));
        }
        Ok(())
    }

    /// Creates many courses at once, skipping those that exist; returns how many were created.
    pub async fn add_courses(&self, courses: &[(CourseId, u32)]) -> Result<u64> {
        let ids: Vec<&str> = courses.iter().map(|(id, _)| id.as_str()).collect();
        let seats: Vec<i32> = courses
            .iter()
            .map(|(_, s)| i32::try_from(*s).unwrap_or(i32::MAX))
            .collect();
        Ok(sqlx::query(
            "INSERT INTO courses (course_id, capacity) \
             SELECT * FROM UNNEST($1::text[], $2::int[]) ON CONFLICT DO NOTHING",
        )
        .bind(&ids)
        .bind(&seats)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub async fn list_courses(&self) -> Result<Vec<CourseRow>> {
        let rows =
            sqlx::query("SELECT course_id, capacity, enrolled FROM courses ORDER BY course_id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                let capacity = to_u32(row.try_get::<i32, _>("capacity")?);
                let enrolled = to_u32(row.try_get::<i32, _>("enrolled")?);
                Ok(CourseRow {
                    course_id: row.try_get("course_id")?,
                    capacity,
                    enrolled,
                    seats_left: capacity.saturating_sub(enrolled),
                })
            })
            .collect()
    }

    /// Every existing course id. The catalog is as large as the real course list, whatever
    /// clients send.
    pub async fn course_ids(&self) -> Result<Vec<CourseId>> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT course_id FROM courses")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|id| CourseId::parse(id).ok())
            .collect())
    }

    /// Loads what a course actor needs: capacity, enrolled students and every stored verdict.
    /// Returns `None` when the course does not exist.
    pub async fn load_course(&self, course: &CourseId) -> Result<Option<CourseSnapshot>> {
        let mut tx = self.pool.begin().await?;
        // One snapshot for the three reads, so the counter, the rows and the outcomes agree.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let capacity: Option<i32> =
            sqlx::query_scalar("SELECT capacity FROM courses WHERE course_id = $1")
                .bind(course.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(capacity) = capacity else {
            return Ok(None);
        };
        let students: Vec<String> =
            sqlx::query_scalar("SELECT student_id FROM enrollments WHERE course_id = $1")
                .bind(course.as_str())
                .fetch_all(&mut *tx)
                .await?;
        let decided = sqlx::query(
            "SELECT request_id, outcome, reason, seats_left FROM outcomes WHERE course_id = $1",
        )
        .bind(course.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;

        let enrolled = students
            .into_iter()
            .map(|s| StudentId::parse(s).map_err(|e| corrupt(course, &e)))
            .collect::<Result<_>>()?;
        let decided = decided
            .iter()
            .map(|row| {
                let id = RequestId::parse(row.try_get::<String, _>("request_id")?)
                    .map_err(|e| corrupt(course, &e))?;
                Ok((id, verdict_from_row(row)?))
            })
            .collect::<Result<_>>()?;
        Ok(Some(CourseSnapshot {
            capacity: to_u32(capacity),
            enrolled,
            decided,
        }))
    }
}

pub(super) fn verdict_from_row(row: &sqlx::postgres::PgRow) -> Result<Verdict> {
    let outcome: String = row.try_get("outcome")?;
    let reason: Option<String> = row.try_get("reason")?;
    let seats_left: i32 = row.try_get("seats_left")?;
    Ok(Verdict {
        outcome: Outcome::parse(&outcome)
            .ok_or_else(|| StoreError::Inconsistent(format!("unknown outcome {outcome:?}")))?,
        reason: reason.as_deref().and_then(Reason::parse),
        seats_left: to_u32(seats_left),
    })
}

fn corrupt(course: &CourseId, e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Inconsistent(format!("course {course} holds an invalid id: {e}"))
}

pub(super) fn to_u32(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

impl Store {
    /// The (course, student) pairs holding a seat in the given courses.
    pub async fn seats_held(&self, courses: &[CourseId]) -> Result<Vec<(String, String)>> {
        let ids: Vec<&str> = courses.iter().map(CourseId::as_str).collect();
        let rows =
            sqlx::query("SELECT course_id, student_id FROM enrollments WHERE course_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("course_id")?, r.try_get("student_id")?)))
            .collect()
    }

    /// Partitions currently held under a live lease, by any worker.
    pub async fn live_partitions(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM partitions WHERE owner IS NOT NULL AND lease_until > now()",
        )
        .fetch_one(&self.pool)
        .await?)
    }
}
