//! The broker link: requests out with publisher confirms, answers in on one reply queue, each
//! handed to the HTTP request waiting for it.
//!
//! The link is kept by one task that reconnects with backoff; while it is down, publishing
//! fails at once (the caller answers 503) instead of hanging. Answers that were bound for a
//! reply queue lost with its connection are not lost to the client: the final one is in
//! Postgres, where a waiting request looks when its wait ends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use seatrush_core::amqp::{AmqpError, Broker, Outgoing, Publisher, ReplyTo, Topology};
use seatrush_core::client::parse_answers;
use seatrush_core::protocol::{Answer, Stage};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What has been heard of one request.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub provisional: Option<Answer>,
    pub final_answer: Option<Answer>,
}

/// Why a request could not be handed to the broker.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker is not reachable from this gateway")]
    Unavailable,
    #[error("the broker refused the request (its partition queue is full)")]
    Refused,
}

struct Waiter {
    progress: watch::Sender<Progress>,
    since: Instant,
}

struct Link {
    publisher: Publisher,
    reply_queue: String,
}

/// The broker link and the requests waiting for answers; shared by every HTTP handler.
pub struct Courier {
    topology: Topology,
    link: RwLock<Option<Arc<Link>>>,
    waiting: Mutex<HashMap<String, Waiter>>,
    /// The broker user this gateway connects as, named on course changes.
    user: Option<String>,
}

/// How long an answer is waited for before its waiter is forgotten (the final answer is then
/// read from Postgres).
const FORGET_AFTER: Duration = Duration::from_secs(120);

impl Courier {
    /// Starts the link task on `tasks`; it stops with `shutdown`.
    pub fn start(
        amqp_url: String,
        topology: Topology,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Self> {
        let courier = Arc::new(Self {
            topology,
            link: RwLock::new(None),
            waiting: Mutex::new(HashMap::new()),
            user: seatrush_core::amqp::url_user(&amqp_url),
        });
        let task = Arc::clone(&courier);
        tasks.spawn(keep_connected(
            amqp_url,
            "seatrush-gateway",
            shutdown,
            move |broker| {
                let courier = Arc::clone(&task);
                async move { courier.serve(broker).await }
            },
        ));
        courier
    }

    /// The broker user named on course changes.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn is_ready(&self) -> bool {
        self.link.read().map(|l| l.is_some()).unwrap_or(false)
    }

