//! The term's student registry: imported from the registrar's file, and each student's
//! standing (what they hold and wait for) for `seatrush students show`.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::courses::to_u32;
use super::{Result, Store, StoreError};
use crate::domain::{StudentId, StudentRecord};

/// One student in full.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StudentDetail {
    pub student_id: String,
    pub max_credits: u32,
    /// The time ticket: their registration opens then (null: with everyone).
    pub registration_opens_at: Option<DateTime<Utc>>,
    pub holds: Vec<String>,
    /// Credits of the seats they hold.
    pub credits_held: u32,
    /// Courses whose seat they hold.
    pub courses_held: Vec<HeldCourse>,
    /// Courses they wait for, with their place.
    pub waiting_for: Vec<WaitingFor>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HeldCourse {
    pub course_id: String,
    pub credits: u32,
    pub meetings: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WaitingFor {
    pub course_id: String,
    pub position: u32,
}

impl Store {
    /// Creates or replaces the registry's records of these students, with the seats they
    /// already hold counted in their ledger; returns how many were new. Written in chunks of
    /// [`super::student_seats::JUDGED_AT_ONCE`] students, each a transaction in their turn (a
    /// lock each: a registry of tens of thousands at once would overrun the server's lock
    /// table); a chunk with a student who would hold more than their cap, or clashing seats,
    /// fails whole, and the import stops there with what came before it written.
    pub async fn import_students(&self, students: &[(StudentId, StudentRecord)]) -> Result<u64> {
        let mut new = 0;
        for chunk in students.chunks(super::student_seats::JUDGED_AT_ONCE) {
            new += self.import_chunk(chunk).await?;
        }
        Ok(new)
    }

    async fn import_chunk(&self, students: &[(StudentId, StudentRecord)]) -> Result<u64> {
        let ids: Vec<&str> = students.iter().map(|(id, _)| id.as_str()).collect();
        let caps: Vec<i32> = students
            .iter()
            .map(|(_, s)| i32::try_from(s.max_credits).unwrap_or(i32::MAX))
            .collect();
        let tickets: Vec<Option<DateTime<Utc>>> = students
            .iter()
            .map(|(_, s)| s.registration_opens_at)
            .collect();
        // One text per student (arrays of arrays must be rectangular in Postgres): the holds
        // joined by `;`, split again in SQL.
        let holds: Vec<String> = students.iter().map(|(_, s)| s.holds.join(";")).collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT lock_students($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        let new: Vec<bool> = sqlx::query_scalar(
            "INSERT INTO students (student_id, max_credits, registration_opens_at, holds) \
             SELECT s.id, s.cap, s.ticket, \
                    coalesce(array_remove(string_to_array(s.holds, ';'), ''), '{}') \
               FROM UNNEST($1::text[], $2::int[], $3::timestamptz[], $4::text[]) \
                    AS s(id, cap, ticket, holds) \
             ON CONFLICT (student_id) DO UPDATE \
                SET max_credits = EXCLUDED.max_credits, \
                    registration_opens_at = EXCLUDED.registration_opens_at, \
                    holds = EXCLUDED.holds, imported_at = now() \
             RETURNING xmax = 0",
        )
        .bind(&ids)
        .bind(&caps)
        .bind(&tickets)
        .bind(&holds)
        .fetch_all(&mut *tx)
        .await?;
        super::student_seats::count_seats_held(&mut tx, &ids).await?;
        // A cap lowered under what a student holds is refused (the ledger's own check runs
        // only when a seat is added).
        let over: Option<String> = sqlx::query_scalar(
            "SELECT format('student %s holds %s credits, more than the cap %s', \
                           s.student_id, sum(l.credits), s.max_credits) \
               FROM students s JOIN student_seats l ON l.student_id = s.student_id \
              WHERE s.student_id = ANY ($1) AND l.released_by IS NULL \
              GROUP BY s.student_id, s.max_credits HAVING sum(l.credits) > s.max_credits \
              LIMIT 1",
        )
        .bind(&ids)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(over) = over {
            return Err(StoreError::Inconsistent(format!("import refused: {over}")));
        }
        tx.commit().await?;
        Ok(new.into_iter().filter(|n| *n).count() as u64)
    }

    /// Puts a hold on (`on`) or clears it from a student's account, in the student's turn
    /// (`lock_students`), so it takes its turn with every judgement of that student on every worker: a
    /// request judged after it sees it. Returns the holds now on the account, `None` if the
    /// student is not in the registry. At most [`crate::domain::MAX_HOLDS`] holds.
    pub async fn change_hold(
        &self,
        student: &StudentId,
        hold: &str,
        on: bool,
    ) -> Result<Option<Vec<String>>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT lock_students($1)")
            .bind([student.as_str()])
            .execute(&mut *tx)
            .await?;
        let holds: Option<Vec<String>> = sqlx::query_scalar(
            "UPDATE students SET holds = CASE \
                 WHEN NOT $3 THEN array_remove(holds, $2) \
                 WHEN $2 = ANY (holds) THEN holds \
                 ELSE holds || $2 END \
              WHERE student_id = $1 RETURNING holds",
        )
        .bind(student.as_str())
        .bind(hold)
        .bind(on)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(holds)
    }

    /// The (course, student) seats given back by the releases that completed swaps.
    pub async fn seats_released(&self) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT course_id, student_id FROM outcomes \
              WHERE action = 'release' AND outcome = 'dropped' AND waitlist_position IS NULL",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// One student's record and standing, read in one snapshot; `None` if not in the registry.
    pub async fn student_detail(&self, student: &StudentId) -> Result<Option<StudentDetail>> {
        let mut tx = self.snapshot().await?;
        let Some(row) = sqlx::query(
            "SELECT max_credits, registration_opens_at, holds FROM students WHERE student_id = $1",
        )
        .bind(student.as_str())
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let held = sqlx::query(
            "SELECT c.course_id, c.credits, c.meetings FROM enrollments e \
               JOIN courses c ON c.course_id = e.course_id \
              WHERE e.student_id = $1 ORDER BY c.course_id",
        )
        .bind(student.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let waiting = sqlx::query(
            "SELECT course_id, position FROM waitlist WHERE student_id = $1 ORDER BY course_id",
        )
        .bind(student.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let courses_held = held
            .iter()
            .map(|r| {
                Ok(HeldCourse {
                    course_id: r.try_get("course_id")?,
                    credits: to_u32(r.try_get("credits")?),
                    meetings: r.try_get("meetings")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let waiting_for = waiting
            .iter()
            .map(|r| {
                Ok(WaitingFor {
                    course_id: r.try_get("course_id")?,
                    position: to_u32(r.try_get("position")?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(StudentDetail {
            student_id: student.to_string(),
            max_credits: to_u32(row.try_get("max_credits")?),
            registration_opens_at: row.try_get("registration_opens_at")?,
            holds: row.try_get("holds")?,
            credits_held: courses_held.iter().map(|c| c.credits).sum(),
            courses_held,
            waiting_for,
        }))
    }
}
