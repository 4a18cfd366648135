//! Unit and property tests of the decision logic: the invariants checked directly on the state.

use super::*;
use proptest::prelude::*;

fn course_with(settings: CourseSettings) -> CourseState {
    CourseState::from_snapshot(
        CourseId::parse("C1").unwrap(),
        CourseSnapshot {
            settings,
            ..CourseSnapshot::default()
        },
    )
}

fn course(capacity: u32, waitlist: u32) -> CourseState {
    course_with(CourseSettings {
        capacity,
        waitlist,
        ..CourseSettings::default()
    })
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-09-01T09:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn student(s: &str) -> StudentId {
    StudentId::parse(s).unwrap()
}

fn request(id: &str, action: Action, who: &str) -> Request {
    Request {
        request_id: RequestId::parse(id).unwrap(),
        action,
        course_id: CourseId::parse("C1").unwrap(),
        student_id: student(who),
    }
}

fn configure(id: &str, patch: CoursePatch) -> Request {
    request(id, Action::Configure(Box::new(patch)), "registrar")
}

#[test]
fn a_course_remembers_its_most_recent_verdicts_only() {
    // Arrange: more requests than a course keeps verdicts of.
    let mut state = course(1, 0);
    let total = DECIDED_KEPT + 10;
    for n in 0..total {
        state.decide(
            &request(&format!("r{n}"), Action::Enroll, &format!("s{n}")),
            now(),
        );
    }

    // Act: the first request again (forgotten), and the last (remembered).
    let oldest = state.decide(&request("r0", Action::Enroll, "s0"), now());
    let newest = state.decide(
        &request(
            &format!("r{}", total - 1),
            Action::Enroll,
            &format!("s{}", total - 1),
        ),
        now(),
    );

    // Assert: the last is a replay; the first is decided afresh (the group commit will find
    // its stored outcome), without a second seat: s0 holds the one seat already.
    assert!(newest.replay);
    assert!(!oldest.replay);
    assert_eq!(oldest.effect, Effect::None);
    assert_eq!(state.decided.len(), DECIDED_KEPT);
}

#[test]
fn the_last_seat_goes_to_the_first_asker() {
    let mut state = course(1, 0);
    let first = state.decide(&request("r1", Action::Enroll, "s1"), now());
    let second = state.decide(&request("r2", Action::Enroll, "s2"), now());
    assert_eq!(first.verdict.outcome, Outcome::Enrolled);
    assert_eq!(first.verdict.seats_left, 0);
    assert_eq!(second.verdict.outcome, Outcome::Rejected);
    assert_eq!(second.verdict.reason, Some(Reason::Full));
}

#[test]
fn the_same_student_twice_takes_one_seat() {
    let mut state = course(5, 0);
    state.decide(&request("r1", Action::Enroll, "s1"), now());
    let again = state.decide(&request("r2", Action::Enroll, "s1"), now());
    assert_eq!(again.verdict.outcome, Outcome::Enrolled);
    assert_eq!(again.verdict.reason, Some(Reason::AlreadyEnrolled));
    assert_eq!(again.effect, Effect::None);
    assert_eq!(state.seats_left(), 4);
}

#[test]
fn a_full_course_waitlists_in_arrival_order_then_rejects() {
    let mut state = course(1, 2);
    state.decide(&request("r1", Action::Enroll, "s1"), now());
    let w1 = state.decide(&request("r2", Action::Enroll, "s2"), now());
    let w2 = state.decide(&request("r3", Action::Enroll, "s3"), now());
    let full = state.decide(&request("r4", Action::Enroll, "s4"), now());
    let again = state.decide(&request("r5", Action::Enroll, "s3"), now());
    assert_eq!(
        (w1.verdict.outcome, w1.verdict.waitlist_position),
        (Outcome::Waitlisted, Some(1))
    );
    assert_eq!(w1.effect, Effect::Waitlist);
    assert_eq!(w2.verdict.waitlist_position, Some(2));
    assert_eq!(full.verdict.reason, Some(Reason::Full));
    assert_eq!(again.verdict.reason, Some(Reason::AlreadyWaitlisted));
    assert_eq!(again.verdict.waitlist_position, Some(2));
}

#[test]
fn a_drop_promotes_the_head_and_leaving_moves_the_rest_up() {
    let mut state = course(1, 3);
    for (i, s) in ["s1", "s2", "s3", "s4"].iter().enumerate() {
        state.decide(&request(&format!("e{i}"), Action::Enroll, s), now());
    }
    let drop = state.decide(&request("d1", Action::Drop, "s1"), now());
    assert_eq!(drop.verdict.outcome, Outcome::Dropped);
    assert_eq!(
        drop.effect,
        Effect::Drop {
            promoted: Some(student("s2"))
        }
    );
    assert!(state.is_enrolled(&student("s2")));
    assert_eq!(state.position(&student("s4")), Some(2));
    let leave = state.decide(&request("d2", Action::Drop, "s3"), now());
    assert_eq!(leave.effect, Effect::Leave);
    assert_eq!(leave.verdict.waitlist_position, Some(1));
    assert_eq!(state.position(&student("s4")), Some(1));
    let nothing = state.decide(&request("d3", Action::Drop, "s9"), now());
    assert_eq!(nothing.verdict.reason, Some(Reason::NotEnrolled));
}

#[test]
fn raising_seats_promotes_and_lowering_below_the_enrolled_is_refused() {
    let mut state = course(1, 5);
    for (i, s) in ["s1", "s2", "s3", "s4"].iter().enumerate() {
        state.decide(&request(&format!("e{i}"), Action::Enroll, s), now());
    }
    let raise = state.decide(
        &configure(
            "c1",
            CoursePatch {
                seats: Some(3),
                ..CoursePatch::default()
            },
        ),
        now(),
    );
    assert_eq!(raise.verdict.outcome, Outcome::Configured);
    assert_eq!(raise.effect.promoted(), &[student("s2"), student("s3")]);
    assert_eq!(state.position(&student("s4")), Some(1));
    let lower = state.decide(
        &configure(
            "c2",
            CoursePatch {
                seats: Some(2),
                ..CoursePatch::default()
            },
        ),
        now(),
    );
    assert_eq!(lower.verdict.reason, Some(Reason::SeatsBelowEnrolled));
    assert_eq!(state.settings().capacity, 3);
    let shrink = state.decide(
        &configure(
            "c3",
            CoursePatch {
                waitlist: Some(0),
                ..CoursePatch::default()
            },
        ),
        now(),
    );
    assert_eq!(shrink.verdict.reason, Some(Reason::WaitlistBelowWaiting));
}

#[test]
fn requests_outside_the_window_are_refused_with_the_instant() {
    let opens = now() + chrono::Duration::minutes(1);
    let mut early = course_with(CourseSettings {
        capacity: 5,
        opens_at: Some(opens),
        ..CourseSettings::default()
    });
    let refused = early.decide(&request("r1", Action::Enroll, "s1"), now());
    assert_eq!(refused.verdict.reason, Some(Reason::NotOpen));
    assert_eq!(refused.verdict.window_at, Some(opens));
    let on_time = early.decide(&request("r2", Action::Enroll, "s1"), opens);
    assert_eq!(on_time.verdict.outcome, Outcome::Enrolled);

    let mut late = course_with(CourseSettings {
        capacity: 5,
        closes_at: Some(now()),
        ..CourseSettings::default()
    });
    let closed = late.decide(&request("r3", Action::Drop, "s1"), now());
    assert_eq!(closed.verdict.reason, Some(Reason::Closed));
    assert_eq!(closed.verdict.window_at, Some(now()));
}

#[test]
fn a_replayed_request_gets_its_first_verdict_even_after_a_seat_frees() {
    let mut state = course(1, 0);
    state.decide(&request("r1", Action::Enroll, "s1"), now());
    let rejected = state.decide(&request("r2", Action::Enroll, "s2"), now());
    state.decide(&request("r3", Action::Drop, "s1"), now());
    let replay = state.decide(&request("r2", Action::Enroll, "s2"), now());
    assert!(replay.replay);
    assert_eq!(replay.verdict, rejected.verdict);
    assert_eq!(state.seats_left(), 1);
}

#[test]
fn a_snapshot_restores_seats_waitlist_and_stored_verdicts() {
    let stored = Verdict::new(Outcome::Rejected, Some(Reason::Full), 0);
    let mut state = CourseState::from_snapshot(
        CourseId::parse("C1").unwrap(),
        CourseSnapshot {
            settings: CourseSettings {
                capacity: 1,
                waitlist: 3,
                ..CourseSettings::default()
            },
            enrolled: vec![student("s1")],
            waitlist: vec![student("s2"), student("s3")],
            decided: vec![(RequestId::parse("old").unwrap(), stored.clone())],
            ..CourseSnapshot::default()
        },
    );
    assert_eq!(state.seats_left(), 0);
    assert_eq!(state.position(&student("s3")), Some(2));
    let replay = state.decide(&request("old", Action::Enroll, "s9"), now());
    assert_eq!(replay.verdict, stored);
    assert!(replay.replay);
}

fn arb_request() -> impl Strategy<Value = Request> {
    // A small pool of request ids and students makes duplicates, re-enrolls and drops of
    // waitlisted students common; a few course changes move the seat count both ways.
    (0u8..60, 0u8..20, 0u8..25, 0u32..12, 0u32..6).prop_map(|(id, kind, who, seats, waitlist)| {
        let id = format!("r{id}");
        match kind {
            0 => configure(
                &id,
                CoursePatch {
                    seats: Some(seats),
                    waitlist: Some(waitlist),
                    ..CoursePatch::default()
                },
            ),
            1..=5 => request(&id, Action::Drop, &format!("s{who}")),
            _ => request(&id, Action::Enroll, &format!("s{who}")),
        }
    })
}

/// The state's invariants: within capacity, nobody waits for a free seat, nobody both
/// enrolled and waiting, positions a permutation of 1..n.
fn check_invariants(state: &CourseState) -> Result<(), TestCaseError> {
    prop_assert!(state.enrolled_count() <= state.settings.capacity);
    prop_assert!(state.waitlisted_count() <= state.settings.waitlist);
    prop_assert!(state.waitlist.is_empty() || state.seats_left() == 0);
    prop_assert_eq!(state.waiting.len(), state.waitlist.len());
    let mut positions: Vec<u32> = state
        .waitlist
        .iter()
        .map(|s| state.position(s).unwrap_or(0))
        .collect();
    positions.sort_unstable();
    prop_assert_eq!(
        positions,
        (1..=state.waitlisted_count()).collect::<Vec<_>>()
    );
    for s in &state.waitlist {
        prop_assert!(!state.enrolled.contains(s));
    }
    Ok(())
}

proptest! {
    #[test]
    fn never_over_capacity_and_effects_match_the_state(
        capacity in 0u32..12,
        waitlist in 0u32..6,
        requests in prop::collection::vec(arb_request(), 0..300),
    ) {
        let mut state = course(capacity, waitlist);
        let mut seats_taken: i64 = 0;
        let mut waiting: i64 = 0;
        for r in &requests {
            let decision = state.decide(r, now());
            let promoted = i64::try_from(decision.effect.promoted().len()).unwrap();
            match decision.effect {
                Effect::Enroll => seats_taken += 1,
                Effect::Waitlist => waiting += 1,
                Effect::Drop { .. } => seats_taken -= 1,
                Effect::Leave => waiting -= 1,
                // First-come courses only: no entry, withdrawal or draw.
                Effect::Configure { .. }
                | Effect::None
                | Effect::Enter
                | Effect::Withdraw
                | Effect::Draw(_) => {}
            }
            seats_taken += promoted;
            waiting -= promoted;
            check_invariants(&state)?;
            prop_assert_eq!(i64::from(state.enrolled_count()), seats_taken);
            prop_assert_eq!(i64::from(state.waitlisted_count()), waiting);
            // A replay repeats its first verdict; anything else reports the state now.
            if !decision.replay {
                prop_assert_eq!(decision.verdict.seats_left, state.seats_left());
                if decision.verdict.outcome == Outcome::Waitlisted {
                    prop_assert_eq!(
                        decision.verdict.waitlist_position,
                        state.position(&r.student_id)
                    );
                }
            }
        }
    }

    #[test]
    fn replays_change_nothing_and_repeat_the_first_verdict(
        capacity in 0u32..12,
        waitlist in 0u32..6,
        requests in prop::collection::vec(arb_request(), 1..300),
    ) {
        let mut state = course(capacity, waitlist);
        let mut first: HashMap<RequestId, Verdict> = HashMap::new();
        for r in &requests {
            let before = (
                state.enrolled.clone(),
                state.waitlist.clone(),
                state.settings.clone(),
            );
            let decision = state.decide(r, now());
            match first.get(&r.request_id) {
                Some(verdict) => {
                    prop_assert!(decision.replay);
                    prop_assert_eq!(&decision.verdict, verdict);
                    prop_assert_eq!(&decision.effect, &Effect::None);
                    prop_assert_eq!(
                        (state.enrolled.clone(), state.waitlist.clone(), state.settings.clone()),
                        before
                    );
                }
                None => {
                    prop_assert!(!decision.replay);
                    first.insert(r.request_id.clone(), decision.verdict.clone());
                }
            }
        }
    }
}
