//! The outbox: one task publishes every outgoing message of a worker, many at a time.
//!
//! Why: with lapin, each publish hands frames to the connection's I/O thread and waits for it to
//! write them. Awaiting publishes one by one costs a round trip between threads per message, and
//! on a busy two-core machine those wake-ups, not the work, were most of the worker's CPU. The
//! outbox takes whatever is queued, issues all the sends at once (so the I/O thread writes them
//! in one go), and hands each caller its broker confirm. Being one FIFO, it also keeps a
//! request's provisional answer ahead of its final one.
//!
//! Answers for a reply queue that takes batches (`x-seatrush-batch`) are packed: those of one
//! burst travel as one message, placed where the first of them was. Packing only moves an
//! answer earlier, never later, so the order guarantee holds; and it only packs what is already
//! queued, so no answer waits for a batch to fill.

use std::collections::HashMap;

use futures::StreamExt;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{
    AckHandle, AmqpError, Batch, DeadCopy, Outgoing, PendingConfirm, Publisher, ReplyTo, Result,
    Topology,
};
use crate::domain::Request;
use crate::protocol::request_body;
use crate::telemetry::metrics::{self, Stage};

/// Most messages handed to the I/O thread in one go.
const BURST: usize = 512;

struct Letter {
    message: Outgoing,
    /// Where the broker's confirm goes; none for messages that may be lost.
    confirm: Option<oneshot::Sender<Result<PendingConfirm>>>,
}

/// Queues messages for the outbox task; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    letters: mpsc::Sender<Letter>,
}

/// A queued message's confirm, to be awaited.
pub struct Posted {
    confirm: oneshot::Receiver<Result<PendingConfirm>>,
}

impl Posted {
    /// Waits until the broker confirms the message; an error if it refused it or the outbox
    /// could not send it.
    pub async fn confirmed(self) -> Result<()> {
        self.confirm
            .await
            .map_err(|_| AmqpError::OutboxClosed)??
            .confirmed()
            .await
    }
}

impl Outbox {
    /// Starts the outbox task on `publisher`. It ends when every `Outbox` clone is dropped.
    pub fn start(publisher: Publisher, capacity: usize) -> (Self, JoinHandle<()>) {
        let (letters, inbox) = mpsc::channel(capacity);
        (Self { letters }, tokio::spawn(run(publisher, inbox)))
    }

    /// Queues a message that may be lost (a provisional answer).
    pub async fn post(&self, message: Outgoing) -> Result<()> {
        self.letters
            .send(Letter {
                message,
                confirm: None,
            })
            .await
            .map_err(|_| AmqpError::OutboxClosed)
    }

    /// Queues a message whose broker confirm the caller will await.
    pub async fn post_confirmed(&self, message: Outgoing) -> Result<Posted> {
        let (tx, confirm) = oneshot::channel();
        self.letters
            .send(Letter {
                message,
                confirm: Some(tx),
            })
            .await
            .map_err(|_| AmqpError::OutboxClosed)?;
        Ok(Posted { confirm })
    }

    /// Moves a parsed request to the dead-letter exchange with `reason`, and acks the delivery
    /// once the broker confirmed the copy. If the copy is not confirmed the delivery stays
    /// unacked: the broker redelivers it, and its delivery limit dead-letters it in the end.
    pub async fn dead_letter(
        &self,
        topology: &Topology,
        request: &Request,
        reply_to: Option<&ReplyTo>,
        ack: AckHandle,
        reason: &str,
    ) {
        tracing::error!(course_id = %request.course_id, request_id = %request.request_id, %reason, "dead-lettering");
        let body = request_body(request);
        let copy = DeadCopy {
            message_id: Some(request.request_id.as_str()),
            reply_to: reply_to.map(|r| r.queue.as_str()),
            routing_key: request.course_id.as_str(),
            body: &body,
        };
        let confirmed = match self
            .post_confirmed(Outgoing::dead_letter(topology, &copy, reason))
            .await
        {
            Ok(posted) => posted.confirmed().await,
            Err(e) => Err(e),
        };
        match confirmed {
            Ok(()) => {
                if let Err(e) = ack.ack().await {
                    tracing::warn!(error = %crate::telemetry::chain(&e), "ack of a dead-lettered request failed; it will be redelivered");
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::chain(&e), "dead-lettering failed; leaving the request to the broker")
            }
        }
    }
}

