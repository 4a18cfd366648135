//! Students' final events: recorded once, in one order every gateway shares, and streamed to
//! browsers as Server-Sent Events.
//!
//! Every gateway consumes the one durable queue bound to all final events (`recorder`), and
//! records each student's final answers, promotions, skipped promotions and draw results in
//! Postgres, where each gets its number (the SSE `id`). Each gateway then reads what was
//! recorded after the last number it saw (`Hub::poll`), a tenth of a second at a time, and
//! hands each event to the streams of its student open here. A browser that reconnects with
//! `Last-Event-ID`, to this gateway or another, or after a restart, is first given what was
//! recorded after that number, from Postgres.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::Event as SseEvent;
use futures::Stream;
use seatrush_core::amqp::{Broker, Deliveries, Topology};
use seatrush_core::client::parse_answers;
use seatrush_core::protocol::{Answer, Stage};
use seatrush_core::store::{NewEvent, Store, StudentEvent};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Events of one student buffered for their streams here; a stream further behind catches up
/// from Postgres.
const PER_STUDENT_BUFFER: usize = 16;
/// Events read at once, by the poller and by a stream catching up.
const PAGE: i64 = 1000;
const POLL_EVERY: Duration = Duration::from_millis(100);

/// The student event an answer makes, if it is one: what the student should see, once.
pub fn event_of(answer: &Answer) -> Option<NewEvent> {
    if answer.stage != Stage::Final || matches!(answer.action.as_str(), "configure" | "draw") {
        return None;
    }
    let (kind, dedup) = if answer.is_promotion() {
        ("promoted", format!("p:{}", answer.request_id))
    } else if answer.is_waitlist_event() {
        (
            "promotion_skipped",
            format!(
                "s:{}:{}",
                answer.request_id,
                answer.promoted_by.as_deref().unwrap_or_default()
            ),
        )
    } else if answer.draw_position.is_some() {
        ("draw", format!("d:{}", answer.request_id))
    } else {
        ("final", format!("f:{}", answer.request_id))
    };
    let mut answer = answer.clone();
    answer.correlation_id = None;
    Some(NewEvent {
        dedup,
        student_id: answer.student_id.clone(),
        kind,
        answer: String::from_utf8(answer.to_json()).ok()?,
    })
}

/// One connection's life of the recorder: record each delivery's events, then ack it. A
/// delivery whose events cannot be recorded is not acked, and comes back.
pub async fn record(
    broker: Broker,
    topology: Topology,
    store: Store,
    recording: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut deliveries = broker.gateway_events(&topology, 64).await?;
    tracing::info!(queue = %topology.gateway_events_queue(), "recording students' events");
    recording.store(true, Ordering::Release);
    let ended = record_each(&mut deliveries, &store).await;
    recording.store(false, Ordering::Release);
    ended
}

async fn record_each(deliveries: &mut Deliveries, store: &Store) -> anyhow::Result<()> {
    while let Some(incoming) = deliveries.next().await {
        let incoming = incoming?;
        let events: Vec<NewEvent> = match parse_answers(&incoming.body) {
            Ok(answers) => answers.iter().filter_map(event_of).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "an unreadable final event; skipped");
                Vec::new()
            }
        };
        // Postgres away: wait for it (the delivery stays unacked meanwhile).
        seatrush_core::retry::until_ok("recording students' events", || {
            store.record_events(&events)
        })
        .await;
        incoming.ack.ack().await?;
    }
    Ok(())
}

/// An event as handed to streams.
#[derive(Debug)]
pub struct Recorded {
    pub seq: i64,
    pub kind: String,
    pub answer: String,
}

impl From<StudentEvent> for Recorded {
    fn from(e: StudentEvent) -> Self {
        Self {
            seq: e.seq,
            kind: e.kind,
            answer: e.answer,
        }
    }
}

/// The streams open here, by student, and the number of the last event seen.
pub struct Hub {
    store: Store,
    students: Mutex<HashMap<String, broadcast::Sender<Arc<Recorded>>>>,
    last_seen: AtomicI64,
    open: AtomicUsize,
}

