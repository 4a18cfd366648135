//! The registration rules where they must be exact across workers: each registry student's
//! ledger of seats (`student_seats`), read and written in the student's turn.
//!
//! A student's choices for several courses land on several partitions, often on several
//! workers, in the same instant. Each judgement takes the turn of the students it concerns (in
//! id order, so judgements never deadlock), reads their seats and claims, judges its requests
//! in order with the pure rules of [`Ledger`], and writes the claims it grants before the
//! lock is released: whichever worker judges a student next counts them. The triggers of
//! `student_seats` refuse any row past the cap, clashing with another, or under a hold (I8),
//! whatever wrote it. A claim becomes a held seat in the commit that gives the seat, and is
//! released in the commit of a request that did not take it (`settle_student_seats`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::courses::to_u32;
use super::{Result, Store};
use crate::domain::{
    Action, Claim, CourseId, Ledger, Meetings, Refusal, Request, RequestId, Ruling, SeatHeld,
    StudentId, StudentRecord,
};

/// Students judged in one transaction at most by a promotion or a draw: each takes a lock, and
/// the server's lock table is shared by every transaction.
pub const JUDGED_AT_ONCE: usize = 512;

/// A claim to write: the seat `course` promised to `student` by `request`; for a swap, the
/// seat it gives up (`releases`), which the ledger keeps but no longer counts until the swap is
/// settled.
struct NewClaim<'a> {
    student: &'a StudentId,
    course: &'a CourseId,
    credits: u32,
    meetings: &'a Meetings,
    request: &'a RequestId,
    releases: Option<&'a CourseId>,
}

impl Store {
    /// Whether a student registry is loaded (any student imported): the rules are on.
    pub async fn registry_loaded(&self) -> Result<bool> {
        registry_loaded(&mut *self.pool.acquire().await?).await
    }

    /// Judges a batch of requests under the rules, in order, at `now`: one ruling per request.
    /// Every ruling is [`Ruling::Off`] when no registry is loaded.
    pub async fn judge(&self, requests: &[&Request], now: DateTime<Utc>) -> Result<Vec<Ruling>> {
        let mut students: Vec<&str> = requests
            .iter()
            .filter(|r| is_students(r))
            .map(|r| r.student_id.as_str())
            .collect();
        students.sort_unstable();
        students.dedup();
        let enrolls: Vec<&str> = requests
            .iter()
            .filter(|r| matches!(r.action, Action::Enroll | Action::Swap(_)))
            .map(|r| r.course_id.as_str())
            .collect();
        let mut tx = self.pool.begin().await?;
        // Read before the students' turn is taken: the lock is held for as short as can be.
        let courses = read_courses(&mut tx, &enrolls).await?;
        let mut ledger = read_ledger(&mut tx, &students).await?;
        if ledger.is_empty() && !registry_loaded(&mut tx).await? {
            tx.rollback().await?;
            return Ok(vec![Ruling::Off; requests.len()]);
        }
        let mut claims = Vec::new();
        let mut rulings: Vec<Ruling> = requests
            .iter()
            .map(|request| {
                if !is_students(request) {
                    return Ruling::Allowed;
                }
                let student = &request.student_id;
                let asked = courses.get(request.course_id.as_str());
                let giving_up = match &request.action {
                    Action::Swap(given) => Some(given),
                    _ => None,
                };
                match (&request.action, asked) {
                    // Nothing to claim: only the student's standing is judged.
                    (Action::Enroll, Some(facts)) if !facts.seat_free => {
                        match ledger.may_ask(student, now) {
                            Err(refusal) => Ruling::Refused(refusal),
                            Ok(()) => Ruling::Unclaimed,
                        }
                    }
                    (Action::Enroll | Action::Swap(_), Some(facts)) => {
                        let (credits, meetings) = (&facts.credits, &facts.meetings);
                        let asked = (*credits, meetings);
                        match ledger.claim_seat(student, &request.course_id, asked, giving_up, now)
                        {
                            None => Ruling::Refused(Refusal::UnknownStudent),
                            Some(Err(refusal)) if !refusal.seat_only() => Ruling::Refused(refusal),
                            Some(Err(refusal)) => Ruling::Seat(Err(refusal)),
                            Some(Ok(claim)) => {
                                if claim == Claim::New {
                                    claims.push(NewClaim {
                                        student,
                                        course: &request.course_id,
                                        credits: *credits,
                                        meetings,
                                        request: &request.request_id,
                                        releases: giving_up,
                                    });
                                }
                                Ruling::Seat(Ok(()))
                            }
                        }
                    }
                    // An enroll for a course that does not exist: its course answers it, but
                    // only to a student of the registry.
                    (Action::Enroll | Action::Swap(_), None) => {
                        match ledger.may_ask(student, now) {
                            Err(refusal) => Ruling::Refused(refusal),
                            Ok(()) => Ruling::Allowed,
                        }
                    }
                    // A drop is always allowed to a student of the registry.
                    _ => match ledger.may_ask(student, now) {
                        Err(Refusal::UnknownStudent) => Ruling::Refused(Refusal::UnknownStudent),
                        _ => Ruling::Allowed,
                    },
                }
            })
            .collect();
        write_claims(&mut tx, &claims).await?;
        replays_go_on(&mut tx, requests, &mut rulings).await?;
        tx.commit().await?;
        Ok(rulings)
    }

