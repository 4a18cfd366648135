//! The wire contract: JSON bodies as producers send them and answers as clients receive them.
//!
//! Wire types are plain serde structs, kept apart from the domain types; `parse_request` is the
//! one place where a message becomes a domain [`Request`], and it never panics on any input.
//! `docs/protocol.md` documents the same contract for producers in other languages.

mod answer;
mod request;

pub use answer::{Answer, DecidedAnswer, DrawResult, PassedOver, Promotion, Stage, answers_in};
pub use request::{Invalid, RequestBody, parse_request, request_body};

/// Largest request body accepted, in bytes. A real request is under 250 bytes; anything far
/// larger is a mistake or an attack, and is dead-lettered without being parsed.
pub const MAX_BODY_BYTES: usize = 4096;

/// Header that carries the reason on messages seatrush dead-letters itself.
pub const REASON_HEADER: &str = "x-seatrush-reason";

/// The protocol version this worker speaks, as `docs/protocol.md` documents it: 2 added batched
/// answers and batched final events; 3 added draw courses (entries answered `queued`, the
/// draw's outcome as a second final answer, `configure` with `opening` and `entries_open_at`,
/// and the `draw` wake-up); 4 the registrar's rules across courses and the `swap` action; 5
/// answers an invalid message instead of dead-lettering it wherever a queue takes the answer.
pub const PROTOCOL_VERSION: u32 = 5;

/// Request header with which a producer asks for its answers packed into batches.
pub const BATCH_HEADER: &str = "x-seatrush-batch";

/// Header on a batch: how many answers its JSON array holds.
pub const COUNT_HEADER: &str = "x-seatrush-count";

/// How final answers are published on the events exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FinalEvents {
    /// One message per group commit, routing key `finals`, holding every final answer of the
    /// commit: the broker carries a few hundred answers per message.
    #[default]
    Batched,
    /// One message per final answer, routing key `final.<course_id>.<student_id>`, so that a
    /// subscriber can bind to one student; costs one broker message per request.
    PerRequest,
}

impl FinalEvents {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Batched => "batched",
            Self::PerRequest => "per-request",
        }
    }
}

impl std::fmt::Display for FinalEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FinalEvents {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "batched" => Ok(Self::Batched),
            "per-request" => Ok(Self::PerRequest),
            other => Err(format!(
                "unknown final events mode '{other}': expected batched or per-request"
            )),
        }
    }
}

/// Most seats, and most waitlist places, a course may have.
pub const MAX_SEATS: u32 = 100_000;

