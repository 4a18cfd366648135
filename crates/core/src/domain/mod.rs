//! Domain types, parsed once at the edge ("parse, don't validate").
//!
//! Every id a client sends is checked here against the same rule (1 to 64 characters of
//! `[A-Za-z0-9_-]`), so the rest of the code can hold a `CourseId` and know it is sane: bounded in
//! length, safe in a routing key, a log line or a SQL parameter.

mod decision;
mod draw;
mod meetings;
mod registration;

use std::fmt;

use chrono::{DateTime, Utc};

pub use decision::{
    CourseSnapshot, DECIDED_KEPT, Decision, DrawEffect, DrawnEntrant, Effect, Eligibility, Skipped,
};
pub use draw::{DrawSeed, Opening, draw_actor, draw_request_id, wake_request_id};
pub use meetings::{Day, MAX_SLOTS, Meetings, MeetingsError, Slot};
pub use registration::{
    Claim, CourseLoad, Ledger, MAX_HOLDS, Refusal, RuleFacts, Ruling, SeatHeld, StudentRecord,
    may_ask, may_take_seat,
};

/// Longest id accepted, in bytes (all accepted characters are ASCII).
pub const MAX_ID_LEN: usize = 64;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} characters long, the limit is {MAX_ID_LEN}")]
    TooLong { kind: &'static str, len: usize },
    #[error("{kind} contains {found:?}; only A-Z, a-z, 0-9, '_' and '-' are allowed")]
    BadChar { kind: &'static str, found: char },
}

fn check_id(kind: &'static str, raw: &str) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if let Some(found) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(IdError::BadChar { kind, found });
    }
    if raw.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            len: raw.len(),
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        ///
        /// Shared, not copied: an id travels with its request through the actor's memory of
        /// verdicts, the commit and the answers, and a clone is a count, not an allocation.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            /// Parses a client-supplied id.
            pub fn parse(raw: impl AsRef<str>) -> Result<Self, IdError> {
                let raw = raw.as_ref();
                check_id($kind, raw)?;
                Ok(Self(raw.into()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A course, as named by the university (the routing key of every request for it).
    CourseId,
    "course_id"
);
id_type!(
    /// A student.
    StudentId,
    "student_id"
);
id_type!(
    /// A hold on a student's account, as the registrar names it (`unpaid_fees`).
    HoldId,
    "hold"
);
id_type!(
    /// A request, chosen by the producer and carried as the AMQP `message_id`. It is the
    /// idempotency key: the same id always gets the same outcome.
    RequestId,
    "request_id"
);

/// What a request asks for: a student's enroll or drop, or an operator's change to the course.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Enroll,
    Drop,
    /// Change the course's seats, waitlist capacity or window. Decided by the course actor like
    /// any request, so a change never races a decision.
    Configure(Box<CoursePatch>),
    /// Wake a draw course at its opening, so it draws even if no student asks then. Published
    /// by the workers' draw clock under their own broker user; from anyone else, forbidden.
    Draw,
    /// Take a seat in the course and give up the seat held in the one named, as one step: if
    /// the seat cannot be had, the one held is kept.
    Swap(CourseId),
    /// Give back the seat a swap gave up, once the swap took its new seat. Published by the
    /// worker that committed the swap, under its own broker user (named here, as the broker
    /// checked it); from anyone else, forbidden.
    Release(StudentId),
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Enroll => "enroll",
            Action::Drop => "drop",
            Action::Configure(_) => "configure",
            Action::Draw => "draw",
            Action::Swap(_) => "swap",
            Action::Release(_) => "release",
        }
    }
}

/// A course's settings, as the course actor and the database hold them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CourseSettings {
    /// Seats.
    pub capacity: u32,
    /// Places on the waitlist (0: no waitlist).
    pub waitlist: u32,
    /// Requests before this instant are rejected with reason `not_open`.
    pub opens_at: Option<DateTime<Utc>>,
    /// Requests from this instant on are rejected with reason `closed`.
    pub closes_at: Option<DateTime<Utc>>,
    /// First-come, or a draw at `opens_at` among the students who entered before.
    pub opening: Opening,
    /// Under `draw`: entries are taken from this instant (from any time before the opening
    /// when `None`).
    pub entries_open_at: Option<DateTime<Utc>>,
    /// The seed of the course's draw, chosen once when the course first became a draw and
    /// kept from then on, so its published commitment never changes.
    pub draw_seed: Option<DrawSeed>,
    /// What the course counts toward a student's credit cap.
    pub credits: u32,
    /// When it meets each week (none: never at a fixed time).
    pub meetings: Meetings,
}

