//! Where a design's CPU goes: the CPU time of each server process (the broker, the database,
//! Redis), of this process itself (the crowd and, for the bench's naive and Redis designs, their
//! clients) and of seatrush's workers, read from `/proc` around one run.
//!
//! A server is found by the loopback port its URL names: the process that listens on it, and
//! every process below it (PostgreSQL serves each connection from a child process).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// The processes to watch, by role.
#[derive(Debug, Clone, Default)]
pub struct Servers {
    pub broker: Vec<u32>,
    pub database: Vec<u32>,
    pub redis: Vec<u32>,
}

/// CPU per request, in µs, by process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuShare {
    pub broker: f64,
    pub database: f64,
    pub redis: f64,
    /// The bench process: the crowd, and the naive and Redis designs' clients and writer.
    pub bench: f64,
    /// seatrush's worker processes (for seatrush only; the rush measures them itself).
    pub workers: f64,
}

/// CPU times taken at the start of a run.
pub struct Before {
    servers: Servers,
    broker: Duration,
    database: Duration,
    redis: Duration,
    bench: Duration,
}

impl Servers {
    /// The listeners of the ports in these URLs (`host:port` after `@` or `//`).
    pub fn of(amqp_url: &str, database_url: &str, redis_url: &str) -> Self {
        let table = Listeners::read();
        let find = |url: &str| port_of(url).map(|p| table.tree_of(p)).unwrap_or_default();
        Self {
            broker: find(amqp_url),
            database: find(database_url),
            redis: find(redis_url),
        }
    }

    /// Samples the CPU time so far; PostgreSQL's connection processes come and go, so the
    /// process tree is read again at each sample.
    pub fn before(&self) -> Before {
        Before {
            broker: cpu_of(&self.broker),
            database: cpu_of(&descendants_of(&self.database)),
            redis: cpu_of(&self.redis),
            bench: own_cpu(),
            servers: self.clone(),
        }
    }
}

impl Before {
    /// Another sample of the same processes.
    pub fn sample(&self) -> Before {
        self.servers.before()
    }

    /// The CPU each process spent since `self`, per request, with `workers` the workers'
    /// own CPU over the same run.
    pub fn per_request(&self, requests: usize, workers: Option<Duration>) -> CpuShare {
        self.share_until(&self.sample(), requests, workers)
    }

    /// The CPU each process spent from `self` to `after`, per request.
    pub fn share_until(
        &self,
        after: &Before,
        requests: usize,
        workers: Option<Duration>,
    ) -> CpuShare {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / requests.max(1) as f64;
        let spent = |now: Duration, then: Duration| us(now.saturating_sub(then));
        CpuShare {
            broker: spent(after.broker, self.broker),
            database: spent(after.database, self.database),
            redis: spent(after.redis, self.redis),
            bench: spent(after.bench, self.bench),
            workers: workers.map_or(0.0, us),
        }
    }
}

/// The port in a URL such as `amqp://u:p@127.0.0.1:25673/%2f`.
fn port_of(url: &str) -> Option<u16> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    host_port.rsplit_once(':')?.1.parse().ok()
}

/// Listening TCP sockets and their owners.
struct Listeners {
    /// Listening port → socket inodes.
    inodes: HashMap<u16, HashSet<u64>>,
}

impl Listeners {
    fn read() -> Self {
        let mut inodes: HashMap<u16, HashSet<u64>> = HashMap::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(text) = std::fs::read_to_string(table) else {
                continue;
            };
            for line in text.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // local_address, state 0A = LISTEN, inode.
                let (Some(local), Some(&"0A"), Some(inode)) =
                    (fields.get(1), fields.get(3), fields.get(9))
                else {
                    continue;
                };
                let port = local
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
                if let (Some(port), Ok(inode)) = (port, inode.parse()) {
                    inodes.entry(port).or_default().insert(inode);
                }
            }
        }
        Self { inodes }
    }

    /// The process that listens on `port`, and every process below it.
    fn tree_of(&self, port: u16) -> Vec<u32> {
        let Some(wanted) = self.inodes.get(&port) else {
            return Vec::new();
        };
        let owners: Vec<u32> = pids().filter(|&pid| owns_socket(pid, wanted)).collect();
        descendants_of(&owners)
    }
}

fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

fn owns_socket(pid: u32, inodes: &HashSet<u64>) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|target| {
                let t = target.to_str()?;
                t.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            })
            .is_some_and(|inode| inodes.contains(&inode))
    })
}

/// `roots` and every process whose ancestry leads to one of them.
fn descendants_of(roots: &[u32]) -> Vec<u32> {
    let parents: HashMap<u32, u32> = pids()
        .filter_map(|pid| Some((pid, stat_fields(pid)?.parent)))
        .collect();
    let mut tree: Vec<u32> = roots.to_vec();
    let mut grew = true;
    // Bounded by the number of processes: each pass adds at least one or stops.
    while grew && tree.len() <= parents.len() {
        grew = false;
        for (&pid, parent) in &parents {
            if tree.contains(parent) && !tree.contains(&pid) {
                tree.push(pid);
                grew = true;
            }
        }
    }
    tree
}

pub(crate) struct Stat {
    parent: u32,
    /// Its own CPU time (user + system).
    pub own: Duration,
    /// Its children's that ended and were waited for.
    reaped: Duration,
}

/// The parent and the user + system CPU time of a process and its reaped children, from
/// `/proc/<pid>/stat`.
pub(crate) fn stat_fields(pid: u32) -> Option<Stat> {
    stat_at(Path::new(&format!("/proc/{pid}/stat")))
}

/// The CPU time of the threads of process `pid` whose name is `name` (from
/// `/proc/<pid>/task/<tid>/comm` and `stat`); `None` if the process is gone.
pub(crate) fn threads_cpu(pid: u32, name: &str) -> Option<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .flatten()
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == name)
            })
            .filter_map(|task| stat_at(&task.path().join("stat")))
            .map(|stat| stat.own)
            .sum(),
    )
}

/// The fields of a `stat` file of `/proc` (a process's, or one of its threads').
fn stat_at(path: &Path) -> Option<Stat> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may contain spaces: split after it.
    let after = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // Its own time, and that of its children that ended and were waited for: PostgreSQL's
    // connection processes end with their pool, and their time then moves to the postmaster.
    // A live process is in no one's children's time, so summing over a tree counts each once.
    let (utime, stime, cutime, cstime) = (ticks(11)?, ticks(12)?, ticks(13)?, ticks(14)?);
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100);
    let time = |ticks: u64| Duration::from_micros(ticks * 1_000_000 / per_second);
    Some(Stat {
        parent: fields.get(1)?.parse().ok()?,
        own: time(utime + stime),
        reaped: time(cutime + cstime),
    })
}

/// The CPU time of a tree of processes, with that of their members that ended.
fn cpu_of(pids: &[u32]) -> Duration {
    pids.iter()
        .filter_map(|&pid| stat_fields(pid))
        .map(|s| s.own + s.reaped)
        .sum()
}

/// This process's own CPU time: not its children's (seatrush's workers are its children, and
/// are counted apart).
fn own_cpu() -> Duration {
    stat_fields(std::process::id()).map_or(Duration::ZERO, |s| s.own)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_from_every_kind_of_url() {
        assert_eq!(
            port_of("amqp://guest:guest@127.0.0.1:25673/%2f"),
            Some(25673)
        );
        assert_eq!(
            port_of("postgres://seatrush@127.0.0.1:25432/seatrush"),
            Some(25432)
        );
        assert_eq!(port_of("redis://127.0.0.1:26379/"), Some(26379));
        assert_eq!(port_of("redis://localhost/"), None);
    }

    #[test]
    fn a_process_listening_on_a_port_is_found_with_its_cpu() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let found = Listeners::read().tree_of(port);
        assert!(found.contains(&std::process::id()), "{found:?}");
        // Spend some CPU, so that the process has some to show (a tick is 10 ms).
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(cpu_of(&found) > Duration::ZERO);
    }
}
