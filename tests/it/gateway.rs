//! The web gateway against a real broker, database and worker: idempotency keys, every
//! authentication failure, acting for others, the rate limit, 503s from a lost or full broker,
//! event streams that resume across a gateway restart, bad input, and every response checked
//! against the OpenAPI document the gateway serves.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use seatrush_core::domain::{Action, CourseSettings, Partition};
use seatrush_gateway::{AuthConfig, Gateway, GatewayConfig, Limits, TokenClaims};

use crate::helpers::{Listener, TestEnv, WAIT, eventually, request};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes-long";
const ISSUER: &str = "https://sso.example.edu";
const AUDIENCE: &str = "seatrush";

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/it/fixtures/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A gateway configuration for this environment: HS256 and the fixtures' JWKS, an issuer and
/// an audience, and short waits.
pub fn config(env: &TestEnv, amqp_url: &str) -> GatewayConfig {
    GatewayConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        amqp_url: amqp_url.to_owned(),
        database_url: env.database_url.clone(),
        prefix: env.topology.prefix.clone(),
        auth: AuthConfig {
            jwks: Some(fixture("jwks.json")),
            hs256_secret: Some(SECRET.to_owned()),
            issuer: Some(ISSUER.to_owned()),
            audience: Some(AUDIENCE.to_owned()),
            admin_claim: "roles=registrar".to_owned(),
            dev_issuer: false,
            jwks_refresh: Duration::from_secs(300),
        },
        limits: Limits {
            provisional_wait: Duration::from_millis(500),
            rate_per_second: 50,
            rate_burst: 100,
            ..Limits::default()
        },
    }
}

pub async fn start(config: GatewayConfig) -> (Gateway, Api) {
    start_until(config, CancellationToken::new()).await
}

/// [`start`], stopped by `shutdown`.
pub async fn start_until(config: GatewayConfig, shutdown: CancellationToken) -> (Gateway, Api) {
    let gateway = Gateway::start(config, shutdown)
        .await
        .expect("the gateway starts");
    let api = Api::new(gateway.local_addr());
    eventually("the gateway is ready", Duration::from_secs(20), || async {
        let ready = api.http.get(format!("{}/readyz", api.base)).send().await;
        ready
            .ok()
            .filter(|r| r.status() == StatusCode::OK)
            .map(|_| ())
    })
    .await;
    (gateway, api)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
}

fn claims(sub: &str) -> TokenClaims {
    TokenClaims {
        sub: sub.to_owned(),
        exp: now() + 600,
        nbf: None,
        iss: Some(ISSUER.to_owned()),
        aud: Some(AUDIENCE.to_owned()),
        seatrush_admin: false,
    }
}

fn sign(
    claims: &impl serde::Serialize,
    algorithm: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("a token")
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("a fixture key")
}