impl CourseSettings {
    /// The settings with a change applied. A course that becomes a draw takes the patch's
    /// fresh seed unless it has one already.
    pub fn patched(&self, patch: &CoursePatch) -> Self {
        let opening = patch.opening.unwrap_or(self.opening);
        let draw_seed = match (self.draw_seed, opening) {
            (Some(seed), _) => Some(seed),
            (None, Opening::Draw) => patch.draw_seed,
            (None, Opening::FirstCome) => None,
        };
        Self {
            capacity: patch.seats.unwrap_or(self.capacity),
            waitlist: patch.waitlist.unwrap_or(self.waitlist),
            opens_at: patch.opens_at.unwrap_or(self.opens_at),
            closes_at: patch.closes_at.unwrap_or(self.closes_at),
            opening,
            entries_open_at: patch.entries_open_at.unwrap_or(self.entries_open_at),
            draw_seed,
            credits: patch.credits.unwrap_or(self.credits),
            meetings: patch
                .meetings
                .clone()
                .unwrap_or_else(|| self.meetings.clone()),
        }
    }

    /// Whether the window is well formed: entries open before the course opens, and it opens
    /// before it closes.
    pub fn window_is_valid(&self) -> bool {
        let in_order = |a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>| match (a, b) {
            (Some(a), Some(b)) => a < b,
            _ => true,
        };
        in_order(self.opens_at, self.closes_at)
            && in_order(self.entries_open_at, self.opens_at)
            && in_order(self.entries_open_at, self.closes_at)
    }

    /// Whether a draw has what it needs: an opening instant to draw at, and a seed.
    pub fn draw_is_complete(&self) -> bool {
        self.opening == Opening::FirstCome || (self.opens_at.is_some() && self.draw_seed.is_some())
    }

    /// The public commitment of the course's draw, if it is one.
    pub fn draw_commitment(&self) -> Option<String> {
        match self.opening {
            Opening::Draw => self.draw_seed.map(|seed| seed.commitment()),
            Opening::FirstCome => None,
        }
    }
}

/// A change to a course's settings; `None` leaves a setting as it is, and `Some(None)` clears
/// an instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoursePatch {
    pub seats: Option<u32>,
    pub waitlist: Option<u32>,
    pub opens_at: Option<Option<DateTime<Utc>>>,
    pub closes_at: Option<Option<DateTime<Utc>>>,
    pub opening: Option<Opening>,
    pub entries_open_at: Option<Option<DateTime<Utc>>>,
    /// A fresh seed, taken only by a course that becomes a draw without one. Chosen where the
    /// change is made (never by a client), so the course's decision stays a pure function.
    pub draw_seed: Option<DrawSeed>,
    pub credits: Option<u32>,
    pub meetings: Option<Meetings>,
}

impl CoursePatch {
    /// Whether the change names at least one setting.
    pub fn is_empty(&self) -> bool {
        self.seats.is_none()
            && self.waitlist.is_none()
            && self.opens_at.is_none()
            && self.closes_at.is_none()
            && self.opening.is_none()
            && self.entries_open_at.is_none()
            && self.credits.is_none()
            && self.meetings.is_none()
    }
}

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Enrolled,
    /// No seat, but a place on the waitlist.
    Waitlisted,
    Rejected,
    /// A seat given back, or a place on the waitlist left.
    Dropped,
    /// A course change applied.
    Configured,
    /// Not the outcome of a request but an event: a waitlisted student took a freed seat.
    Promoted,
    /// Not the outcome of a request but an event: the registration rules passed a waitlisted
    /// student over for a freed seat (the reason says which rule); they keep their place.
    PromotionSkipped,
    /// An entry into a course's draw, taken before the opening; the draw's outcome follows.
    Queued,
    /// A course's draw was performed (the record of the draw itself, and of a wake-up that
    /// found it done).
    Drawn,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Enrolled => "enrolled",
            Outcome::Waitlisted => "waitlisted",
            Outcome::Rejected => "rejected",
            Outcome::Dropped => "dropped",
            Outcome::Configured => "configured",
            Outcome::Promoted => "promoted",
            Outcome::PromotionSkipped => "promotion_skipped",
            Outcome::Queued => "queued",
            Outcome::Drawn => "drawn",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "enrolled" => Some(Outcome::Enrolled),
            "waitlisted" => Some(Outcome::Waitlisted),
            "rejected" => Some(Outcome::Rejected),
            "dropped" => Some(Outcome::Dropped),
            "configured" => Some(Outcome::Configured),
            "promoted" => Some(Outcome::Promoted),
            "promotion_skipped" => Some(Outcome::PromotionSkipped),
            "queued" => Some(Outcome::Queued),
            "drawn" => Some(Outcome::Drawn),
            _ => None,
        }
    }
}

