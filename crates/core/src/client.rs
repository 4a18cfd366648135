//! The client side: publish a request as any producer would and wait for its answers; follow
//! final events. Used by the CLI's `enroll`, `drop` and `watch`.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::amqp::{Broker, Deliveries, Outgoing, Publisher, ReplyTo, Topology};
use crate::domain::{Action, CourseId, Request, StudentId};
use crate::protocol::{Answer, Stage, answers_in, request_body};

/// The two answers to one request.
#[derive(Debug, Clone)]
pub struct Answers {
    /// Absent if it was lost or arrived after the final one (it is best effort).
    pub provisional: Option<Answer>,
    pub final_answer: Answer,
}

/// A connection for publishing requests and receiving answers.
pub struct Client {
    broker: Broker,
    publisher: Publisher,
    topology: Topology,
    /// The broker user this client connects as, named on course changes.
    user: Option<String>,
    /// The named lane requests are published on; `None` for the default one.
    lane: Option<String>,
}

impl Client {
    pub async fn connect(amqp_url: &str, topology: Topology) -> anyhow::Result<Self> {
        let broker = Broker::connect(amqp_url, "seatrush-client")
            .await
            .context("connecting to RabbitMQ")?;
        let publisher = broker.confirmed_publisher().await?;
        Ok(Self {
            broker,
            publisher,
            topology,
            user: crate::amqp::url_user(amqp_url),
            lane: None,
        })
    }

    /// Publishes requests on the named `lane` (see [`Topology::lanes`]); `None`, the default.
    #[must_use]
    pub fn on_lane(mut self, lane: Option<String>) -> Self {
        self.lane = lane;
        self
    }

    /// Publishes `request` and waits up to `timeout` for its final answer; with `batch`, asks
    /// for the answers in batches (`x-seatrush-batch`), as a web back end sharing one reply
    /// queue between many requests would.
    pub async fn request(
        &self,
        request: &Request,
        batch: bool,
        timeout: Duration,
    ) -> anyhow::Result<Answers> {
        let (queue, mut replies) = self.broker.reply_queue().await?;
        let to = ReplyTo {
            queue,
            correlation_id: Some(request.request_id.to_string()),
            batch,
        };
        let mut message = Outgoing::request(
            &self.topology,
            request.course_id.as_str(),
            request.request_id.as_str(),
            Some(&to),
            request_body(request),
        );
        if let (Action::Configure(_), Some(user)) = (&request.action, &self.user) {
            message = message.with_user_id(user);
        }
        let message = message.on_lane(&self.topology, self.lane.as_deref());
        self.publisher
            .send_confirmed(message)
            .await
            .context("publishing the request (is a worker's topology declared?)")?;
        let wait = async {
            let mut provisional = None;
            while let Some(next) = replies.next().await {
                for answer in parse_answers(&next?.body)? {
                    if answer.is_waitlist_event()
                        || answer.request_id != request.request_id.as_str()
                    {
                        continue;
                    }
                    match answer.stage {
                        Stage::Provisional => provisional = Some(answer),
                        Stage::Final => {
                            return Ok(Answers {
                                provisional,
                                final_answer: answer,
                            });
                        }
                    }
                }
            }
            bail!("the reply queue closed before the final answer arrived")
        };
        tokio::time::timeout(timeout, wait).await.with_context(|| {
            format!("no final answer within {timeout:?}: is a worker running (seatrush worker)?")
        })?
    }

    pub async fn close(self) {
        self.broker.close().await;
    }

    /// Subscribes to final events: all of them, one course's, one student's, or one student's
    /// in one course. It binds both forms the workers publish (the batched `finals` events and
    /// the per-answer `final.<course>.<student>` ones, which carry promotions in either mode),
    /// and picks the answers it follows out of each batch.
    pub async fn watch(&self, filter: EventFilter) -> anyhow::Result<Events> {
        let pattern = filter.pattern();
        let deliveries = self
            .broker
            .subscribe(
                &self.topology.events_exchange(),
                &[Topology::FINALS_KEY, &pattern],
            )
            .await
            .context("subscribing to final events")?;
        Ok(Events {
            deliveries,
            filter,
            ready: VecDeque::new(),
        })
    }
}

/// Which final events to follow; the default follows all.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub course: Option<CourseId>,
    pub student: Option<StudentId>,
}

impl EventFilter {
    pub fn course(course: CourseId) -> Self {
        Self {
            course: Some(course),
            student: None,
        }
    }

    /// The binding for the per-answer events this filter follows.
    pub fn pattern(&self) -> String {
        format!(
            "final.{}.{}",
            self.course.as_ref().map_or("*", CourseId::as_str),
            self.student.as_ref().map_or("*", StudentId::as_str),
        )
    }

    /// Whether an answer out of a batched event is one this filter follows.
    pub fn admits(&self, answer: &Answer) -> bool {
        self.course
            .as_ref()
            .is_none_or(|c| c.as_str() == answer.course_id)
            && self
                .student
                .as_ref()
                .is_none_or(|s| s.as_str() == answer.student_id)
    }
}

/// A stream of final events, one answer at a time.
pub struct Events {
    deliveries: Deliveries,
    filter: EventFilter,
    /// The followed answers of the last batch not yet handed out.
    ready: VecDeque<Answer>,
}

impl Events {
    pub async fn next(&mut self) -> Option<anyhow::Result<Answer>> {
        loop {
            if let Some(answer) = self.ready.pop_front() {
                return Some(Ok(answer));
            }
            let incoming = match self.deliveries.next().await? {
                Ok(incoming) => incoming,
                Err(e) => return Some(Err(e.into())),
            };
            match parse_answers(&incoming.body) {
                Ok(answers) => self
                    .ready
                    .extend(answers.into_iter().filter(|a| self.filter.admits(a))),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// One answer, from a message that holds exactly one.
pub fn parse_answer(body: &[u8]) -> anyhow::Result<Answer> {
    serde_json::from_slice(body).context("an answer that is not valid JSON")
}

/// The answers in a message: one answer object, or a batch of them (a JSON array).
pub fn parse_answers(body: &[u8]) -> anyhow::Result<Vec<Answer>> {
    answers_in(body).context("an answer that is not valid JSON")
}
