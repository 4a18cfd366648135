//! Servers and endpoints tests run against: a PostgreSQL or RabbitMQ server of a test's own
//! (to stop and restart it without harming anything else), and a worker's health endpoint.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use seatrush_core::worker::health::Readiness;

/// Where the servers of a test listen: below the kernel's ephemeral ports (32768 and up), which
/// an outgoing connection may hold by the time a server starts or restarts.
const PORTS: std::ops::Range<u16> = 21000..32000;
/// How far under its AMQP port a broker node's Erlang distribution listens
/// (`scripts/services.sh`).
const DISTRIBUTION_BELOW: u16 = 10000;

/// A loopback address with a port nobody listens on (a moment ago).
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

/// `GET /readyz` on the worker's health endpoint; `None` while it does not answer.
pub async fn readyz(addr: SocketAddr) -> Option<Readiness> {
    let (status, body) =
        seatrush_core::worker::health::probe(&addr.to_string(), "/readyz", Duration::from_secs(2))
            .await
            .ok()?;
    let value: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    let readiness = Readiness {
        ready: value["ready"].as_bool()?,
        broker: value["broker"].as_bool()?,
        database: value["database"].as_bool()?,
    };
    assert_eq!(
        status == 200,
        readiness.ready,
        "status and body agree: {status} {body}"
    );
    Some(readiness)
}

/// Waits until `/readyz` says `ready`; returns what it said.
pub async fn wait_ready(addr: SocketAddr, ready: bool) -> Readiness {
    let what = format!("/readyz says ready = {ready}");
    crate::helpers::eventually(&what, crate::helpers::WAIT, || async {
        readyz(addr).await.filter(|r| r.ready == ready)
    })
    .await
}

/// Which server a test runs of its own.
#[derive(Clone, Copy)]
pub enum Kind {
    Database,
    Broker,
}

/// A PostgreSQL or RabbitMQ server of this test's own, started with `scripts/services.sh` on a
/// free port and a state directory of its own, so it can be restarted without harming anything
/// else.
pub struct OwnServer {
    place: Place,
    pub url: String,
    /// With TLS: the broker's `amqps://` URL.
    pub amqps_url: Option<String>,
    /// With TLS: the CA that signed the server's certificate.
    pub tls_ca: Option<String>,
}

/// Where a server of a test's own runs, and how `scripts/services.sh` is told so.
#[derive(Clone)]
struct Place {
    kind: Kind,
    port: u16,
    dir: std::path::PathBuf,
    /// Whether it also serves TLS (`SEATRUSH_TLS=1`).
    tls: bool,
}

impl Place {
    fn script(&self, verb: &str) -> std::process::Output {
        let (what, port_var) = match self.kind {
            Kind::Database => ("db", "SEATRUSH_PG_PORT"),
            Kind::Broker => ("broker", "SEATRUSH_AMQP_PORT"),
        };
        let command = format!("{verb}-{what}");
        let out =
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh"))
                .arg(&command)
                .env_remove("AMQP_URL")
                .env_remove("DATABASE_URL")
                .env("SEATRUSH_SERVICES_DIR", &self.dir)
                .env("SEATRUSH_TLS", if self.tls { "1" } else { "0" })
                .env(port_var, self.port.to_string())
                .output()
                .unwrap_or_else(|e| panic!("scripts/services.sh {command}: {e}"));
        assert!(out.status.success() || verb == "stop", "{command}: {out:?}");
        out
    }
}

impl OwnServer {
    fn script(&self, verb: &str) -> std::process::Output {
        self.place.script(verb)
    }

    /// A port that is free, and (for a broker) whose Erlang distribution port,
    /// [`DISTRIBUTION_BELOW`] under it, is free too.
    fn pick_port(kind: Kind) -> u16 {
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        for _ in 0..200 {
            let port: u16 = rand::random_range(PORTS);
            // A broker also takes port + 1 (its TLS listener) and its Erlang distribution port.
            if free(port)
                && (matches!(kind, Kind::Database)
                    || (free(port + 1) && free(port - DISTRIBUTION_BELOW)))
            {
                return port;
            }
        }
        panic!("no free port pair found")
    }

    pub fn start(kind: Kind) -> Self {
        Self::start_with(kind, false)
    }

    /// A server that also serves TLS, with a CA of its own.
    pub fn start_tls(kind: Kind) -> Self {
        Self::start_with(kind, true)
    }