/// Why an outcome is what it is: the cause of a rejection, or a note on a success that changed
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Every seat is taken, and the waitlist is full or there is none.
    Full,
    /// No course has this id.
    UnknownCourse,
    /// The request could not be understood (bad JSON, bad id, missing field, too large).
    Invalid,
    /// A drop for a student who holds neither a seat nor a place on the waitlist.
    NotEnrolled,
    /// An enroll for a student who already holds a seat: the outcome is `enrolled`, no new seat.
    AlreadyEnrolled,
    /// An enroll for a student already on the waitlist: the outcome is `waitlisted`, with the
    /// current position.
    AlreadyWaitlisted,
    /// The course's window has not opened yet (the answer carries `opens_at`).
    NotOpen,
    /// The course's window has closed (the answer carries `closes_at`).
    Closed,
    /// A course change from a user who may not change courses.
    Forbidden,
    /// A course change that would leave fewer seats than students enrolled.
    SeatsBelowEnrolled,
    /// A course change that would leave fewer waitlist places than students waiting.
    WaitlistBelowWaiting,
    /// A course change whose window closes before it opens, or whose entries open after it.
    WindowOutOfOrder,
    /// An entry for a student already in the course's draw: the outcome is `queued`.
    AlreadyQueued,
    /// The course's draw holds as many entries as it takes.
    EntriesFull,
    /// A draw wake-up for a course already drawn; or a change of the opening of a drawn course.
    AlreadyDrawn,
    /// A draw wake-up for a course that is not a draw.
    NotADraw,
    /// A course change to `draw` without an opening instant to draw at.
    DrawWithoutOpening,
    /// A course change from `draw` back to `first-come` while students are entered.
    DrawHasEntrants,
    /// With a student registry loaded: the student is not in it.
    UnknownStudent,
    /// Holds on the student's account (the answer names them).
    Hold,
    /// The student's time ticket has not come (the answer carries it).
    NotYourTurn,
    /// The seat would take the student past their credit cap (credits held, asked, allowed).
    CreditLimit,
    /// The course meets at the same time as a seat the student holds (the answer names it).
    TimeConflict,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Full => "full",
            Reason::UnknownCourse => "unknown_course",
            Reason::Invalid => "invalid",
            Reason::NotEnrolled => "not_enrolled",
            Reason::AlreadyEnrolled => "already_enrolled",
            Reason::AlreadyWaitlisted => "already_waitlisted",
            Reason::NotOpen => "not_open",
            Reason::Closed => "closed",
            Reason::Forbidden => "forbidden",
            Reason::SeatsBelowEnrolled => "seats_below_enrolled",
            Reason::WaitlistBelowWaiting => "waitlist_below_waiting",
            Reason::WindowOutOfOrder => "window_out_of_order",
            Reason::AlreadyQueued => "already_queued",
            Reason::EntriesFull => "entries_full",
            Reason::AlreadyDrawn => "already_drawn",
            Reason::NotADraw => "not_a_draw",
            Reason::DrawWithoutOpening => "draw_without_opening",
            Reason::DrawHasEntrants => "draw_has_entrants",
            Reason::UnknownStudent => "unknown_student",
            Reason::Hold => "hold",
            Reason::NotYourTurn => "not_your_turn",
            Reason::CreditLimit => "credit_limit",
            Reason::TimeConflict => "time_conflict",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "full" => Some(Reason::Full),
            "unknown_course" => Some(Reason::UnknownCourse),
            "invalid" => Some(Reason::Invalid),
            "not_enrolled" => Some(Reason::NotEnrolled),
            "already_enrolled" => Some(Reason::AlreadyEnrolled),
            "already_waitlisted" => Some(Reason::AlreadyWaitlisted),
            "not_open" => Some(Reason::NotOpen),
            "closed" => Some(Reason::Closed),
            "forbidden" => Some(Reason::Forbidden),
            "seats_below_enrolled" => Some(Reason::SeatsBelowEnrolled),
            "waitlist_below_waiting" => Some(Reason::WaitlistBelowWaiting),
            "window_out_of_order" => Some(Reason::WindowOutOfOrder),
            "already_queued" => Some(Reason::AlreadyQueued),
            "entries_full" => Some(Reason::EntriesFull),
            "already_drawn" => Some(Reason::AlreadyDrawn),
            "not_a_draw" => Some(Reason::NotADraw),
            "draw_without_opening" => Some(Reason::DrawWithoutOpening),
            "draw_has_entrants" => Some(Reason::DrawHasEntrants),
            "unknown_student" => Some(Reason::UnknownStudent),
            "hold" => Some(Reason::Hold),
            "not_your_turn" => Some(Reason::NotYourTurn),
            "credit_limit" => Some(Reason::CreditLimit),
            "time_conflict" => Some(Reason::TimeConflict),
            _ => None,
        }
    }
}

