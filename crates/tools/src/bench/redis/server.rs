//! A Redis server of the crash run's own, run by `scripts/services.sh` (start-redis,
//! kill-redis, stop-redis) on a free loopback port with its own state directory, so killing it
//! touches nobody else's server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use super::Fsync;

/// How long one services.sh command may take (a start waits for the AOF to load).
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// Where the crash run's own server is run from.
#[derive(Debug, Clone, Copy)]
pub struct OwnServer<'a> {
    /// `scripts/services.sh` of a checkout.
    pub services_script: &'a Path,
    /// The state directory the server lives in (`SEATRUSH_SERVICES_DIR`); it stays after the
    /// run, with the server's log and append-only file.
    pub state_dir: &'a Path,
}

/// A running server of our own.
pub(super) struct Running {
    script: PathBuf,
    dir: PathBuf,
    port: u16,
    fsync: Fsync,
}

impl Running {
    /// Starts a server on a free port with the given fsync policy, which it keeps across
    /// restarts (it is written into its configuration).
    pub async fn start(own: OwnServer<'_>, fsync: Fsync) -> anyhow::Result<Self> {
        let server = Self {
            script: own.services_script.to_owned(),
            dir: own.state_dir.to_owned(),
            port: free_port()?,
            fsync,
        };
        server.services("start-redis").await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL by the recorded pid: no shutdown, no last sync of the AOF.
    pub async fn kill(&self) -> anyhow::Result<()> {
        self.services("kill-redis").await
    }

    /// Starts the server again on the same port and state; it replays its AOF.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        self.services("start-redis").await
    }

    /// Stops the server (SIGTERM by its pid).
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.services("stop-redis").await
    }

    /// Runs one services.sh command against this server, bounded in time; its messages are
    /// part of the error when it fails.
    async fn services(&self, command: &str) -> anyhow::Result<()> {
        let run = tokio::process::Command::new(&self.script)
            .arg(command)
            .env("SEATRUSH_SERVICES_DIR", &self.dir)
            .env("SEATRUSH_REDIS_PORT", self.port.to_string())
            .env("SEATRUSH_REDIS_FSYNC", self.fsync.as_config())
            // start-redis always starts the private server, but nothing should suggest that a
            // caller's REDIS_URL is in play.
            .env_remove("REDIS_URL")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(COMMAND_LIMIT, run)
            .await
            .with_context(|| format!("services.sh {command}: no result within {COMMAND_LIMIT:?}"))?
            .with_context(|| format!("running {} {command}", self.script.display()))?;
        if !output.status.success() {
            bail!(
                "services.sh {command} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

/// A loopback port nobody listens on now (the kernel's choice); services.sh refuses it if
/// another process takes it in between.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .context("finding a free loopback port for the crash run's Redis")?;
    Ok(listener.local_addr()?.port())
}
