//! A registrar's rules across courses, as pure functions: holds, time tickets, the credit cap
//! and clashing meetings. Given what a student holds and what they ask for, [`may_take_seat`] says
//! whether the rules allow it and, if not, which rule and the facts the student needs.
//!
//! Waitlist places do not count against the cap, and clash with nothing: a student may wait for
//! alternatives. A seat counts; taking one (an enroll, or a promotion from a waitlist) is checked
//! against the seats held, less the one a swap gives up.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{CourseId, Meetings, Reason, StudentId};

/// Most holds one student's record keeps.
pub const MAX_HOLDS: usize = 16;

/// A student of the term, as the registry holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StudentRecord {
    /// Credits of seats held at most.
    pub max_credits: u32,
    /// The time ticket: nothing before it (`None`: with everyone).
    pub registration_opens_at: Option<DateTime<Utc>>,
    /// Holds on the account (unpaid fees, missing advising...): nothing while any remains.
    pub holds: Vec<String>,
}

/// What a course counts for under the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CourseLoad<'a> {
    pub course: &'a CourseId,
    pub credits: u32,
    pub meetings: &'a Meetings,
}

/// Why the rules refuse, with what the student needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A registry is loaded and the student is not in it.
    UnknownStudent,
    /// A swap gives up a seat the student does not hold (or is already giving up).
    NotEnrolled { course: CourseId },
    /// Holds on the account, by name.
    Hold { holds: Vec<String> },
    /// The student's registration opens later.
    NotYourTurn { at: DateTime<Utc> },
    /// The seat would take the student past their cap.
    CreditLimit { held: u32, asked: u32, allowed: u32 },
    /// The course meets at the same time as one whose seat the student holds.
    TimeConflict { with: CourseId },
}

/// What the registration rules said of a request before its course decides it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Ruling {
    /// No registry is loaded: the rules are off, and the course decides as it always did.
    #[default]
    Off,
    /// Nothing for the rules to judge (a drop, a course change): the course decides.
    Allowed,
    /// An enroll: `Ok` when a seat is claimed for the student (in `student_seats`, so every
    /// worker counts it), `Err` when a rule refuses them a seat but not a waitlist place.
    Seat(Result<(), Refusal>),
    /// Refused before any course: no state is created for it.
    Refused(Refusal),
    /// An enroll the rules let ask, for a course whose seats were all taken when judged: no
    /// seat is claimed. Should its actor find a seat free after all, it has one claimed first.
    Unclaimed,
}

impl Ruling {
    /// Whether the rules are on for this request (a registry is loaded).
    pub fn is_on(&self) -> bool {
        *self != Ruling::Off
    }

    /// Whether a seat may be given: `Some(Err)` names the rule that refuses it, `None` means
    /// none is claimed ([`Ruling::Unclaimed`]).
    pub fn seat(&self) -> Option<Result<(), &Refusal>> {
        match self {
            Ruling::Seat(Err(refusal)) | Ruling::Refused(refusal) => Some(Err(refusal)),
            Ruling::Unclaimed => None,
            _ => Some(Ok(())),
        }
    }
}

/// A seat a student holds or has been promised (a claim), as the ledger counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatHeld {
    pub course: CourseId,
    pub credits: u32,
    pub meetings: Meetings,
    /// Committed, not only claimed.
    pub held: bool,
    /// Committed, and not being given up by a swap: a swap may give it up.
    pub swappable: bool,
    /// Claimed by a swap (judged as if the seat it gives up were gone).
    pub swap_claim: bool,
}

/// The students a batch of requests concerns, with their seats, as read under their rows'
/// locks: judging in order against it, and counting each seat granted before judging the next,
/// is what keeps a student's simultaneous requests from overrunning the rules together.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    students: HashMap<StudentId, (StudentRecord, Vec<SeatHeld>)>,
}

/// What the ledger made of an enroll's seat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// A new claim, to be written.
    New,
    /// The student is already promised this course's seat, by a claim in flight.
    Existing,
    /// The student holds this course's seat (it may be being given back by a drop not
    /// committed yet): nothing to write, the seat already counts.
    Held,
}

