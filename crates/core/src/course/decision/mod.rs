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
    Action, CourseId, CoursePatch, CourseSettings, CourseSnapshot, DECIDED_KEPT, Decision,
    DrawEffect, DrawNote, DrawnEntrant, Effect, Eligibility, Opening, Outcome, Reason, Request,
    RequestId, Ruling, Skipped, StudentId, Verdict, draw_actor, draw_request_id,
};

/// Entries a draw course takes by default before it answers `entries_full`: the bound on what
/// its actor holds for the draw (each entrant's id and entry request, beside the entry's
/// answer every decided request keeps), whatever ids clients invent.
pub const DEFAULT_ENTRIES_LIMIT: usize = 20_000;

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
    /// twice: the [`DECIDED_KEPT`] most recent, and the course's draw record. Only ids of
    /// requests for this existing course land here; the map is dropped with the actor when the
    /// course goes idle.
    decided: HashMap<RequestId, Verdict>,
    /// The ids in `decided` other than the draw record, oldest first: the next to forget.
    decided_order: VecDeque<RequestId>,
    /// Under `draw`, before the draw: the students entered and their entry requests.
    entrants: HashMap<StudentId, RequestId>,
    /// The course's draw has been performed.
    drawn: bool,
    /// Entries taken at most (see [`DEFAULT_ENTRIES_LIMIT`]).
    entries_limit: usize,
    /// The draw this state performed in memory and the caller has not taken yet
    /// ([`CourseState::take_draw`]).
    pending_draw: Option<(Request, Decision)>,
    /// The students the rules passed over during the decision being made, taken into it.
    skipped: Vec<Skipped>,
}

/// What the registration rules said, for one decision.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// Of the request, at the intake.
    pub ruling: &'a Ruling,
    /// Of the students waiting, when the request may free seats.
    pub promotion: Option<&'a Eligibility>,
}

impl Rules<'_> {
    /// No registry: the rules are off.
    pub const OFF: Rules<'static> = Rules {
        ruling: &Ruling::Off,
        promotion: None,
    };
}

impl CourseState {
    /// Rebuilds a course from what Postgres holds.
    ///
    /// A drawn course whose results were never confirmed sent holds its draw again, as a
    /// replay, for the caller to take: committing it announces the results once more.
    pub fn from_snapshot(course_id: CourseId, snapshot: CourseSnapshot) -> Self {
        let unannounced = snapshot.drawn && !snapshot.draw_announced;
        let draw_record = draw_request_id(&course_id);
        let decided_order = snapshot
            .decided
            .iter()
            .map(|(id, _)| id.clone())
            .filter(|id| *id != draw_record)
            .collect();
        let mut state = Self {
            course_id,
            settings: snapshot.settings,
            enrolled: snapshot.enrolled.into_iter().collect(),
            waiting: snapshot.waitlist.iter().cloned().collect(),
            waitlist: snapshot.waitlist.into(),
            decided: snapshot.decided.into_iter().collect(),
            decided_order,
            entrants: snapshot.entrants.into_iter().collect(),
            drawn: snapshot.drawn,
            entries_limit: DEFAULT_ENTRIES_LIMIT,
            pending_draw: None,
            skipped: Vec::new(),
        };
        if unannounced {
            state.hold_draw_again();
        }
        state
    }

    /// Holds the course's stored draw as a replay for the caller to commit: its results are
    /// announced again unless they are recorded as sent, and the course is then recorded as
    /// announced. Nothing if the course has no stored draw, or a draw is already held.
    fn hold_draw_again(&mut self) {
        if self.pending_draw.is_some() {
            return;
        }
        let request = self.draw_request();
        if let Some(verdict) = self.decided.get(&request.request_id).cloned() {
            let replay = Decision {
                verdict,
                effect: Effect::None,
                replay: true,
                skipped: Vec::new(),
            };
            self.pending_draw = Some((request, replay));
        }
    }

    /// The request a course's draw is recorded under.
    fn draw_request(&self) -> Request {
        Request {
            request_id: draw_request_id(&self.course_id),
            action: Action::Draw,
            course_id: self.course_id.clone(),
            student_id: draw_actor(),
        }
    }

    /// The same state, taking at most `limit` entries into its draw.
    pub fn with_entries_limit(mut self, limit: usize) -> Self {
        self.entries_limit = limit;
        self
    }

    /// Students entered in the draw, not yet drawn.
    pub fn entrant_count(&self) -> usize {
        self.entrants.len()
    }

