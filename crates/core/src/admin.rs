//! Course administration for operators: creating courses, changing them through their course
//! actor, importing a term's courses from CSV, and showing one course in full.
//!
//! Creating a course writes Postgres directly: nobody has asked for it yet, so no actor holds it
//! and no decision can race the insert. Changing an existing course is a `configure` request
//! published to the course's partition like any enroll, so its actor decides it in order with the
//! requests around it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};

use crate::client::{Answers, Client};
use crate::domain::{
    Action, CourseId, CoursePatch, CourseSettings, DrawSeed, HoldId, MAX_HOLDS, Meetings, Opening,
    Request, RequestId, StudentId, StudentRecord,
};
use crate::protocol::{MAX_CREDITS, MAX_SEATS};
use crate::store::Store;

/// Parses an instant given on the command line or in a CSV file: RFC 3339
/// (`2026-09-01T09:00:00Z`, `2026-09-01T11:00:00+02:00`), or `none` to clear it.
pub fn parse_instant(raw: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
    let raw = raw.trim();
    if raw.is_empty() || raw.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let at = DateTime::parse_from_rfc3339(raw).with_context(|| {
        format!("{raw:?} is not an RFC 3339 instant such as 2026-09-01T09:00:00Z")
    })?;
    Ok(Some(at.with_timezone(&Utc)))
}

/// An instant on the command line: RFC 3339, or `none` to clear it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstantArg(pub Option<DateTime<Utc>>);

impl std::str::FromStr for InstantArg {
    type Err = anyhow::Error;

    fn from_str(raw: &str) -> anyhow::Result<Self> {
        parse_instant(raw).map(Self)
    }
}

/// Checks settings an operator typed before anything is written or sent.
pub fn check_settings(course: &CourseId, settings: &CourseSettings) -> anyhow::Result<()> {
    if settings.capacity > MAX_SEATS || settings.waitlist > MAX_SEATS {
        bail!("course {course}: seats and waitlist are limited to {MAX_SEATS}");
    }
    if settings.credits > MAX_CREDITS {
        bail!("course {course}: credits are limited to {MAX_CREDITS}");
    }
    if !settings.window_is_valid() {
        bail!(
            "course {course}: entries must open before it opens, and it must open before it closes"
        );
    }
    if settings.opening == Opening::Draw && settings.opens_at.is_none() {
        bail!("course {course}: a draw needs an opening instant (--opens-at) to draw at");
    }
    Ok(())
}

/// Parses an opening policy given on the command line or in a CSV file (empty: first-come).
pub fn parse_opening(raw: &str) -> anyhow::Result<Opening> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(Opening::FirstCome);
    }
    Opening::parse(raw).with_context(|| format!("opening {raw:?} is not first-come or draw"))
}

/// New settings of a course created here: a draw gets its seed now, and its commitment is
/// public from this moment.
pub fn with_seed(mut settings: CourseSettings) -> CourseSettings {
    if settings.opening == Opening::Draw && settings.draw_seed.is_none() {
        settings.draw_seed = Some(DrawSeed::generate());
    }
    settings
}

/// Sends a change to a course through its actor and waits for the final answer.
pub async fn configure(
    client: &Client,
    course: &CourseId,
    patch: CoursePatch,
    timeout: Duration,
) -> anyhow::Result<Answers> {
    let request = Request {
        request_id: RequestId::parse(format!("cfg-{}", uuid::Uuid::new_v4().simple()))?,
        action: Action::Configure(Box::new(patch)),
        course_id: course.clone(),
        // The worker reads the operator from the broker-checked user_id, not from here.
        student_id: StudentId::parse("operator")?,
    };
    client.request(&request, false, timeout).await
}

