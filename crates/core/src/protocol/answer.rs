//! Answers as clients receive them: the provisional and the final answer of a request, and
//! the event of a promotion.

use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::domain::{Action, Outcome, Reason, Refusal, Request, Verdict};
use crate::telemetry::metrics;

/// The two moments a client hears about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Sent as soon as the course actor has decided, before the decision is durable.
    Provisional,
    /// Sent after the decision is committed in Postgres; this one is binding.
    Final,
}

/// An answer, as published to `reply_to` and (final answers only) to the events exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// For `queued`: when the course's draw is (its opening, RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draw_at: Option<String>,
    /// For `queued`, and `not_open` from a draw course: the draw's commitment (lowercase hex
    /// SHA-256 of its seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draw_commitment: Option<String>,
    /// For `not_open` from a draw course: when it starts taking entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries_open_at: Option<String>,
    /// On the draw's outcome for an entrant: their rank in the draw, 1 first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draw_position: Option<u32>,
    /// For reason `hold`: the holds on the student's account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds: Option<Vec<String>>,
    /// For reason `not_your_turn`: when the student's registration opens (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_opens_at: Option<String>,
    /// For reason `credit_limit`: the credits of the seats the student holds (and has been
    /// promised), those of the seat asked for, and the cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_held: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_asked: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_allowed: Option<u32>,
    /// For reason `time_conflict`: the course whose seat meets at the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicts_with: Option<String>,
    /// For a swap refused `not_enrolled`: the course it would give up, which the student does
    /// not hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_course_id: Option<String>,
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
        Self::of_verdict(
            [
                request.request_id.as_str(),
                request.course_id.as_str(),
                request.student_id.as_str(),
                request.action.as_str(),
            ],
            verdict,
            stage,
        )
    }

    /// The final answer of an outcome read back from the database, by its stored request id,
    /// course, student and action.
    pub fn stored(
        request_id: &str,
        course_id: &str,
        student_id: &str,
        action: &str,
        verdict: &Verdict,
    ) -> Self {
        Self::of_verdict(
            [request_id, course_id, student_id, action],
            verdict,
            Stage::Final,
        )
    }

    fn of_verdict(ids: [&str; 4], verdict: &Verdict, stage: Stage) -> Self {
        let instant = |reason| {
            verdict
                .window_at
                .filter(|_| verdict.reason == Some(reason))
                .map(rfc3339)
        };
        Self {
            reason: verdict.reason.map(|r| r.as_str().to_owned()),
            seats_left: verdict.seats_left,
            waitlist_position: verdict.waitlist_position,
            opens_at: instant(Reason::NotOpen),
            closes_at: instant(Reason::Closed),
            draw_at: draw_at(verdict),
            draw_commitment: verdict.draw.as_ref().and_then(|d| d.commitment.clone()),
            entries_open_at: verdict
                .draw
                .as_ref()
                .and_then(|d| d.entries_open_at)
                .map(rfc3339),
            draw_position: verdict.draw_position(),
            ..Self::about(ids.map(str::to_owned), stage, verdict.outcome)
        }
        .with_rule(verdict.rule.as_deref())
    }

    /// The facts of a rule's refusal, in their fields.
    fn with_rule(mut self, refusal: Option<&Refusal>) -> Self {
        if let Some(refusal) = refusal {
            let facts = refusal.facts();
            self.holds = facts.holds;
            self.registration_opens_at = facts.registration_opens_at.map(rfc3339);
            self.credits_held = facts.credits_held;
            self.credits_asked = facts.credits_asked;
            self.credits_allowed = facts.credits_allowed;
            self.conflicts_with = facts.conflicts_with;
            self.drop_course_id = facts.drop_course_id;
        }
        self
    }

    /// The event for a waitlisted student who took a freed seat: it answers their original
    /// enroll request a second time, final and binding.
    pub fn promoted(promotion: &Promotion) -> Self {
        let ids = [
            promotion.request_id.clone(),
            promotion.course_id.clone(),
            promotion.student_id.clone(),
            Action::Enroll.as_str().to_owned(),
        ];
        Self {
            seats_left: promotion.seats_left,
            promoted_by: Some(promotion.promoted_by.clone()),
            ..Self::about(ids, Stage::Final, Outcome::Promoted)
        }
    }

    /// The event for a waitlisted student the registration rules passed over for a freed
    /// seat: final, about their original enroll request, which keeps its place.
    pub fn passed_over(passed: &PassedOver) -> Self {
        let mut answer = Self::promoted(&passed.promotion);
        answer.outcome = Outcome::PromotionSkipped.as_str().to_owned();
        answer.reason = Some(passed.refusal.reason().as_str().to_owned());
        answer.with_rule(Some(&passed.refusal))
    }

    /// Whether this is an event about a waiting student (a promotion, or a promotion the rules
    /// skipped) rather than the answer to a request's publish.
    pub fn is_waitlist_event(&self) -> bool {
        self.is_promotion() || self.outcome == Outcome::PromotionSkipped.as_str()
    }

    /// Whether this is a promotion event rather than the answer to a request.
    pub fn is_promotion(&self) -> bool {
        self.outcome == Outcome::Promoted.as_str()
    }

    /// The only answer an invalid request gets: final, rejected, reason invalid.
    pub fn invalid(invalid: &Invalid) -> Self {
        let body = invalid.body.as_ref();
        let ids = [
            invalid.request_id.clone().unwrap_or_default(),
            body.map(|b| b.course_id.clone()).unwrap_or_default(),
            body.and_then(|b| b.student_id.clone()).unwrap_or_default(),
            body.map(|b| b.action.clone()).unwrap_or_default(),
        ];
        Self {
            reason: Some(Reason::Invalid.as_str().to_owned()),
            detail: Some(invalid.why.clone()),
            ..Self::about(ids, Stage::Final, Outcome::Rejected)
        }
    }

    /// An answer about a request (its id, course, student and action) with none of the facts
    /// that only some outcomes carry: each constructor above adds its own.
    pub fn about(
        [request_id, course_id, student_id, action]: [String; 4],
        stage: Stage,
        outcome: Outcome,
    ) -> Self {
        Self {
            request_id,
            course_id,
            student_id,
            action,
            stage,
            outcome: outcome.as_str().to_owned(),
            reason: None,
            seats_left: 0,
            waitlist_position: None,
            opens_at: None,
            closes_at: None,
            promoted_by: None,
            draw_at: None,
            draw_commitment: None,
            entries_open_at: None,
            draw_position: None,
            holds: None,
            registration_opens_at: None,
            credits_held: None,
            credits_asked: None,
            credits_allowed: None,
            conflicts_with: None,
            drop_course_id: None,
            replayed: false,
            revised: false,
            detail: None,
            correlation_id: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        Wire {
            request_id: &self.request_id,
            course_id: &self.course_id,
            student_id: &self.student_id,
            action: &self.action,
            stage: self.stage,
            outcome: &self.outcome,
            reason: self.reason.as_deref(),
            seats_left: self.seats_left,
            waitlist_position: self.waitlist_position,
            opens_at: self.opens_at.as_deref(),
            closes_at: self.closes_at.as_deref(),
            promoted_by: self.promoted_by.as_deref(),
            draw_at: self.draw_at.as_deref(),
            draw_commitment: self.draw_commitment.as_deref(),
            entries_open_at: self.entries_open_at.as_deref(),
            draw_position: self.draw_position,
            holds: self.holds.as_deref(),
            registration_opens_at: self.registration_opens_at.as_deref(),
            credits_held: self.credits_held,
            credits_asked: self.credits_asked,
            credits_allowed: self.credits_allowed,
            conflicts_with: self.conflicts_with.as_deref(),
            drop_course_id: self.drop_course_id.as_deref(),
            replayed: self.replayed,
            revised: self.revised,
            detail: self.detail.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
        }
        .to_json()
    }
}