async fn run(publisher: Publisher, mut inbox: mpsc::Receiver<Letter>) {
    let mut burst = Vec::with_capacity(BURST);
    // Confirms nobody waits for are still awaited here: the client keeps every confirm dropped
    // before the broker answered (for its `wait_for_confirms`), so dropping them would grow
    // memory by one entry per provisional answer, forever.
    let mut unwatched = FuturesUnordered::new();
    loop {
        let received = tokio::select! {
            received = inbox.recv_many(&mut burst, BURST) => received,
            Some(confirmed) = unwatched.next(), if !unwatched.is_empty() => {
                if let Err(e) = confirmed {
                    tracing::debug!(error = %crate::telemetry::chain(&e), "an unconfirmed message was refused");
                }
                continue;
            }
        };
        if received == 0 {
            break;
        }
        let sent = metrics::busy_while(Stage::Publish, async {
            let (messages, confirms): (Vec<Outgoing>, Vec<_>) = pack(burst.drain(..))
                .into_iter()
                .map(|l| (l.message, l.confirm))
                .unzip();
            let sent = join_all(messages.into_iter().map(|m| publisher.send(m))).await;
            (sent, confirms)
        });
        let (sent, confirms) = sent.await;
        for (result, confirm) in sent.into_iter().zip(confirms) {
            match (confirm, result) {
                (Some(tx), result) => {
                    let _ = tx.send(result);
                }
                (None, Ok(pending)) => unwatched.push(pending.confirmed()),
                (None, Err(e)) => {
                    tracing::debug!(error = %crate::telemetry::chain(&e), "an unconfirmed message was not sent")
                }
            }
        }
    }
    while unwatched.next().await.is_some() {}
    publisher.close().await;
}

/// Packs the packable answers of one burst into one batch per reply queue, in the slot of the
/// first of them; every other letter keeps its place.
fn pack(letters: impl Iterator<Item = Letter>) -> Vec<Letter> {
    let mut slots: Vec<Letter> = Vec::new();
    // Per reply queue: the slot of its first packable answer, and the batch replacing it.
    let mut batches: HashMap<String, (usize, Batch)> = HashMap::new();
    for letter in letters {
        if letter.confirm.is_some() || !letter.message.packable() {
            slots.push(letter);
            continue;
        }
        let queue = letter.message.routing_key();
        if let Some((_, batch)) = batches.get_mut(queue) {
            batch.push(&letter.message.into_body());
            continue;
        }
        let mut batch = Batch::new();
        batch.push(letter.message.body());
        batches.insert(queue.to_owned(), (slots.len(), batch));
        slots.push(letter);
    }
    for (queue, (slot, batch)) in batches {
        if let Some(letter) = slots.get_mut(slot) {
            letter.message = Outgoing::reply_batch(&queue, batch);
        }
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Action, CourseId, Outcome, RequestId, StudentId, Verdict};
    use crate::protocol::{Answer, Stage, answers_in};

    fn answer_to(queue: &str, batch: bool, id: &str) -> Letter {
        let request = Request {
            request_id: RequestId::parse(id).expect("id"),
            action: Action::Enroll,
            course_id: CourseId::parse("C1").expect("id"),
            student_id: StudentId::parse("s1").expect("id"),
        };
        let to = ReplyTo {
            queue: queue.to_owned(),
            correlation_id: Some(format!("c-{id}")),
            batch,
        };
        let verdict = Verdict::new(Outcome::Enrolled, None, 3);
        let mut answer = Answer::decided(&request, &verdict, Stage::Provisional);
        Letter {
            message: Outgoing::answer(&to, &mut answer),
            confirm: None,
        }
    }

    fn ids(letter: Letter) -> (String, Vec<(String, Option<String>)>) {
        let queue = letter.message.routing_key().to_owned();
        let answers = answers_in(&letter.message.into_body()).expect("answers");
        let ids = answers
            .into_iter()
            .map(|a| (a.request_id, a.correlation_id))
            .collect();
        (queue, ids)
    }

    #[test]
    fn a_bursts_answers_for_a_batching_queue_travel_together_where_the_first_was() {
        let (confirm, _) = oneshot::channel();
        let mut confirmed = answer_to("q-final", true, "f1");
        confirmed.confirm = Some(confirm);
        let burst = vec![
            answer_to("q-single", false, "a"),
            answer_to("q-batch", true, "b1"),
            confirmed,
            answer_to("q-other", true, "o1"),
            answer_to("q-batch", true, "b2"),
            answer_to("q-single", false, "c"),
            answer_to("q-batch", true, "b3"),
        ];
        let packed: Vec<_> = pack(burst.into_iter()).into_iter().map(ids).collect();
        let with = |id: &str, batched: bool| (id.to_owned(), batched.then(|| format!("c-{id}")));
        assert_eq!(
            packed,
            vec![
                ("q-single".to_owned(), vec![with("a", false)]),
                (
                    "q-batch".to_owned(),
                    vec![with("b1", true), with("b2", true), with("b3", true)]
                ),
                // A letter whose confirm is awaited is never packed nor moved.
                ("q-final".to_owned(), vec![with("f1", true)]),
                ("q-other".to_owned(), vec![with("o1", true)]),
                ("q-single".to_owned(), vec![with("c", false)]),
            ]
        );
    }
}