/// One row of a course file.
#[derive(Debug, Clone, serde::Deserialize)]
struct CourseLine {
    course_id: String,
    seats: u32,
    #[serde(default)]
    waitlist: Option<u32>,
    #[serde(default)]
    opens_at: Option<String>,
    #[serde(default)]
    closes_at: Option<String>,
    /// `first-come` (or empty) or `draw`.
    #[serde(default)]
    opening: Option<String>,
    #[serde(default)]
    entries_open_at: Option<String>,
    #[serde(default)]
    credits: Option<u32>,
    /// `MO 09:00-10:30;WE 09:00-10:30`.
    #[serde(default)]
    meetings: Option<String>,
}

/// Reads a course file: a CSV with the header `course_id,seats,waitlist,opens_at,closes_at`,
/// and optionally any of `opening,entries_open_at,credits,meetings` (all but the first two may
/// be left empty). Every line is checked before anything is written, and
/// every error names its line.
pub fn read_course_file(path: &Path) -> anyhow::Result<Vec<(CourseId, CourseSettings)>> {
    read_keyed(path, "course", |line: CourseLine| {
        let course = CourseId::parse(line.course_id)?;
        let instant = |raw: &Option<String>| parse_instant(raw.as_deref().unwrap_or(""));
        let settings = with_seed(CourseSettings {
            capacity: line.seats,
            waitlist: line.waitlist.unwrap_or(0),
            opens_at: instant(&line.opens_at)?,
            closes_at: instant(&line.closes_at)?,
            opening: parse_opening(line.opening.as_deref().unwrap_or(""))?,
            entries_open_at: instant(&line.entries_open_at)?,
            draw_seed: None,
            credits: line.credits.unwrap_or(0),
            meetings: Meetings::parse(line.meetings.as_deref().unwrap_or(""))?,
        });
        check_settings(&course, &settings)?;
        Ok((course, settings))
    })
}

/// Reads a registrar's CSV file into keyed rows, each line turned into one by `parse`. Every
/// line is checked before anything is written, every error names its line, and a key given
/// twice is refused.
fn read_keyed<L, K, V>(
    path: &Path,
    what: &str,
    mut parse: impl FnMut(L) -> anyhow::Result<(K, V)>,
) -> anyhow::Result<Vec<(K, V)>>
where
    L: serde::de::DeserializeOwned,
    K: Eq + std::hash::Hash + Clone + std::fmt::Display,
{
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut rows = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (index, line) in reader.deserialize::<L>().enumerate() {
        // Line 1 is the header.
        let at = || format!("{} line {}", path.display(), index + 2);
        let (key, value) = line
            .map_err(anyhow::Error::from)
            .and_then(&mut parse)
            .with_context(at)?;
        if !seen.insert(key.clone()) {
            bail!("{}: {what} {key} appears twice", at());
        }
        rows.push((key, value));
    }
    Ok(rows)
}

/// One row of a student file.
#[derive(Debug, Clone, serde::Deserialize)]
struct StudentLine {
    student_id: String,
    max_credits: u32,
    #[serde(default)]
    registration_opens_at: Option<String>,
    /// `;`-separated hold names, empty for none.
    #[serde(default)]
    holds: Option<String>,
}

/// Reads a student file: a CSV with the header `student_id,max_credits,registration_opens_at,
/// holds` (the last two may be left empty; holds are `;`-separated names of the id alphabet).
/// Every line is checked before anything is written, and every error names its line.
pub fn read_student_file(path: &Path) -> anyhow::Result<Vec<(StudentId, StudentRecord)>> {
    read_keyed(path, "student", |line: StudentLine| {
        let student = StudentId::parse(line.student_id)?;
        let holds: Vec<String> = line
            .holds
            .as_deref()
            .unwrap_or("")
            .split(';')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| HoldId::parse(h).map(|h| h.to_string()))
            .collect::<Result<_, _>>()?;
        if holds.len() > MAX_HOLDS {
            bail!("{} holds, the limit is {MAX_HOLDS}", holds.len());
        }
        let record = StudentRecord {
            max_credits: line.max_credits,
            registration_opens_at: parse_instant(
                line.registration_opens_at.as_deref().unwrap_or(""),
            )?,
            holds,
        };
        Ok((student, record))
    })
}