    /// Judges the students waiting for `course`, in line order, for the `seats` that
    /// `cause` frees there, and claims a seat for each allowed, until the seats are claimed.
    /// One answer per student judged, in order: `Ok` for a seat claimed (or a student outside
    /// the registry, who needs no claim), `Err` for one the rules skip.
    ///
    /// The students are judged in chunks of [`JUDGED_AT_ONCE`], each in a transaction of its
    /// own, so a draw of thousands of entrants never holds thousands of locks at once.
    pub async fn claim_for_promotion(
        &self,
        course: &CourseId,
        cause: &RequestId,
        waiting: &[StudentId],
        seats: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<(StudentId, Result<(), Refusal>)>> {
        let mut judged = Vec::new();
        let mut granted = 0;
        for chunk in waiting.chunks(JUDGED_AT_ONCE) {
            if granted == seats {
                break;
            }
            let more = self
                .claim_chunk(course, cause, chunk, seats - granted, now)
                .await?;
            granted += more.iter().filter(|(_, v)| v.is_ok()).count();
            judged.extend(more);
        }
        Ok(judged)
    }

    async fn claim_chunk(
        &self,
        course: &CourseId,
        cause: &RequestId,
        waiting: &[StudentId],
        seats: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<(StudentId, Result<(), Refusal>)>> {
        let mut students: Vec<&str> = waiting.iter().map(StudentId::as_str).collect();
        students.sort_unstable();
        let mut tx = self.pool.begin().await?;
        let courses = read_courses(&mut tx, &[course.as_str()]).await?;
        let mut ledger = read_ledger(&mut tx, &students).await?;
        let Some(CourseFacts {
            credits, meetings, ..
        }) = courses.get(course.as_str())
        else {
            tx.rollback().await?;
            return Ok(Vec::new());
        };
        let mut judged = Vec::new();
        let mut claims = Vec::new();
        let mut granted = 0;
        for student in waiting {
            if granted == seats {
                break;
            }
            let verdict = match ledger.claim_seat(student, course, (*credits, meetings), None, now)
            {
                None => Ok(()),
                Some(Ok(claim)) => {
                    claims.push((student, claim));
                    Ok(())
                }
                Some(Err(refusal)) => Err(refusal),
            };
            granted += usize::from(verdict.is_ok());
            judged.push((student.clone(), verdict));
        }
        // New claims, and claims in flight taken over for this promotion (written anew if the
        // commit of their own request released them meanwhile): released only with the
        // request that frees the seat.
        let taken: Vec<NewClaim<'_>> = claims
            .iter()
            .filter(|(_, claim)| *claim != Claim::Held)
            .map(|(student, _)| NewClaim {
                student,
                course,
                credits: *credits,
                meetings,
                request: cause,
                releases: None,
            })
            .collect();
        write_rows(&mut tx, &taken, Written::TakingOver).await?;
        tx.commit().await?;
        Ok(judged)
    }
}

/// A refused request whose id was decided before (a client's retry, a redelivery) goes on to
/// its course, which replays the stored outcome: a refusal now would contradict it.
async fn replays_go_on(
    tx: &mut sqlx::PgConnection,
    requests: &[&Request],
    rulings: &mut [Ruling],
) -> Result<()> {
    let refused: Vec<&str> = requests
        .iter()
        .zip(rulings.iter())
        .filter(|(_, r)| matches!(r, Ruling::Refused(_)))
        .map(|(q, _)| q.request_id.as_str())
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    let stored: std::collections::HashSet<String> =
        sqlx::query_scalar("SELECT request_id FROM outcomes WHERE request_id = ANY ($1)")
            .bind(&refused)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    for (request, ruling) in requests.iter().zip(rulings.iter_mut()) {
        if matches!(ruling, Ruling::Refused(_)) && stored.contains(request.request_id.as_str()) {
            *ruling = Ruling::Allowed;
        }
    }
    Ok(())
}

/// Requests of a student, as the rules see them (not a course change or a draw).
fn is_students(request: &Request) -> bool {
    matches!(
        request.action,
        Action::Enroll | Action::Drop | Action::Swap(_)
    )
}

pub(super) async fn registry_loaded(tx: &mut sqlx::PgConnection) -> Result<bool> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM students)")
        .fetch_one(&mut *tx)
        .await?)
}

