//! The decision logic of one course: pure, synchronous, no I/O.
//!
//! This is the whole of what a course actor knows. The actor wraps it with a mailbox and a
//! supervisor; the store persists its effects. Keeping it free of I/O is what lets the property
//! tests below drive millions of requests through it and check the invariants directly.

use std::collections::{HashMap, HashSet};

use crate::domain::{Action, CourseId, Outcome, Reason, Request, RequestId, StudentId, Verdict};

/// The change a decision makes to the course, which the group commit must write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing to write but the outcome (a rejection, an idempotent enroll, ...).
    None,
    /// The student takes a seat.
    Enroll,
    /// The student gives a seat back.
    Drop,
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
        Self {
            verdict: unknown_course(),
            effect: Effect::None,
            replay: false,
        }
    }
}

/// What the store hands over when a course actor (re)starts.
#[derive(Debug, Clone, Default)]
pub struct CourseSnapshot {
    pub capacity: u32,
    pub enrolled: Vec<StudentId>,
    /// Every request id already decided for this course, with its stored verdict.
    pub decided: Vec<(RequestId, Verdict)>,
}

/// The in-memory state of one course: the seat counter and what is needed to answer at once.
#[derive(Debug, Clone)]
pub struct CourseState {
    course_id: CourseId,
    capacity: u32,
    enrolled: HashSet<StudentId>,
    /// Verdicts by request id, so that a duplicate or a redelivery replays instead of deciding
    /// twice. Only ids of requests for this existing course land here; the map is dropped with
    /// the actor when the course goes idle.
    decided: HashMap<RequestId, Verdict>,
}

impl CourseState {
    /// Rebuilds a course from what Postgres holds.
    pub fn from_snapshot(course_id: CourseId, snapshot: CourseSnapshot) -> Self {
        Self {
            course_id,
            capacity: snapshot.capacity,
            enrolled: snapshot.enrolled.into_iter().collect(),
            decided: snapshot.decided.into_iter().collect(),
        }
    }