/// Most credits a course may count for (the database checks the same).
pub const MAX_CREDITS: u32 = 100;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Action;

    #[test]
    fn the_protocol_document_states_the_version_the_worker_speaks() {
        let document = include_str!("../../../../docs/protocol.md");
        let stated = format!("**Protocol version {PROTOCOL_VERSION}.**");
        assert!(
            document.contains(&stated),
            "docs/protocol.md lacks {stated}"
        );
    }

    #[test]
    fn a_good_request_parses() {
        let r = parse_request(
            Some("req-1"),
            None,
            br#"{"action":"enroll","course_id":"CS101","student_id":"s-1"}"#,
        )
        .unwrap();
        assert_eq!(r.action, Action::Enroll);
        assert_eq!(r.course_id.as_str(), "CS101");
    }

    #[test]
    fn each_kind_of_bad_message_says_why() {
        let ok_body = br#"{"action":"enroll","course_id":"CS101","student_id":"s1"}"#;
        let missing = parse_request(None, None, ok_body).unwrap_err();
        assert!(missing.why.contains("message_id is missing"));
        assert!(!missing.answerable);

        let bad_json = parse_request(Some("r1"), None, b"{not json").unwrap_err();
        assert!(bad_json.why.contains("not a valid request"));
        assert!(bad_json.answerable);

        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert!(
            parse_request(Some("r1"), None, &huge)
                .unwrap_err()
                .why
                .contains("limit")
        );

        let bad_id = parse_request(
            Some("r1"),
            None,
            br#"{"action":"enroll","course_id":"CS 101","student_id":"s1"}"#,
        )
        .unwrap_err();
        assert!(bad_id.why.contains("course_id"));
        assert_eq!(Answer::invalid(&bad_id).course_id, "CS 101");

        // A draw's record id cannot be taken by a client, for any course.
        let reserved = parse_request(Some("draw-CS101"), None, ok_body).unwrap_err();
        assert!(reserved.why.contains("reserved"), "{}", reserved.why);
        assert!(reserved.answerable);

        let bad_action = parse_request(
            Some("r1"),
            None,
            br#"{"action":"swap","course_id":"C","student_id":"s1"}"#,
        )
        .unwrap_err();
        assert!(bad_action.why.contains("swap"));

        let no_student =
            parse_request(Some("r1"), None, br#"{"action":"drop","course_id":"C"}"#).unwrap_err();
        assert!(no_student.why.contains("student_id is missing"));
    }

    #[test]
    fn a_configure_request_needs_a_user_and_a_setting_and_tells_null_from_absent() {
        let body = br#"{"action":"configure","course_id":"C","seats":40,"opens_at":null}"#;
        let anonymous = parse_request(Some("c1"), None, body).unwrap_err();
        assert!(anonymous.why.contains("user_id"));
        let r = parse_request(Some("c1"), Some("registrar"), body).unwrap();
        let Action::Configure(patch) = &r.action else {
            panic!("not a configure request: {r:?}");
        };
        assert_eq!(patch.seats, Some(40));
        assert_eq!(patch.opens_at, Some(None));
        assert_eq!(patch.closes_at, None);
        assert_eq!(r.student_id.as_str(), "registrar");
        assert_eq!(
            parse_request(Some("c1"), Some("registrar"), &request_body(&r)).unwrap(),
            r
        );
        let empty = br#"{"action":"configure","course_id":"C"}"#;
        assert!(parse_request(Some("c2"), Some("registrar"), empty).is_err());
        let mixed = br#"{"action":"enroll","course_id":"C","student_id":"s","seats":3}"#;
        assert!(parse_request(Some("c3"), None, mixed).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(id in proptest::option::of(".{0,80}"), body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_request(id.as_deref(), None, &body);
        }

        /// Hostile but well-formed JSON (every field of a request with values of any type,
        /// nested arrays and objects, ids breaking every rule) is refused with a reason or
        /// parsed into a request that round-trips; nothing panics.
        #[test]
        fn hostile_json_is_refused_with_a_reason_or_round_trips(
            id in proptest::option::of(proptest::prop_oneof![
                "[A-Za-z0-9_-]{1,64}".boxed(),
                ".{0,100}".boxed(),
                "draw-.{0,20}".boxed(),
            ]),
            user in proptest::option::of("[a-z]{1,12}"),
            body in hostile_body(),
        ) {
            let bytes = serde_json::to_vec(&body).expect("a JSON value serializes");
            match parse_request(id.as_deref(), user.as_deref(), &bytes) {
                Ok(request) => {
                    let again = parse_request(id.as_deref(), user.as_deref(), &request_body(&request));
                    proptest::prop_assert_eq!(again.ok(), Some(request));
                }
                Err(invalid) => proptest::prop_assert!(!invalid.why.is_empty()),
            }
        }

        /// Any bytes on a reply queue: answers or an error, never a panic.
        #[test]
        fn answers_in_any_bytes_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = answers_in(&body);
        }
    }

    use proptest::prelude::{BoxedStrategy, Just, Strategy};

    /// A JSON value of any type, up to a few levels deep.
    fn any_json() -> BoxedStrategy<serde_json::Value> {
        use serde_json::Value;
        let leaf = proptest::prop_oneof![
            Just(Value::Null),
            proptest::bool::ANY.prop_map(Value::Bool),
            proptest::num::i64::ANY.prop_map(Value::from),
            proptest::num::f64::NORMAL.prop_map(Value::from),
            ".{0,40}".prop_map(Value::String),
            "[A-Za-z0-9_-]{1,70}".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            proptest::prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,12}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
    }

    /// An object with the request's fields, each missing, of the right kind, or of any type.
    fn hostile_body() -> impl Strategy<Value = serde_json::Value> {
        let field = |good: BoxedStrategy<serde_json::Value>| {
            proptest::option::of(proptest::prop_oneof![good, any_json()])
        };
        let action = proptest::prop_oneof![
            Just("enroll"),
            Just("drop"),
            Just("swap"),
            Just("configure"),
            Just("draw"),
            Just("release"),
            Just("ENROLL"),
            Just(""),
        ]
        .prop_map(serde_json::Value::from)
        .boxed();
        let id = "[A-Za-z0-9_-]{0,70}"
            .prop_map(serde_json::Value::from)
            .boxed();
        (
            field(action),
            field(id.clone()),
            field(id.clone()),
            field(id),
            field((0u32..100_000).prop_map(serde_json::Value::from).boxed()),
            proptest::collection::btree_map(".{0,12}", any_json(), 0..3),
        )
            .prop_map(|(action, course, student, drop_course, seats, extra)| {
                let mut object: serde_json::Map<String, serde_json::Value> =
                    extra.into_iter().collect();
                for (name, value) in [
                    ("action", action),
                    ("course_id", course),
                    ("student_id", student),
                    ("drop_course_id", drop_course),
                    ("seats", seats),
                ] {
                    if let Some(value) = value {
                        object.insert(name.to_owned(), value);
                    }
                }
                serde_json::Value::Object(object)
            })
    }
}
