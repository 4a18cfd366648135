//! Answers whose arrival must be known.
//!
//! An invalid request with a valid id and a reply address is answered, with the reason, and not
//! dead-lettered: the producer learns why at once, and a flood of bad messages costs the broker
//! one transient answer each instead of a persistent copy in a replicated queue. That holds only
//! if a queue took the answer, so it is published mandatory: the broker returns it when nobody
//! listens at the address, and the request is dead-lettered instead.
//!
//! How a return is matched to its answer: the broker sends the return of an unroutable message
//! before that message's confirm, but a return names no delivery tag, and the client hands a
//! waiting return to whichever confirm it resolves next, which may be another message's. So each
//! channel sends the answers queued for it as one batch and waits for every confirm of the
//! batch before it sends the next: every return of the batch has then arrived and been handed
//! to one of the batch's confirms, and it names its answer by what it carries (the reply queue
//! and the body). Two answers alike in both are interchangeable: whichever is counted returned,
//! the producer sees the same.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::publisher::Confirmed;
use super::{AmqpError, Broker, Outgoing, Publisher, Result};

/// Channels answering at once. Each pipelines a whole batch, so a few keep a flood's answers
/// flowing; every channel of the connection costs the client a little on each frame it sends.
/// (Measured with the bench's hostile scenario, two runs each with 1 and 16 channels: the
/// valid students beside the flood had their final answers at 37-49 and 30-36 ms at the
/// median on its lane, 44-66 and 64-80 ms on theirs; with 4, nine runs, 11-62 and 39-86 ms.
/// The count does not show within the machine's spread; 128, one answer each, did.)
const CHANNELS: usize = 4;

/// Most answers one channel sends as a batch before it waits for their confirms.
const BATCH_MAX: usize = 256;

/// Answers queued for a channel before [`RoutedAnswers::deliver`] waits: bounds the memory a
/// flood can take here to what the intake's settling already allows.
const QUEUED: usize = 2 * BATCH_MAX;

/// How long [`RoutedAnswers::close`] waits for the channels to finish and close.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// An answer waiting to be sent, and who learns whether a queue took it.
type Queued = (Outgoing, oneshot::Sender<Result<bool>>);

/// Publishes answers mandatory and says whether a queue took each. Cheap to clone.
#[derive(Clone)]
pub struct RoutedAnswers {
    channels: Arc<[mpsc::Sender<Queued>]>,
    next: Arc<AtomicUsize>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl RoutedAnswers {
    /// Opens [`CHANNELS`] confirmed channels on `broker`'s connection, each served by a task of
    /// its own until [`RoutedAnswers::close`].
    pub async fn open(broker: &Broker) -> Result<Self> {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut channels = Vec::with_capacity(CHANNELS);
        for _ in 0..CHANNELS {
            let publisher = match broker.confirmed_publisher().await {
                Ok(publisher) => publisher,
                Err(e) => {
                    // Those already opened close with their tasks.
                    stop.cancel();
                    return Err(e);
                }
            };
            let (queue, queued) = mpsc::channel(QUEUED);
            tasks.spawn(serve(publisher, queued, stop.clone()));
            channels.push(queue);
        }
        tasks.close();
        Ok(Self {
            channels: channels.into(),
            next: Arc::default(),
            stop,
            tasks,
        })
    }

    /// Publishes `message` (as it travels unpacked) and waits for the broker: `true` if a queue
    /// took it, `false` if the broker returned it because none did. An error if it could not be
    /// published, the broker refused it, or the answers are closed.
    pub async fn deliver(&self, message: Outgoing) -> Result<bool> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        let channel = self.channels.get(turn).ok_or(AmqpError::OutboxClosed)?;
        let (told, answer) = oneshot::channel();
        channel
            .send((message.unpacked().mandatory(), told))
            .await
            .map_err(|_| AmqpError::OutboxClosed)?;
        answer.await.map_err(|_| AmqpError::OutboxClosed)?
    }

    /// Stops every channel's task and closes the channels, bounded: a batch still awaiting its
    /// confirms is given up (its answers are told the answers are closed). Called before the
    /// connection closes: a channel that only closes itself on being dropped may still be
    /// closing when the connection does, and the client then reports a frame for a channel it
    /// no longer knows.
    pub async fn close(&self) {
        self.stop.cancel();
        if tokio::time::timeout(CLOSE_WITHIN, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("the channels answering invalid requests did not close in time");
        }
    }
}