    /// Starts waiting for a request's answers; `None` if a request with this id is already
    /// waited for here (in flight at this instance).
    pub fn track(&self, request_id: &str) -> Option<watch::Receiver<Progress>> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.contains_key(request_id) {
            return None;
        }
        let (progress, rx) = watch::channel(Progress::default());
        waiting.insert(
            request_id.to_owned(),
            Waiter {
                progress,
                since: Instant::now(),
            },
        );
        metrics::gauge!("seatrush_gateway_waiting_requests").set(waiting.len() as f64);
        Some(rx)
    }

    /// What is known here of a request waited for.
    pub fn progress(&self, request_id: &str) -> Option<Progress> {
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.get(request_id).map(|w| w.progress.borrow().clone())
    }

    /// Stops waiting once the final answer is here; until then the request stays in flight at
    /// this instance, and its final answer, when it comes, ends the wait.
    pub fn release(&self, request_id: &str) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting
            .get(request_id)
            .is_some_and(|w| w.progress.borrow().final_answer.is_some())
        {
            waiting.remove(request_id);
        }
        metrics::gauge!("seatrush_gateway_waiting_requests").set(waiting.len() as f64);
    }

    /// Stops waiting (the request could not be published).
    pub fn forget(&self, request_id: &str) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.remove(request_id);
        metrics::gauge!("seatrush_gateway_waiting_requests").set(waiting.len() as f64);
    }

    /// Publishes a request (its canonical body) and waits for the broker's confirm.
    pub async fn publish(
        &self,
        course_id: &str,
        request_id: &str,
        body: Vec<u8>,
        as_operator: bool,
    ) -> Result<(), PublishError> {
        let link = self
            .link
            .read()
            .ok()
            .and_then(|l| l.clone())
            .ok_or(PublishError::Unavailable)?;
        let to = ReplyTo {
            queue: link.reply_queue.clone(),
            correlation_id: None,
            batch: true,
        };
        let mut message = Outgoing::request(&self.topology, course_id, request_id, Some(&to), body);
        if let (true, Some(user)) = (as_operator, &self.user) {
            message = message.with_user_id(user);
        }
        let sent = async { link.publisher.send(message).await?.confirmed().await };
        match tokio::time::timeout(Duration::from_secs(10), sent).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(AmqpError::Nacked(_))) => Err(PublishError::Refused),
            Ok(Err(e)) => {
                tracing::warn!(error = %seatrush_core::telemetry::chain(&e), "publishing a request failed");
                Err(PublishError::Unavailable)
            }
            Err(_) => Err(PublishError::Unavailable),
        }
    }

    /// One connection's life: a confirmed publisher and a reply queue, until either fails.
    async fn serve(&self, broker: Broker) -> anyhow::Result<()> {
        let publisher = broker.confirmed_publisher().await?;
        let (reply_queue, mut replies) = broker.reply_queue().await?;
        *self.link.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(Link {
            publisher,
            reply_queue,
        }));
        // The link is forgotten however this ends, also when the session is dropped at
        // shutdown: a request must not publish to a reply queue nobody consumes any more.
        let forget = ForgetLink(self);
        tracing::info!("connected to the broker");
        let mut sweep = tokio::time::interval(Duration::from_secs(30));
        let ended = loop {
            tokio::select! {
                next = replies.next() => match next {
                    Some(Ok(incoming)) => match parse_answers(&incoming.body) {
                        Ok(answers) => self.deliver(answers),
                        Err(e) => tracing::warn!(error = %e, "an unreadable answer on the reply queue"),
                    },
                    Some(Err(e)) => break Err(e.into()),
                    None => break Ok(()),
                },
                _ = sweep.tick() => self.sweep(),
            }
        };
        drop(forget);
        broker.close().await;
        ended
    }

    fn deliver(&self, answers: Vec<Answer>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        for answer in answers {
            // Promotions and skipped promotions reach students as events.
            if answer.is_waitlist_event() {
                continue;
            }
            let Some(waiter) = waiting.get(&answer.request_id) else {
                continue;
            };
            let last = answer.stage == Stage::Final && waiter.progress.receiver_count() == 0;
            if last {
                // Its request's handler has gone: nothing more is waited for.
                waiting.remove(&answer.request_id);
                continue;
            }
            waiter.progress.send_modify(|p| match answer.stage {
                // A provisional answer never overrides the final one.
                Stage::Provisional if p.final_answer.is_none() => p.provisional = Some(answer),
                Stage::Provisional => {}
                Stage::Final => p.final_answer = Some(answer),
            });
        }
        metrics::gauge!("seatrush_gateway_waiting_requests").set(waiting.len() as f64);
    }

    /// Forgets waiters nobody follows any more whose answers never came.
    fn sweep(&self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|_, w| {
            w.progress.receiver_count() > 0
                || (w.progress.borrow().final_answer.is_none() && w.since.elapsed() < FORGET_AFTER)
        });
    }
}

/// Forgets the courier's link when dropped.
struct ForgetLink<'a>(&'a Courier);

impl Drop for ForgetLink<'_> {
    fn drop(&mut self) {
        *self.0.link.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Keeps a broker connection: runs `session` on each connection until it fails, then connects
/// again after a backoff (0.2 s doubling to 5 s, reset by a session that lasted), until
/// `shutdown`.
pub async fn keep_connected<F, Fut>(
    url: String,
    name: &'static str,
    shutdown: CancellationToken,
    mut session: F,
) where
    F: FnMut(Broker) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let connected = tokio::select! {
            c = Broker::connect(&url, name) => c,
            () = shutdown.cancelled() => break,
        };
        match connected {
            Ok(broker) => {
                let began = Instant::now();
                tokio::select! {
                    ended = session(broker) => if let Err(e) = ended {
                        tracing::warn!(error = %format!("{e:#}"), name, "the broker link failed; reconnecting");
                    },
                    () = shutdown.cancelled() => break,
                }
                if began.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(200);
                }
            }
            Err(e) => {
                tracing::warn!(error = %seatrush_core::telemetry::chain(&e), name, "cannot reach the broker")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
