//! `apply_effects` applies a course whose effects in a batch are all enrolls as one set, and
//! hands every other course to the row-at-a-time loop (`apply_effects_in_order`). The set form
//! must decide exactly what the loop would, including where the loop refuses: this property
//! test builds random committed states (seats partly or wholly taken, students already holding
//! the seat, courses with a waitlist that is not empty, courses that do not exist) and random
//! batches (the same student twice, enrolls mixed with drops in some courses), applies each
//! batch through both functions in transactions that are rolled back, and compares what each
//! answered and what each left in the database.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sqlx::PgPool;

use crate::helpers::TestEnv;

#[derive(Debug, Clone)]
struct CourseCase {
    capacity: i32,
    /// Students 0..n of the pool hold a seat (never more than the capacity).
    holding: usize,
    /// When the course is full: how many wait (a waitlist that is not empty refuses enrolls).
    waiting: usize,
    /// The course is not in the database at all.
    missing: bool,
}

#[derive(Debug, Clone)]
struct EffectCase {
    course: usize,
    student: u8,
    drop: bool,
}

#[derive(Debug, Clone)]
struct Case {
    courses: Vec<CourseCase>,
    effects: Vec<EffectCase>,
}

fn arb_course() -> impl Strategy<Value = CourseCase> {
    (0i32..5, 0usize..6, 0usize..3, prop::bool::weighted(0.1)).prop_map(
        |(capacity, holding, waiting, missing)| CourseCase {
            capacity,
            holding: holding.min(usize::try_from(capacity).unwrap_or(0)),
            waiting,
            missing,
        },
    )
}

fn arb_case() -> impl Strategy<Value = Case> {
    prop::collection::vec(arb_course(), 1..=4).prop_flat_map(|courses| {
        let effect = (0..courses.len(), 0u8..8, prop::bool::weighted(0.1)).prop_map(
            |(course, student, drop)| EffectCase {
                course,
                student,
                drop,
            },
        );
        (Just(courses), prop::collection::vec(effect, 1..40))
            .prop_map(|(courses, effects)| Case { courses, effects })
    })
}

/// What one function answered and left: its result rows, sorted, and every course of the case
/// with its counters and seat holders.
#[derive(Debug, PartialEq, Eq)]
struct Trace {
    answered: Vec<(i32, bool, Option<String>)>,
    courses: Vec<(String, i32, i32, Vec<String>)>,
}

/// The two forms of the function, each called on a batch built from parallel arrays.
#[derive(Debug, Clone, Copy)]
enum Form {
    Loop,
    Set,
}

/// A call of `$function` on a batch of effects given as parallel arrays.
macro_rules! batch_call {
    ($function:literal) => {
        concat!(
            "SELECT r_ord, r_applied, r_student FROM ",
            $function,
            "(ARRAY( \
               SELECT ROW(t.ord, t.course_id, t.student_id, t.request_id, \
                          t.kind::effect_kind, NULL, NULL, NULL, NULL, NULL, NULL, \
                          NULL, NULL, NULL, NULL)::course_effect \
                 FROM UNNEST($1::int[], $2::text[], $3::text[], $4::text[], $5::text[]) \
                   AS t(ord, course_id, student_id, request_id, kind)))"
        )
    };
}

impl Form {
    fn sql(self) -> &'static str {
        match self {
            Self::Loop => batch_call!("apply_course_effects_in_order"),
            Self::Set => batch_call!("apply_course_effects"),
        }
    }
}