/// The answer to a decided request, borrowed from the request and its verdict: it serializes to
/// exactly what [`Answer::decided`] would, without copying each field into a `String` first.
/// Every request is answered twice (provisional and final) and its final answer also travels as
/// an event, so this is on the worker's hot path.
#[derive(Debug, Clone, Copy)]
pub struct DecidedAnswer<'a> {
    request: &'a Request,
    verdict: &'a Verdict,
    stage: Stage,
    pub replayed: bool,
    pub revised: bool,
    /// Set in a batch of answers to a reply queue, as [`Answer::correlation_id`] is.
    pub correlation_id: Option<&'a str>,
}

impl<'a> DecidedAnswer<'a> {
    pub fn new(request: &'a Request, verdict: &'a Verdict, stage: Stage) -> Self {
        Self {
            request,
            verdict,
            stage,
            replayed: false,
            revised: false,
            correlation_id: None,
        }
    }

    /// The request this answers.
    pub fn request(&self) -> &'a Request {
        self.request
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(Wire::TYPICAL_BYTES);
        self.write_to(&mut body);
        body
    }

    /// Appends the answer's JSON to `out`: a batch's buffer takes it without a copy of its own.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let verdict = self.verdict;
        // The window's instant is formatted only for the answers that report it (rare).
        let instant = |reason| {
            verdict
                .window_at
                .filter(|_| verdict.reason == Some(reason))
                .map(rfc3339)
        };
        let (opens_at, closes_at) = (instant(Reason::NotOpen), instant(Reason::Closed));
        let draw = verdict.draw.as_deref();
        let draw_at = draw_at(verdict);
        let entries_open_at = draw.and_then(|d| d.entries_open_at).map(rfc3339);
        // Only a rule's refusal has facts (rare): nothing is built for the others.
        let facts = verdict
            .rule
            .as_deref()
            .map(Refusal::facts)
            .unwrap_or_default();
        let registration_opens_at = facts.registration_opens_at.map(rfc3339);
        Wire {
            request_id: self.request.request_id.as_str(),
            course_id: self.request.course_id.as_str(),
            student_id: self.request.student_id.as_str(),
            action: self.request.action.as_str(),
            stage: self.stage,
            outcome: verdict.outcome.as_str(),
            reason: verdict.reason.map(Reason::as_str),
            seats_left: verdict.seats_left,
            waitlist_position: verdict.waitlist_position,
            opens_at: opens_at.as_deref(),
            closes_at: closes_at.as_deref(),
            promoted_by: None,
            draw_at: draw_at.as_deref(),
            draw_commitment: draw.and_then(|d| d.commitment.as_deref()),
            entries_open_at: entries_open_at.as_deref(),
            draw_position: draw.and_then(|d| d.position),
            holds: facts.holds.as_deref(),
            registration_opens_at: registration_opens_at.as_deref(),
            credits_held: facts.credits_held,
            credits_asked: facts.credits_asked,
            credits_allowed: facts.credits_allowed,
            conflicts_with: facts.conflicts_with.as_deref(),
            drop_course_id: facts.drop_course_id.as_deref(),
            replayed: self.replayed,
            revised: self.revised,
            detail: None,
            correlation_id: self.correlation_id,
        }
        .write_to(out);
    }
}

