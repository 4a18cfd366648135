//! Courses: administration, the catalog of known ids, and loading courses for their actors.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Result, Store, StoreError};
use crate::domain::CourseSnapshot;
use crate::domain::{
    CourseId, CourseSettings, DrawNote, DrawSeed, Meetings, Opening, Outcome, Reason, Refusal,
    RequestId, RuleFacts, StudentId, Verdict,
};

/// A course as listed to operators.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CourseRow {
    pub course_id: String,
    pub capacity: u32,
    pub enrolled: u32,
    pub seats_left: u32,
    pub waitlist_capacity: u32,
    pub waitlisted: u32,
    pub opens_at: Option<DateTime<Utc>>,
    pub closes_at: Option<DateTime<Utc>>,
    /// `first-come` or `draw`.
    pub opening: String,
    /// Under `draw`: when entries open (any time before the opening when null).
    pub entries_open_at: Option<DateTime<Utc>>,
    /// The course's draw, if it is (or was) one.
    pub draw: Option<DrawView>,
    /// What the course counts toward a student's credit cap.
    pub credits: u32,
    /// Weekly meetings, `MO 09:00-10:30;WE 09:00-10:30` (empty: none).
    pub meetings: String,
}

/// A course's draw as operators and students may see it: the commitment from the moment it is
/// configured, the seed only once the draw is done.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DrawView {
    /// Lowercase hex SHA-256 of the seed.
    pub commitment: String,
    /// The seed in lowercase hex; null until the draw.
    pub seed: Option<String>,
    /// When the draw was performed; null until then.
    pub drawn_at: Option<DateTime<Utc>>,
    /// The draw's results were confirmed sent to the entrants.
    pub announced: bool,
    /// Students entered (before the draw) or drawn (after).
    pub entrants: u32,
}

/// One entrant of a course's draw, for `seatrush course show`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entrant {
    pub student_id: String,
    /// The entrant's rank, 1 first; null until the draw.
    pub draw_position: Option<u32>,
    /// What the draw gave them (`enrolled`, `waitlisted`, `rejected`); null until the draw.
    pub outcome: Option<String>,
}

/// One course in full, for `seatrush course show`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CourseDetail {
    #[serde(flatten)]
    pub course: CourseRow,
    /// Students holding a seat, in the order they got it.
    pub enrolled_students: Vec<String>,
    /// Students waiting, head first (position 1 first).
    pub waitlist: Vec<String>,
    /// The draw's entrants: by rank once drawn, by student id before.
    pub entrants: Vec<Entrant>,
}

const COURSE_COLUMNS: &str = "course_id, capacity, enrolled, waitlist_capacity, waitlisted, \
     opens_at, closes_at, opening, entries_open_at, draw_seed, draw_commitment, drawn_at, \
     draw_announced, credits, meetings, \
     (SELECT count(*) FROM draw_entries d WHERE d.course_id = courses.course_id) AS entrants";

fn course_row(row: &sqlx::postgres::PgRow) -> Result<CourseRow> {
    let capacity = to_u32(row.try_get::<i32, _>("capacity")?);
    let enrolled = to_u32(row.try_get::<i32, _>("enrolled")?);
    let drawn_at: Option<DateTime<Utc>> = row.try_get("drawn_at")?;
    let seed = seed_from_row(row)?;
    let draw = match row.try_get::<Option<String>, _>("draw_commitment")? {
        Some(commitment) => Some(DrawView {
            commitment,
            // Revealed only once the draw is done: before, it would let anyone predict it.
            seed: seed.filter(|_| drawn_at.is_some()).map(|s| s.hex()),
            drawn_at,
            announced: row.try_get("draw_announced")?,
            entrants: u32::try_from(row.try_get::<i64, _>("entrants")?).unwrap_or(u32::MAX),
        }),
        None => None,
    };
    Ok(CourseRow {
        course_id: row.try_get("course_id")?,
        capacity,
        enrolled,
        seats_left: capacity.saturating_sub(enrolled),
        waitlist_capacity: to_u32(row.try_get("waitlist_capacity")?),
        waitlisted: to_u32(row.try_get("waitlisted")?),
        opens_at: row.try_get("opens_at")?,
        closes_at: row.try_get("closes_at")?,
        opening: row.try_get("opening")?,
        entries_open_at: row.try_get("entries_open_at")?,
        draw,
        credits: to_u32(row.try_get("credits")?),
        meetings: row.try_get("meetings")?,
    })
}

