//! The Redis side of the design: the keys of one run, the Lua script that decides a request,
//! and the seeding and clearing of those keys.
//!
//! Keys of one run all start with its own prefix, so runs never see each other's state:
//! - `<prefix>:left:<course>`: seats left, an integer the script decrements;
//! - `<prefix>:seated:<course>`: the set of students holding a seat;
//! - `<prefix>:decided`: a hash from request id to the outcome given, so that a repeated
//!   request (a client retrying after a lost answer) gets the same answer and no new decision;
//! - `<prefix>:log`: the stream of decisions the writer stores in Postgres. The script appends
//!   to it in the same atomic step as it takes the seat, so Redis never holds a decision that
//!   the log lacks.

use std::collections::HashSet;

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};

use super::RedisOutcome;
use seatrush_core::domain::{CourseId, Request};

/// How many keys or fields one command names at most, so no command grows with the stream.
const CHUNK: usize = 500;

/// Decides one request atomically: Redis runs a script alone, so no other request can take the
/// seat between the check and the take. Returns `{outcome, replayed}`.
const DECIDE: &str = r"
local prior = redis.call('HGET', KEYS[3], ARGV[1])
if prior then
  return {prior, 1}
end
local outcome
if redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 1 then
  outcome = 'duplicate'
else
  local left = redis.call('GET', KEYS[1])
  if not left then
    return redis.error_reply('ERR unknown course ' .. ARGV[2])
  end
  if tonumber(left) > 0 then
    redis.call('DECR', KEYS[1])
    redis.call('SADD', KEYS[2], ARGV[3])
    outcome = 'enrolled'
  else
    outcome = 'full'
  end
end
redis.call('HSET', KEYS[3], ARGV[1], outcome)
redis.call('XADD', KEYS[4], '*', 'r', ARGV[1], 'c', ARGV[2], 's', ARGV[3], 'o', outcome)
return {outcome, 0}
";

/// What the script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Decided {
    pub outcome: RedisOutcome,
    /// The request id had been decided before: this is the stored answer, not a new decision.
    pub replayed: bool,
}

/// One run's keys and its script.
pub(super) struct Registrar {
    prefix: String,
    script: Script,
}

impl Registrar {
    pub fn new(tag: &str) -> Self {
        Self {
            prefix: format!("seatrush-bench:{tag}"),
            script: Script::new(DECIDE),
        }
    }

    fn left(&self, course: &str) -> String {
        format!("{}:left:{course}", self.prefix)
    }

    fn seated(&self, course: &str) -> String {
        format!("{}:seated:{course}", self.prefix)
    }

    fn decided(&self) -> String {
        format!("{}:decided", self.prefix)
    }

    /// The stream the script appends decisions to and the writer reads.
    pub fn log(&self) -> String {
        format!("{}:log", self.prefix)
    }

    /// Gives every course its seats and loads the script once, so requests go as EVALSHA.
    pub async fn seed(
        &self,
        con: &mut ConnectionManager,
        courses: &[CourseId],
        seats: u32,
    ) -> RedisResult<()> {
        for chunk in courses.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for course in chunk {
                pipe.set(self.left(course.as_str()), seats).ignore();
            }
            pipe.query_async::<()>(con).await?;
        }
        self.script.load_async(con).await?;
        Ok(())
    }

    /// Decides one request. After a server restart the script cache is empty; the invocation
    /// then loads the script again and retries (NOSCRIPT is handled by `invoke_async`).
    pub async fn decide(
        &self,
        con: &mut ConnectionManager,
        request: &Request,
    ) -> RedisResult<Decided> {
        let course = request.course_id.as_str();
        let (outcome, replayed): (String, i64) = self
            .script
            .key(self.left(course))
            .key(self.seated(course))
            .key(self.decided())
            .key(self.log())
            .arg(request.request_id.as_str())
            .arg(course)
            .arg(request.student_id.as_str())
            .invoke_async(con)
            .await?;
        let outcome = RedisOutcome::parse(&outcome).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "the script answered an unknown outcome",
                outcome,
            ))
        })?;
        Ok(Decided {
            outcome,
            replayed: replayed == 1,
        })
    }

    /// The request ids among `ids` that Redis still remembers deciding (after a crash, those it
    /// forgot were lost with the writes it had not synced).
    pub async fn remembered(
        &self,
        con: &mut ConnectionManager,
        ids: &[&str],
    ) -> RedisResult<HashSet<String>> {
        let mut known = HashSet::new();
        for chunk in ids.chunks(CHUNK) {
            let found: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(self.decided())
                .arg(chunk)
                .query_async(con)
                .await?;
            for (id, found) in chunk.iter().zip(found) {
                if found.is_some() {
                    known.insert((*id).to_owned());
                }
            }
        }
        Ok(known)
    }

    /// Deletes every key of this run.
    pub async fn clear(
        &self,
        con: &mut ConnectionManager,
        courses: &[CourseId],
    ) -> RedisResult<()> {
        let mut keys = vec![self.decided(), self.log()];
        for course in courses {
            keys.push(self.left(course.as_str()));
            keys.push(self.seated(course.as_str()));
        }
        for chunk in keys.chunks(CHUNK) {
            redis::cmd("DEL").arg(chunk).query_async::<()>(con).await?;
        }
        Ok(())
    }
}
