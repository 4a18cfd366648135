//! The wire contract: JSON bodies as producers send them and answers as clients receive them.
//!
//! Wire types are plain serde structs, kept apart from the domain types; `parse_request` is the
//! one place where a message becomes a domain [`Request`], and it never panics on any input.
//! `docs/protocol.md` documents the same contract for producers in other languages.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::domain::{
    Action, CourseId, CoursePatch, IdError, Outcome, Reason, Request, RequestId, StudentId, Verdict,
};

/// Largest request body accepted, in bytes. A real request is under 250 bytes; anything far
/// larger is a mistake or an attack, and is dead-lettered without being parsed.
pub const MAX_BODY_BYTES: usize = 4096;

/// Header that carries the reason on messages seatrush dead-letters itself.
pub const REASON_HEADER: &str = "x-seatrush-reason";

/// Most seats, and most waitlist places, a course may have.
pub const MAX_SEATS: u32 = 100_000;

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
    }

    fn patch(&self) -> CoursePatch {
        CoursePatch {
            seats: self.seats,
            waitlist: self.waitlist,
            opens_at: self.opens_at,
            closes_at: self.closes_at,
        }
    }
}

/// The two moments a client hears about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Sent as soon as the course actor has decided, before the decision is durable.
    Provisional,
    /// Sent after the decision is committed in Postgres; this one is binding.
    Final,
}