/// A student's HS256 token.
pub fn token(sub: &str) -> String {
    sign(
        &claims(sub),
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

fn admin_token(sub: &str) -> String {
    let mut c = serde_json::to_value(claims(sub)).expect("claims");
    c["roles"] = json!(["staff", "registrar"]);
    sign(
        &c,
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

/// A response, checked against the OpenAPI document.
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

/// A client of one gateway that checks every response against the gateway's OpenAPI document.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    doc: Value,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Self {
        let doc: Value = serde_json::from_str(seatrush_gateway::openapi_json())
            .expect("the OpenAPI document is JSON");
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
            doc,
        }
    }

    /// Sends a request to `path` (whose OpenAPI template is `template`) and checks the response.
    pub async fn call(
        &self,
        method: Method,
        template: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let mut builder = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = token {
            builder = builder.bearer_auth(token);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(body) = body {
            builder = builder.json(&body);
        }
        let response = builder.send().await.expect("the gateway answers");
        let status = response.status();
        let headers = response.headers().clone();
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.expect("a body");
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path} {status}: not JSON ({e}): {text}"));
        self.validate(method.as_str(), template, status, &content_type, &body);
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Asserts the response is one the document lists for this route and status, in the
    /// content type it lists, and that the body matches the schema.
    pub fn validate(
        &self,
        method: &str,
        template: &str,
        status: StatusCode,
        content_type: &str,
        body: &Value,
    ) {
        let response =
            &self.doc["paths"][template][method.to_lowercase()]["responses"][status.as_str()];
        assert!(
            !response.is_null(),
            "{method} {template} answered {status}, which the OpenAPI document does not list: {body}"
        );
        let media = content_type.split(';').next().unwrap_or_default().trim();
        let schema = &response["content"][media]["schema"];
        assert!(
            !schema.is_null(),
            "{method} {template} {status} came as {media:?}, which the document does not list"
        );
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| {
                panic!("the document's schema for {method} {template} {status}: {e}")
            });
        let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {status} does not match the OpenAPI document: {errors:?}\n{body}"
        );
    }

    pub async fn post(
        &self,
        token: &str,
        key: Option<&str>,
        extra: &[(&str, &str)],
        body: Value,
    ) -> Reply {
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if let Some(key) = key {
            headers.push(("idempotency-key", key));
        }
        self.call(
            Method::POST,
            "/v1/requests",
            "/v1/requests",
            Some(token),
            &headers,
            Some(body),
        )
        .await
    }

    pub async fn state(&self, token: &str, key: &str) -> Reply {
        self.call(
            Method::GET,
            "/v1/requests/{key}",
            &format!("/v1/requests/{key}"),
            Some(token),
            &[],
            None,
        )
        .await
    }

    pub async fn me(&self, token: Option<&str>) -> Reply {
        self.call(Method::GET, "/v1/me", "/v1/me", token, &[], None)
            .await
    }

    /// Opens the event stream (after `last_event_id` if given).
    pub async fn events(&self, token: &str, last_event_id: Option<&str>) -> EventStream {
        let mut builder = self
            .http
            .get(format!("{}/v1/events", self.base))
            .bearer_auth(token)
            .timeout(Duration::from_secs(600));
        if let Some(id) = last_event_id {
            builder = builder.header("last-event-id", id);
        }
        let response = builder.send().await.expect("the stream opens");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        EventStream {
            response,
            buffer: String::new(),
        }
    }
}

/// One SSE event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: String,
    pub event: String,
    pub data: Value,
}

pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    /// The next event (comments skipped), waiting at most `within`.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let data: Value = serde_json::from_str(&data).expect("an event's data is JSON");
                crate::schema::assert_valid_answer(data.to_string().as_bytes());
                return Some(SseEvent { id, event, data });
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }

    /// Events until one matches `done`, within `within`; panics if it never comes.
    pub async fn until(
        &mut self,
        within: Duration,
        done: impl Fn(&SseEvent) -> bool,
    ) -> Vec<SseEvent> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("the awaited event did not come; got {seen:?}"));
            let matched = done(&event);
            seen.push(event);
            if matched {
                return seen;
            }
        }
    }
}

fn enroll(course: &str) -> Value {
    json!({"action": "enroll", "course_id": course})
}

