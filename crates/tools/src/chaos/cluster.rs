//! The faults of a replicated broker and database, injected through the operator's control
//! commands: `seatrush chaos` cannot kill a node of a cluster it does not run, so it is told a
//! command for each, and runs `<command> <verb> [member]` through `sh -c`.
//!
//! The contract (members are numbered from 1, as the URLs list them):
//!
//! | verb | what it does | prints |
//! |---|---|---|
//! | `busiest-broker-node` | | the node leading the most partition queues |
//! | `kill-broker-node N` | SIGKILL of node N, as a machine lost | |
//! | `start-broker-node N` | starts node N; returns once it has rejoined | |
//! | `stop-broker-node N` | stops node N gracefully | |
//! | `isolate-broker-node N` | cuts node N off from the other nodes | |
//! | `heal-broker-node N` | reconnects node N | |
//! | `db-primary` | | the member that takes writes |
//! | `kill-db-member N` | SIGKILL of member N's server | |
//! | `promote-db-member N` | promotes standby N | |
//! | `rejoin-db-member N` | makes member N a standby of the primary again | |
//!
//! `scripts/services.sh` implements it for the clusters it starts on loopback.

use std::process::Stdio;

use anyhow::{Context, bail};

/// One cluster's control command.
#[derive(Debug, Clone)]
pub struct Control {
    command: String,
}

impl Control {
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
        }
    }

    /// Runs `<command> <verb> [member]` and returns what it printed; its own messages (on
    /// stderr) are shown only when it fails.
    pub async fn run(&self, verb: &str, member: Option<usize>) -> anyhow::Result<String> {
        let line = match member {
            Some(n) => format!("{} {verb} {n}", self.command),
            None => format!("{} {verb}", self.command),
        };
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&line)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running `{line}`"))?;
        if !out.status.success() {
            bail!(
                "`{line}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a verb that prints a member's number, and reads it.
    pub async fn member(&self, verb: &str) -> anyhow::Result<usize> {
        let printed = self.run(verb, None).await?;
        printed
            .trim()
            .parse()
            .with_context(|| format!("`{verb}` printed {printed:?}, not a member's number"))
    }
}

/// The number of hosts a URL's authority lists (`postgres://u@h1:5432,h2:5432/db` has two).
pub fn host_count(url: &str) -> usize {
    super::authority(url).split(',').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_counted_from_the_authority() {
        assert_eq!(host_count("postgres://u:p@h1:5432,h2:5433/db"), 2);
        assert_eq!(host_count("postgres://u:p@127.0.0.1:5432/db?x=1,2"), 1);
        assert_eq!(host_count("postgres:///db"), 1);
    }

    #[tokio::test]
    async fn a_member_number_is_read_and_a_failure_carries_the_commands_message() {
        let control = Control::new("printf");
        assert_eq!(control.member("' 2\\n'").await.expect("a number"), 2);
        let failing = Control::new("sh -c 'echo the node is gone >&2; exit 3' --");
        let error = failing
            .run("kill-broker-node", Some(1))
            .await
            .expect_err("a failure");
        assert!(
            format!("{error:#}").contains("the node is gone"),
            "{error:#}"
        );
        assert!(Control::new("echo").member("x").await.is_err());
    }
}
