//! Domain types, parsed once at the edge ("parse, don't validate").
//!
//! Every id a client sends is checked here against the same rule (1 to 64 characters of
//! `[A-Za-z0-9_-]`), so the rest of the code can hold a `CourseId` and know it is sane: bounded in
//! length, safe in a routing key, a log line or a SQL parameter.

use std::fmt;

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

/// What a student asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Enroll,
    Drop,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Enroll => "enroll",
            Action::Drop => "drop",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "enroll" => Some(Action::Enroll),
            "drop" => Some(Action::Drop),
            _ => None,
        }
    }
}

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Enrolled,
    Rejected,
    Dropped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Enrolled => "enrolled",
            Outcome::Rejected => "rejected",
            Outcome::Dropped => "dropped",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "enrolled" => Some(Outcome::Enrolled),
            "rejected" => Some(Outcome::Rejected),
            "dropped" => Some(Outcome::Dropped),
            _ => None,
        }
    }
}

/// Why an outcome is what it is: the cause of a rejection, or a note on a success that changed
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Every seat is taken.
    Full,
    /// No course has this id.
    UnknownCourse,
    /// The request could not be understood (bad JSON, bad id, missing field, too large).
    Invalid,
    /// A drop for a student who holds no seat in the course.
    NotEnrolled,
    /// An enroll for a student who already holds a seat: the outcome is `enrolled`, no new seat.
    AlreadyEnrolled,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Full => "full",
            Reason::UnknownCourse => "unknown_course",
            Reason::Invalid => "invalid",
            Reason::NotEnrolled => "not_enrolled",
            Reason::AlreadyEnrolled => "already_enrolled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "full" => Some(Reason::Full),
            "unknown_course" => Some(Reason::UnknownCourse),
            "invalid" => Some(Reason::Invalid),
            "not_enrolled" => Some(Reason::NotEnrolled),
            "already_enrolled" => Some(Reason::AlreadyEnrolled),
            _ => None,
        }
    }
}

/// A request that passed every check at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub request_id: RequestId,
    pub action: Action,
    pub course_id: CourseId,
    pub student_id: StudentId,
}

/// The answer to a request, as decided by its course (or, for a replay, as stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub reason: Option<Reason>,
    /// Seats left in the course right after this decision.
    pub seats_left: u32,
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
