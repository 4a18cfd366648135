//! Domain types, parsed once at the edge ("parse, don't validate").
//!
//! Every id a client sends is checked here against the same rule (1 to 64 characters of
//! `[A-Za-z0-9_-]`), so the rest of the code can hold a `CourseId` and know it is sane: bounded in
//! length, safe in a routing key, a log line or a SQL parameter.

mod decision;

use std::fmt;

use chrono::{DateTime, Utc};

pub use decision::{CourseSnapshot, Decision, Effect};

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
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Parses a client-supplied id.
            pub fn parse(raw: impl Into<String>) -> Result<Self, IdError> {
                let raw = raw.into();
                check_id($kind, &raw)?;
                Ok(Self(raw))
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
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Enroll => "enroll",
            Action::Drop => "drop",
            Action::Configure(_) => "configure",
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
}

impl CourseSettings {
    /// The settings with a change applied.
    pub fn patched(&self, patch: &CoursePatch) -> Self {
        Self {
            capacity: patch.seats.unwrap_or(self.capacity),
            waitlist: patch.waitlist.unwrap_or(self.waitlist),
            opens_at: patch.opens_at.unwrap_or(self.opens_at),
            closes_at: patch.closes_at.unwrap_or(self.closes_at),
        }
    }

    /// Whether the window is well formed (it opens before it closes).
    pub fn window_is_valid(&self) -> bool {
        match (self.opens_at, self.closes_at) {
            (Some(open), Some(close)) => open < close,
            _ => true,
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
    /// A course change whose window closes before it opens.
    WindowOutOfOrder,
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
            _ => None,
        }
    }
}

/// Every reason, for documentation and schema checks.
pub const REASONS: [Reason; 12] = [
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
];

/// A request that passed every check at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub request_id: RequestId,
    pub action: Action,
    pub course_id: CourseId,
    /// The student; for a course change, the operator's broker user (checked by the broker).
    pub student_id: StudentId,
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
    /// For `not_open`: when the course opens; for `closed`: when it closed.
    pub window_at: Option<DateTime<Utc>>,
}

impl Verdict {
    pub fn new(outcome: Outcome, reason: Option<Reason>, seats_left: u32) -> Self {
        Self {
            outcome,
            reason,
            seats_left,
            waitlist_position: None,
            window_at: None,
        }
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