impl Ledger {
    pub fn insert(&mut self, student: StudentId, record: StudentRecord) {
        self.students.insert(student, (record, Vec::new()));
    }

    /// Counts a seat the student holds or is promised.
    pub fn hold(&mut self, student: &StudentId, seat: SeatHeld) {
        if let Some((_, seats)) = self.students.get_mut(student) {
            seats.push(seat);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.students.is_empty()
    }

    pub fn contains(&self, student: &StudentId) -> bool {
        self.students.contains_key(student)
    }

    /// Judges a student's request for a seat in `course` (credits and meetings), at `now`,
    /// giving up the seat held in `giving_up` for a swap: the refusal of a rule, or the seat
    /// claimed (and counted from now on; the seat given up still counts for the student's
    /// other requests until the swap is settled). `None` when the student is not in the
    /// registry.
    pub fn claim_seat(
        &mut self,
        student: &StudentId,
        course: &CourseId,
        (credits, meetings): (u32, &Meetings),
        giving_up: Option<&CourseId>,
        now: DateTime<Utc>,
    ) -> Option<Result<Claim, Refusal>> {
        let (record, seats) = self.students.get_mut(student)?;
        may_ask(record, now).err().map(Err).or_else(|| {
            let existing = seats
                .iter()
                .find(|s| s.course == *course)
                .map(|s| (s.held, s.swap_claim));
            // A plain claim in flight: the course decides that request first.
            if existing == Some((false, false)) {
                return Some(Ok(Claim::Existing));
            }
            if let Some(given) = giving_up
                && existing.is_none()
                && !seats.iter().any(|s| s.course == *given && s.swappable)
            {
                return Some(Err(Refusal::NotEnrolled {
                    course: given.clone(),
                }));
            }
            let loads: Vec<CourseLoad<'_>> = seats
                .iter()
                .map(|s| CourseLoad {
                    course: &s.course,
                    credits: s.credits,
                    meetings: &s.meetings,
                })
                .collect();
            let asked = CourseLoad {
                course,
                credits,
                meetings,
            };
            // A held seat, or a swap's claim, is judged like a new one (the seat itself is not
            // counted twice): a seat given back and taken again, or a swap's claim taken over
            // by a promotion, must fit the rules with everything else the student holds.
            if let Err(refusal) = may_take_seat(record, &loads, &asked, giving_up, now) {
                return Some(Err(refusal));
            }
            match existing {
                Some((true, _)) => return Some(Ok(Claim::Held)),
                Some(_) => return Some(Ok(Claim::Existing)),
                None => {}
            }
            seats.push(SeatHeld {
                course: course.clone(),
                credits,
                meetings: meetings.clone(),
                held: false,
                swappable: false,
                swap_claim: giving_up.is_some(),
            });
            Some(Ok(Claim::New))
        })
    }

    /// Judges a request that takes no seat: a student outside the registry is refused, and
    /// so is one whose holds or time ticket forbid asking, when the request is an enroll.
    pub fn may_ask(&self, student: &StudentId, now: DateTime<Utc>) -> Result<(), Refusal> {
        match self.students.get(student) {
            None => Err(Refusal::UnknownStudent),
            Some((record, _)) => may_ask(record, now),
        }
    }
}

/// A refusal's facts, flat, as stored with its outcome and sent in its answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleFacts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_opens_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_held: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_asked: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_allowed: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicts_with: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_course_id: Option<String>,
}

impl Refusal {
    /// The refusal's facts, flat.
    pub fn facts(&self) -> RuleFacts {
        match self {
            Refusal::UnknownStudent => RuleFacts::default(),
            Refusal::NotEnrolled { course } => RuleFacts {
                drop_course_id: Some(course.to_string()),
                ..RuleFacts::default()
            },
            Refusal::Hold { holds } => RuleFacts {
                holds: Some(holds.clone()),
                ..RuleFacts::default()
            },
            Refusal::NotYourTurn { at } => RuleFacts {
                registration_opens_at: Some(*at),
                ..RuleFacts::default()
            },
            Refusal::CreditLimit {
                held,
                asked,
                allowed,
            } => RuleFacts {
                credits_held: Some(*held),
                credits_asked: Some(*asked),
                credits_allowed: Some(*allowed),
                ..RuleFacts::default()
            },
            Refusal::TimeConflict { with } => RuleFacts {
                conflicts_with: Some(with.to_string()),
                ..RuleFacts::default()
            },
        }
    }