impl Hub {
    pub async fn new(store: Store) -> anyhow::Result<Arc<Self>> {
        let last = store.last_event().await?;
        Ok(Arc::new(Self {
            store,
            students: Mutex::new(HashMap::new()),
            last_seen: AtomicI64::new(last),
            open: AtomicUsize::new(0),
        }))
    }

    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Reads what was recorded since the last poll and hands it out, until `shutdown`.
    pub async fn poll(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            loop {
                let after = self.last_seen.load(Ordering::Acquire);
                let page = match self.store.events_after(after, PAGE).await {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(error = %seatrush_core::telemetry::chain(&e), "reading students' events failed");
                        break;
                    }
                };
                let full = page.len() as i64 == PAGE;
                self.hand_out(page);
                if !full {
                    break;
                }
            }
        }
    }

    fn hand_out(&self, page: Vec<StudentEvent>) {
        let Some(last) = page.last().map(|e| e.seq) else {
            return;
        };
        {
            let students = self.students.lock().unwrap_or_else(|p| p.into_inner());
            for event in page {
                if let Some(streams) = students.get(&event.student_id) {
                    // No receiver left is fine: the stream is closing.
                    let _ = streams.send(Arc::new(event.into()));
                }
            }
        }
        self.last_seen.store(last, Ordering::Release);
    }

    /// Opens a stream of a student's events: those after `after` first (from Postgres), then
    /// each as it is recorded. Without `after`, from now on.
    pub fn stream(
        self: &Arc<Self>,
        student: String,
        after: Option<i64>,
        shutdown: CancellationToken,
    ) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
        let live = {
            let mut students = self.students.lock().unwrap_or_else(|p| p.into_inner());
            students
                .entry(student.clone())
                .or_insert_with(|| broadcast::channel(PER_STUDENT_BUFFER).0)
                .subscribe()
        };
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("seatrush_gateway_open_streams").set(open as f64);
        let state = StreamState {
            hub: Arc::clone(self),
            last: after.unwrap_or_else(|| self.last_seen.load(Ordering::Acquire)),
            catching_up: after.is_some(),
            backlog: VecDeque::new(),
            live,
            student,
            shutdown,
        };
        futures::stream::unfold(state, |mut state| async move {
            let event = state.next().await?;
            Some((Ok(event), state))
        })
    }
}

struct StreamState {
    hub: Arc<Hub>,
    student: String,
    /// The number of the last event sent on this stream.
    last: i64,
    /// Whether older events may still be waiting in Postgres.
    catching_up: bool,
    backlog: VecDeque<Recorded>,
    live: broadcast::Receiver<Arc<Recorded>>,
    shutdown: CancellationToken,
}

impl StreamState {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if self.backlog.is_empty() && self.catching_up {
                self.catch_up().await?;
            }
            if let Some(event) = self.backlog.pop_front() {
                if let Some(sse) = self.send(&event) {
                    return Some(sse);
                }
                continue;
            }
            let received = tokio::select! {
                r = self.live.recv() => r,
                () = self.shutdown.cancelled() => return None,
            };
            match received {
                Ok(event) => {
                    if let Some(sse) = self.send(&event) {
                        return Some(sse);
                    }
                }
                // Too far behind for the buffer: the events are in Postgres.
                Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Reads the next page of this student's events after the last sent; `None` if Postgres
    /// cannot be read (the stream ends, and the browser reconnects with its last id).
    async fn catch_up(&mut self) -> Option<()> {
        let page = match self
            .hub
            .store
            .student_events_after(&self.student, self.last, PAGE)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %seatrush_core::telemetry::chain(&e), "reading a student's events failed");
                return None;
            }
        };
        self.catching_up = page.len() as i64 == PAGE;
        self.backlog.extend(page.into_iter().map(Recorded::from));
        Some(())
    }

    /// The SSE event, unless this stream has sent it already.
    fn send(&mut self, event: &Recorded) -> Option<SseEvent> {
        if event.seq <= self.last {
            return None;
        }
        self.last = event.seq;
        Some(
            SseEvent::default()
                .id(event.seq.to_string())
                .event(event.kind.as_str())
                .data(event.answer.as_str()),
        )
    }
}

impl Drop for StreamState {
    fn drop(&mut self) {
        let open = self.hub.open.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("seatrush_gateway_open_streams").set(open as f64);
        let mut students = self.hub.students.lock().unwrap_or_else(|p| p.into_inner());
        // This stream's receiver is still counted while it drops.
        if let Some(streams) = students.get(&self.student)
            && streams.receiver_count() <= 1
        {
            students.remove(&self.student);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(outcome: &str, stage: Stage) -> Answer {
        serde_json::from_value(serde_json::json!({
            "request_id": "r1", "course_id": "C1", "student_id": "s1", "action": "enroll",
            "stage": stage, "outcome": outcome, "reason": null, "seats_left": 0,
            "replayed": false, "revised": false
        }))
        .expect("a valid answer")
    }

    #[test]
    fn only_final_answers_of_students_are_events_each_named_once() {
        assert!(event_of(&answer("enrolled", Stage::Provisional)).is_none());
        let f = event_of(&answer("enrolled", Stage::Final)).expect("an event");
        assert_eq!((f.kind, f.dedup.as_str()), ("final", "f:r1"));
        let mut replay = answer("enrolled", Stage::Final);
        replay.replayed = true;
        assert_eq!(event_of(&replay).map(|e| e.dedup), Some("f:r1".to_owned()));
        let mut promoted = answer("promoted", Stage::Final);
        promoted.promoted_by = Some("d1".into());
        assert_eq!(event_of(&promoted).map(|e| e.kind), Some("promoted"));
        let mut drawn = answer("enrolled", Stage::Final);
        drawn.draw_position = Some(3);
        assert_eq!(event_of(&drawn).map(|e| e.kind), Some("draw"));
        let mut change = answer("configured", Stage::Final);
        change.action = "configure".into();
        assert!(event_of(&change).is_none());
    }
}