/// An answer's wire layout, borrowed: the one serializer behind [`Answer::to_json`] and
/// [`DecidedAnswer::to_json`]. Its fields, their order and their skip rules are [`Answer`]'s
/// (a unit test checks that both serialize alike).
#[derive(Serialize)]
struct Wire<'a> {
    request_id: &'a str,
    course_id: &'a str,
    student_id: &'a str,
    action: &'a str,
    stage: Stage,
    outcome: &'a str,
    reason: Option<&'a str>,
    seats_left: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    waitlist_position: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    opens_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    closes_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    promoted_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    draw_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    draw_commitment: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entries_open_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    draw_position: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    holds: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registration_opens_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credits_held: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credits_asked: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credits_allowed: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conflicts_with: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drop_course_id: Option<&'a str>,
    replayed: bool,
    revised: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
}

impl Wire<'_> {
    /// A real answer is about 250 bytes: one allocation instead of a few regrowths.
    const TYPICAL_BYTES: usize = 320;

    fn to_json(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(Self::TYPICAL_BYTES);
        self.write_to(&mut body);
        body
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        // Serializing a struct of strings, integers and booleans into memory cannot fail.
        let _ = metrics::busy_in(metrics::Stage::Serialize, || {
            serde_json::to_writer(out, self)
        });
    }
}