    /// The refusal a stored reason and its facts stand for; `None` for a reason of no rule, or
    /// facts that do not fit it.
    pub fn from_facts(reason: Reason, facts: RuleFacts) -> Option<Self> {
        Some(match reason {
            Reason::UnknownStudent => Refusal::UnknownStudent,
            Reason::NotEnrolled => Refusal::NotEnrolled {
                course: CourseId::parse(facts.drop_course_id?).ok()?,
            },
            Reason::Hold => Refusal::Hold {
                holds: facts.holds?,
            },
            Reason::NotYourTurn => Refusal::NotYourTurn {
                at: facts.registration_opens_at?,
            },
            Reason::CreditLimit => Refusal::CreditLimit {
                held: facts.credits_held?,
                asked: facts.credits_asked?,
                allowed: facts.credits_allowed?,
            },
            Reason::TimeConflict => Refusal::TimeConflict {
                with: CourseId::parse(facts.conflicts_with?).ok()?,
            },
            _ => return None,
        })
    }

    pub fn reason(&self) -> Reason {
        match self {
            Refusal::UnknownStudent => Reason::UnknownStudent,
            Refusal::NotEnrolled { .. } => Reason::NotEnrolled,
            Refusal::Hold { .. } => Reason::Hold,
            Refusal::NotYourTurn { .. } => Reason::NotYourTurn,
            Refusal::CreditLimit { .. } => Reason::CreditLimit,
            Refusal::TimeConflict { .. } => Reason::TimeConflict,
        }
    }

    /// Whether this refusal concerns the seat only: the student may still take a waitlist
    /// place (which counts for no credits and clashes with nothing).
    pub fn seat_only(&self) -> bool {
        matches!(
            self,
            Refusal::CreditLimit { .. } | Refusal::TimeConflict { .. }
        )
    }
}