#[tokio::test]
async fn idempotency_keys_follow_the_draft_across_gateways() {
    let mut env = TestEnv::new().await;
    let courses = env.add_courses("IDEM", 1, 5).await;
    let course = courses[0].as_str();
    // No worker yet: requests stay in flight.
    let broker = env.broker().await;
    broker.declare(&env.topology).await.expect("declare");
    broker.close().await;
    let (a, api) = start(config(&env, &env.amqp_url)).await;
    let (b, other) = start(config(&env, &env.amqp_url)).await;
    let s1 = token("s1");

    let missing = api.post(&s1, None, &[], enroll(course)).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST, "{}", missing.body);
    let spaced = api.post(&s1, Some("has space"), &[], enroll(course)).await;
    assert_eq!(spaced.status, StatusCode::BAD_REQUEST);

    let first = api.post(&s1, Some("k-1"), &[], enroll(course)).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    assert_eq!(first.body["state"], "pending");
    assert_eq!(first.headers["location"], "/v1/requests/k-1");
    // In flight: at this gateway, and at another.
    let again = api.post(&s1, Some("k-1"), &[], enroll(course)).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    let elsewhere = other.post(&s1, Some("k-1"), &[], enroll(course)).await;
    assert_eq!(elsewhere.status, StatusCode::CONFLICT, "{}", elsewhere.body);
    // Another request under the same key, at another gateway and at the one waiting for the
    // request's answers.
    let dropping = json!({"action": "drop", "course_id": course});
    for gateway in [&other, &api] {
        let reused = gateway.post(&s1, Some("k-1"), &[], dropping.clone()).await;
        assert_eq!(
            reused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reused.body
        );
    }
    // The same key of another student is another request.
    let s2 = api
        .post(&token("s2"), Some("k-1"), &[], enroll(course))
        .await;
    assert_eq!(s2.status, StatusCode::ACCEPTED, "{}", s2.body);
    assert_ne!(s2.body["request_id"], first.body["request_id"]);
    let pending = other.state(&s1, "k-1").await;
    assert_eq!(
        (pending.status, pending.body["state"].as_str()),
        (StatusCode::ACCEPTED, Some("pending"))
    );
    let unknown = api.state(&s1, "never-sent").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    env.start_worker(env.worker_config()).await;
    let decided = eventually(
        "the request is decided",
        Duration::from_secs(30),
        || async {
            let reply = other.state(&s1, "k-1").await;
            (reply.status == StatusCode::OK).then_some(reply)
        },
    )
    .await;
    assert_eq!(decided.body["state"], "final");
    assert_eq!(decided.body["answer"]["outcome"], "enrolled");
    assert_eq!(decided.body["answer"]["student_id"], "s1");
    // The same key and body replays the stored outcome, anywhere; nothing is taken twice. That
    // includes the gateway that published the request and may still be waiting for its final
    // answer (which leaves after the commit the state above read): it looks in the database.
    for gateway in [&api, &other] {
        let replay = gateway.post(&s1, Some("k-1"), &[], enroll(course)).await;
        assert_eq!(replay.status, StatusCode::OK, "{}", replay.body);
        assert_eq!(replay.body["answer"], decided.body["answer"]);
    }
    let reused = api.post(&s1, Some("k-1"), &[], dropping).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let seats: i64 = sqlx::query_scalar("SELECT count(*) FROM enrollments WHERE course_id = $1")
        .bind(course)
        .fetch_one(
            &sqlx::PgPool::connect(&env.database_url)
                .await
                .expect("connect"),
        )
        .await
        .expect("count");
    assert_eq!(seats, 2, "s1 and s2 hold one seat each");

    // With Prefer: wait, the final answer itself.
    let waited = api
        .post(
            &token("s3"),
            Some("k-2"),
            &[("prefer", "wait=20")],
            enroll(course),
        )
        .await;
    assert_eq!(waited.status, StatusCode::OK, "{}", waited.body);
    assert_eq!(waited.body["answer"]["stage"], "final");
    assert_eq!(waited.headers["preference-applied"], "wait=20");

    a.stop().await.expect("stops");
    b.stop().await.expect("stops");
    env.cleanup().await;
}

