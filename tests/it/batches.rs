//! Batched answers and batched final events (protocol version 2), against a real worker,
//! RabbitMQ and Postgres.

use std::collections::HashMap;

use seatrush_core::client::EventFilter;
use seatrush_core::domain::{CourseId, Request, StudentId};
use seatrush_core::protocol::{Answer, FinalEvents, Stage};

use crate::helpers::{Listener, TestEnv, WAIT, enroll};

/// 240 enrolls over 6 courses of 30 seats, 80 students with 3 choices each.
fn crowd(courses: &[CourseId], tag: &str) -> Vec<Request> {
    (0..240)
        .map(|i| {
            let course = &courses[(i * 7 + i / 80) % courses.len()];
            enroll(
                &format!("{tag}-r{i}"),
                course,
                &format!("{tag}-s{}", i % 80),
            )
        })
        .collect()
}

/// Each request's answers on the reply queue, in the order they arrived.
fn by_request(received: &[Answer]) -> HashMap<&str, Vec<&Answer>> {
    let mut by_id: HashMap<&str, Vec<&Answer>> = HashMap::new();
    for answer in received.iter().filter(|a| !a.is_promotion()) {
        by_id.entry(&answer.request_id).or_default().push(answer);
    }
    by_id
}

/// Every request has exactly one provisional answer, then exactly one final answer.
fn assert_one_provisional_then_one_final(requests: &[Request], received: &[Answer]) {
    let by_id = by_request(received);
    for request in requests {
        let stages: Vec<Stage> = by_id
            .get(request.request_id.as_str())
            .map(|answers| answers.iter().map(|a| a.stage).collect())
            .unwrap_or_default();
        assert_eq!(
            stages,
            [Stage::Provisional, Stage::Final],
            "answers of {}",
            request.request_id
        );
    }
    assert_eq!(by_id.len(), requests.len(), "answers for unknown requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_asks_for_batches_gets_every_answer_once_inside_batches() {
    // Arrange: two producers on one worker, one asking for batches and one not.
    let mut env = TestEnv::new().await;
    let courses = env.add_courses("B", 6, 30).await;
    env.start_worker(env.worker_config()).await;
    let mut batched = Listener::new(&env, None).await;
    batched.batch = true;
    let mut single = Listener::new(&env, None).await;
    let batched_crowd = crowd(&courses, "bat");
    let single_crowd = crowd(&courses, "one");

    // Act: both fire their crowd at once.
    tokio::join!(batched.send(&batched_crowd), single.send(&single_crowd));
    let everything = |c: &Listener| c.final_count() == 240;
    tokio::join!(
        batched.until(WAIT, everything),
        single.until(WAIT, everything)
    );

    // Assert: each request is answered once provisionally and then once finally, on both;
    // the batching producer's messages are all batches, holding several answers each on
    // average (a burst's answers travel together), with the correlation id inside; the other
    // producer's are all single answers.
    assert_one_provisional_then_one_final(&batched_crowd, &batched.received);
    assert_one_provisional_then_one_final(&single_crowd, &single.received);
    assert_eq!(batched.reply_batches, batched.reply_messages);
    assert!(
        batched.reply_messages * 2 < batched.received.len(),
        "{} messages for {} answers: batches should hold several",
        batched.reply_messages,
        batched.received.len()
    );
    assert!(
        batched
            .received
            .iter()
            .all(|a| a.correlation_id.as_deref() == Some(a.request_id.as_str()))
    );
    assert_eq!(single.reply_batches, 0);
    assert_eq!(single.reply_messages, single.received.len());
    assert!(single.received.iter().all(|a| a.correlation_id.is_none()));
    batched.close().await;
    single.close().await;
}

/// The final answers a crowd's listener received, for the requests `which` picks.
fn finals_of<'a>(
    client: &'a Listener,
    which: impl Fn(&Answer) -> bool + 'a,
) -> impl Iterator<Item = String> + 'a {
    client
        .received
        .iter()
        .filter(move |a| a.stage == Stage::Final && !a.is_promotion() && which(a))
        .map(|a| a.request_id.clone())
}

/// Subscribers to one course and to one student see exactly the final answers for them, once.
async fn followers_see_exactly_their_finals(final_events: FinalEvents) {
    // Arrange: a worker in the given events mode, a subscriber per filter, then the crowd.
    let mut env = TestEnv::new().await;
    let courses = env.add_courses("F", 6, 30).await;
    let mut config = env.worker_config();
    config.final_events = final_events;
    env.start_worker(config).await;
    let course = courses[2].clone();
    let student = StudentId::parse("fol-s7").expect("id");
    let mut by_course = Listener::new(&env, Some(EventFilter::course(course.clone()))).await;
    let mut by_student = Listener::new(
        &env,
        Some(EventFilter {
            course: None,
            student: Some(student.clone()),
        }),
    )
    .await;
    let mut crowd_client = Listener::new(&env, None).await;
    let requests = crowd(&courses, "fol");

    // Act
    crowd_client.send(&requests).await;
    crowd_client.until(WAIT, |c| c.final_count() == 240).await;
    let expect_course: Vec<String> =
        finals_of(&crowd_client, |a| a.course_id == course.as_str()).collect();
    let expect_student: Vec<String> =
        finals_of(&crowd_client, |a| a.student_id == student.as_str()).collect();
    let finals_seen =
        |c: &Listener, n: usize| c.seen_events.iter().filter(|e| !e.is_promotion()).count() >= n;
    by_course
        .until(WAIT, |c| finals_seen(c, expect_course.len()))
        .await;
    by_student
        .until(WAIT, |c| finals_seen(c, expect_student.len()))
        .await;

    // Assert: the same request ids, each once, and nothing else.
    let seen = |c: &Listener| {
        let mut ids: Vec<String> = c.seen_events.iter().map(|e| e.request_id.clone()).collect();
        ids.sort();
        ids
    };
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    assert!(!expect_course.is_empty() && !expect_student.is_empty());
    assert_eq!(seen(&by_course), sorted(expect_course));
    assert_eq!(seen(&by_student), sorted(expect_student));
    for client in [by_course, by_student, crowd_client] {
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_final_events_can_be_followed_by_course_and_by_student() {
    followers_see_exactly_their_finals(FinalEvents::Batched).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_final_events_can_be_followed_by_course_and_by_student() {
    followers_see_exactly_their_finals(FinalEvents::PerRequest).await;
}
