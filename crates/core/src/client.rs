//! The client side: publish a request as any producer would and wait for its answers; follow
//! final events. Used by the CLI's `enroll`, `drop` and `watch`.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::amqp::{Broker, Deliveries, Outgoing, Publisher, ReplyTo, Topology};
use crate::domain::{Action, CourseId, Request};
use crate::protocol::{Answer, Stage, request_body};

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
        })
    }

    /// Publishes `request` and waits up to `timeout` for its final answer.
    pub async fn request(&self, request: &Request, timeout: Duration) -> anyhow::Result<Answers> {
        let (queue, mut replies) = self.broker.reply_queue().await?;
        let to = ReplyTo {
            queue,
            correlation_id: Some(request.request_id.to_string()),
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
        self.publisher
            .send_confirmed(message)
            .await
            .context("publishing the request (is a worker's topology declared?)")?;
        let wait = async {
            let mut provisional = None;
            while let Some(next) = replies.next().await {
                let answer = parse_answer(&next?.body)?;
                if answer.is_promotion() {
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
            bail!("the reply queue closed before the final answer arrived")
        };
        tokio::time::timeout(timeout, wait).await.with_context(|| {
            format!("no final answer within {timeout:?}: is a worker running (seatrush worker)?")
        })?
    }

    pub async fn close(self) {
        self.broker.close().await;
    }

    /// Subscribes to final events, for one course or all.
    pub async fn watch(&self, course: Option<&CourseId>) -> anyhow::Result<Events> {
        let pattern = match course {
            Some(course) => format!("final.{course}.*"),
            None => "final.#".to_owned(),
        };
        let deliveries = self
            .broker
            .subscribe(&self.topology.events_exchange(), &pattern)
            .await
            .context("subscribing to final events")?;
        Ok(Events { deliveries })
    }
}

/// A stream of final events.
pub struct Events {
    deliveries: Deliveries,
}

impl Events {
    pub async fn next(&mut self) -> Option<anyhow::Result<Answer>> {
        let incoming = self.deliveries.next().await?;
        Some(
            incoming
                .map_err(anyhow::Error::from)
                .and_then(|m| parse_answer(&m.body)),
        )
    }
}

pub fn parse_answer(body: &[u8]) -> anyhow::Result<Answer> {
    serde_json::from_slice(body).context("an answer that is not valid JSON")
}
