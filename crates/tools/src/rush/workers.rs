//! Worker processes started by a rush, the demo or a test, and what they cost.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use seatrush_core::amqp::Topology;
use seatrush_core::telemetry::metrics::{self, Stage};

/// Where the services are, as passed to worker processes.
#[derive(Debug, Clone)]
pub struct Services {
    pub amqp_url: String,
    pub database_url: String,
    pub topology: Topology,
}

/// CPU time and memory of a process, read from `/proc`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// User plus system CPU time.
    pub cpu: Duration,
    /// Peak resident memory (VmHWM), bytes.
    pub peak_rss: u64,
    /// Current resident memory (VmRSS), bytes.
    pub rss: u64,
}

/// A `seatrush worker` child process.
pub struct WorkerProcess {
    pub worker_id: String,
    pub log: PathBuf,
    /// Where it serves `/livez`, `/readyz` and `/metrics`, if it was given an address.
    pub http_addr: Option<std::net::SocketAddr>,
    child: Child,
}

/// A loopback address with a port that was free a moment ago, for a worker's `--http-addr`.
pub fn free_addr() -> anyhow::Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl WorkerProcess {
    /// Starts `exe worker` against `services`, logging to `log`.
    pub fn start(
        exe: &std::path::Path,
        services: &Services,
        worker_id: &str,
        log: PathBuf,
        extra_args: &[String],
    ) -> anyhow::Result<Self> {
        Self::start_with_env(exe, services, worker_id, log, extra_args, &[])
    }

    /// Like `start`, serving its metrics on a free loopback port (see [`Self::published`]).
    pub fn start_observed(
        exe: &std::path::Path,
        services: &Services,
        worker_id: &str,
        log: PathBuf,
        extra_args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let addr = free_addr()?;
        let mut args = extra_args.to_vec();
        args.extend(["--http-addr".to_owned(), addr.to_string()]);
        let mut worker = Self::start_with_env(exe, services, worker_id, log, &args, env)?;
        worker.http_addr = Some(addr);
        Ok(worker)
    }

    /// What the worker has published and where its CPU went so far, from its `/metrics` and
    /// `/proc`; `None` if it serves no metrics, could not be asked, or is gone.
    pub async fn profile(&self) -> Option<Profile> {
        let addr = self.http_addr?.to_string();
        let (status, body) =
            seatrush_core::worker::health::probe(&addr, "/metrics", Duration::from_secs(5))
                .await
                .ok()?;
        if status != 200 {
            return None;
        }
        let busy = metrics::STAGE_BUSY;
        Some(Profile {
            published: counter_sum(&body, metrics::PUBLISHED),
            stages: Stage::ALL.map(|stage| {
                Duration::from_nanos(counter_sum(
                    &body,
                    &format!("{busy}{{stage=\"{}\"}}", stage.label()),
                ))
            }),
            broker_client: crate::cpu::threads_cpu(self.pid()?, BROKER_CLIENT_THREAD)?,
        })
    }

    /// Like `start`, with extra environment variables (for example `FAILPOINTS` in tests).
    pub fn start_with_env(
        exe: &std::path::Path,
        services: &Services,
        worker_id: &str,
        log: PathBuf,
        extra_args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(exe)
            .arg("worker")
            .arg("--worker-id")
            .arg(worker_id)
            .args(extra_args)
            .env("AMQP_URL", &services.amqp_url)
            .env("DATABASE_URL", &services.database_url)
            .env("SEATRUSH_PREFIX", &services.topology.prefix)
            .env(
                "SEATRUSH_PARTITIONS",
                services.topology.partitions.to_string(),
            )
            .env(
                "SEATRUSH_DELIVERY_LIMIT",
                services.topology.delivery_limit.to_string(),
            )
            .env(
                "SEATRUSH_MAX_QUEUE_LENGTH",
                services.topology.max_queue_length.to_string(),
            )
            .env("SEATRUSH_LANES", services.topology.lanes.join(","))
            // Each worker of a rush would try to bind the same health address; a worker that
            // needs one is given `--http-addr` explicitly.
            .env_remove("SEATRUSH_HTTP_ADDR")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker process")?;
        Ok(Self {
            worker_id: worker_id.to_owned(),
            log,
            http_addr: None,
            child,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// CPU and memory so far; `None` once the process is gone.
    pub fn usage(&self) -> Option<Usage> {
        usage_of(self.pid()?)
    }

    /// Sends a signal to this process (by its pid).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self.pid().context("the worker has already exited")?;
        kill(Pid::from_raw(i32::try_from(pid)?), signal).context("signalling the worker")
    }

    /// Waits up to `within` for the process to end on its own; its exit status if it did.
    pub async fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// SIGTERM, then waits for a clean exit (code 0) within `within`; kills it otherwise.
    pub async fn stop(mut self, within: Duration) -> anyhow::Result<()> {
        if self.child.id().is_some() {
            self.signal(Signal::SIGTERM)?;
        }
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!(
                        "worker {} exited with {status} (log: {})",
                        self.worker_id,
                        self.log.display()
                    );
                }
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("worker {} did not stop within {within:?}", self.worker_id)
            }
        }
    }
}