/// Builds the case's committed state, applies its batch through `form`, reads what it
/// answered and left, and rolls everything back.
async fn apply(db: &PgPool, tag: &str, case: &Case, form: Form) -> Result<Trace, TestCaseError> {
    let fail = |what: &str, e: sqlx::Error| TestCaseError::fail(format!("{what}: {e}"));
    let mut tx = db.begin().await.map_err(|e| fail("begin", e))?;
    let course_id = |i: usize| format!("{tag}c{i}");
    for (i, course) in case.courses.iter().enumerate() {
        if course.missing {
            continue;
        }
        let full = usize::try_from(course.capacity).unwrap_or(0) == course.holding;
        let waiting = if full { course.waiting } else { 0 };
        let waiting_i32 = i32::try_from(waiting).unwrap_or(0);
        let holding = i32::try_from(course.holding).unwrap_or(0);
        sqlx::query(
            "INSERT INTO courses (course_id, capacity, enrolled, waitlist_capacity, waitlisted) \
             VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(course_id(i))
        .bind(course.capacity)
        .bind(holding)
        .bind(waiting_i32)
        .execute(&mut *tx)
        .await
        .map_err(|e| fail("course", e))?;
        // Holders are students 0..holding; those waiting come after them in the pool.
        sqlx::query(
            "INSERT INTO enrollments (course_id, student_id, request_id) \
             SELECT $1, 's' || n, $1 || 'held' || n FROM generate_series(0, $2 - 1) n",
        )
        .bind(course_id(i))
        .bind(holding)
        .execute(&mut *tx)
        .await
        .map_err(|e| fail("enrollments", e))?;
        sqlx::query(
            "INSERT INTO waitlist (course_id, student_id, position, request_id) \
             SELECT $1, 's' || ($2 + n), n + 1, $1 || 'wait' || n \
               FROM generate_series(0, $3 - 1) n",
        )
        .bind(course_id(i))
        .bind(holding)
        .bind(waiting_i32)
        .execute(&mut *tx)
        .await
        .map_err(|e| fail("waitlist", e))?;
    }
    let ords: Vec<i32> = (0..case.effects.len())
        .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
        .collect();
    let courses: Vec<String> = case.effects.iter().map(|e| course_id(e.course)).collect();
    let students: Vec<String> = case
        .effects
        .iter()
        .map(|e| format!("s{}", e.student))
        .collect();
    let requests: Vec<String> = ords.iter().map(|o| format!("{tag}r{o}")).collect();
    let kinds: Vec<&str> = case
        .effects
        .iter()
        .map(|e| if e.drop { "drop" } else { "enroll" })
        .collect();
    let mut answered: Vec<(i32, bool, Option<String>)> = sqlx::query_as(form.sql())
        .bind(&ords)
        .bind(&courses)
        .bind(&students)
        .bind(&requests)
        .bind(&kinds)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| fail(&format!("{form:?}"), e))?;
    answered.sort();
    let courses: Vec<(String, i32, i32, Vec<String>)> = sqlx::query_as(
        "SELECT c.course_id, c.enrolled, c.waitlisted, \
                ARRAY(SELECT e.student_id FROM enrollments e \
                       WHERE e.course_id = c.course_id ORDER BY e.student_id) \
           FROM courses c WHERE c.course_id LIKE $1 || 'c%' ORDER BY c.course_id",
    )
    .bind(tag)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| fail("read back", e))?;
    tx.rollback().await.map_err(|e| fail("rollback", e))?;
    Ok(Trace { answered, courses })
}

#[test]
fn enrolls_applied_as_a_set_agree_with_the_loop() {
    // Arrange: one database; every case writes only inside transactions it rolls back.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let env = runtime.block_on(TestEnv::new());
    let db = runtime
        .block_on(PgPool::connect(&env.database_url))
        .expect("connect");
    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });

    // Act and assert: both functions, the same case, the same answers and the same state.
    let result = runner.run(&arb_case(), |case| {
        runtime.block_on(async {
            let by_loop = apply(&db, "t", &case, Form::Loop).await?;
            let by_set = apply(&db, "t", &case, Form::Set).await?;
            prop_assert_eq!(by_set, by_loop);
            Ok(())
        })
    });

    runtime.block_on(async {
        db.close().await;
        env.cleanup().await;
    });
    if let Err(failure) = result {
        panic!("the set form and the loop disagree: {failure}");
    }
}
