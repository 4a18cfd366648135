//! The wire contract: JSON bodies as producers send them and answers as clients receive them.
//!
//! Wire types are plain serde structs, kept apart from the domain types; `parse_request` is the
//! one place where a message becomes a domain [`Request`], and it never panics on any input.
//! `docs/protocol.md` documents the same contract for producers in other languages.

use serde::{Deserialize, Serialize};

use crate::domain::{
    Action, CourseId, IdError, Outcome, Reason, Request, RequestId, StudentId, Verdict,
};

/// Largest request body accepted, in bytes. A real request is under 250 bytes; anything far
/// larger is a mistake or an attack, and is dead-lettered without being parsed.
pub const MAX_BODY_BYTES: usize = 4096;

/// Header that carries the reason on messages seatrush dead-letters itself.
pub const REASON_HEADER: &str = "x-seatrush-reason";

/// A request body as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestBody {
    pub action: String,
    pub course_id: String,
    pub student_id: String,
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
        Self {
            request_id: request.request_id.to_string(),
            course_id: request.course_id.to_string(),
            student_id: request.student_id.to_string(),
            action: request.action.as_str().to_owned(),
            stage,
            outcome: verdict.outcome.as_str().to_owned(),
            reason: verdict.reason.map(|r| r.as_str().to_owned()),
            seats_left: verdict.seats_left,
            replayed: false,
            revised: false,
            detail: None,
        }
    }

    /// The only answer an invalid request gets: final, rejected, reason invalid.
    pub fn invalid(invalid: &Invalid) -> Self {
        let body = invalid.body.as_ref();
        let field = |f: fn(&RequestBody) -> &String| body.map(f).cloned().unwrap_or_default();
        Self {
            request_id: invalid.request_id.clone().unwrap_or_default(),
            course_id: field(|b| &b.course_id),
            student_id: field(|b| &b.student_id),
            action: field(|b| &b.action),
            stage: Stage::Final,
            outcome: Outcome::Rejected.as_str().to_owned(),
            reason: Some(Reason::Invalid.as_str().to_owned()),
            seats_left: 0,
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

/// Turns a message's id and body into a request, or says exactly what is wrong with it.
pub fn parse_request(message_id: Option<&str>, body: &[u8]) -> Result<Request, Box<Invalid>> {
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
    let request_id = request_id.map_err(|why| invalid(why, Some(parsed.clone())))?;
    let with_body = |e: IdError| invalid(e.to_string(), Some(parsed.clone()));
    let action = Action::parse(&parsed.action).ok_or_else(|| {
        invalid(
            format!(
                "action {:?} is not one of \"enroll\", \"drop\"",
                parsed.action
            ),
            Some(parsed.clone()),
        )
    })?;
    let course_id = CourseId::parse(parsed.course_id.as_str()).map_err(with_body)?;
    let student_id = StudentId::parse(parsed.student_id.as_str()).map_err(with_body)?;
    Ok(Request {
        request_id,
        action,
        course_id,
        student_id,
    })
}

/// Serializes a request body, as producers (and the CLI) publish it.
pub fn request_body(request: &Request) -> Vec<u8> {
    let body = RequestBody {
        action: request.action.as_str().to_owned(),
        course_id: request.course_id.to_string(),
        student_id: request.student_id.to_string(),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_request_parses() {
        let r = parse_request(
            Some("req-1"),
            br#"{"action":"enroll","course_id":"CS101","student_id":"s-1"}"#,
        )
        .unwrap();
        assert_eq!(r.action, Action::Enroll);
        assert_eq!(r.course_id.as_str(), "CS101");
    }

    #[test]
    fn each_kind_of_bad_message_says_why() {
        let ok_body = br#"{"action":"enroll","course_id":"CS101","student_id":"s1"}"#;
        let missing = parse_request(None, ok_body).unwrap_err();
        assert!(missing.why.contains("message_id is missing"));
        assert!(!missing.answerable);

        let bad_json = parse_request(Some("r1"), b"{not json").unwrap_err();
        assert!(bad_json.why.contains("not a valid request"));
        assert!(bad_json.answerable);

        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert!(
            parse_request(Some("r1"), &huge)
                .unwrap_err()
                .why
                .contains("limit")
        );

        let bad_id = parse_request(
            Some("r1"),
            br#"{"action":"enroll","course_id":"CS 101","student_id":"s1"}"#,
        )
        .unwrap_err();
        assert!(bad_id.why.contains("course_id"));
        assert_eq!(Answer::invalid(&bad_id).course_id, "CS 101");

        let bad_action = parse_request(
            Some("r1"),
            br#"{"action":"swap","course_id":"C","student_id":"s1"}"#,
        )
        .unwrap_err();
        assert!(bad_action.why.contains("swap"));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(id in proptest::option::of(".{0,80}"), body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_request(id.as_deref(), &body);
        }
    }
}
