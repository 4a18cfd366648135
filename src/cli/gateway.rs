//! `seatrush gateway`: the web edge's flags, with environment fallbacks like the worker's.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;
use seatrush_gateway::{AuthConfig, GatewayConfig, Limits};
use tokio_util::sync::CancellationToken;

use super::common::Common;
use super::parse::at_least;
use super::worker::cancel_on_signal;

#[derive(Args)]
pub struct GatewayArgs {
    /// Address to listen on.
    #[arg(long, env = "SEATRUSH_GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// A JWKS with the RS256 and ES256 keys tokens are signed with: a file path or an
    /// http(s) URL (refetched every 5 minutes).
    #[arg(long, env = "SEATRUSH_JWKS")]
    jwks: Option<String>,
    /// A shared secret (at least 32 bytes) for HS256 tokens.
    #[arg(long, env = "SEATRUSH_JWT_HS256_SECRET", hide_env_values = true)]
    jwt_hs256_secret: Option<String>,
    /// The issuer (`iss`) every token must name.
    #[arg(long, env = "SEATRUSH_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// The audience (`aud`) every token must name.
    #[arg(long, env = "SEATRUSH_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// The claim that marks admins: NAME (the claim is true) or NAME=VALUE (the claim is
    /// VALUE, or a list holding it).
    #[arg(long, env = "SEATRUSH_ADMIN_CLAIM", default_value = "seatrush_admin")]
    admin_claim: String,
    /// Sign tokens for any student at POST /v1/dev/token (with the HS256 secret if given,
    /// else one of this process). For demos only: anyone can sign in as anyone.
    #[arg(long, env = "SEATRUSH_DEV_ISSUER")]
    dev_issuer: bool,
    /// Requests handled at once; past it, 503.
    #[arg(long, env = "SEATRUSH_GATEWAY_MAX_IN_FLIGHT", default_value_t = Limits::default().max_in_flight, value_parser = at_least::<usize>(1))]
    max_in_flight: usize,
    /// Event streams open at once; past it, 503.
    #[arg(long, env = "SEATRUSH_GATEWAY_MAX_STREAMS", default_value_t = Limits::default().max_streams, value_parser = at_least::<usize>(1))]
    max_streams: usize,
    /// Connections open at once; past it, new ones wait.
    #[arg(long, env = "SEATRUSH_GATEWAY_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections, value_parser = at_least::<usize>(1))]
    max_connections: usize,
    /// Requests per second one student may make, on average.
    #[arg(long, env = "SEATRUSH_GATEWAY_RATE", default_value_t = Limits::default().rate_per_second, value_parser = at_least::<u32>(1))]
    rate: u32,
    /// Requests one student may make in a burst.
    #[arg(long, env = "SEATRUSH_GATEWAY_BURST", default_value_t = Limits::default().rate_burst, value_parser = at_least::<u32>(1))]
    burst: u32,
    /// Days idempotency keys and students' events are kept.
    #[arg(long, env = "SEATRUSH_GATEWAY_RETENTION_DAYS", default_value_t = Limits::default().retention_days, value_parser = at_least::<u32>(1))]
    retention_days: u32,
}

pub async fn run(common: &Common, args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let config = GatewayConfig {
        listen: args.listen,
        amqp_url: common.amqp_url()?,
        database_url: common.database_url()?,
        prefix: common.prefix.clone(),
        auth: AuthConfig {
            jwks: args.jwks,
            hs256_secret: args.jwt_hs256_secret,
            issuer: args.jwt_issuer,
            audience: args.jwt_audience,
            admin_claim: args.admin_claim,
            dev_issuer: args.dev_issuer,
            jwks_refresh: std::time::Duration::from_secs(300),
        },
        limits: Limits {
            max_in_flight: args.max_in_flight,
            max_streams: args.max_streams,
            max_connections: args.max_connections,
            rate_per_second: args.rate,
            rate_burst: args.burst,
            retention_days: args.retention_days,
            ..Limits::default()
        },
    };
    let shutdown = CancellationToken::new();
    cancel_on_signal(&shutdown)?;
    seatrush_gateway::run(config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
