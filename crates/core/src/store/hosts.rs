//! Several database hosts: `DATABASE_URL` in libpq's multi-host form,
//! `postgres://user:pass@primary:5432,standby:5432/seatrush`, names a primary and its standbys.
//! The store connects to the one that takes writes (not in recovery), and follows a promotion:
//! once a second it asks its host whether it still takes writes, and when it does not answer
//! or has become a standby, finds the writable host and points its pools there. Connections
//! opened before the move are closed as they come back to the pool, never handed out again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{ConnectOptions, Connection};

/// How often the host is asked whether it still takes writes.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A host that does not answer within this long counts as gone.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// The URL of each host of a multi-host URL, in order; a URL with one host as it is.
pub(super) fn host_urls(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_owned()];
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), authority),
    };
    if !hosts.contains(',') {
        return vec![url.to_owned()];
    }
    let urls: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|host| format!("{scheme}://{userinfo}{host}{tail}"))
        .collect();
    if urls.is_empty() {
        // Commas and no host: the URL as given, which the connection refuses with its own
        // error, rather than no host at all to connect to.
        return vec![url.to_owned()];
    }
    urls
}

/// The URL of the host of `url` that takes writes: `url` itself when it names one host.
pub async fn writable_url(url: &str) -> super::Result<String> {
    let urls = host_urls(url);
    if urls.len() == 1 {
        return Ok(url.to_owned());
    }
    let hosts = urls
        .iter()
        .map(|u| u.parse())
        .collect::<Result<Vec<PgConnectOptions>, _>>()?;
    match writable(&hosts).await {
        Some(at) => Ok(urls[at].clone()),
        None => Err(super::StoreError::NoWritableHost(crate::telemetry::redact(
            url,
        ))),
    }
}

/// The index of the first host that answers and takes writes.
pub(super) async fn writable(hosts: &[PgConnectOptions]) -> Option<usize> {
    for (at, options) in hosts.iter().enumerate() {
        if takes_writes(options).await {
            return Some(at);
        }
    }
    None
}

async fn takes_writes(options: &PgConnectOptions) -> bool {
    let probe = async {
        let mut conn = options.connect().await?;
        let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok::<_, sqlx::Error>(!standby)
    };
    matches!(
        tokio::time::timeout(ANSWER_WITHIN, probe).await,
        Ok(Ok(true))
    )
}

/// When the pools last moved to another host; connections older than that are not reused.
#[derive(Clone, Default, Debug)]
pub(super) struct Moved(Arc<Mutex<Option<Instant>>>);

impl Moved {
    /// Whether a connection of this age was opened after the last move.
    pub(super) fn keeps(&self, age: Duration) -> bool {
        match *self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(at) => age <= at.elapsed(),
            None => true,
        }
    }

    fn now(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
}

/// Keeps the pools on the writable host until they are closed.
pub(super) async fn follow(
    pools: [PgPool; 2],
    hosts: Vec<PgConnectOptions>,
    mut current: usize,
    moved: Moved,
) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pools[0].is_closed() {
            return;
        }
        if takes_writes(&hosts[current]).await {
            continue;
        }
        let Some(next) = writable(&hosts).await else {
            tracing::warn!("no database host takes writes; asking again in a second");
            continue;
        };
        if next == current {
            continue;
        }
        tracing::warn!(
            from = %describe(&hosts[current]),
            to = %describe(&hosts[next]),
            "the database primary moved; following it"
        );
        current = next;
        moved.now();
        for pool in &pools {
            pool.set_connect_options(hosts[next].clone());
        }
    }
}

fn describe(options: &PgConnectOptions) -> String {
    format!("{}:{}", options.get_host(), options.get_port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_host_url_gives_one_url_per_host() {
        assert_eq!(
            host_urls("postgres://u:p@a:5432,b:5433/db?sslmode=require"),
            [
                "postgres://u:p@a:5432/db?sslmode=require",
                "postgres://u:p@b:5433/db?sslmode=require"
            ]
        );
        assert_eq!(
            host_urls("postgres://a,b/db"),
            ["postgres://a/db", "postgres://b/db"]
        );
        assert_eq!(host_urls("postgres://u@a:1/db"), ["postgres://u@a:1/db"]);
    }

    #[test]
    fn a_host_list_of_commas_only_is_left_for_the_connection_to_refuse() {
        assert_eq!(host_urls("postgres://u:p@,/db"), ["postgres://u:p@,/db"]);
        assert_eq!(host_urls("postgres://, ,/db"), ["postgres://, ,/db"]);
    }

    #[test]
    fn connections_from_before_a_move_are_not_kept() {
        let moved = Moved::default();
        assert!(moved.keeps(Duration::from_secs(3600)));
        moved.now();
        std::thread::sleep(Duration::from_millis(20));
        assert!(moved.keeps(Duration::from_millis(1)));
        assert!(!moved.keeps(Duration::from_secs(1)));
    }
}
