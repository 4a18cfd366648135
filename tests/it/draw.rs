//! Draw courses against a real worker, RabbitMQ and PostgreSQL: entries before the opening, the
//! draw at the opening (recomputed here from the revealed seed with the HMAC and SHA-256
//! crates, not the worker's code), late requests after every entrant, and the draw surviving a
//! moved partition and a killed worker.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use seatrush_core::client::EventFilter;
use seatrush_core::domain::{Action, CourseId, CoursePatch, CourseSettings, DrawSeed, Opening};
use seatrush_core::protocol::{Answer, Stage};
use seatrush_core::store::CourseDetail;

use crate::helpers::{Listener, TestEnv, WAIT, enroll, request};

fn draw_settings(seats: u32, waitlist: u32, opens_at: DateTime<Utc>) -> CourseSettings {
    CourseSettings {
        capacity: seats,
        waitlist,
        opens_at: Some(opens_at),
        opening: Opening::Draw,
        entries_open_at: Some(opens_at - chrono::Duration::hours(1)),
        draw_seed: Some(DrawSeed::generate()),
        ..CourseSettings::default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The draw order recomputed from the revealed seed as `docs/protocol.md` tells anyone to:
/// HMAC-SHA256 keyed by the seed over each id, ascending.
fn recomputed_order(seed: &[u8], students: &[String]) -> Vec<String> {
    let mut keyed: Vec<(Vec<u8>, &String)> = students
        .iter()
        .map(|s| {
            let mut mac = Hmac::<Sha256>::new_from_slice(seed).expect("any key length");
            mac.update(s.as_bytes());
            (mac.finalize().into_bytes().to_vec(), s)
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, s)| s.clone()).collect()
}

/// The seed once revealed, checked against the commitment published before.
fn revealed_seed(detail: &CourseDetail, commitment: &str) -> Vec<u8> {
    let draw = detail.course.draw.as_ref().expect("a draw course");
    assert_eq!(draw.commitment, commitment, "the commitment never changes");
    let seed = unhex(
        draw.seed
            .as_deref()
            .expect("the seed is revealed after the draw"),
    );
    assert_eq!(seed.len(), 32);
    assert_eq!(hex(&Sha256::digest(&seed)), commitment);
    seed
}

/// The draw's answers received: second final answers to entries, which carry a rank.
fn draw_results(listener: &Listener) -> HashMap<String, Answer> {
    listener
        .received
        .iter()
        .filter(|a| a.stage == Stage::Final && a.draw_position.is_some())
        .map(|a| (a.request_id.clone(), a.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_entrants_are_drawn_in_the_seeds_order_and_late_arrivals_follow() {
    // Arrange: a 30-seat course with a 20-place waitlist, opening by draw in a few seconds.
    let mut env = TestEnv::new().await;
    let opens_at = Utc::now() + chrono::Duration::seconds(12);
    let course = env
        .add_courses_with("D", 1, draw_settings(30, 20, opens_at))
        .await
        .remove(0);
    let before = env
        .store
        .course_detail(&course)
        .await
        .expect("read")
        .expect("course");
    let commitment = before
        .course
        .draw
        .as_ref()
        .expect("draw")
        .commitment
        .clone();
    assert!(
        before.course.draw.as_ref().expect("draw").seed.is_none(),
        "the seed is secret before the draw"
    );
    env.start_worker(env.worker_config()).await;
    let mut client = Listener::new(&env, Some(EventFilter::course(course.clone()))).await;
    client.batch = true;
    let students: Vec<String> = (0..5000).map(|i| format!("s{i:04}")).collect();
    let entries: Vec<_> = students
        .iter()
        .enumerate()
        .map(|(i, s)| enroll(&format!("e{i:04}"), &course, s))
        .collect();

    // Act 1: every entry before the opening.
    client.send(&entries).await;
    client.until(WAIT, |c| c.final_count() >= 5000).await;
    assert!(
        Utc::now() < opens_at,
        "the entries took until the opening; the test needs more lead"
    );
    for answer in client.finals().values() {
        assert_eq!(answer.outcome, "queued", "{answer:?}");
        assert_eq!(answer.draw_commitment.as_deref(), Some(commitment.as_str()));
        assert!(answer.draw_at.is_some());
    }

    // Act 2: the opening comes; nobody asks; the worker's clock wakes the course.
    client.until(WAIT, |c| !draw_results(c).is_empty()).await;
    let first_result_at = Utc::now();
    client.until(WAIT, |c| draw_results(c).len() >= 5000).await;
    let last_result_at = Utc::now();
    let drawn = draw_results(&client);
    // Late arrivals, after the draw.
    let late: Vec<_> = (0..1000)
        .map(|i| enroll(&format!("late{i:04}"), &course, &format!("l{i:04}")))
        .collect();
    client.send(&late).await;
    client
        .until(WAIT, |c| {
            c.finals().keys().filter(|k| k.starts_with("late")).count() >= 1000
        })
        .await;

    // Assert: the order is the seed's, recomputed here; seats then places then refusals.
    let detail = env
        .store
        .course_detail(&course)
        .await
        .expect("read")
        .expect("course");
    let seed = revealed_seed(&detail, &commitment);
    let order = recomputed_order(&seed, &students);
    let rank_of: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i + 1))
        .collect();
    assert_eq!(drawn.len(), 5000, "one draw result per entrant");
    for answer in drawn.values() {
        let rank = rank_of[answer.student_id.as_str()];
        assert_eq!(
            answer.draw_position,
            Some(u32::try_from(rank).expect("rank"))
        );
        let expected = match rank {
            1..=30 => "enrolled",
            31..=50 => "waitlisted",
            _ => "rejected",
        };
        assert_eq!(answer.outcome, expected, "{answer:?}");
        if expected == "waitlisted" {
            assert_eq!(
                answer.waitlist_position,
                Some(u32::try_from(rank - 30).expect("rank"))
            );
        }
    }
    let mut enrolled = detail.enrolled_students.clone();
    enrolled.sort();
    let mut first_thirty: Vec<String> = order[..30].to_vec();
    first_thirty.sort();
    assert_eq!(enrolled, first_thirty);
    assert_eq!(detail.waitlist, order[30..50].to_vec());
    for (i, entrant) in detail.entrants.iter().enumerate() {
        assert_eq!(entrant.student_id, order[i]);
        assert_eq!(
            entrant.draw_position,
            Some(u32::try_from(i + 1).expect("rank"))
        );
    }
    // Every late arrival was decided after every entrant: the course was already full.
    for (id, answer) in client.finals() {
        if id.starts_with("late") {
            assert_eq!(
                (answer.outcome.as_str(), answer.reason.as_deref()),
                ("rejected", Some("full"))
            );
        }
    }
    // Re-publishing an entry's id replays the draw's outcome.
    let first = order[0].clone();
    let index = students.iter().position(|s| *s == first).expect("entrant");
    client
        .send(&[enroll(&format!("e{index:04}"), &course, &first)])
        .await;
    client
        .until(WAIT, |c| {
            c.received
                .iter()
                .filter(|a| a.replayed && a.stage == Stage::Final)
                .count()
                >= 1
        })
        .await;
    let replay = client
        .received
        .iter()
        .rev()
        .find(|a| a.replayed && a.stage == Stage::Final)
        .expect("replay");
    assert_eq!(
        (replay.outcome.as_str(), replay.draw_position),
        ("enrolled", Some(1))
    );
    // The events carried each entrant's result too.
    let events: usize = client
        .seen_events
        .iter()
        .filter(|a| a.draw_position.is_some())
        .count();
    assert!(events >= 5000, "{events} draw events");
    assert_audit_clean(&env).await;
    // A measurement, not an assertion: this machine is shared.
    eprintln!(
        "draw of 5000 entrants: first result received {} ms after the opening, the last {} ms after",
        (first_result_at - opens_at).num_milliseconds(),
        (last_result_at - opens_at).num_milliseconds()
    );
    client.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_get_their_documented_answers() {
    // Arrange: a draw course taking 3 entries at most, with entries opening later for another.
    let mut env = TestEnv::new().await;
    let opens_at = Utc::now() + chrono::Duration::minutes(10);
    let course = env
        .add_courses_with("E", 1, draw_settings(2, 0, opens_at))
        .await
        .remove(0);
    let mut later = draw_settings(2, 0, opens_at);
    later.entries_open_at = Some(opens_at - chrono::Duration::minutes(5));
    let not_yet = env.add_courses_with("N", 1, later).await.remove(0);
    let plain = env.add_courses("P", 1, 2).await.remove(0);
    let mut config = env.worker_config();
    config.draw_entries = 3;
    env.start_worker(config).await;
    let mut client = Listener::new(&env, None).await;

    // Act
    let requests = vec![
        enroll("a1", &course, "alice"),
        enroll("a2", &course, "alice"),
        enroll("b1", &course, "bob"),
        request("b2", Action::Drop, &course, "bob"),
        enroll("c1", &course, "carol"),
        enroll("d1", &course, "dave"),
        enroll("f1", &course, "frank"),
        enroll("n1", &not_yet, "alice"),
        // A client cannot take the id a course's draw is recorded under.
        enroll(&format!("draw-{course}"), &course, "mallory"),
    ];
    client.send(&requests).await;
    client
        .until(WAIT, |c| c.final_count() >= requests.len())
        .await;
    let finals = client.finals();
    let said = |id: &str| {
        let a = &finals[id];
        (a.outcome.clone(), a.reason.clone())
    };

    // Assert
    assert_eq!(said("a1"), ("queued".into(), None));
    assert_eq!(said("a2"), ("queued".into(), Some("already_queued".into())));
    assert_eq!(said("b1"), ("queued".into(), None));
    assert_eq!(
        said("b2"),
        ("dropped".into(), None),
        "a drop withdraws the entry"
    );
    assert_eq!(said("c1"), ("queued".into(), None));
    assert_eq!(said("d1"), ("queued".into(), None));
    assert_eq!(said("f1"), ("rejected".into(), Some("entries_full".into())));
    assert_eq!(said("n1"), ("rejected".into(), Some("not_open".into())));
    assert!(finals["n1"].entries_open_at.is_some(), "{:?}", finals["n1"]);
    assert_eq!(
        said(&format!("draw-{course}")),
        ("rejected".into(), Some("invalid".into()))
    );
    let detail = env
        .store
        .course_detail(&course)
        .await
        .expect("read")
        .expect("course");
    let entered: Vec<&str> = detail
        .entrants
        .iter()
        .map(|e| e.student_id.as_str())
        .collect();
    assert_eq!(entered, ["alice", "carol", "dave"]);

    // A first-come course becomes a draw through its actor: the worker chooses the seed and
    // publishes its commitment at once.
    let client_broker = seatrush_core::client::Client::connect(&env.amqp_url, env.topology.clone())
        .await
        .expect("client");
    let patch = CoursePatch {
        opening: Some(Opening::Draw),
        opens_at: Some(Some(opens_at)),
        ..CoursePatch::default()
    };
    let answer = seatrush_core::admin::configure(&client_broker, &plain, patch, WAIT)
        .await
        .expect("configure")
        .final_answer;
    assert_eq!(answer.outcome, "configured", "{answer:?}");
    client_broker.close().await;
    let changed = env
        .store
        .course_detail(&plain)
        .await
        .expect("read")
        .expect("course");
    assert_eq!(changed.course.opening, "draw");
    let draw = changed.course.draw.expect("a draw now");
    assert_eq!(draw.commitment.len(), 64);
    assert!(draw.seed.is_none());
    assert_audit_clean(&env).await;
    client.close().await;
    env.cleanup().await;
}

/// Enters `n` students into `course` and waits for their `queued` answers.
async fn enter(client: &mut Listener, course: &CourseId, n: usize) -> Vec<String> {
    let students: Vec<String> = (0..n).map(|i| format!("s{i:03}")).collect();
    let entries: Vec<_> = students
        .iter()
        .enumerate()
        .map(|(i, s)| enroll(&format!("{course}-e{i:03}"), course, s))
        .collect();
    client.send(&entries).await;
    client.until(WAIT, |c| c.final_count() >= n).await;
    assert!(client.finals().values().all(|a| a.outcome == "queued"));
    students
}

/// Checks a drawn course against the order recomputed from its revealed seed.
async fn assert_drawn_in_order(
    env: &TestEnv,
    course: &CourseId,
    commitment: &str,
    students: &[String],
    seats: usize,
) {
    let detail = env
        .store
        .course_detail(course)
        .await
        .expect("read")
        .expect("course");
    let seed = revealed_seed(&detail, commitment);
    let order = recomputed_order(&seed, students);
    assert_eq!(detail.entrants.len(), students.len());
    for (i, entrant) in detail.entrants.iter().enumerate() {
        assert_eq!(entrant.student_id, order[i], "rank {}", i + 1);
        let expected = if i < seats { "enrolled" } else { "rejected" };
        assert_eq!(entrant.outcome.as_deref(), Some(expected));
    }
}

/// Creates one draw course opening in `lead`, and returns it with its published commitment.
async fn draw_course(
    env: &TestEnv,
    prefix: &str,
    seats: u32,
    lead: chrono::Duration,
) -> (CourseId, String, DateTime<Utc>) {
    let opens_at = Utc::now() + lead;
    let course = env
        .add_courses_with(prefix, 1, draw_settings(seats, 0, opens_at))
        .await
        .remove(0);
    let detail = env.store.course_detail(&course).await.expect("read");
    let draw = detail.expect("course").course.draw.expect("a draw course");
    (course, draw.commitment, opens_at)
}

/// Waits until `n` draw results arrived.
async fn until_drawn(client: &mut Listener, n: usize) {
    client
        .until(WAIT, |c| {
            c.received
                .iter()
                .filter(|a| a.draw_position.is_some())
                .count()
                >= n
        })
        .await;
}

async fn assert_audit_clean(env: &TestEnv) {
    let violations = env.store.audit().await.expect("audit");
    assert!(violations.is_empty(), "audit violations: {violations:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_course_whose_partition_moved_draws_on_time() {
    // Arrange: entries taken by one worker, which then stops; another owns the partitions
    // and has never seen the course when it opens.
    let env = TestEnv::new().await;
    let (course, commitment, opens_at) =
        draw_course(&env, "M", 5, chrono::Duration::seconds(10)).await;
    let first = env.worker_process("first");
    env.wait_for_partitions().await;
    let mut client = Listener::new(&env, None).await;
    let students = enter(&mut client, &course, 40).await;
    let second = env.worker_process("second");
    first.stop(WAIT).await.expect("the first worker exits 0");
    assert!(Utc::now() < opens_at, "the handover took until the opening");

    // Act: nobody asks; the second worker's clock wakes the course at its opening.
    until_drawn(&mut client, 40).await;

    // Assert
    assert_drawn_in_order(&env, &course, &commitment, &students, 5).await;
    assert_audit_clean(&env).await;
    second.stop(WAIT).await.expect("the second worker exits 0");
    client.close().await;
    env.cleanup().await;
}

/// A worker killed at `point` during the draw; its successor draws (or announces) the same.
async fn killed_during_the_draw(point: &str) {
    let env = TestEnv::new().await;
    let (course, commitment, _) = draw_course(&env, "K", 10, chrono::Duration::seconds(8)).await;
    let action = format!("{point}=1*return(abort)");
    let mut doomed = env.worker_process_with_env("doomed", &[("FAILPOINTS", action.as_str())]);
    env.wait_for_partitions().await;
    let mut client = Listener::new(&env, None).await;
    let students = enter(&mut client, &course, 60).await;

    // Act: the worker dies when it draws (or right after committing it); a successor takes
    // over once the leases lapse.
    let status = doomed
        .exited(WAIT)
        .await
        .unwrap_or_else(|| panic!("the worker never reached {point}"));
    assert!(!status.success(), "the worker aborted at {point}: {status}");
    let killed_at = Instant::now();
    let successor = env.worker_process("successor");
    until_drawn(&mut client, 60).await;
    eprintln!(
        "draw after a kill at {point}: results {} ms after the kill",
        killed_at.elapsed().as_millis()
    );

    // Assert: one outcome each, in the seed's order, whoever drew.
    assert_drawn_in_order(&env, &course, &commitment, &students, 10).await;
    let per_entry: HashMap<String, Vec<&Answer>> = client
        .received
        .iter()
        .filter(|a| a.draw_position.is_some())
        .fold(HashMap::new(), |mut m, a| {
            m.entry(a.request_id.clone()).or_default().push(a);
            m
        });
    for (id, answers) in &per_entry {
        assert!(
            answers
                .windows(2)
                .all(|w| w[0].outcome == w[1].outcome && w[0].draw_position == w[1].draw_position),
            "{id}: {answers:?}"
        );
    }
    assert_audit_clean(&env).await;
    successor.stop(WAIT).await.expect("the successor exits 0");
    client.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_as_it_draws_leaves_the_same_draw_to_its_successor() {
    killed_during_the_draw(seatrush_core::failpoint::BEFORE_DRAW).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_committing_a_draw_leaves_its_announcement_to_its_successor() {
    killed_during_the_draw(seatrush_core::failpoint::AFTER_DRAW_COMMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fairness_run_reports_both_policies() {
    // A small form of `seatrush rush --opening ...`: every student arrives before the opening.
    let env = TestEnv::new().await;
    let mut reports = Vec::new();
    for opening in [Opening::FirstCome, Opening::Draw] {
        let config = seatrush_tools::rush::fairness::FairnessConfig {
            services: env.services(),
            opening,
            students: 60,
            seats: 6,
            arrive_over: std::time::Duration::from_secs(3),
            slow_delay: std::time::Duration::from_millis(100),
            exe: crate::helpers::exe(),
            tag: format!(
                "{}{}",
                env.topology.prefix,
                opening.as_str().replace('-', "")
            ),
            seed: 7,
            log_dir: env.log_dir(),
            timeout: WAIT,
        };
        reports.push(
            seatrush_tools::rush::fairness::run(config)
                .await
                .expect("fairness run"),
        );
    }
    let (first_come, draw) = (&reports[0], &reports[1]);
    for r in &reports {
        assert!(r.passed(), "{r:?}");
        assert_eq!((r.fast_students, r.slow_students), (30, 30));
        assert_eq!(r.seats_won_fast + r.seats_won_slow, 6, "{r:?}");
    }
    // Under first-come everyone was refused before the opening and asked again; under the
    // draw one request each was enough.
    assert!(first_come.requests_per_student >= 2.0, "{first_come:?}");
    assert_eq!(draw.requests_per_student, 1.0, "{draw:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draw_nobody_entered_is_drawn_and_settled_at_its_opening() {
    let mut env = TestEnv::new().await;
    let (course, _, _) = draw_course(&env, "Z", 3, chrono::Duration::seconds(3)).await;
    env.start_worker(env.worker_config()).await;

    // Nobody asks; the clock wakes it, and it is drawn and marked announced, so no clock
    // wakes it again.
    let draw = settled(&env, &course).await;
    assert_eq!(draw.entrants, 0);
    assert!(draw.seed.is_some(), "the seed is revealed after the draw");
    assert_audit_clean(&env).await;
    env.cleanup().await;
}

/// Sleeps until `at` (at once if it passed).
async fn sleep_until(at: DateTime<Utc>) {
    tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await;
}

/// Waits until `course` is drawn and its results confirmed sent; returns its draw.
async fn settled(env: &TestEnv, course: &CourseId) -> seatrush_core::store::DrawView {
    crate::helpers::eventually("the draw settled", WAIT, || async {
        let detail = env.store.course_detail(course).await.ok()??;
        detail
            .course
            .draw
            .filter(|d| d.announced && d.drawn_at.is_some())
    })
    .await
}

/// Waits until `course` is drawn and its results confirmed sent, then checks its order.
async fn assert_settled_in_order(
    env: &TestEnv,
    course: &CourseId,
    commitment: &str,
    students: &[String],
    seats: usize,
) {
    settled(env, course).await;
    assert_drawn_in_order(env, course, commitment, students, seats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draw_survives_a_database_restart_and_a_broker_restart_at_its_opening() {
    // Arrange: a database and a broker of this test's own, two draw courses with entrants,
    // opening a few seconds apart.
    use crate::servers::{Kind, OwnServer};
    let database = OwnServer::start(Kind::Database);
    let broker = OwnServer::start(Kind::Broker);
    let mut env = TestEnv::on(broker.url.clone(), database.url.clone()).await;
    let (first, first_commitment, first_opens) =
        draw_course(&env, "A", 4, chrono::Duration::seconds(10)).await;
    let (second, second_commitment, second_opens) =
        draw_course(&env, "B", 4, chrono::Duration::seconds(30)).await;
    env.start_worker(env.worker_config()).await;
    let mut client = Listener::new(&env, None).await;
    let first_students = enter(&mut client, &first, 20).await;
    let entries: Vec<_> = first_students
        .iter()
        .enumerate()
        .map(|(i, s)| enroll(&format!("{second}-e{i:03}"), &second, s))
        .collect();
    client.send(&entries).await;
    client.until(WAIT, |c| c.final_count() >= 40).await;
    assert!(
        Utc::now() < first_opens,
        "the entries took until the first opening"
    );

    // Act 1: PostgreSQL crashes and restarts across the first opening.
    sleep_until(first_opens - chrono::Duration::milliseconds(500)).await;
    let down = database.restart().await;
    eprintln!("database restarted across the opening in {down:?}");

    // Assert 1: drawn once, in the seed's order, and its results reached the entrants.
    assert_settled_in_order(&env, &first, &first_commitment, &first_students, 4).await;
    until_drawn(&mut client, 20).await;

    // Act 2: the broker restarts across the second opening (the client's reply queue goes
    // with it: the results are checked in the database, and their confirmed announcement).
    assert!(
        Utc::now() < second_opens,
        "the first draw took until the second opening"
    );
    sleep_until(second_opens - chrono::Duration::milliseconds(500)).await;
    let down = broker.restart().await;
    eprintln!("broker restarted across the opening in {down:?}");

    // Assert 2
    assert_settled_in_order(&env, &second, &second_commitment, &first_students, 4).await;
    assert_audit_clean(&env).await;
    client.close().await;
    env.cleanup().await;
    drop(broker);
    drop(database);
}
