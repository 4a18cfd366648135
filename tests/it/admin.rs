//! Course administration from the command line: changes go through the course actor, so they
//! are decided in order with enrollments and promote from the waitlist at once.

use std::process::Output;

use seatrush_core::client::EventFilter;
use seatrush_core::domain::CourseId;

use crate::helpers::{Listener, TestEnv, WAIT, enroll};

async fn seatrush(env: &TestEnv, args: &[&str]) -> Output {
    env.seatrush()
        .args(args)
        .output()
        .await
        .expect("run seatrush")
}

/// The one JSON answer a `--json` command printed, checked against the schema.
fn answer(output: &Output) -> serde_json::Value {
    let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    crate::schema::assert_valid_answer(line.as_bytes());
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {output:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_set_show_and_import_go_through_the_course_actor() {
    // Arrange: two seats, three waitlist places, four students.
    let mut env = TestEnv::new().await;
    let added = seatrush(
        &env,
        &["course", "add", "A1", "--seats", "2", "--waitlist", "3"],
    )
    .await;
    assert!(added.status.success(), "{added:?}");
    env.start_worker(env.worker_config()).await;
    let course = CourseId::parse("A1").expect("id");
    let mut client = Listener::new(&env, Some(EventFilter::course(course.clone()))).await;
    let enrolls: Vec<_> = (1..=4)
        .map(|i| enroll(&format!("e{i}"), &course, &format!("s{i}")))
        .collect();
    client.send(&enrolls).await;
    client.until(WAIT, |c| c.final_count() == 4).await;

    // Act: raise the seats, then try to go below what is held, in seats and in waitlist.
    let raised = seatrush(&env, &["course", "set", "A1", "--seats", "3", "--json"]).await;
    let too_few = seatrush(&env, &["course", "set", "A1", "--seats", "1", "--json"]).await;
    let no_room = seatrush(&env, &["course", "set", "A1", "--waitlist", "0", "--json"]).await;
    let reversed = seatrush(
        &env,
        &[
            "course",
            "set",
            "A1",
            "--opens-at",
            "2030-01-02T00:00:00Z",
            "--closes-at",
            "2030-01-01T00:00:00Z",
            "--json",
        ],
    )
    .await;
    let windowed = seatrush(
        &env,
        &[
            "course",
            "add",
            "A2",
            "--seats",
            "5",
            "--opens-at",
            "2030-01-01T10:00:00+01:00",
            "--closes-at",
            "none",
        ],
    )
    .await;
    client.until(WAIT, |c| c.promotions().len() == 1).await;
    let shown = seatrush(&env, &["course", "show", "A1", "--json"]).await;

    // Assert: the raise promoted s3 at once; the refusals say why and exit 1.
    assert!(raised.status.success(), "{raised:?}");
    assert_eq!(answer(&raised)["outcome"], "configured");
    assert_eq!(client.promotions()[0].student_id, "s3");
    assert!(!too_few.status.success());
    assert_eq!(answer(&too_few)["reason"], "seats_below_enrolled");
    assert_eq!(answer(&no_room)["reason"], "waitlist_below_waiting");
    assert!(!reversed.status.success(), "{reversed:?}");
    assert_eq!(answer(&reversed)["reason"], "window_out_of_order");
    assert!(windowed.status.success(), "{windowed:?}");
    let a2 = env
        .store
        .course_detail(&CourseId::parse("A2").expect("id"))
        .await
        .expect("read")
        .expect("A2 exists");
    assert_eq!(
        a2.course.opens_at.map(|t| t.to_rfc3339()),
        Some("2030-01-01T09:00:00+00:00".to_owned())
    );
    assert_eq!(a2.course.closes_at, None);
    let detail: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("JSON");
    assert_eq!(detail["capacity"], 3);
    assert_eq!(
        detail["enrolled_students"].as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(detail["waitlist"], serde_json::json!(["s4"]));

    // Act: a term's file creates one course and changes A1 through its actor.
    let file = env
        .log_dir()
        .join(format!("{}-term.csv", env.topology.prefix));
    std::fs::write(
        &file,
        "course_id,seats,waitlist,opens_at,closes_at\n\
         A1,4,3,,\n\
         B1,10,5,2030-01-01T09:00:00Z,2030-01-08T09:00:00Z\n",
    )
    .expect("write the course file");
    let imported = seatrush(
        &env,
        &[
            "course",
            "import",
            file.to_str().expect("utf-8 path"),
            "--json",
        ],
    )
    .await;
    client.until(WAIT, |c| c.promotions().len() == 2).await;

    // Assert: B1 created with its window, A1's last waiting student promoted.
    assert!(imported.status.success(), "{imported:?}");
    let report: serde_json::Value = serde_json::from_slice(&imported.stdout).expect("JSON");
    assert_eq!(report["created"], serde_json::json!(["B1"]));
    assert_eq!(report["changed"], serde_json::json!(["A1"]));
    assert_eq!(client.promotions()[1].student_id, "s4");
    let b1 = env
        .store
        .course_detail(&CourseId::parse("B1").expect("id"))
        .await
        .expect("read")
        .expect("B1 exists");
    assert_eq!((b1.course.capacity, b1.course.waitlist_capacity), (10, 5));
    assert!(b1.course.opens_at.is_some() && b1.course.closes_at.is_some());
    let violations = env.store.audit().await.expect("audit");
    assert!(violations.is_empty(), "{violations:#?}");

    std::fs::remove_file(&file).expect("remove the course file");
    client.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_from_a_user_who_is_not_an_admin_is_forbidden() {
    // Arrange: the worker accepts changes only from "registrar"; the CLI connects as guest.
    let mut env = TestEnv::new().await;
    env.add_courses("F", 1, 5).await;
    let mut config = env.worker_config();
    config.admin_users = vec!["registrar".into()];
    env.start_worker(config).await;

    // Act
    let refused = seatrush(&env, &["course", "set", "F000", "--seats", "50", "--json"]).await;

    // Assert
    assert!(!refused.status.success());
    assert_eq!(answer(&refused)["reason"], "forbidden");
    let detail = env
        .store
        .course_detail(&CourseId::parse("F000").expect("id"))
        .await
        .expect("read")
        .expect("course");
    assert_eq!(detail.course.capacity, 5);

    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_student_registry_and_course_credits_and_meetings_are_kept_and_shown() {
    // Arrange: two courses with credits and meetings, a registrar's student file.
    let mut env = TestEnv::new().await;
    for (id, credits, meetings) in [
        ("R1", "4", "MO 09:00-10:30;WE 09:00-10:30"),
        ("R2", "3", ""),
    ] {
        let added = seatrush(
            &env,
            &[
                "course",
                "add",
                id,
                "--seats",
                "5",
                "--credits",
                credits,
                "--meetings",
                meetings,
            ],
        )
        .await;
        assert!(added.status.success(), "{added:?}");
    }
    let bad_meetings = seatrush(
        &env,
        &[
            "course",
            "add",
            "R3",
            "--seats",
            "5",
            "--meetings",
            "XX 9-10",
        ],
    )
    .await;
    assert!(!bad_meetings.status.success(), "{bad_meetings:?}");
    let file = env.log_dir().join("students.csv");
    std::fs::write(
        &file,
        "student_id,max_credits,registration_opens_at,holds\n\
         s1,12,2026-09-01T09:00:00Z,unpaid_fees;advising\n\
         s2,9,,\n",
    )
    .expect("write the file");
    let path = file.to_str().expect("utf-8 path");

    // Act: import (twice: it replaces), enroll s2 in R1 (s1 has holds), change R1's credits
    // through its actor.
    let imported = seatrush(&env, &["students", "import", path, "--json"]).await;
    let again = seatrush(&env, &["students", "import", path, "--json"]).await;
    env.start_worker(env.worker_config()).await;
    let course = CourseId::parse("R1").expect("id");
    let mut client = Listener::new(&env, None).await;
    client
        .send(&[enroll("e1", &course, "s1"), enroll("e2", &course, "s2")])
        .await;
    client.until(WAIT, |c| c.final_count() == 2).await;
    let changed = seatrush(&env, &["course", "set", "R1", "--credits", "5", "--json"]).await;
    let shown = seatrush(&env, &["students", "show", "s1", "--json"]).await;
    let shown2 = seatrush(&env, &["students", "show", "s2", "--json"]).await;
    let unknown = seatrush(&env, &["students", "show", "nobody"]).await;

    // Assert
    let json = |o: &Output| -> serde_json::Value {
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"))
    };
    assert_eq!(
        json(&imported),
        serde_json::json!({"imported": 2, "new": 2})
    );
    assert_eq!(json(&again), serde_json::json!({"imported": 2, "new": 0}));
    assert_eq!(answer(&changed)["outcome"], "configured");
    let s1 = json(&shown);
    assert_eq!(s1["max_credits"], 12);
    assert_eq!(s1["holds"], serde_json::json!(["unpaid_fees", "advising"]));
    assert_eq!(s1["registration_opens_at"], "2026-09-01T09:00:00Z");
    assert_eq!(client.finals()["e1"].reason.as_deref(), Some("hold"));
    assert_eq!(s1["credits_held"], 0, "{s1}");
    let s2 = json(&shown2);
    assert_eq!(s2["credits_held"], 5, "{s2}");
    assert_eq!(
        s2["courses_held"][0]["meetings"],
        "MO 09:00-10:30;WE 09:00-10:30"
    );
    assert!(!unknown.status.success());
    let r2 = env
        .store
        .course_detail(&CourseId::parse("R2").expect("id"))
        .await
        .expect("read")
        .expect("course");
    assert_eq!((r2.course.credits, r2.course.meetings.as_str()), (3, ""));
    client.close().await;
    env.cleanup().await;
}