    fn start_with(kind: Kind, tls: bool) -> Self {
        let port = Self::pick_port(kind);
        let dir = std::env::temp_dir().join(format!("seatrush-it/own-server-{port}"));
        let mut server = Self {
            place: Place {
                kind,
                port,
                dir,
                tls,
            },
            url: String::new(),
            amqps_url: None,
            tls_ca: None,
        };
        let out = server.script("start");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let var = match kind {
            Kind::Database => "export DATABASE_URL=",
            Kind::Broker => "export AMQP_URL=",
        };
        server.url = stdout
            .lines()
            .find_map(|l| l.strip_prefix(var))
            .unwrap_or_else(|| panic!("no URL from the start command: {stdout}"))
            .trim_matches('\'')
            .to_owned();
        let exported = |var: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(var))
                .map(|v| v.trim_matches('\'').to_owned())
        };
        server.amqps_url = exported("export AMQPS_URL=");
        server.tls_ca = exported("export SEATRUSH_TLS_CA=");
        server
    }

    /// Stops the server (a database: immediately).
    pub fn stop(&self) {
        self.script("stop");
    }

    /// Starts the stopped server again, on the same port and state.
    pub fn start_again(&self) {
        self.script("start");
    }

    /// Stops the server (a database: immediately, with crash recovery on start) and starts it
    /// again; returns how long that took.
    pub async fn restart(&self) -> Duration {
        let start = Instant::now();
        let place = self.place.clone();
        tokio::task::spawn_blocking(move || place.script("restart"))
            .await
            .expect("restart task");
        start.elapsed()
    }
}

impl Drop for OwnServer {
    /// Stops the server and removes its state, except after a failure: then its logs stay and
    /// the test's output says where.
    fn drop(&mut self) {
        self.script("stop");
        if std::thread::panicking() {
            eprintln!(
                "this test's own server kept its state and logs in {}",
                self.place.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.place.dir);
        }
    }
}

/// A RabbitMQ cluster of this test's own (`SEATRUSH_BROKER_NODES`), on consecutive free ports
/// and a state directory of its own, whose nodes the test kills, restarts and cuts off.
pub struct OwnCluster {
    place: Scripted,
    /// Every node's URL, comma-separated, as `AMQP_URL` takes them.
    pub url: String,
}