fn meetings_from_row(row: &sqlx::postgres::PgRow) -> Result<Meetings> {
    let text: &str = row.try_get("meetings")?;
    Meetings::parse(text).map_err(|e| StoreError::Inconsistent(e.to_string()))
}

fn seed_from_row(row: &sqlx::postgres::PgRow) -> Result<Option<DrawSeed>> {
    match row.try_get::<Option<Vec<u8>>, _>("draw_seed")? {
        None => Ok(None),
        Some(bytes) => DrawSeed::from_slice(&bytes).map(Some).ok_or_else(|| {
            StoreError::Inconsistent(format!("a draw seed of {} bytes", bytes.len()))
        }),
    }
}

/// The course's row, read in `tx`.
async fn course_in(
    tx: &mut sqlx::PgConnection,
    course: &CourseId,
) -> Result<Option<sqlx::postgres::PgRow>> {
    let sql = format!("SELECT {COURSE_COLUMNS} FROM courses WHERE course_id = $1");
    Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(course.as_str())
        .fetch_optional(tx)
        .await?)
}

/// The rows of these courses, each with who holds its seats, who waits in order, and the
/// entries not yet drawn (a drawn course's entries answer through `answers`), as arrays: one
/// statement for all.
async fn courses_with_people(
    tx: &mut sqlx::PgConnection,
    courses: &[&str],
) -> Result<Vec<sqlx::postgres::PgRow>> {
    let sql = format!(
        "SELECT {COURSE_COLUMNS}, \
                ARRAY(SELECT e.student_id FROM enrollments e \
                       WHERE e.course_id = courses.course_id) AS seated, \
                ARRAY(SELECT w.student_id FROM waitlist w \
                       WHERE w.course_id = courses.course_id ORDER BY w.position) AS waiting, \
                entrants.students AS entrant_students, entrants.requests AS entrant_requests \
           FROM courses CROSS JOIN LATERAL ( \
                SELECT coalesce(array_agg(d.student_id ORDER BY d.request_id), '{{}}') AS students, \
                       coalesce(array_agg(d.request_id ORDER BY d.request_id), '{{}}') AS requests \
                  FROM draw_entries d \
                 WHERE d.course_id = courses.course_id AND d.outcome IS NULL) entrants \
          WHERE course_id = ANY($1)"
    );
    Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(courses)
        .fetch_all(tx)
        .await?)
}

fn settings_from_row(row: &sqlx::postgres::PgRow) -> Result<CourseSettings> {
    Ok(CourseSettings {
        capacity: to_u32(row.try_get("capacity")?),
        waitlist: to_u32(row.try_get("waitlist_capacity")?),
        opens_at: row.try_get("opens_at")?,
        closes_at: row.try_get("closes_at")?,
        opening: Opening::parse(row.try_get::<&str, _>("opening")?).unwrap_or_default(),
        entries_open_at: row.try_get("entries_open_at")?,
        draw_seed: seed_from_row(row)?,
        credits: to_u32(row.try_get("credits")?),
        meetings: meetings_from_row(row)?,
    })
}

impl Store {
    /// Creates a course; refuses one that exists. A course nobody has asked for yet has no
    /// actor, so creating it races no decision.
    pub async fn add_course(&self, course: &CourseId, settings: &CourseSettings) -> Result<()> {
        let created = self
            .add_courses(&[(course.clone(), settings.clone())])
            .await?;
        if created.is_empty() {
            return Err(StoreError::CourseExists(course.to_string()));
        }
        Ok(())
    }

