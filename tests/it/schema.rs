//! The JSON Schemas in `docs/schemas/` against what seatrush really sends and accepts. Every
//! answer the integration tests receive goes through `assert_valid_answer`.

use std::sync::LazyLock;

use jsonschema::Validator;
use serde_json::Value;

use seatrush_core::domain::{
    Action, CourseId, CoursePatch, REASONS, Request, RequestId, StudentId,
};
use seatrush_core::protocol::{Answer, parse_request, request_body};
use seatrush_tools::load::Report;

fn load(name: &str) -> (Value, Validator) {
    let path = format!("{}/docs/schemas/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let schema: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{path} is not a valid schema: {e}"));
    (schema, validator)
}

static ANSWER: LazyLock<(Value, Validator)> = LazyLock::new(|| load("answer.schema.json"));
static REQUEST: LazyLock<(Value, Validator)> = LazyLock::new(|| load("request.schema.json"));

fn assert_valid(validator: &Validator, what: &str, raw: &[u8]) {
    let value: Value = serde_json::from_slice(raw)
        .unwrap_or_else(|e| panic!("{what} is not JSON ({e}): {}", String::from_utf8_lossy(raw)));
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match its schema: {errors:?}\n{value}"
    );
}

/// Asserts a received answer (as its bytes on the wire) matches `answer.schema.json`.
pub fn assert_valid_answer(raw: &[u8]) {
    assert_valid(&ANSWER.1, "answer", raw);
}

/// Asserts a received message holds valid answers: one answer object, or a batch (a JSON array
/// of them, as `answer-batch.schema.json` says, with their number in `x-seatrush-count`);
/// returns them.
pub fn assert_valid_answers(message: &seatrush_core::amqp::Incoming) -> Vec<Answer> {
    let value: Value = serde_json::from_slice(&message.body).expect("a message that is JSON");
    let Value::Array(items) = value else {
        assert_valid_answer(&message.body);
        return vec![serde_json::from_slice(&message.body).expect("an answer")];
    };
    assert!(!items.is_empty(), "an empty batch");
    assert_eq!(
        message.header(seatrush_core::protocol::COUNT_HEADER),
        Some(items.len().to_string().as_str()),
        "a batch's count header gives its length"
    );
    items
        .iter()
        .map(|item| {
            let raw = serde_json::to_vec(item).expect("re-serialize");
            assert_valid_answer(&raw);
            serde_json::from_value(item.clone()).expect("an answer")
        })
        .collect()
}

/// Asserts every answer of a crowd matches the schema. The report holds parsed answers; they
/// are checked as serialized by the same code the worker publishes with.
pub fn assert_valid_report(report: &Report) {
    for answered in &report.answered {
        let answers = answered
            .provisional
            .iter()
            .map(|(a, _)| a)
            .chain(answered.finals.iter().map(|(a, _)| a))
            .chain(&answered.promotions);
        for answer in answers {
            assert_valid_answer(&answer.to_json());
        }
    }
}

fn enum_of<'a>(schema: &'a Value, field: &str) -> Vec<&'a str> {
    schema["properties"][field]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("answer schema: {field} has no enum"))
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn the_answer_schema_names_every_outcome_and_reason() {
    let schema = &ANSWER.0;
    let mut reasons = enum_of(schema, "reason");
    reasons.sort_unstable();
    let mut known: Vec<&str> = REASONS.iter().map(|r| r.as_str()).collect();
    known.sort_unstable();
    assert_eq!(reasons, known);
    for outcome in enum_of(schema, "outcome") {
        assert!(
            seatrush_core::domain::Outcome::parse(outcome).is_some(),
            "{outcome} is not an outcome"
        );
    }
}

#[test]
fn requests_seatrush_accepts_match_the_request_schema_and_invalid_ones_do_not() {
    let course = CourseId::parse("CS101").unwrap();
    let student = StudentId::parse("s1").unwrap();
    let requests = [
        Action::Enroll,
        Action::Drop,
        Action::Configure(Box::new(CoursePatch {
            seats: Some(40),
            opens_at: Some(None),
            ..CoursePatch::default()
        })),
    ];
    for action in requests {
        let request = Request {
            request_id: RequestId::parse("r1").unwrap(),
            action,
            course_id: course.clone(),
            student_id: student.clone(),
        };
        let body = request_body(&request);
        assert_valid(&REQUEST.1, "request", &body);
        assert!(parse_request(Some("r1"), Some("s1"), &body).is_ok());
    }
    let invalid: [&[u8]; 4] = [
        br#"{"action":"enroll","course_id":"CS 101","student_id":"s1"}"#,
        br#"{"action":"drop","course_id":"CS101"}"#,
        br#"{"action":"configure","course_id":"CS101"}"#,
        br#"{"action":"enroll","course_id":"CS101","student_id":"s1","seats":3}"#,
    ];
    for body in invalid {
        let value: Value = serde_json::from_slice(body).unwrap();
        assert!(!REQUEST.1.is_valid(&value), "{value} passed the schema");
        assert!(parse_request(Some("r1"), Some("s1"), body).is_err());
    }
}

#[test]
fn a_promotion_event_matches_the_answer_schema() {
    let promotion = seatrush_core::protocol::Promotion {
        course_id: "CS101".into(),
        student_id: "s9".into(),
        request_id: "r9".into(),
        reply_to: None,
        correlation_id: None,
        promoted_by: "d1".into(),
        seats_left: 0,
    };
    assert_valid_answer(&Answer::promoted(&promotion).to_json());
}
