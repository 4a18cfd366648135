//! Unit and property tests of a draw course: entries, the draw, and what follows it.

use super::*;
use crate::domain::{DrawSeed, Refusal};
use chrono::Duration;
use proptest::prelude::*;

fn opening() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-09-01T09:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn before() -> DateTime<Utc> {
    opening() - Duration::minutes(5)
}

fn after() -> DateTime<Utc> {
    opening() + Duration::seconds(1)
}

fn draw_course(capacity: u32, waitlist: u32, seed: [u8; 32]) -> CourseState {
    CourseState::from_snapshot(
        CourseId::parse("C1").unwrap(),
        CourseSnapshot {
            settings: CourseSettings {
                capacity,
                waitlist,
                opens_at: Some(opening()),
                opening: Opening::Draw,
                entries_open_at: Some(opening() - Duration::hours(1)),
                draw_seed: Some(DrawSeed::from_bytes(seed)),
                ..CourseSettings::default()
            },
            ..CourseSnapshot::default()
        },
    )
}

fn request(id: &str, action: Action, who: &str) -> Request {
    Request {
        request_id: RequestId::parse(id).unwrap(),
        action,
        course_id: CourseId::parse("C1").unwrap(),
        student_id: StudentId::parse(who).unwrap(),
    }
}

fn enroll(id: &str, who: &str) -> Request {
    request(id, Action::Enroll, who)
}

/// Enters students `s0..s{n}` before the opening.
fn enter_all(state: &mut CourseState, n: usize) {
    for i in 0..n {
        let d = state.decide(&enroll(&format!("e{i}"), &format!("s{i}")), before());
        assert_eq!(d.verdict.outcome, Outcome::Queued);
    }
}

#[test]
fn an_early_enroll_is_an_entry_with_the_draw_instant_and_commitment() {
    let seed = [3; 32];
    let mut state = draw_course(2, 0, seed);
    let d = state.decide(&enroll("e1", "alice"), before());
    assert_eq!(d.verdict.outcome, Outcome::Queued);
    assert_eq!(d.verdict.reason, None);
    assert_eq!(d.verdict.window_at, Some(opening()));
    let note = d.verdict.draw.as_ref().unwrap();
    assert_eq!(
        note.commitment.as_deref(),
        Some(DrawSeed::from_bytes(seed).commitment().as_str())
    );
    assert_eq!(d.effect, Effect::Enter);
    assert_eq!(state.entrant_count(), 1);
    assert!(state.take_draw().is_none());
}

#[test]
fn entries_before_their_opening_are_not_open_with_the_instant() {
    let mut state = draw_course(2, 0, [1; 32]);
    let early = opening() - Duration::hours(2);
    let d = state.decide(&enroll("e1", "alice"), early);
    assert_eq!(d.verdict.outcome, Outcome::Rejected);
    assert_eq!(d.verdict.reason, Some(Reason::NotOpen));
    assert_eq!(
        d.verdict.draw.as_ref().unwrap().entries_open_at,
        Some(opening() - Duration::hours(1))
    );
    assert_eq!(d.effect, Effect::None);
}

#[test]
fn a_second_entry_replays_queued_and_a_drop_withdraws() {
    let mut state = draw_course(2, 0, [1; 32]);
    state.decide(&enroll("e1", "alice"), before());
    let again = state.decide(&enroll("e2", "alice"), before());
    assert_eq!(again.verdict.outcome, Outcome::Queued);
    assert_eq!(again.verdict.reason, Some(Reason::AlreadyQueued));
    assert_eq!(again.effect, Effect::None);
    let drop = state.decide(&request("d1", Action::Drop, "alice"), before());
    assert_eq!(drop.verdict.outcome, Outcome::Dropped);
    assert_eq!(drop.effect, Effect::Withdraw);
    assert_eq!(state.entrant_count(), 0);
    let none = state.decide(&request("d2", Action::Drop, "alice"), before());
    assert_eq!(none.verdict.reason, Some(Reason::NotEnrolled));
}

