//! Crowds against one in-process worker: the seat count holds, duplicates replay, commits batch.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};

use crate::helpers::{TestEnv, assert_exactly_one_final, enroll};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_students_race_for_thirty_seats() {
    // Arrange
    let mut env = TestEnv::new().await;
    let course = env.add_courses("hot", 1, 30).await;
    env.start_worker(env.worker_config()).await;
    let requests = (0..2000)
        .map(|s| enroll(&format!("r{s}"), &course[0], &format!("s{s}")))
        .collect();

    // Act
    let report = env.fire(requests).await;

    // Assert
    assert_exactly_one_final(&report);
    let outcomes = report.outcomes();
    assert_eq!(outcomes.get("enrolled"), Some(&30), "{outcomes:?}");
    assert_eq!(outcomes.get("rejected/full"), Some(&1970), "{outcomes:?}");
    assert_eq!(report.contradicted(), 0);
    env.assert_consistent(&report, &course).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_requests_with_duplicates_batch_and_replay() {
    // Arrange: 300 courses; 10% of messages re-publish an earlier request id, 5% are a student
    // enrolling a second time in the same course under a new request id.
    let mut env = TestEnv::new().await;
    let courses = env.add_courses("c", 300, 30).await;
    env.start_worker(env.worker_config()).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut requests: Vec<seatrush_core::domain::Request> = Vec::with_capacity(20_000);
    let mut next_student = 0usize;
    while requests.len() < 20_000 {
        let roll: f64 = rng.random();
        if roll < 0.10 && !requests.is_empty() {
            let earlier = rng.random_range(0..requests.len());
            requests.push(requests[earlier].clone());
        } else if roll < 0.15 && !requests.is_empty() {
            let earlier: &seatrush_core::domain::Request =
                &requests[rng.random_range(0..requests.len())];
            let again = enroll(
                &format!("again{}", requests.len()),
                &earlier.course_id,
                earlier.student_id.as_str(),
            );
            requests.push(again);
        } else {
            let course = &courses[rng.random_range(0..courses.len())];
            requests.push(enroll(
                &format!("r{next_student}"),
                course,
                &format!("s{next_student}"),
            ));
            next_student += 1;
        }
    }
    let batches_before = env.store.decision_batches().await.expect("count");

    // Act
    let report = env.fire(requests).await;

    // Assert
    assert_exactly_one_final(&report);
    let mut by_id: HashMap<&str, (&str, Option<&String>)> = HashMap::new();
    let mut replays = 0;
    for answered in &report.answered {
        let (answer, _) = &answered.finals[0];
        let first = *by_id
            .entry(answered.request.request_id.as_str())
            .or_insert((answer.outcome.as_str(), answer.reason.as_ref()));
        assert_eq!(
            first,
            (answer.outcome.as_str(), answer.reason.as_ref()),
            "request {} got two different outcomes",
            answered.request.request_id
        );
        replays += usize::from(answer.replayed);
    }
    assert!(replays >= 1_500, "duplicates should replay, saw {replays}");
    let batches = env.store.decision_batches().await.expect("count") - batches_before;
    let secs = report.total_time.as_secs_f64();
    eprintln!(
        "20k crowd: {} requests in {secs:.2} s = {:.0} requests/s; {batches} transactions = {:.4} per request ({:.0} requests per commit); provisional p50 {:.1} ms p99 {:.1} ms, final p50 {:.1} ms p99 {:.1} ms",
        report.answered.len(),
        report.throughput(),
        batches as f64 / report.answered.len() as f64,
        report.answered.len() as f64 / batches.max(1) as f64,
        report
            .latency(seatrush_core::protocol::Stage::Provisional)
            .p50_ms,
        report
            .latency(seatrush_core::protocol::Stage::Provisional)
            .p99_ms,
        report.latency(seatrush_core::protocol::Stage::Final).p50_ms,
        report.latency(seatrush_core::protocol::Stage::Final).p99_ms,
    );
    assert!(
        batches as usize * 50 <= report.answered.len(),
        "{batches} transactions for {} requests: more than one per 50",
        report.answered.len()
    );
    env.assert_consistent(&report, &courses).await;
    env.cleanup().await;
}