/// An answer, as published to `reply_to` and (final answers only) to the events exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub request_id: String,
    pub course_id: String,
    pub student_id: String,
    pub action: String,
    pub stage: Stage,
    pub outcome: String,
    pub reason: Option<String>,
    pub seats_left: u32,
    /// For `waitlisted`: the student's place on the waitlist (1 is next), as it stood when this
    /// answer was produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waitlist_position: Option<u32>,
    /// For reason `not_open`: when the course opens (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opens_at: Option<String>,
    /// For reason `closed`: when the course closed (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closes_at: Option<String>,
    /// For `promoted`: the request (a drop or a course change) that freed the seat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_by: Option<String>,
    /// True when this request id had been decided before and the stored outcome is repeated.
    #[serde(default)]
    pub replayed: bool,
    /// True on a final answer that differs from the provisional one sent earlier; the final
    /// answer is the one that holds.
    #[serde(default)]
    pub revised: bool,
    /// A human-readable explanation, for rejections of invalid requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Answer {
    /// The answer for a decided request.
    pub fn decided(request: &Request, verdict: &Verdict, stage: Stage) -> Self {
        let instant = |reason| {
            verdict
                .window_at
                .filter(|_| verdict.reason == Some(reason))
                .map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true))
        };
        Self {
            request_id: request.request_id.to_string(),
            course_id: request.course_id.to_string(),
            student_id: request.student_id.to_string(),
            action: request.action.as_str().to_owned(),
            stage,
            outcome: verdict.outcome.as_str().to_owned(),
            reason: verdict.reason.map(|r| r.as_str().to_owned()),
            seats_left: verdict.seats_left,
            waitlist_position: verdict.waitlist_position,
            opens_at: instant(Reason::NotOpen),
            closes_at: instant(Reason::Closed),
            promoted_by: None,
            replayed: false,
            revised: false,
            detail: None,
        }
    }

    /// The event for a waitlisted student who took a freed seat: it answers their original
    /// enroll request a second time, final and binding.
    pub fn promoted(promotion: &Promotion) -> Self {
        Self {
            request_id: promotion.request_id.clone(),
            course_id: promotion.course_id.clone(),
            student_id: promotion.student_id.clone(),
            action: Action::Enroll.as_str().to_owned(),
            stage: Stage::Final,
            outcome: Outcome::Promoted.as_str().to_owned(),
            reason: None,
            seats_left: promotion.seats_left,
            waitlist_position: None,
            opens_at: None,
            closes_at: None,
            promoted_by: Some(promotion.promoted_by.clone()),
            replayed: false,
            revised: false,
            detail: None,
        }
    }

    /// Whether this is a promotion event rather than the answer to a request.
    pub fn is_promotion(&self) -> bool {
        self.outcome == Outcome::Promoted.as_str()
    }

    /// The only answer an invalid request gets: final, rejected, reason invalid.
    pub fn invalid(invalid: &Invalid) -> Self {
        let body = invalid.body.as_ref();
        Self {
            request_id: invalid.request_id.clone().unwrap_or_default(),
            course_id: body.map(|b| b.course_id.clone()).unwrap_or_default(),
            student_id: body.and_then(|b| b.student_id.clone()).unwrap_or_default(),
            action: body.map(|b| b.action.clone()).unwrap_or_default(),
            stage: Stage::Final,
            outcome: Outcome::Rejected.as_str().to_owned(),
            reason: Some(Reason::Invalid.as_str().to_owned()),
            seats_left: 0,
            waitlist_position: None,
            opens_at: None,
            closes_at: None,
            promoted_by: None,
            replayed: false,
            revised: false,
            detail: Some(invalid.why.clone()),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of strings, integers and booleans cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
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

/// A waitlisted student moved into a freed seat, as the group commit reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    pub course_id: String,
    pub student_id: String,
    /// The enroll request that put the student on the waitlist.
    pub request_id: String,
    /// Where that request's client listened.
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    /// The drop or course change that freed the seat.
    pub promoted_by: String,
    pub seats_left: u32,
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
        return Err(invalid(
            format!(
                "body is {} bytes, the limit is {MAX_BODY_BYTES}",
                body.len()
            ),
            None,
        ));
    }
    let parsed: RequestBody = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("body is not a valid request: {e}"), None))?;
    let refuse = |why: String| invalid(why, Some(parsed.clone()));
    let request_id = request_id.map_err(&refuse)?;
    let course_id =
        CourseId::parse(parsed.course_id.as_str()).map_err(|e| refuse(e.to_string()))?;
    let student = |raw: Option<&str>, missing: &str| match raw {
        Some(raw) => StudentId::parse(raw).map_err(|e: IdError| refuse(e.to_string())),
        None => Err(refuse(missing.to_owned())),
    };
    let (action, student_id) = match parsed.action.as_str() {
        "enroll" | "drop" => {
            if parsed.has_settings() {
                return Err(refuse(format!(
                    "seats, waitlist, opens_at and closes_at are only for action \"configure\", \
                     not {:?}",
                    parsed.action
                )));
            }
            let action = if parsed.action == "enroll" {
                Action::Enroll
            } else {
                Action::Drop
            };
            let who = student(parsed.student_id.as_deref(), "student_id is missing")?;
            (action, who)
        }
        "configure" => {
            if !parsed.has_settings() {
                return Err(refuse(
                    "a configure request changes at least one of seats, waitlist, opens_at, \
                     closes_at"
                        .to_owned(),
                ));
            }
            if let Some(n) = [parsed.seats, parsed.waitlist]
                .into_iter()
                .flatten()
                .find(|n| *n > MAX_SEATS)
            {
                return Err(refuse(format!("{n} is more than the limit of {MAX_SEATS}")));
            }
            // The broker refuses a user_id that is not the publishing connection's user, so
            // this names who asked; the worker decides whether they may.
            let who = student(
                user_id,
                "a configure request must carry the user_id property (the broker checks it \
                 against the publishing connection's user)",
            )?;
            (Action::Configure(Box::new(parsed.patch())), who)
        }
        other => {
            return Err(refuse(format!(
                "action {other:?} is not one of \"enroll\", \"drop\", \"configure\""
            )));
        }
    };
    Ok(Request {
        request_id,
        action,
        course_id,
        student_id,
    })
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
        }
        Action::Enroll | Action::Drop => body.student_id = Some(request.student_id.to_string()),
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_request_parses() {
        let r = parse_request(
            Some("req-1"),
            None,
            br#"{"action":"enroll","course_id":"CS101","student_id":"s-1"}"#,
        )
        .unwrap();
        assert_eq!(r.action, Action::Enroll);
        assert_eq!(r.course_id.as_str(), "CS101");
    }

    #[test]
    fn each_kind_of_bad_message_says_why() {
        let ok_body = br#"{"action":"enroll","course_id":"CS101","student_id":"s1"}"#;
        let missing = parse_request(None, None, ok_body).unwrap_err();
        assert!(missing.why.contains("message_id is missing"));
        assert!(!missing.answerable);

        let bad_json = parse_request(Some("r1"), None, b"{not json").unwrap_err();
        assert!(bad_json.why.contains("not a valid request"));
        assert!(bad_json.answerable);

        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert!(
            parse_request(Some("r1"), None, &huge)
                .unwrap_err()
                .why
                .contains("limit")
        );

        let bad_id = parse_request(
            Some("r1"),
            None,
            br#"{"action":"enroll","course_id":"CS 101","student_id":"s1"}"#,
        )
        .unwrap_err();
        assert!(bad_id.why.contains("course_id"));
        assert_eq!(Answer::invalid(&bad_id).course_id, "CS 101");

        let bad_action = parse_request(
            Some("r1"),
            None,
            br#"{"action":"swap","course_id":"C","student_id":"s1"}"#,
        )
        .unwrap_err();
        assert!(bad_action.why.contains("swap"));

        let no_student =
            parse_request(Some("r1"), None, br#"{"action":"drop","course_id":"C"}"#).unwrap_err();
        assert!(no_student.why.contains("student_id is missing"));
    }

    #[test]
    fn a_configure_request_needs_a_user_and_a_setting_and_tells_null_from_absent() {
        let body = br#"{"action":"configure","course_id":"C","seats":40,"opens_at":null}"#;
        let anonymous = parse_request(Some("c1"), None, body).unwrap_err();
        assert!(anonymous.why.contains("user_id"));
        let r = parse_request(Some("c1"), Some("registrar"), body).unwrap();
        let Action::Configure(patch) = &r.action else {
            panic!("not a configure request: {r:?}");
        };
        assert_eq!(patch.seats, Some(40));
        assert_eq!(patch.opens_at, Some(None));
        assert_eq!(patch.closes_at, None);
        assert_eq!(r.student_id.as_str(), "registrar");
        assert_eq!(
            parse_request(Some("c1"), Some("registrar"), &request_body(&r)).unwrap(),
            r
        );
        let empty = br#"{"action":"configure","course_id":"C"}"#;
        assert!(parse_request(Some("c2"), Some("registrar"), empty).is_err());
        let mixed = br#"{"action":"enroll","course_id":"C","student_id":"s","seats":3}"#;
        assert!(parse_request(Some("c3"), None, mixed).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(id in proptest::option::of(".{0,80}"), body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_request(id.as_deref(), None, &body);
        }
    }
}
