//! Requests as producers publish them, and `parse_request`, the one place where a message
//! becomes a domain [`Request`]; it never panics on any input.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use super::{MAX_BODY_BYTES, MAX_CREDITS, MAX_SEATS};
use crate::domain::{
    Action, CourseId, CoursePatch, DrawSeed, IdError, Meetings, Opening, Request, RequestId,
    SWAP_RELEASE_PREFIX, StudentId,
};

/// A request body as published: `enroll` and `drop` name a student; `configure` names at least
/// one setting to change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestBody {
    pub action: String,
    pub course_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seats: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waitlist: Option<u32>,
    /// Absent: unchanged; `null`: no opening instant; a timestamp: opens then.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub opens_at: Option<Option<DateTime<Utc>>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub closes_at: Option<Option<DateTime<Utc>>>,
    /// `first-come` or `draw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opening: Option<String>,
    /// Absent: unchanged; `null`: entries any time before the opening; a timestamp: from then.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub entries_open_at: Option<Option<DateTime<Utc>>>,
    /// What the course counts toward a student's credit cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<u32>,
    /// Weekly meetings, `MO 09:00-10:30;WE 09:00-10:30` (empty: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meetings: Option<String>,
    /// For `swap`: the course whose seat is given up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_course_id: Option<String>,
}

/// Tells a field given as `null` (`Some(None)`) from an absent one (`None`, the default).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

impl RequestBody {
    fn has_settings(&self) -> bool {
        self.seats.is_some()
            || self.waitlist.is_some()
            || self.opens_at.is_some()
            || self.closes_at.is_some()
            || self.opening.is_some()
            || self.entries_open_at.is_some()
            || self.credits.is_some()
            || self.meetings.is_some()
    }

    /// The change asked for. A change to `draw` carries a fresh seed, chosen here, at the
    /// edge, and used only by a course that has none yet.
    fn patch(&self) -> Result<CoursePatch, String> {
        let opening = match self.opening.as_deref() {
            None => None,
            Some(raw) => Some(Opening::parse(raw).ok_or_else(|| {
                format!("opening {raw:?} is not one of \"first-come\", \"draw\"")
            })?),
        };
        Ok(CoursePatch {
            seats: self.seats,
            waitlist: self.waitlist,
            opens_at: self.opens_at,
            closes_at: self.closes_at,
            opening,
            entries_open_at: self.entries_open_at,
            draw_seed: (opening == Some(Opening::Draw)).then(DrawSeed::generate),
            credits: self.credits,
            meetings: self
                .meetings
                .as_deref()
                .map(Meetings::parse)
                .transpose()
                .map_err(|e| e.to_string())?,
        })
    }
}

/// A message that could not be turned into a request, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The `message_id`, when it was present (even if it was not a valid request id).
    pub request_id: Option<String>,
    /// Whether `request_id` is a valid id, so an answer can be sent and matched.
    pub answerable: bool,
    pub body: Option<RequestBody>,
    pub why: String,
}

/// Turns a message's id, the broker-checked `user_id` and the body into a request, or says
/// exactly what is wrong with it.
pub fn parse_request(
    message_id: Option<&str>,
    user_id: Option<&str>,
    body: &[u8],
) -> Result<Request, Box<Invalid>> {
    let request_id = match message_id.map(RequestId::parse) {
        Some(Ok(id)) => Ok(id),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("message_id is missing: it must carry the request id".to_owned()),
    };
    let answerable = request_id.is_ok();
    let invalid = |why: String, body: Option<RequestBody>| {
        Box::new(Invalid {
            request_id: message_id.map(str::to_owned),
            answerable,
            body,
            why,
        })
    };
    if body.len() > MAX_BODY_BYTES {
        let why = format!(
            "body is {} bytes, the limit is {MAX_BODY_BYTES}",
            body.len()
        );
        return Err(invalid(why, None));
    }
    let parsed: RequestBody = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("body is not a valid request: {e}"), None))?;
    let checked = request_id.and_then(|request_id| {
        if is_reserved(&request_id) {
            return Err(format!(
                "request ids starting with {RESERVED_PREFIX:?} are reserved for the record of a \
                 course's draw"
            ));
        }
        if (parsed.action == "release") != request_id.as_str().starts_with(SWAP_RELEASE_PREFIX) {
            return Err(format!(
                "request ids starting with {SWAP_RELEASE_PREFIX:?} are reserved for the \
                 releases that complete swaps, and a release takes one"
            ));
        }
        let course_id = CourseId::parse(parsed.course_id.as_str()).map_err(|e| e.to_string())?;
        let (action, student_id) = action_of(&parsed, user_id)?;
        Ok(Request {
            request_id,
            action,
            course_id,
            student_id,
        })
    });
    checked.map_err(|why| invalid(why, Some(parsed)))
}

/// The prefix of the ids under which courses' draws are recorded: no client request may take
/// one, or it could occupy a draw's record before the draw.
pub const RESERVED_PREFIX: &str = "draw-";