/// The registry records of `students`, with their seats, read in their turn (taken first, in
/// key order, and held until the transaction ends).
async fn read_ledger(tx: &mut sqlx::PgConnection, students: &[&str]) -> Result<Ledger> {
    let mut ledger = Ledger::default();
    if students.is_empty() {
        return Ok(ledger);
    }
    sqlx::query("SELECT lock_students($1)")
        .bind(students)
        .execute(&mut *tx)
        .await?;
    // One statement, so one snapshot taken after the turn: a judgement that held it before
    // is seen whole.
    let rows = sqlx::query(
        "SELECT s.student_id, s.max_credits, s.registration_opens_at, s.holds, \
                l.course_id, l.credits, l.meetings, l.held, \
                l.held AND l.released_by IS NULL AS swappable, \
                NOT l.held AND EXISTS (SELECT 1 FROM student_seats r \
                                        WHERE r.student_id = l.student_id \
                                          AND r.released_by = l.request_id) AS swap_claim \
           FROM students s LEFT JOIN student_seats l ON l.student_id = s.student_id \
          WHERE s.student_id = ANY ($1)",
    )
    .bind(students)
    .fetch_all(&mut *tx)
    .await?;
    for row in &rows {
        let Ok(student) = StudentId::parse(row.try_get::<&str, _>("student_id")?) else {
            continue;
        };
        if !ledger.contains(&student) {
            let record = StudentRecord {
                max_credits: to_u32(row.try_get("max_credits")?),
                registration_opens_at: row.try_get("registration_opens_at")?,
                holds: row.try_get("holds")?,
            };
            ledger.insert(student.clone(), record);
        }
        let Some(course) = row
            .try_get::<Option<String>, _>("course_id")?
            .and_then(|c| CourseId::parse(c).ok())
        else {
            continue;
        };
        // Stored by this module from a parsed value; an unreadable one clashes with nothing.
        let meetings = row
            .try_get::<Option<String>, _>("meetings")?
            .and_then(|m| Meetings::parse(&m).ok())
            .unwrap_or_default();
        let seat = SeatHeld {
            course,
            credits: to_u32(row.try_get::<Option<i32>, _>("credits")?.unwrap_or(0)),
            meetings,
            held: row.try_get::<Option<bool>, _>("held")?.unwrap_or(false),
            swappable: row
                .try_get::<Option<bool>, _>("swappable")?
                .unwrap_or(false),
            swap_claim: row
                .try_get::<Option<bool>, _>("swap_claim")?
                .unwrap_or(false),
        };
        ledger.hold(&student, seat);
    }
    Ok(ledger)
}

/// The credits and meetings of the courses asked for.
async fn read_courses(
    tx: &mut sqlx::PgConnection,
    courses: &[&str],
) -> Result<HashMap<String, CourseFacts>> {
    if courses.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT course_id, credits, meetings, \
                enrolled < capacity AND NOT (opening = 'draw' AND drawn_at IS NULL) AS seat_free \
           FROM courses WHERE course_id = ANY ($1)",
    )
    .bind(courses)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|row| {
            let meetings = Meetings::parse(row.try_get("meetings")?).unwrap_or_default();
            let facts = CourseFacts {
                credits: to_u32(row.try_get("credits")?),
                meetings,
                seat_free: row.try_get("seat_free")?,
            };
            Ok((row.try_get("course_id")?, facts))
        })
        .collect()
}

/// What the rules read of a course asked for.
struct CourseFacts {
    credits: u32,
    meetings: Meetings,
    /// A seat is free as far as the commits so far say (a draw course not drawn yet has none:
    /// an enroll there is an entry). When none is, an enroll claims nothing (in a rush most ask
    /// for full courses): its actor claims one in the rare case its memory has a seat the
    /// commits have not shown yet.
    seat_free: bool,
}

