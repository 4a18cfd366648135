//! What a decision is: its verdict and the effect the group commit must write, and what the
//! store hands a course actor when it (re)starts. The pure decision logic (`course`) produces
//! these and the store consumes them; neither knows the other.

use super::{CourseSettings, Outcome, Reason, RequestId, StudentId, Verdict};

/// The change a decision makes to the course, which the group commit must write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing to write but the outcome (a rejection, an idempotent enroll, ...).
    None,
    /// The student takes a free seat.
    Enroll,
    /// The student joins the end of the waitlist.
    Waitlist,
    /// The student gives a seat back; the head of the waitlist, if any, takes it.
    Drop { promoted: Option<StudentId> },
    /// The student leaves the waitlist; those behind move up.
    Leave,
    /// New settings; the heads of the waitlist take any new seats, in order.
    Configure {
        settings: CourseSettings,
        promoted: Vec<StudentId>,
    },
}

impl Effect {
    /// The students this effect moves from the waitlist to a seat, in order.
    pub fn promoted(&self) -> &[StudentId] {
        match self {
            Effect::Drop {
                promoted: Some(student),
            } => std::slice::from_ref(student),
            Effect::Configure { promoted, .. } => promoted,
            _ => &[],
        }
    }
}

/// One decided request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub effect: Effect,
    /// True when the request id had been decided before: the verdict is the stored one and
    /// nothing changes (invariant I4).
    pub replay: bool,
}

impl Decision {
    /// The decision for a request naming a course that does not exist: rejected, no effect.
    pub fn unknown_course() -> Self {
        Self::rejected(Reason::UnknownCourse)
    }

    /// A rejection decided before any course is consulted (unknown course, forbidden change).
    pub fn rejected(reason: Reason) -> Self {
        Self {
            verdict: Verdict::new(Outcome::Rejected, Some(reason), 0),
            effect: Effect::None,
            replay: false,
        }
    }
}

/// What the store hands over when a course actor (re)starts.
#[derive(Debug, Clone, Default)]
pub struct CourseSnapshot {
    pub settings: CourseSettings,
    pub enrolled: Vec<StudentId>,
    /// The waitlist, head first.
    pub waitlist: Vec<StudentId>,
    /// Every request id already decided for this course, with its stored verdict.
    pub decided: Vec<(RequestId, Verdict)>,
}