/// Reads `/proc/<pid>/stat` (the CPU time) and `/proc/<pid>/status` (VmHWM, VmRSS).
pub fn usage_of(pid: u32) -> Option<Usage> {
    let cpu = crate::cpu::stat_fields(pid)?.own;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some(Usage {
        cpu,
        peak_rss: kib("VmHWM:")? * 1024,
        rss: kib("VmRSS:")? * 1024,
    })
}

/// The name the broker client gives the thread it reads and writes the connection on.
const BROKER_CLIENT_THREAD: &str = "lapin-io-loop";

/// What a worker has published and where its CPU went, so far; two of them, taken before and
/// after a crowd, give the crowd's share.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Profile {
    /// Messages published (a batch of answers counts once).
    pub published: u64,
    /// Time busy in each stage, in the order of `Stage::ALL`.
    pub stages: [Duration; Stage::ALL.len()],
    /// CPU time of the broker client's own thread.
    pub broker_client: Duration,
}

impl Profile {
    /// What happened between `before` and this one.
    pub fn since(&self, before: &Profile) -> Profile {
        self.zip_with(before, Duration::saturating_sub, u64::saturating_sub)
    }

    /// Two workers' together.
    pub fn plus(&self, other: &Profile) -> Profile {
        self.zip_with(other, |a, b| a + b, |a, b| a + b)
    }

    /// Each figure of this one and `other` combined, times by `time` and counts by `count`.
    fn zip_with(
        &self,
        other: &Profile,
        time: fn(Duration, Duration) -> Duration,
        count: fn(u64, u64) -> u64,
    ) -> Profile {
        let mut stages = self.stages;
        for (stage, theirs) in stages.iter_mut().zip(other.stages) {
            *stage = time(*stage, theirs);
        }
        Profile {
            published: count(self.published, other.published),
            stages,
            broker_client: time(self.broker_client, other.broker_client),
        }
    }
}

/// The sum of every series of the counter `name` in a Prometheus text exposition; `name` may
/// carry its labels (`name{label="value"}`) to sum only that series.
fn counter_sum(exposition: &str, name: &str) -> u64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let matches = if name.contains('{') {
                series == name
            } else {
                series.split('{').next()? == name
            };
            matches.then(|| value.parse::<f64>().ok())?
        })
        .sum::<f64>() as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_a_usage() {
        let usage = super::usage_of(std::process::id()).expect("own /proc entry");
        assert!(usage.peak_rss >= usage.rss && usage.rss > 0);
    }

    #[test]
    fn a_counter_is_summed_over_its_series_and_nothing_else() {
        let exposition = "# TYPE seatrush_published_messages_total counter\n\
            seatrush_published_messages_total{kind=\"reply\"} 12\n\
            seatrush_published_messages_total{kind=\"event\"} 3\n\
            seatrush_published_messages_totally 100\n\
            seatrush_requests_total{action=\"enroll\"} 7\n";
        assert_eq!(
            super::counter_sum(exposition, "seatrush_published_messages_total"),
            15
        );
        assert_eq!(
            super::counter_sum(
                exposition,
                "seatrush_published_messages_total{kind=\"event\"}"
            ),
            3
        );
    }

    #[test]
    fn this_process_has_threads_of_its_name_and_none_of_another() {
        // The test harness runs each test on a thread named after the test.
        let me = std::thread::current().name().map(str::to_owned);
        let pid = std::process::id();
        assert_eq!(
            crate::cpu::threads_cpu(pid, "no-thread-is-called-this"),
            Some(std::time::Duration::ZERO)
        );
        if let Some(name) = me {
            // /proc shows a thread's name cut to 15 bytes.
            let shown: String = name.chars().take(15).collect();
            let spin = std::time::Instant::now();
            while spin.elapsed() < std::time::Duration::from_millis(50) {
                std::hint::black_box(0u64);
            }
            assert!(
                crate::cpu::threads_cpu(pid, &shown)
                    .is_some_and(|cpu| cpu > std::time::Duration::ZERO)
            );
        }
    }

    #[test]
    fn a_profile_subtracts_and_adds_stage_by_stage() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        let before = super::Profile {
            published: 2,
            stages: [ms(1); 8],
            broker_client: ms(3),
        };
        let after = super::Profile {
            published: 5,
            stages: [ms(4); 8],
            broker_client: ms(10),
        };
        let crowd = after.since(&before);
        assert_eq!(crowd.published, 3);
        assert_eq!(crowd.stages, [ms(3); 8]);
        assert_eq!(crowd.broker_client, ms(7));
        let two = crowd.plus(&crowd);
        assert_eq!(
            (two.published, two.stages[6], two.broker_client),
            (6, ms(6), ms(14))
        );
    }
}