    /// Creates many courses at once, skipping those that exist; returns the ids created.
    pub async fn add_courses(&self, courses: &[(CourseId, CourseSettings)]) -> Result<Vec<String>> {
        let ids: Vec<&str> = courses.iter().map(|(id, _)| id.as_str()).collect();
        let seats: Vec<i32> = courses
            .iter()
            .map(|(_, s)| i32::try_from(s.capacity).unwrap_or(i32::MAX))
            .collect();
        let waitlists: Vec<i32> = courses
            .iter()
            .map(|(_, s)| i32::try_from(s.waitlist).unwrap_or(i32::MAX))
            .collect();
        let opens: Vec<Option<DateTime<Utc>>> = courses.iter().map(|(_, s)| s.opens_at).collect();
        let closes: Vec<Option<DateTime<Utc>>> = courses.iter().map(|(_, s)| s.closes_at).collect();
        let openings: Vec<&str> = courses.iter().map(|(_, s)| s.opening.as_str()).collect();
        let entries: Vec<Option<DateTime<Utc>>> =
            courses.iter().map(|(_, s)| s.entries_open_at).collect();
        let credits: Vec<i32> = courses
            .iter()
            .map(|(_, s)| i32::try_from(s.credits).unwrap_or(i32::MAX))
            .collect();
        let meetings: Vec<String> = courses
            .iter()
            .map(|(_, s)| s.meetings.to_string())
            .collect();
        let seeds: Vec<Option<Vec<u8>>> = courses
            .iter()
            .map(|(_, s)| s.draw_seed.map(|seed| seed.as_bytes().to_vec()))
            .collect();
        Ok(sqlx::query_scalar(
            "INSERT INTO courses (course_id, capacity, waitlist_capacity, opens_at, closes_at, \
                                  opening, entries_open_at, draw_seed, credits, meetings, \
                                  draw_commitment) \
             SELECT c.*, encode(sha256(c.seed), 'hex') \
               FROM UNNEST($1::text[], $2::int[], $3::int[], $4::timestamptz[], \
                           $5::timestamptz[], $6::text[], $7::timestamptz[], $8::bytea[], \
                           $9::int[], $10::text[]) \
                    AS c(course_id, capacity, waitlist, opens_at, closes_at, opening, entries, \
                         seed, credits, meetings) \
             ON CONFLICT DO NOTHING RETURNING course_id",
        )
        .bind(&ids)
        .bind(&seats)
        .bind(&waitlists)
        .bind(&opens)
        .bind(&closes)
        .bind(&openings)
        .bind(&entries)
        .bind(&seeds)
        .bind(&credits)
        .bind(&meetings)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn list_courses(&self) -> Result<Vec<CourseRow>> {
        let sql = format!("SELECT {COURSE_COLUMNS} FROM courses ORDER BY course_id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(course_row).collect()
    }

    /// One course with its students and waitlist, read in one snapshot; `None` if it does not
    /// exist.
    pub async fn course_detail(&self, course: &CourseId) -> Result<Option<CourseDetail>> {
        let mut tx = self.snapshot().await?;
        let Some(row) = course_in(&mut tx, course).await? else {
            return Ok(None);
        };
        let enrolled_students = sqlx::query_scalar(
            "SELECT student_id FROM enrollments WHERE course_id = $1 \
             ORDER BY enrolled_at, student_id",
        )
        .bind(course.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let waitlist = sqlx::query_scalar(
            "SELECT student_id FROM waitlist WHERE course_id = $1 ORDER BY position",
        )
        .bind(course.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let entrants = sqlx::query(
            "SELECT student_id, draw_position, outcome FROM draw_entries WHERE course_id = $1 \
             ORDER BY draw_position, student_id",
        )
        .bind(course.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let entrants = entrants
            .iter()
            .map(|row| {
                Ok(Entrant {
                    student_id: row.try_get("student_id")?,
                    draw_position: row.try_get::<Option<i32>, _>("draw_position")?.map(to_u32),
                    outcome: row.try_get("outcome")?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Some(CourseDetail {
            course: course_row(&row)?,
            enrolled_students,
            waitlist,
            entrants,
        }))
    }

    /// Draw courses opening within `ahead` (or already open) whose results are not yet
    /// confirmed sent, soonest first, at most `limit`.
    pub async fn draws_due(
        &self,
        ahead: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<(CourseId, DateTime<Utc>)>> {
        let ahead = chrono::Duration::from_std(ahead).unwrap_or(chrono::Duration::zero());
        let horizon = Utc::now() + ahead;
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT course_id, opens_at FROM courses \
             WHERE opening = 'draw' AND NOT draw_announced AND opens_at <= $1 \
             ORDER BY opens_at LIMIT $2",
        )
        .bind(horizon)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, at)| CourseId::parse(id).ok().map(|id| (id, at)))
            .collect())
    }

    /// Every existing course id. The catalog is as large as the real course list, whatever
    /// clients send.
    pub async fn course_ids(&self) -> Result<Vec<CourseId>> {
        // Parsed from the rows' own text: an id is allocated once, as the catalog keeps it.
        let rows = sqlx::query("SELECT course_id FROM courses")
            .fetch_all(&self.pool)
            .await?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Ok(id) = CourseId::parse(row.try_get::<&str, _>(0)?) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Loads what a course actor needs: settings, enrolled students, the waitlist in order and
    /// every stored verdict. Returns `None` when the course does not exist.
    pub async fn load_course(&self, course: &CourseId) -> Result<Option<CourseSnapshot>> {
        let mut loaded = self.load_courses(std::slice::from_ref(course)).await?;
        Ok(loaded.remove(course))
    }

    /// [`Store::load_course`] for several courses at once, in one read-only snapshot of two
    /// statements whatever their number: a rush's first second starts hundreds of actors. A
    /// course that does not exist is absent from the map.
    pub async fn load_courses(
        &self,
        courses: &[CourseId],
    ) -> Result<HashMap<CourseId, CourseSnapshot>> {
        let ids: Vec<&str> = courses.iter().map(CourseId::as_str).collect();
        // The draw record of each course, whatever its age: kept beside the recent verdicts.
        let records: Vec<RequestId> = courses.iter().map(crate::domain::draw_request_id).collect();
        let records: Vec<&str> = records.iter().map(RequestId::as_str).collect();
        // One snapshot for the reads, so the counters, the rows and the outcomes agree.
        let mut tx = self.snapshot().await?;
        let rows = courses_with_people(&mut tx, &ids).await?;
        // The most recent verdicts of each course, as many as the actor keeps (oldest first),
        // then its draw record: a course's memory of its ids is bounded
        // (`domain::DECIDED_KEPT`); the rest are the database's to replay.
        let decided = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT course_id, request_id, {VERDICT_COLUMNS} FROM ( \
                 SELECT 0 AS part, recent.* FROM UNNEST($1::text[]) AS c(id) \
                 CROSS JOIN LATERAL ( \
                     SELECT * FROM answers a WHERE a.course_id = c.id \
                      ORDER BY a.batch_id DESC, a.decided_at DESC LIMIT $2) recent \
                 UNION ALL \
                 SELECT 1, a.* FROM UNNEST($1::text[], $3::text[]) AS d(id, record) \
                 JOIN answers a ON a.course_id = d.id AND a.request_id = d.record) kept \
              ORDER BY course_id, part, batch_id, decided_at"
        )))
        .bind(&ids)
        .bind(i64::try_from(crate::domain::DECIDED_KEPT).unwrap_or(i64::MAX))
        .bind(&records)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;

        let mut verdicts: HashMap<String, Vec<(RequestId, Verdict)>> = HashMap::new();
        for row in &decided {
            let course: String = row.try_get("course_id")?;
            let id = RequestId::parse(row.try_get::<&str, _>("request_id")?)
                .map_err(|e| corrupt(&course, &e))?;
            verdicts
                .entry(course)
                .or_default()
                .push((id, verdict_from_row(row)?));
        }
        rows.iter()
            .map(|row| {
                let course = CourseId::parse(row.try_get::<&str, _>("course_id")?)
                    .map_err(|e| StoreError::Inconsistent(format!("a stored course id: {e}")))?;
                let decided = verdicts.remove(course.as_str()).unwrap_or_default();
                let snapshot = snapshot_from_row(&course, row, decided)?;
                Ok((course, snapshot))
            })
            .collect()
    }
}

/// A course's snapshot from its row of [`courses_with_people`] and its kept verdicts.
fn snapshot_from_row(
    course: &CourseId,
    row: &sqlx::postgres::PgRow,
    decided: Vec<(RequestId, Verdict)>,
) -> Result<CourseSnapshot> {
    let parse_students = |ids: Vec<String>| -> Result<Vec<StudentId>> {
        ids.into_iter()
            .map(|s| StudentId::parse(s).map_err(|e| corrupt(course, &e)))
            .collect()
    };
    let entrant_students: Vec<String> = row.try_get("entrant_students")?;
    let entrant_requests: Vec<String> = row.try_get("entrant_requests")?;
    let entrants = entrant_students
        .into_iter()
        .zip(entrant_requests)
        .map(|(student, request)| {
            let student = StudentId::parse(student).map_err(|e| corrupt(course, &e))?;
            let request = RequestId::parse(request).map_err(|e| corrupt(course, &e))?;
            Ok((student, request))
        })
        .collect::<Result<_>>()?;
    Ok(CourseSnapshot {
        settings: settings_from_row(row)?,
        enrolled: parse_students(row.try_get("seated")?)?,
        waitlist: parse_students(row.try_get("waiting")?)?,
        decided,
        entrants,
        drawn: row
            .try_get::<Option<DateTime<Utc>>, _>("drawn_at")?
            .is_some(),
        draw_announced: row.try_get("draw_announced")?,
    })
}

/// The columns of the `answers` view a verdict is read from.
pub(super) const VERDICT_COLUMNS: &str = "outcome, reason, seats_left, waitlist_position, \
     window_at, draw_commitment, entries_open_at, draw_position, rule";

/// A stored verdict, from a row of [`VERDICT_COLUMNS`].
pub(super) fn verdict_from_row(row: &sqlx::postgres::PgRow) -> Result<Verdict> {
    let outcome: String = row.try_get("outcome")?;
    let reason: Option<String> = row.try_get("reason")?;
    let seats_left: i32 = row.try_get("seats_left")?;
    let position: Option<i32> = row.try_get("waitlist_position")?;
    let draw = DrawNote {
        commitment: row.try_get("draw_commitment")?,
        position: row.try_get::<Option<i32>, _>("draw_position")?.map(to_u32),
        entries_open_at: row.try_get("entries_open_at")?,
    };
    let reason = reason.as_deref().and_then(Reason::parse);
    let rule = match (
        reason,
        row.try_get::<Option<sqlx::types::Json<RuleFacts>>, _>("rule")?,
    ) {
        (Some(reason), Some(facts)) => Refusal::from_facts(reason, facts.0).map(Box::new),
        (Some(Reason::UnknownStudent), None) => Some(Box::new(Refusal::UnknownStudent)),
        _ => None,
    };
    Ok(Verdict {
        outcome: Outcome::parse(&outcome)
            .ok_or_else(|| StoreError::Inconsistent(format!("unknown outcome {outcome:?}")))?,
        reason,
        seats_left: to_u32(seats_left),
        waitlist_position: position.map(to_u32),
        window_at: row.try_get("window_at")?,
        draw: (draw != DrawNote::default()).then(|| Box::new(draw)),
        rule,
    })
}

fn corrupt(course: &dyn std::fmt::Display, e: &dyn std::fmt::Display) -> StoreError {
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
