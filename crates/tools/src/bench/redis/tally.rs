//! The checks and counts of a run, from what the clients were told, what the writer did and
//! what Postgres holds at the end. No I/O, so the rules are tested on their own.

use std::collections::HashSet;
use std::time::Duration;

use super::RedisOutcome;
use super::crowd::Asked;
use super::ledger::Records;
use super::writer::WriterLog;
use seatrush_core::domain::Request;

/// The counts of a run.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Tally {
    pub enrolled: usize,
    pub full: usize,
    /// Answers to a repeat of a request id, or to a student already seated.
    pub duplicates: usize,
    /// Answers the script gave from its memory of the request id.
    pub replayed: usize,
    /// Requests that got no answer at all.
    pub errors: usize,
    pub first_error: Option<String>,
    /// Request ids with no record in Postgres.
    pub lost: usize,
    /// Request ids Redis decided more than once.
    pub duplicated: usize,
    /// Answers that differ from the stored outcome of their request id.
    pub contradicted: usize,
    /// Per answered request with a record: when its final answer came (the later of its
    /// answer and its record's commit), since the start.
    pub finals: Vec<Duration>,
    /// Per answered request: when its provisional answer came.
    pub provisionals: Vec<Duration>,
}

impl Tally {
    /// When the last final answer came.
    pub fn last_final(&self) -> Option<Duration> {
        self.finals.iter().max().copied()
    }
}

pub(super) fn tally(
    stream: &[Request],
    asked: &[Asked],
    log: &WriterLog,
    records: &Records,
) -> Tally {
    let mut t = Tally {
        duplicated: log.duplicated.len(),
        ..Tally::default()
    };
    let mut ids_seen: HashSet<&str> = HashSet::new();
    for (request, asked) in stream.iter().zip(asked) {
        let id = request.request_id.as_str();
        let repeat = !ids_seen.insert(id);
        let stored = records.outcomes.get(id);
        if !repeat && stored.is_none() {
            t.lost += 1;
        }
        let Some(told) = asked.told else {
            t.errors += 1;
            if t.first_error.is_none() {
                t.first_error.clone_from(&asked.error);
            }
            continue;
        };
        t.provisionals.push(told.at);
        t.replayed += usize::from(told.replayed);
        match told.outcome {
            _ if repeat => t.duplicates += 1,
            RedisOutcome::Duplicate => t.duplicates += 1,
            RedisOutcome::Enrolled => t.enrolled += 1,
            RedisOutcome::Full => t.full += 1,
        }
        if stored.is_some_and(|&s| s != told.outcome) {
            t.contradicted += 1;
        }
        if let Some(&committed) = log.committed_at.get(id) {
            t.finals.push(committed.max(told.at));
        }
    }
    t
}

/// What a crash did to the students' answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Aftermath {
    /// Requests asked more than once before an answer came (or the client gave up).
    pub retried: usize,
    /// Retried requests that do not end with exactly one decision: no record, or decided twice.
    pub retried_not_decided_once: usize,
    /// Requests whose client was told an answer.
    pub told: usize,
    /// Told something, and Postgres has no record of the request.
    pub answers_lost: usize,
    /// Told something, and Redis after its restart no longer knows the request.
    pub forgotten_by_redis: usize,
    /// Told a seat (enrolled or already seated) and the records hold none, or told full and
    /// the records hold a seat.
    pub answers_changed: usize,
}