/// Every reason, for documentation and schema checks.
pub const REASONS: [Reason; 23] = [
    Reason::Full,
    Reason::UnknownCourse,
    Reason::Invalid,
    Reason::NotEnrolled,
    Reason::AlreadyEnrolled,
    Reason::AlreadyWaitlisted,
    Reason::NotOpen,
    Reason::Closed,
    Reason::Forbidden,
    Reason::SeatsBelowEnrolled,
    Reason::WaitlistBelowWaiting,
    Reason::WindowOutOfOrder,
    Reason::AlreadyQueued,
    Reason::EntriesFull,
    Reason::AlreadyDrawn,
    Reason::NotADraw,
    Reason::DrawWithoutOpening,
    Reason::DrawHasEntrants,
    Reason::UnknownStudent,
    Reason::Hold,
    Reason::NotYourTurn,
    Reason::CreditLimit,
    Reason::TimeConflict,
];

/// The prefix of the ids of the releases that complete swaps: only a release may take one.
pub const SWAP_RELEASE_PREFIX: &str = "swap-";

/// A request that passed every check at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub request_id: RequestId,
    pub action: Action,
    pub course_id: CourseId,
    /// The student; for a course change, the operator's broker user (checked by the broker).
    pub student_id: StudentId,
}

impl Request {
    /// The release that completes this swap: a drop of the course given up, under
    /// [`Request::swap_release_id`].
    pub fn release_of_swap(&self, by: StudentId) -> Option<Request> {
        let Action::Swap(given_up) = &self.action else {
            return None;
        };
        Some(Request {
            request_id: self.swap_release_id()?,
            action: Action::Release(by),
            course_id: given_up.clone(),
            student_id: self.student_id.clone(),
        })
    }

    /// The id of the release that completes this swap: derived from the swap's (so a
    /// redelivered swap releases once), in the reserved [`SWAP_RELEASE_PREFIX`].
    pub fn swap_release_id(&self) -> Option<RequestId> {
        if !matches!(self.action, Action::Swap(_)) {
            return None;
        }
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.request_id.as_str().as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        RequestId::parse(format!("{SWAP_RELEASE_PREFIX}{hex}")).ok()
    }

    /// Whether this is the record of a course's draw (not a wake-up, whose ids are fresh).
    pub fn is_draw_record(&self) -> bool {
        self.action == Action::Draw && self.request_id == draw_request_id(&self.course_id)
    }
}

/// The answer to a request, as decided by its course (or, for a replay, as stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub reason: Option<Reason>,
    /// Seats left in the course right after this decision.
    pub seats_left: u32,
    /// For `waitlisted`: the student's place, 1-based, at the moment of the answer.
    pub waitlist_position: Option<u32>,
    /// For `not_open`: when the course opens; for `closed`: when it closed; for `queued`:
    /// when the draw is (the opening).
    pub window_at: Option<DateTime<Utc>>,
    /// What a draw course adds (boxed: most verdicts have none).
    pub draw: Option<Box<DrawNote>>,
    /// For a refusal by the registration rules: the facts the student needs.
    pub rule: Option<Box<Refusal>>,
}