#[tokio::test]
async fn every_bad_token_is_refused_and_nobody_acts_for_another() {
    let mut env = TestEnv::new().await;
    let courses = env.add_courses("AUTH", 1, 5).await;
    let course = courses[0].as_str();
    env.start_worker(env.worker_config()).await;
    let (gateway, api) = start(config(&env, &env.amqp_url)).await;

    let rsa = EncodingKey::from_rsa_pem(&pem("rs256.pem")).expect("rsa key");
    let ec = EncodingKey::from_ec_pem(&pem("es256.pem")).expect("ec key");
    let stranger = EncodingKey::from_rsa_pem(&pem("rs256-unknown.pem")).expect("rsa key");
    let hs = EncodingKey::from_secret(SECRET.as_bytes());

    let good = [
        (
            "RS256",
            sign(&claims("s1"), Algorithm::RS256, Some("rsa-1"), &rsa),
        ),
        (
            "ES256",
            sign(&claims("s1"), Algorithm::ES256, Some("ec-1"), &ec),
        ),
        ("HS256", sign(&claims("s1"), Algorithm::HS256, None, &hs)),
    ];
    for (what, token) in &good {
        let me = api.me(Some(token)).await;
        assert_eq!(me.status, StatusCode::OK, "{what}: {}", me.body);
        assert_eq!(me.body["student_id"], "s1");
    }

    let mut expired = claims("s1");
    expired.exp = now() - 120;
    let mut early = claims("s1");
    early.nbf = Some(now() + 600);
    let mut audience = claims("s1");
    audience.aud = Some("another-app".into());
    let mut issuer = claims("s1");
    issuer.iss = Some("https://evil.example".into());
    let mut not_an_id = claims("s1");
    not_an_id.sub = "s 1; drop".into();
    // The RSA public key's PEM used as an HMAC secret: the classic algorithm confusion.
    let public_pem = {
        let jwks: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).expect("jwks"))
                .expect("json");
        jwks["keys"][0]["n"].as_str().expect("n").to_owned()
    };
    let unsigned = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(serde_json::to_vec(&claims("s1")).expect("claims"))
        )
    };
    let refused = [
        (
            "expired",
            sign(&expired, Algorithm::RS256, Some("rsa-1"), &rsa),
        ),
        (
            "not yet valid",
            sign(&early, Algorithm::ES256, Some("ec-1"), &ec),
        ),
        (
            "wrongly signed",
            sign(&claims("s1"), Algorithm::RS256, Some("rsa-1"), &stranger),
        ),
        (
            "unknown key",
            sign(&claims("s1"), Algorithm::RS256, None, &stranger),
        ),
        (
            "wrong audience",
            sign(&audience, Algorithm::HS256, None, &hs),
        ),
        ("wrong issuer", sign(&issuer, Algorithm::HS256, None, &hs)),
        (
            "sub not a student id",
            sign(&not_an_id, Algorithm::HS256, None, &hs),
        ),
        (
            "HS256 with the public key",
            sign(
                &claims("s1"),
                Algorithm::HS256,
                Some("rsa-1"),
                &EncodingKey::from_secret(public_pem.as_bytes()),
            ),
        ),
        ("alg none", unsigned),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (what, token) in &refused {
        let me = api.me(Some(token)).await;
        assert_eq!(me.status, StatusCode::UNAUTHORIZED, "{what}: {}", me.body);
        assert!(me.headers.contains_key("www-authenticate"), "{what}");
        let post = api.post(token, Some("k"), &[], enroll(course)).await;
        assert_eq!(post.status, StatusCode::UNAUTHORIZED, "{what}");
    }
    assert_eq!(api.me(None).await.status, StatusCode::UNAUTHORIZED);

    // A student acts only for themselves, and does not change courses.
    let s1 = token("s1");
    let for_other = api
        .post(
            &s1,
            Some("k-o"),
            &[],
            json!({"action": "enroll", "course_id": course, "student_id": "s2"}),
        )
        .await;
    assert_eq!(
        for_other.status,
        StatusCode::FORBIDDEN,
        "{}",
        for_other.body
    );
    let change = api
        .post(
            &s1,
            Some("k-c"),
            &[],
            json!({"action": "configure", "course_id": course, "seats": 500}),
        )
        .await;
    assert_eq!(change.status, StatusCode::FORBIDDEN);
    // Naming oneself is fine; an admin may act for another.
    let own = api
        .post(
            &s1,
            Some("k-s"),
            &[("prefer", "wait=20")],
            json!({"action": "enroll", "course_id": course, "student_id": "s1"}),
        )
        .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    let registrar = admin_token("registrar-1");
    let for_s2 = api
        .post(
            &registrar,
            Some("k-a"),
            &[("prefer", "wait=20")],
            json!({"action": "enroll", "course_id": course, "student_id": "s2"}),
        )
        .await;
    assert_eq!(for_s2.status, StatusCode::OK, "{}", for_s2.body);
    assert_eq!(for_s2.body["answer"]["student_id"], "s2");
    assert_eq!(for_s2.body["answer"]["outcome"], "enrolled");

    gateway.stop().await.expect("stops");
    env.cleanup().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer() {
    let env = TestEnv::new().await;
    let courses = env.add_courses("BAD", 1, 5).await;
    let course = courses[0].as_str();
    let mut settings = config(&env, &env.amqp_url);
    settings.limits.header_timeout = Duration::from_secs(1);
    let (gateway, api) = start(settings).await;
    let s1 = token("s1");

    let cases = [
        (json!({"action": "teleport", "course_id": course}), "action"),
        (
            json!({"action": "enroll", "course_id": "no spaces allowed"}),
            "course_id",
        ),
        (
            json!({"action": "enroll", "course_id": 42}),
            "expected a string",
        ),
        (
            json!({"action": "swap", "course_id": course}),
            "drop_course_id",
        ),
        (json!(["not", "an", "object"]), "JSON object"),
    ];
    for (body, mentions) in cases {
        let reply = api.post(&s1, Some("k"), &[], body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.body
        );
        let detail = reply.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(mentions), "{body}: {detail}");
    }
    let huge = json!({"action": "enroll", "course_id": course, "pad": "x".repeat(10_000)});
    let reply = api.post(&s1, Some("k"), &[], huge).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Headers past the limit, and a client that never finishes its headers.
    let big = "y".repeat(20_000);
    let response = api
        .http
        .get(format!("{}/livez", api.base))
        .header("x-big", big)
        .send()
        .await
        .expect("an answer");
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let mut slow = tokio::net::TcpStream::connect(gateway.local_addr())
        .await
        .expect("connect");
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let began = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "a slow client is cut off");
    assert!(began.elapsed() < Duration::from_secs(5));

    // Unknown course: 404 from the cache, no database query.
    let missing = api
        .call(
            Method::GET,
            "/v1/courses/{course_id}",
            "/v1/courses/NOPE",
            Some(&s1),
            &[],
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let list = api
        .call(
            Method::GET,
            "/v1/courses",
            "/v1/courses",
            Some(&s1),
            &[],
            None,
        )
        .await;
    assert_eq!(list.body["courses"][0]["course_id"], course);
    let one = api
        .call(
            Method::GET,
            "/v1/courses/{course_id}",
            &format!("/v1/courses/{course}"),
            Some(&s1),
            &[],
            None,
        )
        .await;
    assert_eq!(
        (one.body["seats"].as_u64(), one.body["seats_left"].as_u64()),
        (Some(5), Some(5))
    );

    gateway.stop().await.expect("stops");
    env.cleanup().await;
}