pub(super) fn aftermath(
    stream: &[Request],
    asked: &[Asked],
    log: &WriterLog,
    records: &Records,
    remembered: &HashSet<String>,
) -> Aftermath {
    let mut a = Aftermath::default();
    for (request, asked) in stream.iter().zip(asked) {
        let id = request.request_id.as_str();
        let stored = records.outcomes.contains_key(id);
        if asked.attempts > 1 {
            a.retried += 1;
            if !stored || log.duplicated.contains(id) {
                a.retried_not_decided_once += 1;
            }
        }
        let Some(told) = asked.told else { continue };
        a.told += 1;
        a.answers_lost += usize::from(!stored);
        a.forgotten_by_redis += usize::from(!remembered.contains(id));
        let seat = (
            request.course_id.as_str().to_owned(),
            request.student_id.as_str().to_owned(),
        );
        if told.outcome.holds_seat() != records.seated.contains(&seat) {
            a.answers_changed += 1;
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::redis::crowd::Told;
    use seatrush_core::domain::{Action, CourseId, RequestId, StudentId};

    fn request(id: &str, student: &str) -> Request {
        Request {
            request_id: RequestId::parse(id).unwrap(),
            action: Action::Enroll,
            course_id: CourseId::parse("c1").unwrap(),
            student_id: StudentId::parse(student).unwrap(),
        }
    }

    fn told(outcome: RedisOutcome, ms: u64, attempts: u32) -> Asked {
        Asked {
            told: Some(Told {
                outcome,
                replayed: false,
                at: Duration::from_millis(ms),
            }),
            attempts,
            error: None,
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_final_is_the_later_of_the_answer_and_the_commit_and_repeats_are_duplicates() {
        let stream = [
            request("r1", "s1"),
            request("r2", "s2"),
            request("r1", "s1"),
        ];
        let asked = [
            told(RedisOutcome::Enrolled, 5, 1),
            told(RedisOutcome::Full, 6, 1),
            told(RedisOutcome::Enrolled, 50, 1),
        ];
        let log = WriterLog {
            committed_at: [("r1".into(), ms(20)), ("r2".into(), ms(20))].into(),
            ..WriterLog::default()
        };
        let records = Records {
            outcomes: [
                ("r1".into(), RedisOutcome::Enrolled),
                ("r2".into(), RedisOutcome::Full),
            ]
            .into(),
            ..Records::default()
        };

        let t = tally(&stream, &asked, &log, &records);

        assert_eq!((t.enrolled, t.full, t.duplicates), (1, 1, 1));
        assert_eq!((t.lost, t.contradicted, t.errors), (0, 0, 0));
        assert_eq!(t.finals, vec![ms(20), ms(20), ms(50)]);
        assert_eq!(t.last_final(), Some(ms(50)));
    }

    #[test]
    fn a_missing_record_is_lost_and_a_different_one_contradicts() {
        let stream = [
            request("r1", "s1"),
            request("r2", "s2"),
            request("r3", "s3"),
        ];
        let asked = [
            told(RedisOutcome::Enrolled, 5, 1),
            told(RedisOutcome::Enrolled, 6, 1),
            Asked {
                attempts: 3,
                error: Some("connection refused".into()),
                ..Asked::default()
            },
        ];
        let records = Records {
            outcomes: [("r2".into(), RedisOutcome::Full)].into(),
            ..Records::default()
        };

        let t = tally(&stream, &asked, &WriterLog::default(), &records);

        assert_eq!((t.lost, t.contradicted, t.errors), (2, 1, 1));
        assert_eq!(t.first_error.as_deref(), Some("connection refused"));
        assert!(t.finals.is_empty());
    }

    #[test]
    fn after_a_crash_lost_forgotten_and_changed_answers_are_counted() {
        let stream = [
            request("r1", "s1"),
            request("r2", "s2"),
            request("r3", "s3"),
            request("r4", "s4"),
        ];
        let asked = [
            // Told enrolled; Redis forgot it and the writer never stored it.
            told(RedisOutcome::Enrolled, 5, 1),
            // Told full, yet the student holds a seat in the records.
            told(RedisOutcome::Full, 6, 1),
            // Retried, stored once, answer kept.
            told(RedisOutcome::Enrolled, 7, 4),
            // Retried and decided twice.
            told(RedisOutcome::Full, 8, 2),
        ];
        let log = WriterLog {
            duplicated: ["r4".to_owned()].into(),
            ..WriterLog::default()
        };
        let records = Records {
            outcomes: [
                ("r2".into(), RedisOutcome::Enrolled),
                ("r3".into(), RedisOutcome::Enrolled),
                ("r4".into(), RedisOutcome::Full),
            ]
            .into(),
            seated: [
                ("c1".to_owned(), "s2".to_owned()),
                ("c1".to_owned(), "s3".to_owned()),
            ]
            .into(),
            violations: 0,
        };
        let remembered: HashSet<String> = ["r2", "r3", "r4"].map(String::from).into();

        let a = aftermath(&stream, &asked, &log, &records, &remembered);

        assert_eq!(
            a,
            Aftermath {
                retried: 2,
                retried_not_decided_once: 1,
                told: 4,
                answers_lost: 1,
                forgotten_by_redis: 1,
                answers_changed: 2,
            }
        );
    }
}
