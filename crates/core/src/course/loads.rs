//! Course loads gathered: the actors that start together are loaded together. A rush's first
//! second starts an actor for every course asked for (hundreds at once); each loaded alone cost
//! a read-only transaction of its own. Loads waiting when the loader is free go as one
//! ([`Store::load_courses`]: one snapshot, two statements); a load that finds the loader idle
//! goes at once, alone, so gathering never delays one.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::domain::{CourseId, CourseSnapshot};
use crate::store::{Store, StoreError};

/// Courses loaded in one snapshot at most: bounds one statement's arrays and one answer's size.
const GATHERED: usize = 64;

/// Loads waiting for the loader, at most: an actor waits for a place beyond it.
const WAITING: usize = 1024;

/// Asks the session's loader for courses. Cloned into every actor's context; the loader ends
/// when the last clone is gone.
#[derive(Clone)]
pub struct Loads {
    asks: mpsc::Sender<Ask>,
    /// For a load the loader cannot take: it only ends once every [`Loads`] is gone, so only
    /// a panic in it could leave an actor without one.
    store: Store,
}

struct Ask {
    course: CourseId,
    answer: oneshot::Sender<Loaded>,
}

/// A course as loaded: `None` if it does not exist; an error shared by every load it failed.
pub type Loaded = Result<Option<CourseSnapshot>, Arc<StoreError>>;

impl Loads {
    /// Starts the loader on the current runtime. It lives as long as a [`Loads`] can ask it:
    /// the actors and the registry hold them, and it ends once they are all dropped.
    pub fn start(store: Store) -> Self {
        let (asks, waiting) = mpsc::channel(WAITING);
        tokio::spawn(run(store.clone(), waiting));
        Self { asks, store }
    }

    /// The course as it is now; `None` if it does not exist.
    pub async fn load(&self, course: &CourseId) -> Loaded {
        let (answer, loaded) = oneshot::channel();
        let ask = Ask {
            course: course.clone(),
            answer,
        };
        if self.asks.send(ask).await.is_ok()
            && let Ok(loaded) = loaded.await
        {
            return loaded;
        }
        self.store.load_course(course).await.map_err(Arc::new)
    }
}

async fn run(store: Store, mut waiting: mpsc::Receiver<Ask>) {
    let mut asks = Vec::with_capacity(GATHERED);
    while waiting.recv_many(&mut asks, GATHERED).await > 0 {
        // By course: one asked twice (its actor restarted while the first instance was still
        // loading) is loaded once.
        let mut askers: HashMap<CourseId, Vec<oneshot::Sender<Loaded>>> = HashMap::new();
        for ask in asks.drain(..) {
            askers.entry(ask.course).or_default().push(ask.answer);
        }
        let courses: Vec<CourseId> = askers.keys().cloned().collect();
        let mut loaded = store.load_courses(&courses).await.map_err(Arc::new);
        for (course, answers) in askers {
            let snapshot = match &mut loaded {
                Ok(snapshots) => Ok(snapshots.remove(&course)),
                Err(e) => Err(Arc::clone(e)),
            };
            answer_all(answers, snapshot);
        }
    }
}

/// Gives every asker of one course its load. An asker gone meanwhile (its instance stopped)
/// is skipped.
fn answer_all(mut answers: Vec<oneshot::Sender<Loaded>>, loaded: Loaded) {
    let last = answers.pop();
    for answer in answers {
        let _ = answer.send(loaded.clone());
    }
    if let Some(last) = last {
        let _ = last.send(loaded);
    }
}
