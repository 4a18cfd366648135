//! The benchmark's Redis design against a real Redis (`REDIS_URL`) and PostgreSQL: its
//! invariants and its report's fields, in both fsync modes, and a crash of its Redis server in
//! the middle of a burst. Never times.

use std::path::Path;

use seatrush_core::domain::{CourseId, Request};
use seatrush_tools::bench::redis::{self, CrashFigures, Fsync, OwnServer, RedisFigures, Setup};
use seatrush_tools::rush;

use crate::helpers::{TestEnv, required};

const COURSES: usize = 20;
const SEATS: u32 = 30;

/// About 2,000 requests over 20 courses of 30 seats: 606 students with 3 choices each, and every
/// tenth request sent a second time under the same request id.
fn small_stream(tag: &str) -> (Vec<CourseId>, Vec<Request>) {
    let courses = rush::course_ids(tag, COURSES).expect("course ids");
    let stream = rush::crowd(&courses, 606, 3, tag, 7).expect("the crowd");
    (courses, rush::with_duplicates(stream))
}

fn setup<'a>(env: &'a TestEnv, courses: &'a [CourseId], fsync: Fsync) -> Setup<'a> {
    Setup {
        database_url: &env.database_url,
        courses,
        seats: SEATS,
        fsync,
        shape: redis::Shape::default(),
    }
}

/// The checks every run must pass, whatever the fsync mode, and the report's fields filled.
fn assert_sound(f: &RedisFigures, requests: usize) {
    let context = format!("{f:#?}");
    assert_eq!(f.errors, 0, "every request answered: {context}");
    assert_eq!(f.violations, 0, "no course over its seats: {context}");
    assert_eq!(f.lost, 0, "every request recorded: {context}");
    assert_eq!(f.duplicated, 0, "no request decided twice: {context}");
    assert_eq!(
        f.contradicted, 0,
        "provisional answers are final: {context}"
    );
    assert_eq!(
        f.enrolled + f.full + f.duplicates,
        requests,
        "every answer counted once: {context}"
    );
    assert!(
        f.enrolled <= COURSES * SEATS as usize,
        "no more seats than exist: {context}"
    );
    assert!(
        f.enrolled > 0 && f.full > 0 && f.duplicates > 0,
        "{context}"
    );
    assert!(f.replayed > 0, "repeated request ids replayed: {context}");
    assert!(f.batches > 0, "{context}");
    assert!(f.figures.throughput_rps > 0.0, "{context}");
    assert!(f.figures.final_p50_ms > 0.0, "{context}");
    assert!(
        f.figures.final_p99_ms >= f.figures.final_p50_ms,
        "{context}"
    );
    assert!(f.provisional_p50_ms > 0.0, "{context}");
    assert!(f.provisional_p99_ms >= f.provisional_p50_ms, "{context}");
}

async fn appendfsync(redis_url: &str) -> String {
    let client = ::redis::Client::open(redis_url).expect("REDIS_URL parses");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to REDIS_URL");
    let pair: Vec<String> = ::redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query_async(&mut con)
        .await
        .expect("CONFIG GET appendfsync");
    pair.into_iter().nth(1).expect("appendfsync is a setting")
}

async fn bench_schema_exists(env: &TestEnv) -> bool {
    let pool = sqlx::PgPool::connect(&env.database_url)
        .await
        .expect("connect to the test database");
    let exists = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.schemata \
         WHERE schema_name = 'bench_redis')",
    )
    .fetch_one(&pool)
    .await
    .expect("look for the schema");
    pool.close().await;
    exists
}

// Both modes in one test, one after the other: `appendfsync` is a setting of the whole
// server, so two runs at once on one server would set it under each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_design_keeps_its_invariants_with_either_fsync() {
    // Arrange
    let redis_url = required("REDIS_URL");
    let env = TestEnv::new().await;
    let (courses, stream) = small_stream(&env.topology.prefix);
    let before = appendfsync(&redis_url).await;

    for fsync in [Fsync::EverySec, Fsync::Always] {
        // Act
        let (figures, latencies) = redis::run(&redis_url, &setup(&env, &courses, fsync), &stream)
            .await
            .unwrap_or_else(|e| panic!("the Redis design with {fsync:?}: {e:#}"));

        // Assert
        assert_sound(&figures, stream.len());
        assert_eq!(figures.fsync, fsync);
        assert_eq!(latencies.len(), stream.len(), "a final for every request");
        assert_eq!(
            appendfsync(&redis_url).await,
            before,
            "appendfsync restored"
        );
        assert!(
            !bench_schema_exists(&env).await,
            "the design's tables dropped"
        );
    }
    env.cleanup().await;
}

async fn crash_run(env: &TestEnv, fsync: Fsync) -> (CrashFigures, usize) {
    let (courses, stream) = small_stream(&env.topology.prefix);
    let state_dir = env
        .log_dir()
        .join(format!("redis-crash-{}", fsync.as_config()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh");
    let server = OwnServer {
        services_script: &script,
        state_dir: &state_dir,
    };
    let figures = redis::crash(server, &setup(env, &courses, fsync), &stream)
        .await
        .unwrap_or_else(|e| panic!("the crash run with {fsync:?}: {e:#}"));
    (figures, stream.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_crash_with_fsync_always_leaves_retried_requests_decided_once() {
    // Arrange
    let env = TestEnv::new().await;

    // Act
    let (f, requests) = crash_run(&env, Fsync::Always).await;

    // Assert
    let context = format!("{f:#?}");
    assert!(
        f.aftermath.retried > 0,
        "the kill landed in the burst: {context}"
    );
    assert_eq!(f.aftermath.retried_not_decided_once, 0, "{context}");
    assert_eq!(f.aftermath.told + f.run.errors, requests, "{context}");
    assert_eq!(f.run.violations, 0, "{context}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_crash_with_fsync_everysec_completes_and_counts_its_losses() {
    // Arrange
    let env = TestEnv::new().await;

    // Act
    let (f, requests) = crash_run(&env, Fsync::EverySec).await;

    // Assert: what a crash loses with everysec is measured, not asserted.
    let context = format!("{f:#?}");
    assert_eq!(f.aftermath.told + f.run.errors, requests, "{context}");
    assert!(
        f.aftermath.answers_lost <= f.aftermath.told
            && f.aftermath.answers_changed <= f.aftermath.told,
        "{context}"
    );
    assert!(
        f.killed_at_ms > 0.0 && f.back_at_ms >= f.killed_at_ms,
        "{context}"
    );
    env.cleanup().await;
}