async fn write_claims(tx: &mut sqlx::PgConnection, claims: &[NewClaim<'_>]) -> Result<()> {
    write_rows(tx, claims, Written::Claims).await
}

/// What ledger rows are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Written {
    /// New claims.
    Claims,
    /// Claims for a promotion or a draw, taking over a claim in flight for the same seat.
    TakingOver,
    /// Seats already committed.
    Held,
}

/// Writes ledger rows.
async fn write_rows(
    tx: &mut sqlx::PgConnection,
    claims: &[NewClaim<'_>],
    written: Written,
) -> Result<()> {
    if claims.is_empty() {
        return Ok(());
    }
    let students: Vec<&str> = claims.iter().map(|c| c.student.as_str()).collect();
    let courses: Vec<&str> = claims.iter().map(|c| c.course.as_str()).collect();
    let credits: Vec<i32> = claims
        .iter()
        .map(|c| i32::try_from(c.credits).unwrap_or(i32::MAX))
        .collect();
    let meetings: Vec<String> = claims.iter().map(|c| c.meetings.to_string()).collect();
    let minutes: Vec<String> = claims.iter().map(|c| multirange(c.meetings)).collect();
    let requests: Vec<&str> = claims.iter().map(|c| c.request.as_str()).collect();
    // A swap's seat given up first: the seat it takes may clash with it.
    let (released, releasers): (Vec<(&str, &str)>, Vec<&str>) = claims
        .iter()
        .filter_map(|c| {
            Some((
                (c.student.as_str(), c.releases?.as_str()),
                c.request.as_str(),
            ))
        })
        .unzip();
    if !released.is_empty() {
        let (students, courses): (Vec<&str>, Vec<&str>) = released.into_iter().unzip();
        sqlx::query(
            "UPDATE student_seats l SET released_by = r.request \
               FROM UNNEST($1::text[], $2::text[], $3::text[]) AS r(student, course, request) \
              WHERE l.student_id = r.student AND l.course_id = r.course",
        )
        .bind(&students)
        .bind(&courses)
        .bind(&releasers)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO student_seats \
           (student_id, course_id, credits, meetings, minutes, request_id, held) \
         SELECT s, c, n, m, w::int4multirange, r, $7 \
           FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[]) \
                AS t(s, c, n, m, w, r) \
         ON CONFLICT (student_id, course_id) DO UPDATE SET request_id = EXCLUDED.request_id \
          WHERE $8 AND NOT student_seats.held",
    )
    .bind(&students)
    .bind(&courses)
    .bind(&credits)
    .bind(&meetings)
    .bind(&minutes)
    .bind(&requests)
    .bind(written == Written::Held)
    .bind(written == Written::TakingOver)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The meetings as an `int4multirange` literal of minutes of the week.
fn multirange(meetings: &Meetings) -> String {
    let ranges: Vec<String> = meetings
        .minutes_of_week()
        .map(|(start, end)| format!("[{start},{end})"))
        .collect();
    format!("{{{}}}", ranges.join(","))
}

/// Counts in the ledger the seats `students` already hold (taken before they were imported,
/// or before a registry was loaded at all): the rules judge their next requests with them.
pub(super) async fn count_seats_held(tx: &mut sqlx::PgConnection, students: &[&str]) -> Result<()> {
    let rows = sqlx::query(
        "SELECT e.student_id, e.course_id, e.request_id, c.credits, c.meetings \
           FROM enrollments e JOIN courses c ON c.course_id = e.course_id \
          WHERE e.student_id = ANY ($1) \
            AND NOT EXISTS (SELECT 1 FROM student_seats l \
                             WHERE l.student_id = e.student_id AND l.course_id = e.course_id)",
    )
    .bind(students)
    .fetch_all(&mut *tx)
    .await?;
    let mut seats = Vec::with_capacity(rows.len());
    for row in &rows {
        let (Ok(student), Ok(course), Ok(request)) = (
            StudentId::parse(row.try_get::<&str, _>("student_id")?),
            CourseId::parse(row.try_get::<&str, _>("course_id")?),
            RequestId::parse(row.try_get::<&str, _>("request_id")?),
        ) else {
            continue;
        };
        let meetings = Meetings::parse(row.try_get("meetings")?).unwrap_or_default();
        let credits = to_u32(row.try_get("credits")?);
        seats.push((student, course, request, credits, meetings));
    }
    let held: Vec<NewClaim<'_>> = seats
        .iter()
        .map(|(student, course, request, credits, meetings)| NewClaim {
            student,
            course,
            credits: *credits,
            meetings,
            request,
            releases: None,
        })
        .collect();
    write_rows(tx, &held, Written::Held).await?;
    Ok(())
}
