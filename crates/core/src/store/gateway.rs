//! What the web gateway keeps in Postgres: the idempotency keys it accepted, the students'
//! final events in one shared order, and the reads its pages make (a stored answer, a student's
//! standing).

use sqlx::Row;

use super::courses::{VERDICT_COLUMNS, to_u32, verdict_from_row};
use super::{Result, Store};
use crate::protocol::Answer;

/// A key to record: the request id it maps to and the fingerprint of the request it names.
#[derive(Debug, Clone)]
pub struct KeyClaim {
    pub request_id: String,
    pub fingerprint: Vec<u8>,
}

/// What the database says of a key just offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyStanding {
    /// Recorded now: publish its request.
    Fresh,
    /// Recorded before for another request.
    Mismatch,
    /// Recorded before for this request, which is decided.
    Decided,
    /// Recorded before for this request, not decided yet, accepted this long ago.
    Undecided { accepted_secs_ago: f64 },
}

/// A final event as recorded for its student.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Names the event so that a repeat of it (a replay, a redelivery) is recorded once.
    pub dedup: String,
    pub student_id: String,
    /// `final`, `promoted`, `promotion_skipped` or `draw`.
    pub kind: &'static str,
    pub answer: String,
}

/// A recorded event, with its place in the shared order.
#[derive(Debug, Clone)]
pub struct StudentEvent {
    pub seq: i64,
    pub student_id: String,
    pub kind: String,
    /// The answer object, as JSON text.
    pub answer: String,
}

/// A student's seats and waitlist places.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Standing {
    pub enrolled: Vec<String>,
    pub waitlisted: Vec<WaitlistPlace>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct WaitlistPlace {
    pub course_id: String,
    pub position: u32,
}

/// Recorders of events take this transaction lock first, so that event numbers are committed
/// in the order they were drawn (see the migration that made `student_events`).
const EVENT_ORDER_LOCK: i64 = 0x5ea7_0e7e;