    pub fn course_id(&self) -> &CourseId {
        &self.course_id
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn enrolled_count(&self) -> u32 {
        // The set never holds more than `capacity` students, and capacity is a u32.
        u32::try_from(self.enrolled.len()).unwrap_or(u32::MAX)
    }

    pub fn seats_left(&self) -> u32 {
        self.capacity.saturating_sub(self.enrolled_count())
    }

    pub fn is_enrolled(&self, student: &StudentId) -> bool {
        self.enrolled.contains(student)
    }

    /// Decides a request against the current state and applies its effect in memory.
    ///
    /// The caller must have routed the request to this course: a request for another course is
    /// a programming error and is answered as unknown rather than touching this course's seats.
    pub fn decide(&mut self, request: &Request) -> Decision {
        if let Some(stored) = self.decided.get(&request.request_id) {
            return Decision {
                verdict: stored.clone(),
                effect: Effect::None,
                replay: true,
            };
        }
        if request.course_id != self.course_id {
            return Decision::unknown_course();
        }
        let (outcome, reason, effect) = match request.action {
            Action::Enroll => {
                if self.enrolled.contains(&request.student_id) {
                    (
                        Outcome::Enrolled,
                        Some(Reason::AlreadyEnrolled),
                        Effect::None,
                    )
                } else if self.seats_left() == 0 {
                    (Outcome::Rejected, Some(Reason::Full), Effect::None)
                } else {
                    self.enrolled.insert(request.student_id.clone());
                    (Outcome::Enrolled, None, Effect::Enroll)
                }
            }
            Action::Drop => {
                if self.enrolled.remove(&request.student_id) {
                    (Outcome::Dropped, None, Effect::Drop)
                } else {
                    (Outcome::Rejected, Some(Reason::NotEnrolled), Effect::None)
                }
            }
        };
        let verdict = Verdict {
            outcome,
            reason,
            seats_left: self.seats_left(),
        };
        self.decided
            .insert(request.request_id.clone(), verdict.clone());
        Decision {
            verdict,
            effect,
            replay: false,
        }
    }
}

/// The verdict for a request naming a course that does not exist.
fn unknown_course() -> Verdict {
    Verdict {
        outcome: Outcome::Rejected,
        reason: Some(Reason::UnknownCourse),
        seats_left: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn course(capacity: u32) -> CourseState {
        CourseState::from_snapshot(
            CourseId::parse("C1").unwrap(),
            CourseSnapshot {
                capacity,
                ..CourseSnapshot::default()
            },
        )
    }

    fn request(id: &str, action: Action, student: &str) -> Request {
        Request {
            request_id: RequestId::parse(id).unwrap(),
            action,
            course_id: CourseId::parse("C1").unwrap(),
            student_id: StudentId::parse(student).unwrap(),
        }
    }

    #[test]
    fn the_last_seat_goes_to_the_first_asker() {
        let mut state = course(1);
        let first = state.decide(&request("r1", Action::Enroll, "s1"));
        let second = state.decide(&request("r2", Action::Enroll, "s2"));
        assert_eq!(first.verdict.outcome, Outcome::Enrolled);
        assert_eq!(first.verdict.seats_left, 0);
        assert_eq!(second.verdict.outcome, Outcome::Rejected);
        assert_eq!(second.verdict.reason, Some(Reason::Full));
    }

    #[test]
    fn the_same_student_twice_takes_one_seat() {
        let mut state = course(5);
        state.decide(&request("r1", Action::Enroll, "s1"));
        let again = state.decide(&request("r2", Action::Enroll, "s1"));
        assert_eq!(again.verdict.outcome, Outcome::Enrolled);
        assert_eq!(again.verdict.reason, Some(Reason::AlreadyEnrolled));
        assert_eq!(again.effect, Effect::None);
        assert_eq!(state.seats_left(), 4);
    }

    #[test]
    fn a_replayed_request_gets_its_first_verdict_even_after_a_seat_frees() {
        let mut state = course(1);
        state.decide(&request("r1", Action::Enroll, "s1"));
        let rejected = state.decide(&request("r2", Action::Enroll, "s2"));
        state.decide(&request("r3", Action::Drop, "s1"));
        let replay = state.decide(&request("r2", Action::Enroll, "s2"));
        assert!(replay.replay);
        assert_eq!(replay.verdict, rejected.verdict);
        assert_eq!(state.seats_left(), 1);
    }

    #[test]
    fn dropping_what_one_does_not_hold_is_refused() {
        let mut state = course(3);
        let drop = state.decide(&request("r1", Action::Drop, "s1"));
        assert_eq!(drop.verdict.outcome, Outcome::Rejected);
        assert_eq!(drop.verdict.reason, Some(Reason::NotEnrolled));
        assert_eq!(drop.effect, Effect::None);
    }

    #[test]
    fn a_snapshot_restores_seats_and_stored_verdicts() {
        let stored = Verdict {
            outcome: Outcome::Rejected,
            reason: Some(Reason::Full),
            seats_left: 0,
        };
        let mut state = CourseState::from_snapshot(
            CourseId::parse("C1").unwrap(),
            CourseSnapshot {
                capacity: 2,
                enrolled: vec![StudentId::parse("s1").unwrap()],
                decided: vec![(RequestId::parse("old").unwrap(), stored.clone())],
            },
        );
        assert_eq!(state.seats_left(), 1);
        let replay = state.decide(&request("old", Action::Enroll, "s9"));
        assert_eq!(replay.verdict, stored);
        assert!(replay.replay);
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        // A small pool of request ids and students makes duplicates and re-enrolls common.
        (0u8..40, prop::bool::weighted(0.8), 0u8..25).prop_map(|(id, enroll, student)| {
            request(
                &format!("r{id}"),
                if enroll { Action::Enroll } else { Action::Drop },
                &format!("s{student}"),
            )
        })
    }

    proptest! {
        #[test]
        fn never_over_capacity_and_effects_match_the_seat_count(
            capacity in 0u32..12,
            requests in prop::collection::vec(arb_request(), 0..300),
        ) {
            let mut state = course(capacity);
            let mut seats_taken: i64 = 0;
            for r in &requests {
                let decision = state.decide(r);
                match decision.effect {
                    Effect::Enroll => seats_taken += 1,
                    Effect::Drop => seats_taken -= 1,
                    Effect::None => {}
                }
                prop_assert!(state.enrolled_count() <= capacity);
                prop_assert_eq!(i64::from(state.enrolled_count()), seats_taken);
                // A replay repeats the seats left at its first decision; anything else reports now.
                if !decision.replay {
                    prop_assert_eq!(decision.verdict.seats_left, capacity - state.enrolled_count());
                }
            }
        }

        #[test]
        fn replays_change_nothing_and_repeat_the_first_verdict(
            capacity in 0u32..12,
            requests in prop::collection::vec(arb_request(), 1..300),
        ) {
            let mut state = course(capacity);
            let mut first: HashMap<RequestId, Verdict> = HashMap::new();
            for r in &requests {
                let before = (state.enrolled.clone(), state.seats_left());
                let decision = state.decide(r);
                match first.get(&r.request_id) {
                    Some(verdict) => {
                        prop_assert!(decision.replay);
                        prop_assert_eq!(&decision.verdict, verdict);
                        prop_assert_eq!(decision.effect, Effect::None);
                        prop_assert_eq!((state.enrolled.clone(), state.seats_left()), before);
                    }
                    None => {
                        prop_assert!(!decision.replay);
                        first.insert(r.request_id.clone(), decision.verdict.clone());
                    }
                }
            }
        }
    }
}