#[test]
fn entries_past_the_bound_are_refused() {
    let mut state = draw_course(2, 0, [1; 32]).with_entries_limit(3);
    enter_all(&mut state, 3);
    let d = state.decide(&enroll("late", "x"), before());
    assert_eq!(d.verdict.outcome, Outcome::Rejected);
    assert_eq!(d.verdict.reason, Some(Reason::EntriesFull));
    assert_eq!(state.entrant_count(), 3);
}

#[test]
fn the_first_request_after_the_opening_draws_first() {
    let seed = [9; 32];
    let mut state = draw_course(3, 2, seed);
    enter_all(&mut state, 10);
    let late = state.decide(&enroll("late", "latecomer"), after());
    let (draw_request, draw) = state.take_draw().expect("the draw came first");
    assert_eq!(
        draw_request.request_id,
        draw_request_id(&draw_request.course_id)
    );
    assert_eq!(draw.verdict.outcome, Outcome::Drawn);
    let Effect::Draw(effect) = &draw.effect else {
        panic!("not a draw: {:?}", draw.effect)
    };
    // The order is the seed's, whatever the order of entry.
    let entrants: Vec<StudentId> = (0..10)
        .map(|i| StudentId::parse(format!("s{i}")).unwrap())
        .collect();
    let order = DrawSeed::from_bytes(seed).order(&entrants);
    let drawn: Vec<&StudentId> = effect.entrants.iter().map(|e| &e.student_id).collect();
    assert_eq!(drawn, order.iter().collect::<Vec<_>>());
    let outcomes: Vec<Outcome> = effect.entrants.iter().map(|e| e.verdict.outcome).collect();
    assert_eq!(&outcomes[..3], &[Outcome::Enrolled; 3]);
    assert_eq!(&outcomes[3..5], &[Outcome::Waitlisted; 2]);
    assert!(outcomes[5..].iter().all(|o| *o == Outcome::Rejected));
    for (rank, e) in effect.entrants.iter().enumerate() {
        assert_eq!(
            e.verdict.draw_position(),
            Some(u32::try_from(rank + 1).unwrap())
        );
    }
    // The late request is decided after every entrant: full.
    assert_eq!(late.verdict.outcome, Outcome::Rejected);
    assert_eq!(late.verdict.reason, Some(Reason::Full));
    // An entry's id now answers with the draw's outcome.
    let first = &effect.entrants[0];
    let replay = state.decide(
        &enroll(first.request_id.as_str(), first.student_id.as_str()),
        after(),
    );
    assert!(replay.replay);
    assert_eq!(replay.verdict, first.verdict);
    // It draws once: a later wake-up holds the stored draw again only as a replay, which
    // announces it again if need be.
    let wake = state.decide(&request("w1", Action::Draw, "worker"), after());
    assert_eq!(wake.verdict.outcome, Outcome::Drawn);
    assert_eq!(wake.verdict.reason, Some(Reason::AlreadyDrawn));
    let (again, replay) = state.take_draw().expect("held again");
    assert_eq!(again.request_id, draw_request.request_id);
    assert!(replay.replay);
    assert_eq!(replay.effect, Effect::None);
}

#[test]
fn a_wake_up_draws_and_is_answered_drawn() {
    let mut state = draw_course(1, 0, [5; 32]);
    enter_all(&mut state, 2);
    let early = state.decide(&request("w0", Action::Draw, "worker"), before());
    assert_eq!(early.verdict.reason, Some(Reason::NotOpen));
    assert!(state.take_draw().is_none());
    let wake = state.decide(&request("w1", Action::Draw, "worker"), after());
    assert!(state.take_draw().is_some());
    assert_eq!(wake.verdict.outcome, Outcome::Drawn);
    assert!(state.is_drawn());
}

#[test]
fn a_first_come_course_refuses_a_wake_up() {
    let mut state =
        CourseState::from_snapshot(CourseId::parse("C1").unwrap(), CourseSnapshot::default());
    let wake = state.decide(&request("w1", Action::Draw, "worker"), after());
    assert_eq!(wake.verdict.reason, Some(Reason::NotADraw));
}