impl Store {
    /// Records keys not seen before and tells, for each offered key in order, where it stands.
    pub async fn record_keys(&self, claims: &[KeyClaim]) -> Result<Vec<KeyStanding>> {
        let ids: Vec<&str> = claims.iter().map(|c| c.request_id.as_str()).collect();
        let prints: Vec<&[u8]> = claims.iter().map(|c| c.fingerprint.as_slice()).collect();
        // Two statements, so that the common case (every key new) touches nothing but the
        // insert's own unique index. One statement that also read the keys and outcomes back
        // was planned, on tables a rush had just filled and whose statistics still called
        // them small, as scans of both whole tables for every batch.
        let mut fresh: std::collections::HashSet<String> = sqlx::query_scalar(
            "INSERT INTO gateway_keys (request_id, fingerprint) \
             SELECT * FROM unnest($1::text[], $2::bytea[]) \
             ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
        )
        .bind(&ids)
        .bind(&prints)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        let seen: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !fresh.contains(*id))
            .collect();
        let mut earlier = std::collections::HashMap::with_capacity(seen.len());
        if !seen.is_empty() {
            let rows = sqlx::query(
                "SELECT k.request_id, k.fingerprint, \
                        EXTRACT(EPOCH FROM now() - k.accepted_at)::float8 AS age, \
                        EXISTS (SELECT 1 FROM outcomes d WHERE d.request_id = k.request_id) \
                          AS decided \
                   FROM gateway_keys k WHERE k.request_id = ANY($1)",
            )
            .bind(&seen)
            .fetch_all(&self.pool)
            .await?;
            for row in rows {
                let id: String = row.try_get("request_id")?;
                let print: Vec<u8> = row.try_get("fingerprint")?;
                let age: f64 = row.try_get("age")?;
                let decided: bool = row.try_get("decided")?;
                earlier.insert(id, (print, age, decided));
            }
        }
        let mut standings = Vec::with_capacity(claims.len());
        for c in claims {
            // A key offered twice in one batch is fresh for its first offer only.
            let standing = if fresh.remove(&c.request_id) {
                KeyStanding::Fresh
            } else {
                match earlier.get(&c.request_id) {
                    Some((print, _, _)) if *print != c.fingerprint => KeyStanding::Mismatch,
                    Some((_, _, true)) => KeyStanding::Decided,
                    Some((_, age, false)) => KeyStanding::Undecided {
                        accepted_secs_ago: *age,
                    },
                    // Taken by an earlier offer of this batch, or forgotten between the two
                    // statements: another offer holds the key.
                    None => KeyStanding::Undecided {
                        accepted_secs_ago: 0.0,
                    },
                }
            };
            standings.push(standing);
        }
        Ok(standings)
    }

    /// Forgets a key whose request could not be published, so that a retry may go.
    pub async fn forget_key(&self, request_id: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM gateway_keys k WHERE request_id = $1 \
               AND NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.request_id = k.request_id)",
        )
        .bind(request_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The fingerprint recorded with a key, if the key was ever recorded.
    pub async fn key_fingerprint(&self, request_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT fingerprint FROM gateway_keys WHERE request_id = $1")
                .bind(request_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The final answer stored for a request id, as the worker would replay it.
    pub async fn stored_answer(&self, request_id: &str) -> Result<Option<Answer>> {
        Ok(self.stored_answers(&[request_id]).await?.pop())
    }

    /// The final answers stored for these request ids (those that have one, in no order).
    pub async fn stored_answers(&self, request_ids: &[&str]) -> Result<Vec<Answer>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT request_id, course_id, student_id, action, {VERDICT_COLUMNS} \
               FROM answers WHERE request_id = ANY($1)"
        )))
        .bind(request_ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let verdict = verdict_from_row(row)?;
                let id: String = row.try_get("request_id")?;
                let course: String = row.try_get("course_id")?;
                let student: String = row.try_get("student_id")?;
                let action: String = row.try_get("action")?;
                Ok(Answer::stored(&id, &course, &student, &action, &verdict))
            })
            .collect()
    }

    /// Records final events, each once; returns how many were new.
    pub async fn record_events(&self, events: &[NewEvent]) -> Result<u64> {
        if events.is_empty() {
            return Ok(0);
        }
        let dedup: Vec<&str> = events.iter().map(|e| e.dedup.as_str()).collect();
        let students: Vec<&str> = events.iter().map(|e| e.student_id.as_str()).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
        let answers: Vec<&str> = events.iter().map(|e| e.answer.as_str()).collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EVENT_ORDER_LOCK)
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO student_events (dedup, student_id, kind, answer) \
             SELECT d, s, k, a::json \
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
                    WITH ORDINALITY AS e(d, s, k, a, n) \
              ORDER BY n \
             ON CONFLICT (dedup) DO NOTHING",
        )
        .bind(&dedup)
        .bind(&students)
        .bind(&kinds)
        .bind(&answers)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(inserted)
    }

    /// Events of every student after `after`, in order, at most `limit`.
    pub async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<StudentEvent>> {
        let rows = sqlx::query(
            "SELECT seq, student_id, kind, answer::text AS answer FROM student_events \
              WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// One student's events after `after`, in order, at most `limit`.
    pub async fn student_events_after(
        &self,
        student: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StudentEvent>> {
        let rows = sqlx::query(
            "SELECT seq, student_id, kind, answer::text AS answer FROM student_events \
              WHERE student_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(student)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// The number of the last event recorded (0 if none).
    pub async fn last_event(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT coalesce(max(seq), 0)::int8 FROM student_events")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Forgets keys and events older than `days`; returns how many rows went.
    pub async fn prune_gateway(&self, days: u32) -> Result<u64> {
        let cutoff = f64::from(days) * 86_400.0;
        let keys = sqlx::query(
            "DELETE FROM gateway_keys WHERE accepted_at < now() - make_interval(secs => $1)",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let events = sqlx::query(
            "DELETE FROM student_events WHERE recorded_at < now() - make_interval(secs => $1)",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(keys + events)
    }

    /// The seats a student holds and the waitlist places they have.
    pub async fn standing(&self, student: &str) -> Result<Standing> {
        let mut tx = self.snapshot().await?;
        let enrolled = sqlx::query_scalar(
            "SELECT course_id FROM enrollments WHERE student_id = $1 ORDER BY course_id",
        )
        .bind(student)
        .fetch_all(&mut *tx)
        .await?;
        let waiting = sqlx::query(
            "SELECT course_id, position FROM waitlist WHERE student_id = $1 ORDER BY course_id",
        )
        .bind(student)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let waitlisted = waiting
            .iter()
            .map(|r| {
                Ok(WaitlistPlace {
                    course_id: r.try_get("course_id")?,
                    position: to_u32(r.try_get("position")?),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Standing {
            enrolled,
            waitlisted,
        })
    }

    /// Whether a registry of students is loaded (the registrar's rules apply).
    pub async fn has_registry(&self) -> Result<bool> {
        let mut conn = self.pool.acquire().await?;
        super::student_seats::registry_loaded(&mut conn).await
    }
}

fn event_from_row(row: &sqlx::postgres::PgRow) -> Result<StudentEvent> {
    Ok(StudentEvent {
        seq: row.try_get("seq")?,
        student_id: row.try_get("student_id")?,
        kind: row.try_get("kind")?,
        answer: row.try_get("answer")?,
    })
}
