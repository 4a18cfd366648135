//! What a decision is: its verdict and the effect the group commit must write, and what the
//! store hands a course actor when it (re)starts. The pure decision logic (`course`) produces
//! these and the store consumes them; neither knows the other.

use super::{CourseSettings, Outcome, Reason, Refusal, RequestId, StudentId, Verdict};

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
    /// The student enters the course's draw.
    Enter,
    /// The student withdraws their entry before the draw.
    Withdraw,
    /// The course's draw: every entrant decided in rank order (boxed: it is large and rare).
    Draw(Box<DrawEffect>),
}

/// A course's draw as its actor performed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrawEffect {
    /// The entrants, rank 1 first, each with what the draw gave them.
    pub entrants: Vec<DrawnEntrant>,
}

/// One entrant's part in a draw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrawnEntrant {
    pub student_id: StudentId,
    /// The entry request, whose id now answers with the draw's outcome.
    pub request_id: RequestId,
    /// Enrolled, waitlisted or rejected full, with `draw.position`.
    pub verdict: Verdict,
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
    /// Waiting students the registration rules passed over for the seats this decision freed
    /// (they keep their places), to be told why.
    pub skipped: Vec<Skipped>,
}

/// A waiting student a promotion passed over, and the rule that forbade the seat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub student_id: StudentId,
    pub refusal: Refusal,
}

/// What the registration rules said of the students waiting for the seats a decision may free,
/// in line order (judged before the decision, against the ledger of seats every worker shares):
/// `Ok` for one who may take a seat, `Err` for one they forbid.
pub type Eligibility = [(StudentId, Result<(), Refusal>)];

impl Decision {
    /// The decision for a request naming a course that does not exist: rejected, no effect.
    pub fn unknown_course() -> Self {
        Self::rejected(Reason::UnknownCourse)
    }

    /// A refusal by the registration rules, decided before any course is consulted.
    pub fn refused(refusal: Refusal) -> Self {
        Self {
            verdict: Verdict::refused(refusal, 0),
            effect: Effect::None,
            replay: false,
            skipped: Vec::new(),
        }
    }

    /// A rejection decided before any course is consulted (unknown course, forbidden change).
    pub fn rejected(reason: Reason) -> Self {
        Self {
            verdict: Verdict::new(Outcome::Rejected, Some(reason), 0),
            effect: Effect::None,
            replay: false,
            skipped: Vec::new(),
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
    /// Every request id already decided for this course, with its stored verdict (for an
    /// entrant of a drawn course, the draw's outcome).
    pub decided: Vec<(RequestId, Verdict)>,
    /// The students entered in the course's draw and their entry requests (before the draw).
    pub entrants: Vec<(StudentId, RequestId)>,
    /// The course's draw has been performed.
    pub drawn: bool,
    /// The draw's results were confirmed by the broker; a drawn course without this announces
    /// them again.
    pub draw_announced: bool,
}

/// Verdicts a course keeps in memory, the most recent: a duplicate or a redelivery of one of
/// them replays at once. An older id is decided again in memory, and the group commit, which
/// finds its stored outcome, answers with that and has the course reload if the decision
/// differed (I4 is the database's to keep). Redeliveries and client retries come within
/// seconds, well inside the window of a course's last 1,024 decisions at any real rate. Without
/// the bound, a course that never goes idle grew by every request it ever decided (a 20-minute
/// soak at 6,000 requests/s took a worker from 53 MiB to 1.2 GiB); with it, an actor holds at
/// most about 400 KiB of verdicts once full (the map's table grows to 4,096 slots of 72 bytes as
/// entries are replaced, beside the ids), so 300 busy courses hold about 120 MiB (a 20-minute
/// soak's worker over 300 courses grew by 111 MiB, most of it while these maps filled).
pub const DECIDED_KEPT: usize = 1024;