/// The facts of a course's draw that an answer carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrawNote {
    /// The draw's public commitment (on `queued`).
    pub commitment: Option<String>,
    /// The entrant's rank in the draw, 1 first (on the draw's outcome for an entrant).
    pub position: Option<u32>,
    /// When entries open (on a `not_open` before then).
    pub entries_open_at: Option<DateTime<Utc>>,
}

impl Verdict {
    pub fn new(outcome: Outcome, reason: Option<Reason>, seats_left: u32) -> Self {
        Self {
            outcome,
            reason,
            seats_left,
            waitlist_position: None,
            window_at: None,
            draw: None,
            rule: None,
        }
    }

    /// A refusal by the registration rules, with its facts.
    pub fn refused(refusal: Refusal, seats_left: u32) -> Self {
        let mut verdict = Self::new(Outcome::Rejected, Some(refusal.reason()), seats_left);
        verdict.rule = Some(Box::new(refusal));
        verdict
    }

    /// The entrant's rank in the draw, if this is a draw's outcome.
    pub fn draw_position(&self) -> Option<u32> {
        self.draw.as_ref().and_then(|d| d.position)
    }
}

/// Where a client listens for its answers: the `reply_to` queue and `correlation_id` of its
/// request, and whether it takes its answers packed into batches (`x-seatrush-batch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    pub queue: String,
    pub correlation_id: Option<String>,
    pub batch: bool,
}

impl ReplyTo {
    /// An address that takes one message per answer.
    pub fn single(queue: impl Into<String>, correlation_id: Option<String>) -> Self {
        Self {
            queue: queue.into(),
            correlation_id,
            batch: false,
        }
    }

    /// A fingerprint of the address (queue and correlation id), stored with an outcome: a
    /// redelivered copy of a request skips a final answer already confirmed only when it asks
    /// at the same address. A copy published again by a client that lost its queue (the same
    /// request id, a new queue) is then still answered.
    pub fn key(&self) -> i64 {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(self.queue.as_bytes());
        hasher.update([0]);
        if let Some(id) = &self.correlation_id {
            hasher.update([1]);
            hasher.update(id.as_bytes());
        }
        let digest = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        i64::from_be_bytes(first)
    }
}

/// A partition of the request exchange, numbered from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition(pub u16);

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_address_fingerprint_tells_queues_and_correlation_ids_apart() {
        let key =
            |queue: &str, id: Option<&str>| ReplyTo::single(queue, id.map(str::to_owned)).key();
        assert_eq!(key("amq.gen-a", Some("7")), key("amq.gen-a", Some("7")));
        assert_ne!(key("amq.gen-a", Some("7")), key("amq.gen-b", Some("7")));
        assert_ne!(key("amq.gen-a", Some("7")), key("amq.gen-a", Some("8")));
        assert_ne!(key("amq.gen-a", None), key("amq.gen-a", Some("")));
        assert_ne!(key("ab", Some("c")), key("a", Some("bc")));
        let batched = ReplyTo {
            batch: true,
            ..ReplyTo::single("amq.gen-a", None)
        };
        assert_eq!(
            batched.key(),
            key("amq.gen-a", None),
            "the same address either way"
        );
    }

    #[test]
    fn ids_accept_the_documented_alphabet() {
        assert!(CourseId::parse("CS-101_a").is_ok());
        assert!(CourseId::parse("x".repeat(64)).is_ok());
    }

    #[test]
    fn ids_refuse_empty_long_and_odd_characters() {
        assert_eq!(
            CourseId::parse(""),
            Err(IdError::Empty { kind: "course_id" })
        );
        assert!(matches!(
            StudentId::parse("x".repeat(65)),
            Err(IdError::TooLong { len: 65, .. })
        ));
        assert!(matches!(
            RequestId::parse("a.b"),
            Err(IdError::BadChar { found: '.', .. })
        ));
        assert!(matches!(
            RequestId::parse("é"),
            Err(IdError::BadChar { found: 'é', .. })
        ));
    }
}
