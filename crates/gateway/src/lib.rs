//! seatrush-gateway: the web edge. A stateless HTTP gateway, any number of which can run side by
//! side, between browsers (or any web front end) and the workers.
//!
//! Components, in the order a request meets them:
//! - [`server`]: the listener, connection limits and timeouts, graceful shutdown.
//! - `api`: the routes of `/v1`, their problems (RFC 9457) and the generated OpenAPI document.
//! - `auth`: bearer JWTs (RS256 and ES256 from a JWKS, HS256 from a shared secret) and the
//!   development issuer.
//! - `limits`: in-flight bound and per-student rate limit.
//! - `keys`: idempotency keys, recorded in Postgres in batches before a request is published.
//! - `courier`: the broker link: publish with confirms, one reply queue, answers matched to the
//!   requests waiting for them.
//! - `events`: the students' final events, recorded from the broker into one shared order in
//!   Postgres and streamed to browsers as Server-Sent Events that resume anywhere.
//! - `courses`: the course list, refreshed from Postgres once a second and served from memory.
//! - `page`: the student's page (plain HTML, CSS and JavaScript).
//!
//! What this crate must never depend on: the tooling (`seatrush-tools`), or lapin and SQL of its
//! own: it reaches the broker through `seatrush_core::amqp` and Postgres through
//! `seatrush_core::store`, so the core's invariants hold for the gateway too.

mod api;
mod auth;
pub mod config;
mod courier;
mod courses;
mod events;
mod keys;
mod limits;
mod openapi;
mod page;
pub mod server;

pub use auth::{DevIssuer, TokenClaims, hs256_token};
pub use config::{AuthConfig, GatewayConfig, Limits};
pub use keys::request_id as request_id_of_key;
pub use openapi::openapi_json;
pub use server::{Gateway, run};