    pub fn is_drawn(&self) -> bool {
        self.drawn
    }

    /// The draw the last [`CourseState::decide`] performed, with the request it is recorded
    /// under. The caller must commit it before that decision: the draw came first.
    pub fn take_draw(&mut self) -> Option<(Request, Decision)> {
        self.pending_draw.take()
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
    ///
    /// At or after the opening of a draw course not yet drawn, the draw is performed first
    /// (whatever the request), and left for the caller in [`CourseState::take_draw`].
    pub fn decide(&mut self, request: &Request, now: DateTime<Utc>) -> Decision {
        self.decide_under(request, now, &Rules::OFF)
    }

    /// The students whom a seat this request frees could go to, in line order, and how many
    /// seats it frees, when the registration rules are on and the request would free one: the
    /// caller judges them ([`Eligibility`]) before [`CourseState::decide_under`].
    pub fn promotion_candidates(&self, request: &Request) -> Option<(Vec<StudentId>, usize)> {
        if self.waitlist.is_empty() || self.decided.contains_key(&request.request_id) {
            return None;
        }
        let seats = match &request.action {
            Action::Drop | Action::Release(_) if self.enrolled.contains(&request.student_id) => {
                self.seats_left() as usize + 1
            }
            Action::Configure(patch) => {
                let capacity = self.settings.patched(patch).capacity;
                capacity.saturating_sub(self.enrolled_count()) as usize
            }
            _ => 0,
        };
        (seats > 0).then(|| (self.waitlist.iter().cloned().collect(), seats))
    }

    /// Whether the request is an enroll the rules let ask without a seat claimed
    /// ([`Ruling::Unclaimed`]) and a seat is free here: the caller must claim it first.
    pub fn needs_claim(&self, request: &Request, ruling: &Ruling) -> bool {
        *ruling == Ruling::Unclaimed
            && request.action == Action::Enroll
            && self.seats_left() > 0
            && !self.decided.contains_key(&request.request_id)
            && !self.enrolled.contains(&request.student_id)
            && !self.waiting.contains(&request.student_id)
    }

    /// [`CourseState::decide`] under the registration rules: what they said of the request at
    /// the intake, and of the students waiting (see [`CourseState::promotion_candidates`]).
    pub fn decide_under(
        &mut self,
        request: &Request,
        now: DateTime<Utc>,
        rules: &Rules<'_>,
    ) -> Decision {
        if let Some(stored) = self.decided.get(&request.request_id) {
            return Decision {
                verdict: stored.clone(),
                effect: Effect::None,
                replay: true,
                skipped: Vec::new(),
            };
        }
        if request.course_id != self.course_id {
            return Decision::unknown_course();
        }
        let drew = self.draw_if_due(now, rules.promotion);
        // The judgement was the draw's: seats this request frees wait for the next decision
        // (promoting nobody, as the database does without a claim made for this request).
        let promotion = if drew && rules.ruling.is_on() {
            Some(&[][..])
        } else {
            rules.promotion
        };
        let (verdict, effect) = match &request.action {
            Action::Configure(patch) => self.configure(patch, promotion),
            Action::Draw => {
                // A wake-up for a drawn course means the clock saw it unannounced: announce
                // again (or just record it announced), so the clock stops waking it.
                if self.drawn {
                    self.hold_draw_again();
                }
                (self.wake_verdict(), Effect::None)
            }
            // The swap it completes was decided inside its own course's window; the seat
            // it gives back is given back whatever this one's.
            Action::Release(_) => self.drop_student(&request.student_id, promotion),
            action => match self.window_refusal(now) {
                Some(verdict) => (verdict, Effect::None),
                None if self.taking_entries(now) => match action {
                    Action::Enroll => self.enter(&request.student_id, &request.request_id),
                    // No seat to swap into before the draw.
                    Action::Swap(_) => {
                        let mut verdict = self.verdict(Outcome::Rejected, Some(Reason::NotOpen));
                        verdict.window_at = self.settings.opens_at;
                        (verdict, Effect::None)
                    }
                    _ => self.withdraw(&request.student_id),
                },
                None if *action == Action::Enroll => {
                    self.enroll_under(&request.student_id, rules.ruling)
                }
                None if matches!(action, Action::Swap(_)) => {
                    self.swap_into(&request.student_id, rules.ruling)
                }
                None => self.drop_student(&request.student_id, promotion),
            },
        };
        self.remember(request.request_id.clone(), verdict.clone());
        Decision {
            verdict,
            effect,
            replay: false,
            skipped: std::mem::take(&mut self.skipped),
        }
    }

    /// Keeps a verdict for replays, forgetting the oldest past [`DECIDED_KEPT`]. The draw
    /// record does not come through here (`draw_if_due` keeps it apart): it is never forgotten.
    fn remember(&mut self, id: RequestId, verdict: Verdict) {
        if self.decided.insert(id.clone(), verdict).is_none() {
            self.decided_order.push_back(id);
        }
        while self.decided_order.len() > DECIDED_KEPT {
            if let Some(old) = self.decided_order.pop_front() {
                self.decided.remove(&old);
            }
        }
    }

    fn verdict(&self, outcome: Outcome, reason: Option<Reason>) -> Verdict {
        Verdict::new(outcome, reason, self.seats_left())
    }

    /// The rejection of a request outside the course's window, if it is. A draw course
    /// taking entries is inside it.
    fn window_refusal(&self, now: DateTime<Utc>) -> Option<Verdict> {
        let (reason, at) = match (self.settings.opens_at, self.settings.closes_at) {
            _ if self.taking_entries(now) => return None,
            (Some(open), _) if now < open => (Reason::NotOpen, open),
            (_, Some(close)) if now >= close => (Reason::Closed, close),
            _ => return None,
        };
        let mut verdict = self.verdict(Outcome::Rejected, Some(reason));
        verdict.window_at = Some(at);
        if reason == Reason::NotOpen && self.settings.opening == Opening::Draw {
            verdict.draw = Some(Box::new(DrawNote {
                commitment: self.settings.draw_commitment(),
                entries_open_at: self.settings.entries_open_at,
                position: None,
            }));
        }
        Some(verdict)
    }

    /// A draw course not yet drawn, before its opening and from its entries' opening: an
    /// enroll is an entry.
    fn taking_entries(&self, now: DateTime<Utc>) -> bool {
        self.settings.opening == Opening::Draw
            && !self.drawn
            && self.settings.opens_at.is_some_and(|open| now < open)
            && self.settings.entries_open_at.is_none_or(|from| now >= from)
    }

    /// Whether the course's draw is due at `now` (a draw course, not drawn, its opening come).
    fn draw_due(&self, now: DateTime<Utc>) -> bool {
        self.settings.opening == Opening::Draw
            && !self.drawn
            && self.settings.opens_at.is_some_and(|open| now >= open)
    }

    /// When the draw is due at `now` and the registration rules are on: the entrants in rank
    /// order and the seats to give, for the caller to judge ([`Eligibility`]) before
    /// [`CourseState::decide_under`] performs the draw.
    pub fn draw_candidates(&self, now: DateTime<Utc>) -> Option<(Vec<StudentId>, usize)> {
        let seed = self.settings.draw_seed.filter(|_| self.draw_due(now))?;
        let order = seed.order(self.entrants.keys());
        (!order.is_empty()).then(|| (order, self.seats_left() as usize))
    }

    /// Performs the draw if the course is a draw whose opening has come and it has not drawn:
    /// each entrant, rank 1 first, is decided as if they had enrolled in that order, and the
    /// entry request's id answers with that outcome from now on. Under the registration rules
    /// (`eligibility`, judged in rank order), an entrant they refuse a seat is passed over: a
    /// waitlist place if one is left, else full. Whether it drew.
    fn draw_if_due(&mut self, now: DateTime<Utc>, eligibility: Option<&Eligibility>) -> bool {
        let Some(seed) = self.settings.draw_seed.filter(|_| self.draw_due(now)) else {
            return false;
        };
        let refused: HashSet<&StudentId> = eligibility
            .into_iter()
            .flatten()
            .filter(|(_, verdict)| verdict.is_err())
            .map(|(student, _)| student)
            .collect();
        let mut entered = std::mem::take(&mut self.entrants);
        let order = seed.order(entered.keys());
        let mut entrants = Vec::with_capacity(order.len());
        // Entrants passed over into the waitlist: the seats left are still given.
        let mut passed_over = 0;
        for (rank, student_id) in order.into_iter().enumerate() {
            let Some(request_id) = entered.remove(&student_id) else {
                continue;
            };
            let allowed = !refused.contains(&student_id);
            let mut verdict = self.draw_one(&student_id, allowed, &mut passed_over);
            verdict.draw = Some(Box::new(DrawNote {
                position: Some(count(rank + 1)),
                ..DrawNote::default()
            }));
            self.remember(request_id.clone(), verdict.clone());
            entrants.push(DrawnEntrant {
                student_id,
                request_id,
                verdict,
            });
        }
        self.drawn = true;
        let request = self.draw_request();
        let verdict = self.verdict(Outcome::Drawn, None);
        // Kept outside the forgetting order: a reloaded course announces its draw from it.
        self.decided
            .insert(request.request_id.clone(), verdict.clone());
        let decision = Decision {
            verdict,
            effect: Effect::Draw(Box::new(DrawEffect { entrants })),
            replay: false,
            skipped: Vec::new(),
        };
        self.pending_draw = Some((request, decision));
        true
    }

    /// Decides one entrant of the draw as an enroll: a seat (if `allowed` by the rules), else
    /// a place at the end of the waitlist (its position is the waitlist's length: no scan, so
    /// a draw of thousands of entrants into a long waitlist stays linear), else full.
    /// `passed_over` counts the entrants the rules kept from a free seat, who wait.
    fn draw_one(&mut self, student: &StudentId, allowed: bool, passed_over: &mut usize) -> Verdict {
        if self.enrolled.contains(student) || self.waiting.contains(student) {
            // Never the case (an entry is refused to whoever holds a seat or a place); decided
            // as any enroll would be rather than assumed away.
            return self.enroll(student).0;
        }
        let seat_free = self.seats_left() > 0 && self.waitlist.len() == *passed_over;
        if seat_free && allowed {
            self.enrolled.insert(student.clone());
            return self.verdict(Outcome::Enrolled, None);
        }
        if self.waitlisted_count() < self.settings.waitlist {
            *passed_over += usize::from(seat_free);
            self.waitlist.push_back(student.clone());
            self.waiting.insert(student.clone());
            let mut verdict = self.verdict(Outcome::Waitlisted, None);
            verdict.waitlist_position = Some(self.waitlisted_count());
            return verdict;
        }
        self.verdict(Outcome::Rejected, Some(Reason::Full))
    }

    /// The answer to a draw wake-up (the draw itself, if due, was performed just before).
    fn wake_verdict(&self) -> Verdict {
        match self.settings.opening {
            Opening::FirstCome => self.verdict(Outcome::Rejected, Some(Reason::NotADraw)),
            Opening::Draw if self.drawn => self.verdict(Outcome::Drawn, Some(Reason::AlreadyDrawn)),
            Opening::Draw => {
                let mut verdict = self.verdict(Outcome::Rejected, Some(Reason::NotOpen));
                verdict.window_at = self.settings.opens_at;
                verdict
            }
        }
    }

    /// An entry into the draw: `queued`, once per student, within the bound.
    fn enter(&mut self, student: &StudentId, request: &RequestId) -> (Verdict, Effect) {
        if self.enrolled.contains(student) || self.waiting.contains(student) {
            return self.enroll(student);
        }
        let reason = if self.entrants.contains_key(student) {
            Some(Reason::AlreadyQueued)
        } else if self.entrants.len() >= self.entries_limit {
            return (
                self.verdict(Outcome::Rejected, Some(Reason::EntriesFull)),
                Effect::None,
            );
        } else {
            None
        };
        let mut verdict = self.verdict(Outcome::Queued, reason);
        verdict.window_at = self.settings.opens_at;
        verdict.draw = Some(Box::new(DrawNote {
            commitment: self.settings.draw_commitment(),
            ..DrawNote::default()
        }));
        if reason.is_some() {
            return (verdict, Effect::None);
        }
        self.entrants.insert(student.clone(), request.clone());
        (verdict, Effect::Enter)
    }

    /// A drop before the draw: withdraws the student's entry, else drops as usual.
    fn withdraw(&mut self, student: &StudentId) -> (Verdict, Effect) {
        if self.entrants.remove(student).is_some() {
            // The draw's commitment tells a withdrawal from a seat given back.
            let mut verdict = self.verdict(Outcome::Dropped, None);
            verdict.draw = Some(Box::new(DrawNote {
                commitment: self.settings.draw_commitment(),
                ..DrawNote::default()
            }));
            return (verdict, Effect::Withdraw);
        }
        self.drop_student(student, None)
    }

    fn waitlisted(&self, student: &StudentId, reason: Option<Reason>) -> Verdict {
        let mut verdict = self.verdict(Outcome::Waitlisted, reason);
        verdict.waitlist_position = self.position(student);
        verdict
    }

    fn enroll(&mut self, student: &StudentId) -> (Verdict, Effect) {
        self.enroll_under(student, &Ruling::Off)
    }

    /// An enroll; a seat only if the registration rules allow it (a place on the waitlist
    /// counts for nothing under them).
    fn enroll_under(&mut self, student: &StudentId, ruling: &Ruling) -> (Verdict, Effect) {
        if self.enrolled.contains(student) {
            let verdict = self.verdict(Outcome::Enrolled, Some(Reason::AlreadyEnrolled));
            return (verdict, Effect::None);
        }
        if self.waiting.contains(student) {
            let verdict = self.waitlisted(student, Some(Reason::AlreadyWaitlisted));
            return (verdict, Effect::None);
        }
        // A free seat implies an empty waitlist (every freed seat goes to the head at once),
        // or one whose students the rules refused it to.
        if self.seats_left() > 0 {
            match ruling.seat() {
                Some(Ok(())) => {}
                Some(Err(refusal)) => {
                    return (
                        Verdict::refused(refusal.clone(), self.seats_left()),
                        Effect::None,
                    );
                }
                // The caller claims a seat before deciding when one is free
                // ([`CourseState::needs_claim`]); if it could not, the seat is not given.
                None => {
                    return (
                        self.verdict(Outcome::Rejected, Some(Reason::Full)),
                        Effect::None,
                    );
                }
            }
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

    /// A swap's seat: a free one (under the rules), else nothing; never a waitlist place,
    /// since the seat given up is kept when this one cannot be had.
    fn swap_into(&mut self, student: &StudentId, ruling: &Ruling) -> (Verdict, Effect) {
        if self.seats_left() == 0
            && !self.enrolled.contains(student)
            && !self.waiting.contains(student)
        {
            return (
                self.verdict(Outcome::Rejected, Some(Reason::Full)),
                Effect::None,
            );
        }
        self.enroll_under(student, ruling)
    }

    fn drop_student(
        &mut self,
        student: &StudentId,
        eligibility: Option<&Eligibility>,
    ) -> (Verdict, Effect) {
        if self.enrolled.remove(student) {
            let promoted = self.promote(eligibility).pop();
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

    fn configure(
        &mut self,
        patch: &CoursePatch,
        eligibility: Option<&Eligibility>,
    ) -> (Verdict, Effect) {
        let settings = self.settings.patched(patch);
        let refusal = if settings.capacity < self.enrolled_count() {
            Some(Reason::SeatsBelowEnrolled)
        } else if settings.waitlist < self.waitlisted_count() {
            Some(Reason::WaitlistBelowWaiting)
        } else if !settings.window_is_valid() {
            Some(Reason::WindowOutOfOrder)
        } else if settings.opening != self.settings.opening && self.drawn {
            Some(Reason::AlreadyDrawn)
        } else if settings.opening == Opening::FirstCome && !self.entrants.is_empty() {
            Some(Reason::DrawHasEntrants)
        } else if !settings.draw_is_complete() {
            Some(Reason::DrawWithoutOpening)
        } else {
            None
        };
        if let Some(reason) = refusal {
            return (self.verdict(Outcome::Rejected, Some(reason)), Effect::None);
        }
        self.settings = settings.clone();
        let promoted = self.promote(eligibility);
        (
            self.verdict(Outcome::Configured, None),
            Effect::Configure { settings, promoted },
        )
    }

    /// Moves heads of the waitlist into free seats; returns them in order. Under the
    /// registration rules (`eligibility`), the first in line whom the rules allow, passing
    /// over (and noting in `skipped`) those they forbid, who keep their places.
    fn promote(&mut self, eligibility: Option<&Eligibility>) -> Vec<StudentId> {
        let mut promoted = Vec::new();
        let Some(judged) = eligibility else {
            while self.seats_left() > 0 {
                let Some(head) = self.waitlist.pop_front() else {
                    break;
                };
                self.waiting.remove(&head);
                self.enrolled.insert(head.clone());
                promoted.push(head);
            }
            return promoted;
        };
        for (student, verdict) in judged {
            if self.seats_left() == 0 {
                break;
            }
            if !self.waiting.contains(student) {
                continue;
            }
            match verdict {
                Ok(()) => {
                    self.waiting.remove(student);
                    self.waitlist.retain(|s| s != student);
                    self.enrolled.insert(student.clone());
                    promoted.push(student.clone());
                }
                Err(refusal) => self.skipped.push(Skipped {
                    student_id: student.clone(),
                    refusal: refusal.clone(),
                }),
            }
        }
        promoted
    }
}

/// A collection size as a count; sizes here are bounded by u32 capacities.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod draw_tests;
#[cfg(test)]
mod tests;