/// Whether `student`, holding the seats `seats`, may take a seat in `asked` at `now`; a swap
/// names the course it gives up in `giving_up`, which then counts neither for credits nor for
/// clashes. The rules are checked in this order: holds, the time ticket, the cap, clashes.
pub fn may_take_seat(
    student: &StudentRecord,
    seats: &[CourseLoad<'_>],
    asked: &CourseLoad<'_>,
    giving_up: Option<&CourseId>,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    may_ask(student, now)?;
    let kept = || {
        seats
            .iter()
            .filter(move |s| Some(s.course) != giving_up && s.course != asked.course)
    };
    let held: u32 = kept().map(|s| s.credits).fold(0, u32::saturating_add);
    if held.saturating_add(asked.credits) > student.max_credits {
        return Err(Refusal::CreditLimit {
            held,
            asked: asked.credits,
            allowed: student.max_credits,
        });
    }
    if let Some(clash) = kept().find(|s| s.meetings.clashes_with(asked.meetings)) {
        return Err(Refusal::TimeConflict {
            with: clash.course.clone(),
        });
    }
    Ok(())
}

/// The rules that apply to any request of the student, seat or waitlist place: holds and the
/// time ticket.
pub fn may_ask(student: &StudentRecord, now: DateTime<Utc>) -> Result<(), Refusal> {
    if !student.holds.is_empty() {
        return Err(Refusal::Hold {
            holds: student.holds.clone(),
        });
    }
    match student.registration_opens_at {
        Some(at) if now < at => Err(Refusal::NotYourTurn { at }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn course(i: usize) -> CourseId {
        CourseId::parse(format!("C{i}")).expect("valid id")
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-09-01T09:00:00Z")
            .expect("instant")
            .with_timezone(&Utc)
    }

    fn student(max_credits: u32) -> StudentRecord {
        StudentRecord {
            max_credits,
            ..StudentRecord::default()
        }
    }

    #[test]
    fn each_rule_says_why() {
        let none = Meetings::default();
        let monday = Meetings::parse("MO 09:00-10:30").expect("valid");
        let (c0, c1) = (course(0), course(1));
        let asked = CourseLoad {
            course: &c1,
            credits: 4,
            meetings: &monday,
        };
        let held = [CourseLoad {
            course: &c0,
            credits: 6,
            meetings: &monday,
        }];

        let mut held_up = student(30);
        held_up.holds = vec!["unpaid_fees".into()];
        assert_eq!(
            may_take_seat(&held_up, &[], &asked, None, now()),
            Err(Refusal::Hold {
                holds: vec!["unpaid_fees".into()]
            })
        );
        let mut later = student(30);
        later.registration_opens_at = Some(now() + chrono::Duration::minutes(1));
        assert!(matches!(
            may_take_seat(&later, &[], &asked, None, now()),
            Err(Refusal::NotYourTurn { .. })
        ));
        assert_eq!(
            may_take_seat(&student(8), &held, &asked, None, now()),
            Err(Refusal::CreditLimit {
                held: 6,
                asked: 4,
                allowed: 8
            })
        );
        assert_eq!(
            may_take_seat(&student(30), &held, &asked, None, now()),
            Err(Refusal::TimeConflict { with: c0.clone() })
        );
        // A swap out of the clashing, credit-heavy course is judged without it.
        assert_eq!(
            may_take_seat(&student(8), &held, &asked, Some(&c0), now()),
            Ok(())
        );
        let online = CourseLoad {
            course: &c1,
            credits: 2,
            meetings: &none,
        };
        assert_eq!(
            may_take_seat(&student(8), &held, &online, None, now()),
            Ok(())
        );
    }

    fn arb_course() -> impl Strategy<Value = (u32, Meetings)> {
        (0u32..7, 0usize..5, 0u16..20).prop_map(|(credits, day, hour)| {
            let text = format!(
                "{} {:02}:00-{:02}:30",
                ["MO", "TU", "WE", "TH", "FR"][day],
                8 + hour % 10,
                8 + hour % 10
            );
            (credits, Meetings::parse(&text).expect("valid"))
        })
    }

    proptest! {
        /// Seats granted one by one under the rules never exceed the cap nor clash, whatever
        /// the order of asking; and what the rules refuse breaks a rule.
        #[test]
        fn granted_seats_keep_the_cap_and_never_clash(
            cap in 0u32..20,
            courses in prop::collection::vec(arb_course(), 1..12),
        ) {
            let ids: Vec<CourseId> = (0..courses.len()).map(course).collect();
            let me = student(cap);
            let mut seats: Vec<usize> = Vec::new();
            for (i, (credits, meetings)) in courses.iter().enumerate() {
                let held: Vec<CourseLoad<'_>> = seats.iter().map(|&j| CourseLoad {
                    course: &ids[j], credits: courses[j].0, meetings: &courses[j].1,
                }).collect();
                let asked = CourseLoad { course: &ids[i], credits: *credits, meetings };
                match may_take_seat(&me, &held, &asked, None, now()) {
                    Ok(()) => seats.push(i),
                    Err(Refusal::CreditLimit { held: h, asked: a, allowed }) => prop_assert!(h + a > allowed),
                    Err(Refusal::TimeConflict { with }) => {
                        let j = ids.iter().position(|c| *c == with).expect("a held course");
                        prop_assert!(courses[j].1.clashes_with(meetings));
                    }
                    Err(other) => prop_assert!(false, "no hold or ticket here: {other:?}"),
                }
            }
            let total: u32 = seats.iter().map(|&j| courses[j].0).sum();
            prop_assert!(total <= cap);
            for (x, &a) in seats.iter().enumerate() {
                for &b in &seats[x + 1..] {
                    prop_assert!(!courses[a].1.clashes_with(&courses[b].1));
                }
            }
        }
    }
}