/// Where a test's cluster or database pair runs, and how `scripts/services.sh` is told so.
#[derive(Clone)]
struct Scripted {
    dir: std::path::PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Scripted {
    /// Runs the script; a failure of anything but a stop fails the test.
    fn script(&self, args: &[&str]) -> std::process::Output {
        let out = self.output(args);
        assert!(
            out.status.success() || args[0].starts_with("stop-"),
            "{args:?}: {out:?}"
        );
        out
    }

    fn output(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh"))
            .args(args)
            .env_remove("AMQP_URL")
            .env_remove("DATABASE_URL")
            .env("SEATRUSH_SERVICES_DIR", &self.dir)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap_or_else(|e| panic!("scripts/services.sh {args:?}: {e}"))
    }

    async fn run(&self, args: &[&str]) -> std::process::Output {
        let place = self.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            place.script(&args)
        })
        .await
        .expect("script task")
    }

    /// The command line that runs the script on these servers, as `seatrush chaos` is given
    /// it (`--broker-control`, `--database-control`).
    fn control_command(&self) -> String {
        let mut line = format!(
            "env -u AMQP_URL -u DATABASE_URL SEATRUSH_SERVICES_DIR={}",
            self.dir.display()
        );
        for (var, value) in &self.env {
            line.push_str(&format!(" {var}={value}"));
        }
        line.push_str(concat!(
            " ",
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/services.sh"
        ));
        line
    }

    /// Starts with `verb` and returns the URL exported as `var`. If the start fails part-way,
    /// what it did start is stopped with `stop` before the test fails (its state and logs
    /// stay for the failure's cause).
    fn start(&self, verb: &str, stop: &str, var: &str) -> String {
        let out = self.output(&[verb]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let url = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("export {var}=")))
            .filter(|_| out.status.success());
        match url {
            Some(url) => url.to_owned(),
            None => {
                self.output(&[stop]);
                panic!(
                    "{verb} failed, what it started is stopped, its state and logs are in {}: {out:?}",
                    self.dir.display()
                )
            }
        }
    }

    /// Stops with `verb` and removes the state, except after a failure: then its logs stay
    /// and the test's output says where.
    fn stop_and_remove(&self, verb: &str) {
        self.script(&[verb]);
        if std::thread::panicking() {
            eprintln!(
                "this test's own servers kept their state and logs in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A run of `count` consecutive free ports, each with its Erlang distribution port
/// ([`DISTRIBUTION_BELOW`] under it) free too when `distribution`.
fn free_run(count: u16, distribution: bool) -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    (0..200)
        .map(|_| rand::random_range(PORTS))
        .find(|&base| {
            (0..count)
                .all(|i| free(base + i) && (!distribution || free(base + i - DISTRIBUTION_BELOW)))
        })
        .expect("no free run of ports")
}

impl OwnCluster {
    pub fn start(nodes: usize) -> Self {
        let base = free_run(nodes as u16, true);
        let place = Scripted {
            dir: std::env::temp_dir().join(format!("seatrush-it/own-cluster-{base}")),
            env: vec![
                ("SEATRUSH_BROKER_NODES", nodes.to_string()),
                ("SEATRUSH_AMQP_PORT", base.to_string()),
            ],
        };
        let url = place.start("start-broker", "stop-broker", "AMQP_URL");
        Self { place, url }
    }

    async fn script(&self, args: &[&str]) -> std::process::Output {
        self.place.run(args).await
    }

    /// The node (1-based) that leads the most queues.
    pub async fn busiest_leader(&self) -> usize {
        let out = self.script(&["busiest-broker-node"]).await;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no node number: {out:?}"))
    }

    /// The command that controls this cluster's nodes, for `seatrush chaos --broker-control`.
    pub fn control_command(&self) -> String {
        self.place.control_command()
    }

    /// SIGKILL of node `node`'s VM (1-based), as a machine lost.
    pub async fn kill(&self, node: usize) {
        self.script(&["kill-broker-node", &node.to_string()]).await;
    }

    /// Starts node `node` again; it rejoins the cluster. Returns how long that took.
    pub async fn start_node(&self, node: usize) -> Duration {
        let began = Instant::now();
        self.script(&["start-broker-node", &node.to_string()]).await;
        began.elapsed()
    }

    /// Stops node `node` gracefully.
    pub async fn stop_node(&self, node: usize) {
        self.script(&["stop-broker-node", &node.to_string()]).await;
    }

    /// Cuts node `node` off from the others.
    pub async fn isolate(&self, node: usize) {
        self.script(&["isolate-broker-node", &node.to_string()])
            .await;
    }

    /// Reconnects node `node` to the others.
    pub async fn heal(&self, node: usize) {
        self.script(&["heal-broker-node", &node.to_string()]).await;
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.place.stop_and_remove("stop-broker");
    }
}

/// A PostgreSQL primary with a synchronous streaming standby of this test's own
/// (`SEATRUSH_PG_STANDBY=1`), whose members the test kills, promotes and rejoins.
pub struct OwnPgPair {
    place: Scripted,
    /// Both members, in libpq's multi-host form, as `DATABASE_URL` takes them.
    pub url: String,
}

impl OwnPgPair {
    pub fn start() -> Self {
        let base = free_run(2, false);
        let place = Scripted {
            dir: std::env::temp_dir().join(format!("seatrush-it/own-pg-pair-{base}")),
            env: vec![
                ("SEATRUSH_PG_STANDBY", "1".to_owned()),
                ("SEATRUSH_PG_PORT", base.to_string()),
            ],
        };
        let url = place.start("start-db", "stop-db", "DATABASE_URL");
        Self { place, url }
    }

    /// The command that controls this pair, for `seatrush chaos --database-control`.
    pub fn control_command(&self) -> String {
        self.place.control_command()
    }

    /// The member (1 or 2) that takes writes.
    pub async fn primary(&self) -> usize {
        let out = self.place.run(&["db-primary"]).await;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a member number")
    }

    /// SIGKILL of a member's postmaster and its processes.
    pub async fn kill(&self, member: usize) {
        self.place
            .run(&["kill-db-member", &member.to_string()])
            .await;
    }

    /// Promotes a standby; returns how long that took.
    pub async fn promote(&self, member: usize) -> Duration {
        let began = Instant::now();
        self.place
            .run(&["promote-db-member", &member.to_string()])
            .await;
        began.elapsed()
    }

    /// Makes a member a standby of the current primary again.
    pub async fn rejoin(&self, member: usize) {
        self.place
            .run(&["rejoin-db-member", &member.to_string()])
            .await;
    }
}

impl Drop for OwnPgPair {
    fn drop(&mut self) {
        self.place.stop_and_remove("stop-db");
    }
}
