//! The course list as students see it, read from Postgres once a second and served from memory:
//! a refresh storm during a rush costs the database nothing.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use seatrush_core::store::{CourseRow, Store};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// One course: seats, waitlist, window, opening and draw commitment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CourseView {
    pub course_id: String,
    pub seats: u32,
    pub seats_left: u32,
    /// Waitlist capacity (0: no waitlist).
    pub waitlist: u32,
    /// Students waiting now.
    pub waiting: u32,
    pub opens_at: Option<DateTime<Utc>>,
    pub closes_at: Option<DateTime<Utc>>,
    /// `first_come` or `draw`.
    pub opening: String,
    /// Under `draw`: when entries open (any time before the opening when null).
    pub entries_open_at: Option<DateTime<Utc>>,
    /// Under `draw`: the lowercase hex SHA-256 of the draw's seed, published in advance.
    pub draw_commitment: Option<String>,
    pub credits: u32,
    /// Weekly meetings, `MO 09:00-10:30;WE 09:00-10:30` (null: none).
    pub meetings: Option<String>,
}

/// The course list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CourseList {
    pub courses: Vec<CourseView>,
    /// When the list was read from the database.
    pub as_of: DateTime<Utc>,
}

impl From<CourseRow> for CourseView {
    fn from(row: CourseRow) -> Self {
        Self {
            course_id: row.course_id,
            seats: row.capacity,
            seats_left: row.seats_left,
            waitlist: row.waitlist_capacity,
            waiting: row.waitlisted,
            opens_at: row.opens_at,
            closes_at: row.closes_at,
            opening: row.opening.replace('-', "_"),
            entries_open_at: row.entries_open_at,
            draw_commitment: row.draw.map(|d| d.commitment),
            credits: row.credits,
            meetings: Some(row.meetings).filter(|m| !m.is_empty()),
        }
    }
}

/// The list and each course, serialized once per refresh.
#[derive(Default)]
struct Snapshot {
    list: Bytes,
    by_id: HashMap<String, Bytes>,
    rules: bool,
    fresh: bool,
}

/// The cache; its refresher runs until shutdown.
pub struct Courses {
    snapshot: RwLock<Arc<Snapshot>>,
}

impl Courses {
    pub async fn start(
        store: Store,
        shutdown: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Arc<Self> {
        let courses = Arc::new(Self {
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
        });
        courses.refresh(&store).await;
        let task = Arc::clone(&courses);
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => task.refresh(&store).await,
                    () = shutdown.cancelled() => return,
                }
            }
        });
        courses
    }

    async fn refresh(&self, store: &Store) {
        let read = async {
            Ok::<_, seatrush_core::store::StoreError>((
                store.list_courses().await?,
                store.has_registry().await?,
            ))
        };
        let snapshot = match read.await {
            Ok((rows, rules)) => {
                let courses: Vec<CourseView> = rows.into_iter().map(CourseView::from).collect();
                let by_id = courses
                    .iter()
                    .map(|c| (c.course_id.clone(), json(c)))
                    .collect();
                let list = json(&CourseList {
                    courses,
                    as_of: Utc::now(),
                });
                Snapshot {
                    list,
                    by_id,
                    rules,
                    fresh: true,
                }
            }
            Err(e) => {
                tracing::warn!(error = %seatrush_core::telemetry::chain(&e), "reading the course list failed");
                let old = self.current();
                Snapshot {
                    list: old.list.clone(),
                    by_id: old.by_id.clone(),
                    rules: old.rules,
                    fresh: false,
                }
            }
        };
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
    }

    fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The list as JSON; `None` before it was first read.
    pub fn list(&self) -> Option<Bytes> {
        let s = self.current();
        (!s.list.is_empty()).then(|| s.list.clone())
    }

    pub fn course(&self, id: &str) -> Option<Bytes> {
        self.current().by_id.get(id).cloned()
    }

    /// Whether a registry of students is loaded (the registrar's rules apply).
    pub fn rules(&self) -> bool {
        self.current().rules
    }

    /// Whether the last read of Postgres succeeded.
    pub fn database_reachable(&self) -> bool {
        self.current().fresh
    }
}

fn json<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}