#[test]
fn the_opening_rules_guard_course_changes() {
    let mut state = draw_course(2, 0, [1; 32]);
    enter_all(&mut state, 1);
    let back = CoursePatch {
        opening: Some(Opening::FirstCome),
        ..CoursePatch::default()
    };
    let d = state.decide(
        &request("c1", Action::Configure(Box::new(back.clone())), "admin"),
        before(),
    );
    assert_eq!(d.verdict.reason, Some(Reason::DrawHasEntrants));
    let mut plain =
        CourseState::from_snapshot(CourseId::parse("C1").unwrap(), CourseSnapshot::default());
    let to_draw = CoursePatch {
        opening: Some(Opening::Draw),
        draw_seed: Some(DrawSeed::from_bytes([2; 32])),
        ..CoursePatch::default()
    };
    let d = plain.decide(
        &request("c2", Action::Configure(Box::new(to_draw)), "admin"),
        before(),
    );
    assert_eq!(d.verdict.reason, Some(Reason::DrawWithoutOpening));
    // Drawn: the opening stays.
    state.decide(&enroll("late", "x"), after());
    let d = state.decide(
        &request("c3", Action::Configure(Box::new(back)), "admin"),
        after(),
    );
    assert_eq!(d.verdict.reason, Some(Reason::AlreadyDrawn));
}

#[test]
fn a_seed_once_chosen_is_kept() {
    let mut state = draw_course(2, 0, [1; 32]);
    let patch = CoursePatch {
        opening: Some(Opening::Draw),
        draw_seed: Some(DrawSeed::from_bytes([2; 32])),
        ..CoursePatch::default()
    };
    state.decide(
        &request("c1", Action::Configure(Box::new(patch)), "admin"),
        before(),
    );
    assert_eq!(
        state.settings().draw_seed,
        Some(DrawSeed::from_bytes([1; 32]))
    );
}

#[test]
fn an_unannounced_draw_is_held_again_on_load() {
    let course = CourseId::parse("C1").unwrap();
    let stored = Verdict::new(Outcome::Drawn, None, 0);
    let mut state = CourseState::from_snapshot(
        course.clone(),
        CourseSnapshot {
            decided: vec![(draw_request_id(&course), stored.clone())],
            drawn: true,
            draw_announced: false,
            ..CourseSnapshot::default()
        },
    );
    let (request, replay) = state.take_draw().expect("held again");
    assert_eq!(request.request_id, draw_request_id(&course));
    assert!(replay.replay);
    assert_eq!(replay.effect, Effect::None);
    assert_eq!(replay.verdict, stored);
}

fn arb_ids() -> impl Strategy<Value = Vec<String>> {
    prop::collection::hash_set("[a-z0-9]{1,8}", 0..60).prop_map(|s| s.into_iter().collect())
}