fn is_reserved(id: &RequestId) -> bool {
    id.as_str().starts_with(RESERVED_PREFIX)
}

/// The action a body asks for and who asks: the student named in the body for `enroll` and
/// `drop`, the broker-checked user for `configure`.
fn action_of(parsed: &RequestBody, user_id: Option<&str>) -> Result<(Action, StudentId), String> {
    let student = |raw: Option<&str>, missing: &str| match raw {
        Some(raw) => StudentId::parse(raw).map_err(|e: IdError| e.to_string()),
        None => Err(missing.to_owned()),
    };
    if parsed.drop_course_id.is_some() && parsed.action != "swap" {
        return Err("drop_course_id is only for action \"swap\"".to_owned());
    }
    match parsed.action.as_str() {
        "swap" | "release" if parsed.has_settings() => Err(format!(
            "seats, waitlist, opens_at, closes_at, opening, entries_open_at, credits and \
             meetings are only for action \"configure\", not {:?}",
            parsed.action
        )),
        "swap" => {
            let given_up = match parsed.drop_course_id.as_deref() {
                Some(raw) => CourseId::parse(raw).map_err(|e| format!("drop_course_id: {e}"))?,
                None => {
                    return Err("a swap names the course it gives up in drop_course_id".to_owned());
                }
            };
            if given_up.as_str() == parsed.course_id {
                return Err("a swap gives up another course than the one it asks for".to_owned());
            }
            Ok((
                Action::Swap(given_up),
                student(parsed.student_id.as_deref(), "student_id is missing")?,
            ))
        }
        "release" => {
            let by = student(
                user_id,
                "a release must carry the user_id property (the broker checks it against the \
                 publishing connection's user)",
            )?;
            Ok((
                Action::Release(by),
                student(parsed.student_id.as_deref(), "student_id is missing")?,
            ))
        }
        "enroll" | "drop" => {
            if parsed.has_settings() {
                return Err(format!(
                    "seats, waitlist, opens_at, closes_at, opening, entries_open_at, credits and \
                     meetings are only for action \"configure\", not {:?}",
                    parsed.action
                ));
            }
            let action = if parsed.action == "enroll" {
                Action::Enroll
            } else {
                Action::Drop
            };
            Ok((
                action,
                student(parsed.student_id.as_deref(), "student_id is missing")?,
            ))
        }
        "configure" => {
            if !parsed.has_settings() {
                return Err(
                    "a configure request changes at least one of seats, waitlist, \
                            opens_at, closes_at, opening, entries_open_at, credits, meetings"
                        .to_owned(),
                );
            }
            if let Some(n) = [parsed.seats, parsed.waitlist]
                .into_iter()
                .flatten()
                .find(|n| *n > MAX_SEATS)
            {
                return Err(format!("{n} is more than the limit of {MAX_SEATS}"));
            }
            if let Some(credits) = parsed.credits.filter(|c| *c > MAX_CREDITS) {
                return Err(format!(
                    "credits {credits} is more than the limit of {MAX_CREDITS}"
                ));
            }
            // The broker refuses a user_id that is not the publishing connection's user, so
            // this names who asked; the worker decides whether they may.
            let who = student(
                user_id,
                "a configure request must carry the user_id property (the broker checks it \
                 against the publishing connection's user)",
            )?;
            Ok((Action::Configure(Box::new(parsed.patch()?)), who))
        }
        "draw" => {
            if parsed.has_settings() || parsed.student_id.is_some() {
                return Err("a draw wake-up names only its course".to_owned());
            }
            let who = student(
                user_id,
                "a draw wake-up must carry the user_id property (the broker checks it against \
                 the publishing connection's user)",
            )?;
            Ok((Action::Draw, who))
        }
        other => Err(format!(
            "action {other:?} is not one of \"enroll\", \"drop\", \"swap\", \"configure\", \
             \"draw\""
        )),
    }
}

/// Serializes a request body, as producers (and the CLI) publish it.
pub fn request_body(request: &Request) -> Vec<u8> {
    let mut body = RequestBody {
        action: request.action.as_str().to_owned(),
        course_id: request.course_id.to_string(),
        ..RequestBody::default()
    };
    match &request.action {
        Action::Configure(patch) => {
            body.seats = patch.seats;
            body.waitlist = patch.waitlist;
            body.opens_at = patch.opens_at;
            body.closes_at = patch.closes_at;
            body.opening = patch.opening.map(|o| o.as_str().to_owned());
            body.entries_open_at = patch.entries_open_at;
            body.credits = patch.credits;
            body.meetings = patch.meetings.as_ref().map(ToString::to_string);
        }
        Action::Enroll | Action::Drop | Action::Release(_) => {
            body.student_id = Some(request.student_id.to_string())
        }
        Action::Swap(given_up) => {
            body.student_id = Some(request.student_id.to_string());
            body.drop_course_id = Some(given_up.to_string());
        }
        Action::Draw => {}
    }
    serde_json::to_vec(&body).unwrap_or_default()
}