/// What an import did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Imported {
    pub created: Vec<String>,
    /// Existing courses whose actor applied the file's settings.
    pub changed: Vec<String>,
    /// Existing courses whose actor refused the change, with the reason.
    pub refused: Vec<(String, String)>,
}

/// Creates the file's new courses in one statement, and sends the file's settings to each
/// existing course through its actor.
pub async fn import(
    store: &Store,
    client: &Client,
    courses: Vec<(CourseId, CourseSettings)>,
    timeout: Duration,
) -> anyhow::Result<Imported> {
    let created = store.add_courses(&courses).await?;
    let mut imported = Imported::default();
    for (course, settings) in courses {
        if created.iter().any(|c| c == course.as_str()) {
            continue;
        }
        // The worker chooses the seed of a course that becomes a draw, so none is sent.
        let patch = CoursePatch {
            seats: Some(settings.capacity),
            waitlist: Some(settings.waitlist),
            opens_at: Some(settings.opens_at),
            closes_at: Some(settings.closes_at),
            opening: Some(settings.opening),
            entries_open_at: Some(settings.entries_open_at),
            draw_seed: None,
            credits: Some(settings.credits),
            meetings: Some(settings.meetings.clone()),
        };
        let answer = configure(client, &course, patch, timeout)
            .await
            .with_context(|| format!("changing course {course}"))?
            .final_answer;
        match answer.reason {
            None => imported.changed.push(course.to_string()),
            Some(reason) => imported.refused.push((course.to_string(), reason)),
        }
    }
    imported.created = created;
    Ok(imported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_parse_in_any_offset_and_none_clears() {
        let at = parse_instant("2026-09-01T11:00:00+02:00").unwrap().unwrap();
        assert_eq!(at.to_rfc3339(), "2026-09-01T09:00:00+00:00");
        assert_eq!(parse_instant("none").unwrap(), None);
        assert!(parse_instant("tomorrow").is_err());
    }

    #[test]
    fn a_course_file_is_checked_line_by_line() {
        let dir = std::env::temp_dir().join(format!("seatrush-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.csv");
        std::fs::write(
            &good,
            "course_id,seats,waitlist,opens_at,closes_at\n\
             CS101,30,20,2026-09-01T09:00:00Z,\n\
             MA-2, 45 ,,,\n",
        )
        .unwrap();
        let courses = read_course_file(&good).unwrap();
        assert_eq!(courses.len(), 2);
        assert_eq!(courses[0].1.waitlist, 20);
        assert!(courses[0].1.opens_at.is_some());
        assert_eq!(courses[1].1.capacity, 45);

        let bad = dir.join("bad.csv");
        std::fs::write(&bad, "course_id,seats\nCS101,30\nCS 102,10\n").unwrap();
        let err = format!("{:#}", read_course_file(&bad).unwrap_err());
        assert!(err.contains("line 3"), "{err}");

        let students = dir.join("students.csv");
        std::fs::write(
            &students,
            "student_id,max_credits,registration_opens_at,holds\n\
             s1,12,,unpaid_fees; advising\n\
             s2,9,2026-09-01T09:00:00Z,\n",
        )
        .unwrap();
        let read = read_student_file(&students).unwrap();
        assert_eq!(read[0].1.holds, ["unpaid_fees", "advising"]);
        assert!(read[1].1.holds.is_empty() && read[1].1.registration_opens_at.is_some());
        for (body, why) in [
            ("student_id,max_credits,holds\ns1,3,\ns2,3,a.b\n", "line 3"),
            (
                "student_id,max_credits\ns1,3\ns1,4\n",
                "student s1 appears twice",
            ),
        ] {
            std::fs::write(&students, body).unwrap();
            let err = format!("{:#}", read_student_file(&students).unwrap_err());
            assert!(err.contains(why), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