proptest! {
    /// The draw's outcome depends on the seed and the set of entrants only: not on the order
    /// they entered in, nor on withdrawals of others before the draw.
    #[test]
    fn the_draw_is_a_function_of_the_seed_and_the_entrants(
        seed in any::<[u8; 32]>(),
        ids in arb_ids(),
        capacity in 0u32..10,
        waitlist in 0u32..5,
        shuffle in any::<u64>(),
    ) {
        let draw = |order: &[String]| {
            let mut state = draw_course(capacity, waitlist, seed);
            for (i, id) in order.iter().enumerate() {
                state.decide(&enroll(&format!("e-{id}-{i}"), id), before());
            }
            state.decide(&request("w", Action::Draw, "worker"), after());
            let (_, decision) = state.take_draw().expect("drawn");
            let Effect::Draw(effect) = decision.effect else { panic!("not a draw") };
            (
                effect.entrants.iter().map(|e| (e.student_id.clone(), e.verdict.outcome)).collect::<Vec<_>>(),
                state.enrolled_count(),
                state.waitlisted_count(),
            )
        };
        let mut shuffled = ids.clone();
        let n = shuffled.len();
        if n > 1 {
            let mut x = shuffle;
            for i in (1..n).rev() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, usize::try_from(x % (i as u64 + 1)).unwrap());
            }
        }
        let (a, enrolled, waiting) = draw(&ids);
        let (b, _, _) = draw(&shuffled);
        prop_assert_eq!(&a, &b);
        // Never over capacity; seats, then the waitlist, then nothing, in rank order.
        prop_assert!(enrolled <= capacity);
        prop_assert!(waiting <= waitlist);
        let expected_enrolled = u32::try_from(ids.len()).unwrap().min(capacity);
        prop_assert_eq!(enrolled, expected_enrolled);
        let ranks: Vec<u8> = a.iter().map(|(_, o)| match o {
            Outcome::Enrolled => 0,
            Outcome::Waitlisted => 1,
            _ => 2,
        }).collect();
        prop_assert!(ranks.windows(2).all(|w| w[0] <= w[1]));
    }

    /// Replays of entries and wake-ups, before and after the draw, change nothing.
    #[test]
    fn replays_around_a_draw_change_nothing(
        seed in any::<[u8; 32]>(),
        ids in arb_ids(),
        capacity in 0u32..10,
    ) {
        let mut state = draw_course(capacity, 2, seed);
        for (i, id) in ids.iter().enumerate() {
            state.decide(&enroll(&format!("e{i}"), id), before());
        }
        let entries_before: Vec<Verdict> = ids.iter().enumerate()
            .map(|(i, id)| state.decide(&enroll(&format!("e{i}"), id), before()).verdict)
            .collect();
        prop_assert!(entries_before.iter().all(|v| v.outcome == Outcome::Queued || v.reason == Some(Reason::EntriesFull)));
        state.decide(&request("w", Action::Draw, "worker"), after());
        let (_, decision) = state.take_draw().expect("drawn");
        let Effect::Draw(effect) = decision.effect else { panic!("not a draw") };
        let snapshot = (state.enrolled.clone(), state.waitlist.clone());
        for e in &effect.entrants {
            let replay = state.decide(&enroll(e.request_id.as_str(), e.student_id.as_str()), after());
            prop_assert!(replay.replay);
            prop_assert_eq!(&replay.verdict, &e.verdict);
        }
        let again = state.decide(&request("w", Action::Draw, "worker"), after());
        prop_assert!(again.replay);
        prop_assert!(state.take_draw().is_none());
        prop_assert_eq!((state.enrolled.clone(), state.waitlist.clone()), snapshot);
    }
}

/// Under the registration rules, an entrant the rules refuse a seat is passed over into the
/// waitlist and the seats go on to the next ranks; a course change decided at the draw's
/// instant promotes nobody (its judgement was the draw's), as the database does.
#[test]
fn the_draw_passes_over_an_entrant_the_rules_refuse() {
    let mut state = draw_course(2, 5, [7; 32]);
    enter_all(&mut state, 5);
    let (ranked, seats) = state.draw_candidates(after()).expect("the draw is due");
    assert_eq!(seats, 2);
    let refused = ranked[0].clone();
    let judged: Vec<(StudentId, Result<(), Refusal>)> = ranked
        .iter()
        .take(3)
        .map(|s| {
            let verdict = if *s == refused {
                Err(Refusal::CreditLimit {
                    held: 9,
                    asked: 3,
                    allowed: 9,
                })
            } else {
                Ok(())
            };
            (s.clone(), verdict)
        })
        .collect();
    let ruling = Ruling::Allowed;
    let rules = Rules {
        ruling: &ruling,
        promotion: Some(&judged),
    };
    let change = Action::Configure(Box::new(CoursePatch {
        seats: Some(4),
        ..CoursePatch::default()
    }));
    let decided = state.decide_under(&request("grow", change, "admin"), after(), &rules);
    assert_eq!(decided.verdict.outcome, Outcome::Configured);
    assert!(decided.effect.promoted().is_empty(), "{:?}", decided.effect);
    let (_, draw) = state.take_draw().expect("the draw");
    let Effect::Draw(draw) = draw.effect else {
        panic!("a draw effect");
    };
    let outcome = |s: &StudentId| {
        draw.entrants
            .iter()
            .find(|e| e.student_id == *s)
            .map(|e| e.verdict.outcome)
    };
    assert_eq!(outcome(&refused), Some(Outcome::Waitlisted));
    assert_eq!(outcome(&ranked[1]), Some(Outcome::Enrolled));
    assert_eq!(outcome(&ranked[2]), Some(Outcome::Enrolled));
    assert_eq!(outcome(&ranked[3]), Some(Outcome::Waitlisted));
    assert_eq!(
        state.seats_left(),
        2,
        "the new seats wait for the next decision"
    );
}
