//! Answers as clients receive them: the provisional and the final answer of a request, and
//! the event of a promotion.

use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::domain::{Action, Outcome, Reason, Request, Verdict};

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
    /// In a batch of answers to a reply queue: the `correlation_id` of the request, which a
    /// message of many answers cannot carry as its property. Absent on single answers (the
    /// property carries it) and on events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
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
            correlation_id: None,
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
            correlation_id: None,
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
            correlation_id: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of strings, integers and booleans cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The answers in a message body: one answer object, or a batch (a JSON array of them).
pub fn answers_in(body: &[u8]) -> serde_json::Result<Vec<Answer>> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice(body),
        _ => serde_json::from_slice(body).map(|answer| vec![answer]),
    }
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
