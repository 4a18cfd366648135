//! The writer: the one task that moves decisions from the Redis stream into Postgres, in
//! batches. A decision's final answer is the moment its batch commits.
//!
//! Reading is not taking: an entry stays in the stream until the batch holding it has
//! committed, and only then is trimmed away (XTRIM MINID: the writer reads the stream in
//! order, so everything up to the last entry read is stored by then). A writer that loses its
//! connection reads the stream again from the start and skips the entries it has already
//! stored, so no decision that Redis still holds can fall between Redis and Postgres. Redis itself may lose entries
//! (a crash before its AOF reached the disk); that loss is what the crash run measures.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use redis::aio::ConnectionManager;
use redis::streams::{StreamId, StreamReadReply};
use tokio_util::sync::CancellationToken;

use super::RedisOutcome;
use super::ledger::{Entry, Ledger};

/// Entries read (and so stored) at most per batch.
const BATCH_MAX: usize = 2000;
/// How long one read waits for new entries: short, so the end of the run is seen at once.
const BLOCK_MS: usize = 20;
/// Failed reads tolerated in a run (a crashed server fails every read until it is back).
const READ_ERRORS_MAX: usize = 2000;
/// Attempts at storing one batch before the run fails.
const STORE_ATTEMPTS: u32 = 5;

/// What the writer did, for the checks.
#[derive(Debug, Default)]
pub(super) struct WriterLog {
    /// When each request id's decision committed, since the run's start.
    pub committed_at: HashMap<String, Duration>,
    /// Request ids Redis decided more than once (two stream entries for one id).
    pub duplicated: HashSet<String>,
    pub batches: usize,
    /// Reads or trims that failed (the connection was lost).
    pub read_errors: usize,
}

/// The writer's state: its own connection (a blocking read must not hold up the clients'),
/// the ledger, and what it has stored.
pub(super) struct Writer {
    con: ConnectionManager,
    ledger: Arc<Ledger>,
    log_key: String,
    start: Instant,
    /// Stream ids already stored, so an entry read again after a reconnect is skipped.
    stored_entries: HashSet<String>,
    /// The stream id of the first decision stored for each request id.
    first_entry: HashMap<String, String>,
    log: WriterLog,
}

impl Writer {
    pub fn new(
        con: ConnectionManager,
        ledger: Arc<Ledger>,
        log_key: String,
        start: Instant,
    ) -> Self {
        Self {
            con,
            ledger,
            log_key,
            start,
            stored_entries: HashSet::new(),
            first_entry: HashMap::new(),
            log: WriterLog::default(),
        }
    }

    /// Stores decisions until the clients are done (`clients_done`) and the stream is empty,
    /// or fails once `deadline` passes.
    pub async fn run(
        mut self,
        clients_done: CancellationToken,
        deadline: Instant,
    ) -> anyhow::Result<WriterLog> {
        let mut last = String::from("0-0");
        while Instant::now() < deadline {
            let entries = match self.read(&last).await {
                Ok(ids) => ids
                    .into_iter()
                    .map(parse_entry)
                    .collect::<anyhow::Result<Vec<Entry>>>()?,
                Err(e) => {
                    self.read_failed(e).await?;
                    // The server may have restarted with fewer entries: read it all again.
                    last = String::from("0-0");
                    continue;
                }
            };
            let Some(newest) = entries.last() else {
                if clients_done.is_cancelled() {
                    if self.drained().await? {
                        return Ok(self.log);
                    }
                    // Entries left behind the read position: a deletion that failed, or a
                    // restarted server that replayed entries deleted after its last sync.
                    last = String::from("0-0");
                }
                continue;
            };
            last = newest.stream_id.clone();
            self.commit(entries).await?;
        }
        bail!(
            "the writer had not stored every decision by its deadline ({} batches stored)",
            self.log.batches
        )
    }

