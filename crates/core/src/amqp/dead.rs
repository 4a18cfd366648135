//! The dead-letter queue, for operators: list what is in it and why, and re-publish what was
//! fixed.
//!
//! Two kinds of message land there: those seatrush refused itself (with the reason in the
//! `x-seatrush-reason` header and the original routing key in `x-seatrush-routing-key`), and
//! those the broker dead-lettered after too many deliveries (with its `x-first-death-reason`
//! header and the original routing key kept).

use std::time::Duration;

use super::{Broker, Incoming, Outgoing, ReplyTo, Result, Topology};
use crate::protocol::REASON_HEADER;

/// Header carrying the routing key of a message seatrush dead-lettered itself.
pub(super) const ROUTING_KEY_HEADER: &str = "x-seatrush-routing-key";

/// One dead letter, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    pub reply_to: Option<String>,
    /// The routing key it was first published with (the course id of a request).
    pub routing_key: String,
    /// Why it is here.
    pub reason: String,
    /// `seatrush` when the worker refused it, `broker` when the broker gave up delivering it.
    pub source: &'static str,
    /// The body, as text where it is UTF-8.
    pub body: String,
    #[serde(skip)]
    raw_body: Vec<u8>,
}

impl DeadLetter {
    /// A message read from the dead-letter queue.
    pub fn of(incoming: &Incoming) -> Self {
        let header = |name: &str| {
            incoming
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let (reason, source) = match header(REASON_HEADER) {
            Some(reason) => (reason, "seatrush"),
            None => (
                header("x-first-death-reason").unwrap_or_else(|| "unknown".to_owned()),
                "broker",
            ),
        };
        Self {
            message_id: incoming.message_id.clone(),
            reply_to: incoming.reply_to.clone(),
            routing_key: header(ROUTING_KEY_HEADER).unwrap_or_else(|| incoming.routing_key.clone()),
            reason,
            source,
            body: String::from_utf8_lossy(&incoming.body).into_owned(),
            raw_body: incoming.body.clone(),
        }
    }

    /// The message as it was first published to the request exchange.
    fn republished(&self, topology: &Topology) -> Outgoing {
        let reply_to = self.reply_to.as_ref().map(|queue| ReplyTo {
            queue: queue.clone(),
            correlation_id: self.message_id.clone(),
            batch: false,
        });
        Outgoing::raw_request(
            topology,
            &self.routing_key,
            self.message_id.as_deref(),
            reply_to.as_ref(),
            self.raw_body.clone(),
        )
    }
}

impl Broker {
    /// Reads up to `max` dead letters, oldest first, waiting up to `wait` for each, and leaves
    /// them all in the queue.
    pub async fn peek_dead_letters(
        &self,
        topology: &Topology,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<DeadLetter>> {
        let sorted = self
            .sort_dead_letters(topology, max, wait, |_| false)
            .await?;
        sorted.deliveries.close().await;
        Ok(sorted.kept)
    }

    /// Re-publishes to the request exchange (with confirms) every dead letter among the first
    /// `max` that `pick` selects, and removes it from the dead-letter queue; the others stay.
    /// Returns the replayed letters.
    pub async fn replay_dead_letters(
        &self,
        topology: &Topology,
        max: usize,
        wait: Duration,
        pick: impl Fn(&DeadLetter) -> bool,
    ) -> Result<Vec<DeadLetter>> {
        let publisher = self.confirmed_publisher().await?;
        let sorted = self.sort_dead_letters(topology, max, wait, pick).await?;
        let mut replayed = Vec::with_capacity(sorted.picked.len());
        for (letter, incoming) in sorted.picked {
            // Confirmed before the dead letter is removed: a failure in between leaves a copy
            // in both places, never in none (replaying a request id twice is harmless).
            publisher
                .send_confirmed(letter.republished(topology))
                .await?;
            incoming.ack.ack().await?;
            replayed.push(letter);
        }
        sorted.deliveries.close().await;
        Ok(replayed)
    }

    /// Takes up to `max` dead letters; returns those `pick` selects still unsettled, and puts
    /// the others back. Nothing is put back while the consumer runs, or it would be delivered
    /// again at once.
    async fn sort_dead_letters(
        &self,
        topology: &Topology,
        max: usize,
        wait: Duration,
        pick: impl Fn(&DeadLetter) -> bool,
    ) -> Result<Sorted> {
        let prefetch = u16::try_from(max.clamp(1, 1000)).unwrap_or(1000);
        let mut deliveries = self
            .consume(&topology.dead_queue(), "dead-letter-reader", prefetch)
            .await?;
        let mut taken = Vec::new();
        while taken.len() < max {
            match tokio::time::timeout(wait, deliveries.next()).await {
                Ok(Some(incoming)) => taken.push(incoming?),
                Ok(None) | Err(_) => break,
            }
        }
        deliveries.cancel().await;
        let mut kept = Vec::new();
        let mut picked = Vec::new();
        for incoming in taken {
            let letter = DeadLetter::of(&incoming);
            if pick(&letter) {
                picked.push((letter, incoming));
            } else {
                incoming.ack.requeue().await?;
                kept.push(letter);
            }
        }
        Ok(Sorted {
            kept,
            picked,
            deliveries,
        })
    }
}

struct Sorted {
    kept: Vec<DeadLetter>,
    picked: Vec<(DeadLetter, Incoming)>,
    /// Open until the picked letters are settled.
    deliveries: super::Deliveries,
}