#[tokio::test]
async fn a_refresh_storm_is_rate_limited_and_a_lost_or_full_broker_is_503() {
    let mut env = TestEnv::new().await;
    env.topology.max_queue_length = 2;
    let courses = env.add_courses("LIMIT", 1, 5).await;
    let course = courses[0].as_str();
    let broker = env.broker().await;
    broker.declare(&env.topology).await.expect("declare");
    broker.close().await;
    let proxy = seatrush_tools::chaos::proxy_for(&env.amqp_url)
        .await
        .expect("proxy");
    let through = seatrush_tools::chaos::through(&env.amqp_url, proxy.addr());
    let mut settings = config(&env, &through);
    settings.limits.rate_per_second = 1;
    settings.limits.rate_burst = 3;
    let (gateway, api) = start(settings).await;

    let storm = token("storm");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let reply = api.me(Some(&storm)).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            let after: u64 = reply.headers["retry-after"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("seconds");
            assert!((1..=2).contains(&after), "Retry-After {after}");
        }
        statuses.push(reply.status);
    }
    assert_eq!(&statuses[..3], &[StatusCode::OK; 3]);
    assert_eq!(statuses[4], StatusCode::TOO_MANY_REQUESTS);
    // Another student is not held back.
    assert_eq!(api.me(Some(&token("calm"))).await.status, StatusCode::OK);

    // No worker consumes: the partition queue fills at two (a quorum queue checks its limit
    // before it appends, so it may take one more), and the broker nacks the rest.
    let mut answered = Vec::new();
    for i in 0..5 {
        let reply = api
            .post(&token(&format!("f{i}")), Some("k"), &[], enroll(course))
            .await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(reply.headers["retry-after"], "2", "{}", reply.body);
        }
        answered.push(reply.status);
    }
    assert_eq!(&answered[..2], &[StatusCode::ACCEPTED; 2]);
    assert_eq!(answered[4], StatusCode::SERVICE_UNAVAILABLE, "{answered:?}");

    // The broker goes away: 503 at once, never a hang, and the key stays free for the retry.
    proxy.refuse();
    eventually("the gateway notices", Duration::from_secs(30), || async {
        let r = api
            .http
            .get(format!("{}/readyz", api.base))
            .send()
            .await
            .ok()?;
        (r.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    let began = Instant::now();
    let lost = api
        .post(&token("f4"), Some("k-lost"), &[], enroll(course))
        .await;
    assert_eq!(
        lost.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        lost.body
    );
    assert_eq!(lost.headers["retry-after"], "1");
    assert!(began.elapsed() < Duration::from_secs(5));
    proxy.resume();
    env.start_worker(env.worker_config()).await;
    let retried = eventually(
        "the retry goes through",
        Duration::from_secs(30),
        || async {
            let r = api
                .post(
                    &token("f4"),
                    Some("k-lost"),
                    &[("prefer", "wait=10")],
                    enroll(course),
                )
                .await;
            (r.status == StatusCode::OK).then_some(r)
        },
    )
    .await;
    assert_eq!(retried.body["answer"]["outcome"], "enrolled");

    gateway.stop().await.expect("stops");
    env.cleanup().await;
}

#[tokio::test]
async fn an_event_stream_resumes_by_last_event_id_across_a_gateway_restart() {
    let mut env = TestEnv::new().await;
    let courses = env
        .add_courses_with(
            "SSE",
            2,
            CourseSettings {
                capacity: 1,
                waitlist: 5,
                ..CourseSettings::default()
            },
        )
        .await;
    let (seat, full) = (courses[0].as_str(), courses[1].as_str());
    env.start_worker(env.worker_config()).await;
    let (first, api) = start(config(&env, &env.amqp_url)).await;
    let s1 = token("s1");
    let mut stream = api.events(&s1, None).await;

    let enrolled = api.post(&s1, Some("k-seat"), &[], enroll(seat)).await;
    assert_eq!(enrolled.status, StatusCode::ACCEPTED, "{}", enrolled.body);
    let events = stream
        .until(Duration::from_secs(30), |e| {
            e.data["request_id"] == enrolled.body["request_id"]
        })
        .await;
    let last = events.last().expect("an event").clone();
    assert_eq!(
        (last.event.as_str(), last.data["outcome"].as_str()),
        ("final", Some("enrolled"))
    );
    // s0 takes the full course's one seat; s1 waits for it.
    let holder = api
        .post(
            &token("s0"),
            Some("k"),
            &[("prefer", "wait=20")],
            enroll(full),
        )
        .await;
    assert_eq!(holder.body["answer"]["outcome"], "enrolled");
    let waiting = api
        .post(&s1, Some("k-wait"), &[("prefer", "wait=20")], enroll(full))
        .await;
    assert_eq!(waiting.body["answer"]["outcome"], "waitlisted");
    let events = stream
        .until(Duration::from_secs(30), |e| {
            e.data["request_id"] == waiting.body["request_id"]
        })
        .await;
    let before_restart = events.last().expect("an event").id.clone();
    drop(stream);
    first.stop().await.expect("stops");

    // While no gateway runs, s0 drops (over AMQP) and s1 is promoted.
    let mut listener = Listener::new(&env, None).await;
    let drop_it = request(
        "amqp-drop",
        Action::Drop,
        &seatrush_core::domain::CourseId::parse(full).expect("id"),
        "s0",
    );
    listener.send(&[drop_it]).await;
    listener
        .until(Duration::from_secs(30), |l| l.final_count() == 1)
        .await;
    listener.close().await;

    // Another gateway instance; the browser comes back with its last id.
    let (second, api) = start(config(&env, &env.amqp_url)).await;
    let mut resumed = api.events(&s1, Some(&before_restart)).await;
    let events = resumed
        .until(Duration::from_secs(30), |e| e.event == "promoted")
        .await;
    let promoted = events.last().expect("an event");
    assert_eq!(promoted.data["course_id"], full);
    assert_eq!(promoted.data["student_id"], "s1");
    assert_eq!(promoted.data["promoted_by"], "amqp-drop");
    assert!(
        events
            .iter()
            .all(|e| e.id.parse::<i64>().expect("numeric id")
                > before_restart.parse::<i64>().expect("numeric")),
        "nothing before the last id is sent again: {events:?}"
    );
    // From the start, everything of s1's, in order, each once.
    let mut replay = api.events(&s1, Some("0")).await;
    let all = replay
        .until(Duration::from_secs(30), |e| e.event == "promoted")
        .await;
    let ids: Vec<i64> = all.iter().map(|e| e.id.parse().expect("numeric")).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(all.len(), 3, "enrolled, waitlisted, promoted: {all:?}");
    // Another student's stream carries none of s1's events.
    let mut other = api.events(&token("s0"), Some("0")).await;
    let theirs = other
        .until(Duration::from_secs(30), |e| {
            e.data["request_id"] == "amqp-drop"
        })
        .await;
    assert!(
        theirs.iter().all(|e| e.data["student_id"] == "s0"),
        "{theirs:?}"
    );

    drop((resumed, replay, other));
    second.stop().await.expect("stops");
    env.cleanup().await;
}

#[tokio::test]
async fn the_openapi_document_is_served_and_describes_every_route() {
    let env = TestEnv::new().await;
    let (gateway, api) = start(config(&env, &env.amqp_url)).await;
    let served: Value = api
        .http
        .get(format!("{}/v1/openapi.json", api.base))
        .send()
        .await
        .expect("served")
        .json()
        .await
        .expect("JSON");
    assert_eq!(served["openapi"].as_str().map(|v| &v[..3]), Some("3.1"));
    for path in [
        "/v1/requests",
        "/v1/requests/{key}",
        "/v1/events",
        "/v1/courses",
        "/v1/courses/{course_id}",
        "/v1/me",
        "/v1/config",
        "/v1/dev/token",
    ] {
        assert!(
            served["paths"].get(path).is_some(),
            "{path} is not documented"
        );
    }
    // The development issuer is off unless asked for.
    let off = api
        .call(
            Method::POST,
            "/v1/dev/token",
            "/v1/dev/token",
            None,
            &[],
            Some(json!({"sub": "s1"})),
        )
        .await;
    assert_eq!(off.status, StatusCode::NOT_FOUND);
    let settings = api
        .call(Method::GET, "/v1/config", "/v1/config", None, &[], None)
        .await;
    assert_eq!(settings.body["dev_issuer"], false);
    gateway.stop().await.expect("stops");

    // Without any key, a gateway refuses to start.
    let mut keyless = config(&env, &env.amqp_url);
    keyless.auth = AuthConfig {
        admin_claim: "seatrush_admin".into(),
        ..AuthConfig::default()
    };
    let refused = Gateway::start(keyless, CancellationToken::new()).await;
    let error = refused.err().expect("refused without keys");
    assert!(format!("{error:#}").contains("no key"), "{error:#}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_its_answer_when_shutdown_begins_still_gets_it() {
    // Arrange: no worker yet, so a request waits; a gateway stopped by a token of the test.
    let mut env = TestEnv::new().await;
    let courses = env.add_courses("DRAIN", 1, 5).await;
    let course = courses[0].as_str().to_owned();
    let broker = env.broker().await;
    broker.declare(&env.topology).await.expect("declare");
    broker.close().await;
    let shutdown = CancellationToken::new();
    let (gateway, _) = start_until(config(&env, &env.amqp_url), shutdown.clone()).await;
    let waiting = {
        let api = Api::new(gateway.local_addr());
        let body = enroll(&course);
        tokio::spawn(async move {
            api.post(
                &token("s1"),
                Some("k-drain"),
                &[("prefer", "wait=30")],
                body,
            )
            .await
        })
    };
    eventually("the request is published", WAIT, || async {
        let broker = env.broker().await;
        let mut queued = 0;
        for p in 0..env.topology.partitions {
            let queue = env.topology.partition_queue(Partition(p));
            queued += broker.queue_depth(&queue).await.ok()??.ready;
        }
        broker.close().await;
        (queued > 0).then_some(())
    })
    .await;

    // Act: shutdown begins while the request waits; then a worker answers it.
    shutdown.cancel();
    let stopping = tokio::spawn(gateway.stopped());
    env.start_worker(env.worker_config()).await;
    let reply = waiting.await.expect("the waiting request");
    let stopped = stopping.await.expect("the stop");
    env.stop_workers().await;

    // Assert: the request, which asked to wait longer than the gateway's drain, received its
    // final answer from the broker link during the drain (had the link stopped with the
    // listener, the answer would only have been looked up in Postgres at the end of the wait,
    // after the drain had closed the connection), and the gateway stopped.
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["state"], "final", "{}", reply.body);
    assert!(stopped.is_ok(), "{stopped:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_do_not_take_the_places_of_the_requests_being_handled() {
    // Arrange: a gateway that handles two requests at once and waits 2 s for a body.
    let env = TestEnv::new().await;
    let mut limited = config(&env, &env.amqp_url);
    limited.limits.max_in_flight = 2;
    limited.limits.header_timeout = Duration::from_secs(2);
    let (gateway, api) = start(limited).await;

    // Act: three clients, with no token, send the headers of a body and then nothing; a
    // student asks meanwhile.
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(gateway.local_addr())
            .await
            .expect("connect");
        stream
            .write_all(
                b"POST /v1/dev/token HTTP/1.1\r\nHost: gateway\r\n\
                  Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
            )
            .await
            .expect("send the headers");
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let me = api.me(Some(&token("s1"))).await;
    let mut answers = Vec::new();
    for mut stream in slow {
        let mut buffer = vec![0u8; 512];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("an answer within the body's time")
            .expect("read");
        answers.push(String::from_utf8_lossy(&buffer[..read]).into_owned());
    }
    gateway.stop().await.expect("the gateway stops");

    // Assert: the student was served while the slow bodies waited, and each slow body was
    // answered 408 once its time ran out.
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    for answer in &answers {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    env.cleanup().await;
}
