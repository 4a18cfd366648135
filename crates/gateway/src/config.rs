//! The gateway's configuration, passed in whole by the binary (no globals).

use std::net::SocketAddr;
use std::time::Duration;

/// Everything a gateway instance needs.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub amqp_url: String,
    pub database_url: String,
    /// The workers' name prefix (`seatrush`).
    pub prefix: String,
    pub auth: AuthConfig,
    pub limits: Limits,
}

/// How bearer tokens are checked.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// A JWKS document: a file path, or an `http(s)://` URL fetched at start and every
    /// `jwks_refresh`.
    pub jwks: Option<String>,
    /// A shared secret for HS256 tokens (small setups).
    pub hs256_secret: Option<String>,
    /// The `iss` every token must carry, if set.
    pub issuer: Option<String>,
    /// The `aud` every token must carry, if set.
    pub audience: Option<String>,
    /// The claim that marks an admin: `NAME` (the claim is `true`) or `NAME=VALUE` (the claim
    /// is VALUE, or an array holding it).
    pub admin_claim: String,
    /// Serves `POST /v1/dev/token`, which signs a token for any student: for the demo only.
    pub dev_issuer: bool,
    pub jwks_refresh: Duration,
}

/// What one instance takes on at once, and how long it waits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests (not event streams) handled at once; past it, 503 at once.
    pub max_in_flight: usize,
    /// Event streams open at once; past it, 503.
    pub max_streams: usize,
    /// Connections open at once; past it, new ones wait to be accepted.
    pub max_connections: usize,
    /// Requests a student may make per second on average, and in one burst.
    pub rate_per_second: u32,
    pub rate_burst: u32,
    /// How long `POST /v1/requests` waits for the provisional answer before answering
    /// `pending`.
    pub provisional_wait: Duration,
    /// The longest `Prefer: wait=N` honoured.
    pub max_wait: Duration,
    /// A client must send its request headers within this, and then the body of a request
    /// that takes one (the body is read whole before the request takes an in-flight place).
    pub header_timeout: Duration,
    /// Keys and events are kept this many days.
    pub retention_days: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_in_flight: 4096,
            max_streams: 20_000,
            max_connections: 30_000,
            rate_per_second: 10,
            rate_burst: 30,
            provisional_wait: Duration::from_secs(2),
            max_wait: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            retention_days: 7,
        }
    }
}