    /// The next entries after `last`, waiting briefly for some.
    async fn read(&mut self, last: &str) -> redis::RedisResult<Vec<StreamId>> {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH_MAX)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(&self.log_key)
            .arg(last)
            .query_async(&mut self.con)
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .collect())
    }

    /// Counts a failed read and pauses before the next; fails the run past the bound.
    async fn read_failed(&mut self, error: redis::RedisError) -> anyhow::Result<()> {
        self.log.read_errors += 1;
        if self.log.read_errors > READ_ERRORS_MAX {
            return Err(error).context("the writer could not read the decision stream");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    }

    /// True once the stream holds nothing: every decision Redis holds is stored.
    async fn drained(&mut self) -> anyhow::Result<bool> {
        match redis::cmd("XLEN")
            .arg(&self.log_key)
            .query_async::<usize>(&mut self.con)
            .await
        {
            Ok(len) => Ok(len == 0),
            Err(e) => {
                self.read_failed(e).await?;
                Ok(false)
            }
        }
    }

    /// Stores the new decisions among `entries` (read in stream order) in one transaction,
    /// then trims the stream up to the last of them.
    async fn commit(&mut self, entries: Vec<Entry>) -> anyhow::Result<()> {
        let Some(newest) = entries.last() else {
            return Ok(());
        };
        let trim_below = successor(&newest.stream_id)?;
        let batch = self.fresh(entries);
        if !batch.is_empty() {
            let stored = self.store(&batch).await?;
            let at = self.start.elapsed();
            for id in stored {
                self.log.committed_at.insert(id, at);
            }
            for entry in batch {
                self.stored_entries.insert(entry.stream_id.clone());
                self.first_entry.insert(entry.request_id, entry.stream_id);
            }
            self.log.batches += 1;
        }
        // Trimming one listpack node at a time is far cheaper for Redis than deleting entries
        // one by one (XDEL). A trim that fails leaves entries to be read again and skipped.
        let trimmed = redis::cmd("XTRIM")
            .arg(&self.log_key)
            .arg("MINID")
            .arg(&trim_below)
            .query_async::<usize>(&mut self.con)
            .await;
        if trimmed.is_err() {
            self.log.read_errors += 1;
        }
        Ok(())
    }

    /// The entries not stored before, one per request id; a second decision for a request id
    /// is counted as duplicated and not stored (the first one stands).
    fn fresh(&mut self, entries: Vec<Entry>) -> Vec<Entry> {
        let mut batch: Vec<Entry> = Vec::with_capacity(entries.len());
        let mut in_batch: HashSet<String> = HashSet::new();
        for entry in entries {
            if self.stored_entries.contains(&entry.stream_id) {
                continue;
            }
            let decided_before = self
                .first_entry
                .get(&entry.request_id)
                .is_some_and(|first| *first != entry.stream_id);
            if decided_before || in_batch.contains(&entry.request_id) {
                self.log.duplicated.insert(entry.request_id.clone());
                self.stored_entries.insert(entry.stream_id);
                continue;
            }
            in_batch.insert(entry.request_id.clone());
            batch.push(entry);
        }
        batch
    }

    /// Stores one batch, retrying a failed transaction a few times with growing pauses.
    async fn store(&self, batch: &[Entry]) -> anyhow::Result<Vec<String>> {
        let mut pause = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.ledger.store(batch).await {
                Ok(stored) => return Ok(stored),
                Err(e) if attempt >= STORE_ATTEMPTS => {
                    return Err(e)
                        .with_context(|| format!("storing a batch of {} decisions", batch.len()));
                }
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    attempt += 1;
                }
            }
        }
    }
}

/// The smallest stream id after `id` (`<ms>-<seq>`): XTRIM MINID keeps only ids from it on.
fn successor(id: &str) -> anyhow::Result<String> {
    let (ms, seq) = id
        .split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?)))
        .with_context(|| format!("stream id {id} is not <ms>-<seq>"))?;
    Ok(match seq.checked_add(1) {
        Some(next) => format!("{ms}-{next}"),
        None => format!("{}-0", ms.saturating_add(1)),
    })
}

/// One stream entry as the script wrote it; anything else is a bug, so it fails the run.
fn parse_entry(id: StreamId) -> anyhow::Result<Entry> {
    let field = |name: &str| {
        id.get::<String>(name)
            .with_context(|| format!("decision entry {} lacks its field {name}", id.id))
    };
    let outcome = field("o")?;
    let outcome = RedisOutcome::parse(&outcome)
        .with_context(|| format!("decision entry {} has an unknown outcome {outcome}", id.id))?;
    Ok(Entry {
        request_id: field("r")?,
        course_id: field("c")?,
        student_id: field("s")?,
        outcome,
        stream_id: id.id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_successor_of_a_stream_id_is_the_next_sequence_number() {
        assert_eq!(successor("1700000000000-0").unwrap(), "1700000000000-1");
        assert_eq!(successor("5-18446744073709551615").unwrap(), "6-0");
        assert!(successor("nonsense").is_err());
    }
}
