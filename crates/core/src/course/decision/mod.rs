//! The decision logic of one course: pure, synchronous, no I/O.
//!
//! This is the whole of what a course actor knows: seats, the ordered waitlist, the window, and
//! the verdict of every request already decided. The actor wraps it with a mailbox and a
//! supervisor; the store persists its effects. Keeping it free of I/O (the clock is an argument)
//! is what lets the property tests below drive millions of requests through it and check the
//! invariants directly.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};

use crate::domain::{
    Action, CourseId, CoursePatch, CourseSettings, CourseSnapshot, Decision, Effect, Outcome,
    Reason, Request, RequestId, StudentId, Verdict,
};

/// The in-memory state of one course: what is needed to answer at once.
#[derive(Debug, Clone)]
pub struct CourseState {
    course_id: CourseId,
    settings: CourseSettings,
    enrolled: HashSet<StudentId>,
    /// Head first. Small (bounded by the waitlist capacity), so a position is a short scan.
    waitlist: VecDeque<StudentId>,
    waiting: HashSet<StudentId>,
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
            settings: snapshot.settings,
            enrolled: snapshot.enrolled.into_iter().collect(),
            waiting: snapshot.waitlist.iter().cloned().collect(),
            waitlist: snapshot.waitlist.into(),
            decided: snapshot.decided.into_iter().collect(),
        }
    }

    pub fn course_id(&self) -> &CourseId {
        &self.course_id
    }

    pub fn settings(&self) -> &CourseSettings {
        &self.settings
    }

    pub fn enrolled_count(&self) -> u32 {
        count(self.enrolled.len())
    }

    pub fn waitlisted_count(&self) -> u32 {
        count(self.waitlist.len())
    }

    pub fn seats_left(&self) -> u32 {
        self.settings.capacity.saturating_sub(self.enrolled_count())
    }

    pub fn is_enrolled(&self, student: &StudentId) -> bool {
        self.enrolled.contains(student)
    }

    /// The student's place on the waitlist, 1-based.
    pub fn position(&self, student: &StudentId) -> Option<u32> {
        if !self.waiting.contains(student) {
            return None;
        }
        self.waitlist
            .iter()
            .position(|s| s == student)
            .map(|i| count(i + 1))
    }

    /// The waitlist, head first.
    pub fn waitlist(&self) -> impl Iterator<Item = &StudentId> {
        self.waitlist.iter()
    }

    /// Decides a request against the current state at instant `now`, and applies its effect
    /// in memory.
    ///
    /// The caller must have routed the request to this course: a request for another course is
    /// a programming error and is answered as unknown rather than touching this course's seats.
    pub fn decide(&mut self, request: &Request, now: DateTime<Utc>) -> Decision {
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
        let (verdict, effect) = match &request.action {
            Action::Configure(patch) => self.configure(patch),
            action => match self.window_refusal(now) {
                Some(verdict) => (verdict, Effect::None),
                None if *action == Action::Enroll => self.enroll(&request.student_id),
                None => self.drop_student(&request.student_id),
            },
        };
        self.decided
            .insert(request.request_id.clone(), verdict.clone());
        Decision {
            verdict,
            effect,
            replay: false,
        }
    }

    fn verdict(&self, outcome: Outcome, reason: Option<Reason>) -> Verdict {
        Verdict::new(outcome, reason, self.seats_left())
    }

    /// The rejection of a request outside the course's window, if it is.
    fn window_refusal(&self, now: DateTime<Utc>) -> Option<Verdict> {
        let (reason, at) = match (self.settings.opens_at, self.settings.closes_at) {
            (Some(open), _) if now < open => (Reason::NotOpen, open),
            (_, Some(close)) if now >= close => (Reason::Closed, close),
            _ => return None,
        };
        let mut verdict = self.verdict(Outcome::Rejected, Some(reason));
        verdict.window_at = Some(at);
        Some(verdict)
    }

    fn waitlisted(&self, student: &StudentId, reason: Option<Reason>) -> Verdict {
        let mut verdict = self.verdict(Outcome::Waitlisted, reason);
        verdict.waitlist_position = self.position(student);
        verdict
    }

    fn enroll(&mut self, student: &StudentId) -> (Verdict, Effect) {
        if self.enrolled.contains(student) {
            let verdict = self.verdict(Outcome::Enrolled, Some(Reason::AlreadyEnrolled));
            return (verdict, Effect::None);
        }
        if self.waiting.contains(student) {
            let verdict = self.waitlisted(student, Some(Reason::AlreadyWaitlisted));
            return (verdict, Effect::None);
        }
        // A free seat implies an empty waitlist: every freed seat goes to the head at once.
        if self.seats_left() > 0 {
            self.enrolled.insert(student.clone());
            return (self.verdict(Outcome::Enrolled, None), Effect::Enroll);
        }
        if self.waitlisted_count() < self.settings.waitlist {
            self.waitlist.push_back(student.clone());
            self.waiting.insert(student.clone());
            return (self.waitlisted(student, None), Effect::Waitlist);
        }
        (
            self.verdict(Outcome::Rejected, Some(Reason::Full)),
            Effect::None,
        )
    }

    fn drop_student(&mut self, student: &StudentId) -> (Verdict, Effect) {
        if self.enrolled.remove(student) {
            let promoted = self.promote().pop();
            return (
                self.verdict(Outcome::Dropped, None),
                Effect::Drop { promoted },
            );
        }
        if let Some(position) = self.position(student) {
            self.waiting.remove(student);
            self.waitlist.retain(|s| s != student);
            // The place left is named, which also tells a waitlist leave from a seat drop.
            let mut verdict = self.verdict(Outcome::Dropped, None);
            verdict.waitlist_position = Some(position);
            return (verdict, Effect::Leave);
        }
        (
            self.verdict(Outcome::Rejected, Some(Reason::NotEnrolled)),
            Effect::None,
        )
    }

    fn configure(&mut self, patch: &CoursePatch) -> (Verdict, Effect) {
        let settings = self.settings.patched(patch);
        let refusal = if settings.capacity < self.enrolled_count() {
            Some(Reason::SeatsBelowEnrolled)
        } else if settings.waitlist < self.waitlisted_count() {
            Some(Reason::WaitlistBelowWaiting)
        } else if !settings.window_is_valid() {
            Some(Reason::WindowOutOfOrder)
        } else {
            None
        };
        if let Some(reason) = refusal {
            return (self.verdict(Outcome::Rejected, Some(reason)), Effect::None);
        }
        self.settings = settings.clone();
        let promoted = self.promote();
        (
            self.verdict(Outcome::Configured, None),
            Effect::Configure { settings, promoted },
        )
    }

    /// Moves heads of the waitlist into free seats; returns them in order.
    fn promote(&mut self) -> Vec<StudentId> {
        let mut promoted = Vec::new();
        while self.seats_left() > 0 {
            let Some(head) = self.waitlist.pop_front() else {
                break;
            };
            self.waiting.remove(&head);
            self.enrolled.insert(head.clone());
            promoted.push(head);
        }
        promoted
    }
}

/// A collection size as a count; sizes here are bounded by u32 capacities.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
