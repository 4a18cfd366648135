//! Named crash points for fault-injection tests, compiled in only with the `failpoints` feature.
//!
//! Each marks an instant where a worker may die: after a decision is taken in memory, after its
//! batch is committed, after the final answers are confirmed, right before the acks. A test
//! starts a worker process with, for example, `FAILPOINTS=crash-after-commit=1*return(abort)`:
//! the first time the worker passes that point it aborts on the spot, as abruptly as `kill -9`
//! (no destructor runs, no connection is closed politely), and the test checks that another
//! worker finishes the job from what Postgres and the queues hold.

/// After a course actor decided a request, before the provisional answer and the hand-off to
/// the group commit.
pub const AFTER_DECIDE: &str = "crash-after-decide";
/// After a batch is committed, before its final answers are published.
pub const AFTER_COMMIT: &str = "crash-after-commit";
/// After a batch's final answers are confirmed by the broker, before they are recorded as
/// answered.
pub const AFTER_PUBLISH: &str = "crash-after-publish";
/// After a batch is recorded as answered, before its deliveries are acked.
pub const BEFORE_ACK: &str = "crash-before-ack";

/// After a course actor performed its draw in memory, before the draw is handed to the group
/// commit. Only draw courses pass it, so the chaos run's rushes (first-come) leave it out.
pub const BEFORE_DRAW: &str = "crash-before-draw";
/// After a batch holding a course's draw is committed, before the draw's results are
/// published.
pub const AFTER_DRAW_COMMIT: &str = "crash-after-draw-commit";

/// Every crash point a first-come rush passes, for tests and docs.
pub const ALL: [&str; 4] = [AFTER_DECIDE, AFTER_COMMIT, AFTER_PUBLISH, BEFORE_ACK];

/// Aborts the process if the fail point `name` is configured as `return(abort)`.
#[cfg(feature = "failpoints")]
pub fn crash_point(name: &str) {
    if let Some(Some(action)) = fail::eval(name, |arg| arg)
        && action == "abort"
    {
        eprintln!("fail point {name}: aborting the process");
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
pub fn crash_point(_: &str) {}

/// Whether this build has the crash points compiled in.
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// Reads the crash points configured in `FAILPOINTS` for the life of the returned guard.
#[cfg(feature = "failpoints")]
pub fn setup() -> impl Drop {
    fail::FailScenario::setup()
}