/// Sends what is queued for one channel, a batch at a time, until stopped; then closes it.
async fn serve(publisher: Publisher, mut queued: mpsc::Receiver<Queued>, stop: CancellationToken) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    loop {
        let taken = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            taken = queued.recv_many(&mut batch, BATCH_MAX) => taken,
        };
        if taken == 0 {
            break;
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = send_batch(&publisher, &mut batch) => {}
        }
    }
    publisher.close().await;
}

/// Publishes every answer of `batch`, waits for all their confirms, and tells each whether a
/// queue took it. Empties `batch`.
async fn send_batch(publisher: &Publisher, batch: &mut Vec<Queued>) {
    // All at once, as the outbox does: the client's I/O thread takes the whole batch in one
    // wake-up instead of one hand-off per answer. Each is cloned to recognise it if it comes
    // back; answers are small.
    let pending = join_all(
        batch
            .iter()
            .map(|(message, _)| publisher.send(message.clone())),
    )
    .await;
    let confirmed = join_all(
        pending
            .into_iter()
            .map(|pending| async move { pending?.confirmation().await }),
    )
    .await;
    let outcomes = outcomes(batch.iter().map(|(message, _)| message), confirmed);
    for ((_, told), outcome) in batch.drain(..).zip(outcomes) {
        // A sender gone has given up on the answer (its session is halting).
        let _ = told.send(outcome);
    }
}

/// Whether a queue took each message of a batch, from the confirms of the whole batch, in the
/// order sent: a nack or a failed publish is an error, and each message the broker returned
/// (carried by whichever confirm the client handed it to) marks the first message alike in
/// queue and body not yet marked.
fn outcomes<'a>(
    messages: impl Iterator<Item = &'a Outgoing>,
    confirmed: Vec<Result<Confirmed>>,
) -> Vec<Result<bool>> {
    let mut returned = Vec::new();
    let mut outcomes: Vec<Result<bool>> = confirmed
        .into_iter()
        .map(|confirmation| {
            let (acked, came_back) = confirmation?;
            returned.extend(came_back);
            acked.map(|()| true)
        })
        .collect();
    for (message, outcome) in messages.zip(outcomes.iter_mut()) {
        let back = returned.iter().position(|back| back.is(message));
        if let (Ok(true), Some(back)) = (&outcome, back) {
            returned.swap_remove(back);
            *outcome = Ok(false);
        }
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::super::publisher::Returned;
    use super::*;
    use crate::domain::ReplyTo;

    fn answer(queue: &str, body: &str) -> Outgoing {
        Outgoing::reply(&ReplyTo::single(queue, None), body.as_bytes().to_vec())
    }

    fn returned(queue: &str, body: &str) -> Returned {
        Returned {
            routing_key: queue.into(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_return_names_its_answer_by_queue_and_body() {
        let sent = answer("q1", "{\"a\":1}");
        assert!(returned("q1", "{\"a\":1}").is(&sent));
        assert!(!returned("q2", "{\"a\":1}").is(&sent));
        assert!(!returned("q1", "{\"a\":2}").is(&sent));
    }

    #[test]
    fn a_return_handed_to_another_confirm_marks_its_own_answer() {
        let sent = [
            answer("live", "1"),
            answer("gone", "2"),
            answer("live", "3"),
        ];
        // The client handed the second answer's return to the first confirm it resolved.
        let confirmed = vec![
            Ok((Ok(()), Some(returned("gone", "2")))),
            Ok((Ok(()), None)),
            Ok((Ok(()), None)),
        ];
        let outcomes: Vec<bool> = outcomes(sent.iter(), confirmed)
            .into_iter()
            .map(|o| o.expect("confirmed"))
            .collect();
        assert_eq!(outcomes, [true, false, true]);
    }

    #[test]
    fn answers_alike_are_counted_returned_once_per_return_and_nacks_are_errors() {
        let sent = [
            answer("gone", "same"),
            answer("gone", "same"),
            answer("live", "x"),
        ];
        let confirmed = vec![
            Ok((Ok(()), None)),
            Ok((Ok(()), None)),
            Ok((
                Err(AmqpError::Nacked("to live".to_owned())),
                Some(returned("gone", "same")),
            )),
        ];
        let outcomes = outcomes(sent.iter(), confirmed);
        assert!(matches!(outcomes[0], Ok(false)));
        assert!(matches!(outcomes[1], Ok(true)));
        assert!(matches!(outcomes[2], Err(AmqpError::Nacked(_))));
    }
}