/// An instant as answers carry it: RFC 3339, UTC, milliseconds.
fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// For `queued`: the draw's instant.
fn draw_at(verdict: &Verdict) -> Option<String> {
    verdict
        .window_at
        .filter(|_| verdict.outcome == Outcome::Queued)
        .map(rfc3339)
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

/// A waitlisted student the rules passed over for the seat a request freed, as the group commit
/// reports it: where to tell them (their enroll request's address), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassedOver {
    /// The student, their enroll request and its address, the request that freed the seat,
    /// and the seats left after the promotions.
    pub promotion: Promotion,
    pub refusal: Refusal,
}

/// An entrant's outcome in a course's draw, as the group commit reports it: the second,
/// binding answer to their entry request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrawResult {
    /// The entry request, as the student sent it.
    pub entry: Request,
    /// Where that request's client listened.
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    /// Enrolled, waitlisted (with its place) or rejected full, with `draw.position`.
    pub verdict: Verdict,
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::domain::{CourseId, DrawNote, RequestId, StudentId};

    fn request() -> Request {
        Request {
            request_id: RequestId::parse("r-1").expect("id"),
            action: Action::Enroll,
            course_id: CourseId::parse("CS101").expect("id"),
            student_id: StudentId::parse("s-1").expect("id"),
        }
    }

    #[test]
    fn an_answer_travels_exactly_as_serde_would_write_it() {
        let mut answer = Answer::decided(
            &request(),
            &Verdict::new(Outcome::Waitlisted, None, 0),
            Stage::Final,
        );
        assert_eq!(answer.to_json(), serde_json::to_vec(&answer).expect("json"));
        answer.waitlist_position = Some(3);
        answer.opens_at = Some("2026-01-01T00:00:00.000Z".to_owned());
        answer.closes_at = Some("2026-01-02T00:00:00.000Z".to_owned());
        answer.promoted_by = Some("r-0".to_owned());
        answer.detail = Some("why: \"quoted\"\n".to_owned());
        answer.correlation_id = Some("c-1".to_owned());
        answer.replayed = true;
        answer.revised = true;
        assert_eq!(answer.to_json(), serde_json::to_vec(&answer).expect("json"));
    }

    #[test]
    fn a_decided_answer_serializes_as_the_owned_answer_would() {
        let request = request();
        let opens = Utc
            .with_ymd_and_hms(2030, 5, 1, 8, 0, 0)
            .single()
            .expect("instant");
        let verdicts = [
            Verdict::new(Outcome::Enrolled, None, 12),
            Verdict {
                window_at: Some(opens),
                ..Verdict::new(Outcome::Rejected, Some(Reason::NotOpen), 30)
            },
            // A draw course's answers: an entry, the draw's outcome, too early for entries.
            Verdict {
                window_at: Some(opens),
                draw: Some(Box::new(DrawNote {
                    commitment: Some("ab".repeat(32)),
                    ..DrawNote::default()
                })),
                ..Verdict::new(Outcome::Queued, None, 30)
            },
            Verdict {
                waitlist_position: Some(3),
                draw: Some(Box::new(DrawNote {
                    position: Some(33),
                    ..DrawNote::default()
                })),
                ..Verdict::new(Outcome::Waitlisted, None, 0)
            },
            Verdict {
                window_at: Some(opens),
                draw: Some(Box::new(DrawNote {
                    commitment: Some("cd".repeat(32)),
                    entries_open_at: Some(opens - chrono::Duration::days(7)),
                    position: None,
                })),
                ..Verdict::new(Outcome::Rejected, Some(Reason::NotOpen), 30)
            },
            // The registration rules' refusals, each with its facts.
            Verdict::refused(
                Refusal::Hold {
                    holds: vec!["unpaid_fees".into(), "advising".into()],
                },
                4,
            ),
            Verdict::refused(Refusal::NotYourTurn { at: opens }, 4),
            Verdict::refused(
                Refusal::CreditLimit {
                    held: 9,
                    asked: 3,
                    allowed: 10,
                },
                4,
            ),
            Verdict::refused(
                Refusal::TimeConflict {
                    with: CourseId::parse("MATH-2").expect("valid"),
                },
                4,
            ),
            Verdict::refused(Refusal::UnknownStudent, 0),
        ];
        for verdict in &verdicts {
            for stage in [Stage::Provisional, Stage::Final] {
                let mut owned = Answer::decided(&request, verdict, stage);
                owned.replayed = true;
                owned.correlation_id = Some("c-9".to_owned());
                let mut borrowed = DecidedAnswer::new(&request, verdict, stage);
                borrowed.replayed = true;
                borrowed.correlation_id = Some("c-9");
                assert_eq!(borrowed.to_json(), owned.to_json());
                assert_eq!(
                    borrowed.to_json(),
                    serde_json::to_vec(&owned).expect("json")
                );
            }
        }
        // The draw's fields are there, each on the answer that carries it.
        let answer = |v: &Verdict| Answer::decided(&request, v, Stage::Final);
        let queued = answer(&verdicts[2]);
        assert_eq!(queued.draw_at.as_deref(), Some("2030-05-01T08:00:00.000Z"));
        assert_eq!(queued.draw_commitment, Some("ab".repeat(32)));
        assert_eq!(answer(&verdicts[3]).draw_position, Some(33));
        let early = answer(&verdicts[4]);
        assert_eq!(
            early.entries_open_at.as_deref(),
            Some("2030-04-24T08:00:00.000Z")
        );
        assert_eq!(early.opens_at.as_deref(), Some("2030-05-01T08:00:00.000Z"));
        assert_eq!(early.draw_at, None);
        // The rules' facts likewise.
        assert_eq!(
            answer(&verdicts[5]).holds,
            Some(vec!["unpaid_fees".to_owned(), "advising".to_owned()])
        );
        let turn = answer(&verdicts[6]);
        assert_eq!(turn.reason.as_deref(), Some("not_your_turn"));
        assert_eq!(
            turn.registration_opens_at.as_deref(),
            Some("2030-05-01T08:00:00.000Z")
        );
        let cap = answer(&verdicts[7]);
        assert_eq!(
            (cap.credits_held, cap.credits_asked, cap.credits_allowed),
            (Some(9), Some(3), Some(10))
        );
        assert_eq!(
            answer(&verdicts[8]).conflicts_with.as_deref(),
            Some("MATH-2")
        );
        assert_eq!(
            answer(&verdicts[9]).reason.as_deref(),
            Some("unknown_student")
        );
    }

    #[test]
    fn a_refusal_survives_its_stored_facts() {
        let refusals = [
            Refusal::UnknownStudent,
            Refusal::Hold {
                holds: vec!["a".into()],
            },
            Refusal::NotYourTurn { at: Utc::now() },
            Refusal::CreditLimit {
                held: 1,
                asked: 2,
                allowed: 2,
            },
            Refusal::TimeConflict {
                with: CourseId::parse("C1").expect("valid"),
            },
            Refusal::NotEnrolled {
                course: CourseId::parse("C2").expect("valid"),
            },
        ];
        for refusal in refusals {
            let stored = serde_json::to_value(refusal.facts()).expect("json");
            let facts = serde_json::from_value(stored).expect("facts");
            assert_eq!(Refusal::from_facts(refusal.reason(), facts), Some(refusal));
        }
    }
}
