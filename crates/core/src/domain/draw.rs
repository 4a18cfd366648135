//! A course's opening policy, and the draw that orders its early students.
//!
//! Under `draw`, enrolls that arrive before the opening are entries; at the opening the
//! entrants are ranked by a keyed hash of their ids, with a seed chosen when the draw was
//! configured and committed to in public (its SHA-256) from that moment. The seed is revealed
//! after the draw, so anyone can recompute the order from it and the entrants' ids: rank 1 is
//! the entrant whose HMAC-SHA256(seed, student id) is the smallest, compared as 32 bytes.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::{CourseId, RequestId, StudentId};

/// How a course hands out its seats at the opening.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Opening {
    /// In arrival order; a request before the opening is refused `not_open`.
    #[default]
    FirstCome,
    /// Early requests are entries, ranked by the draw at the opening.
    Draw,
}

impl Opening {
    pub fn as_str(self) -> &'static str {
        match self {
            Opening::FirstCome => "first-come",
            Opening::Draw => "draw",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "first-come" => Some(Opening::FirstCome),
            "draw" => Some(Opening::Draw),
            _ => None,
        }
    }
}

impl fmt::Display for Opening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The 32 random bytes that fix a draw's order. Secret until the draw: only its commitment is
/// shown before.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DrawSeed([u8; 32]);

impl DrawSeed {
    /// A fresh seed from the operating system's generator.
    pub fn generate() -> Self {
        Self(rand::random())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The seed as stored; `None` unless exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The seed in lowercase hex, as revealed after the draw.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }

    /// The public commitment: the lowercase hex SHA-256 of the seed.
    pub fn commitment(&self) -> String {
        hex(&Sha256::digest(self.0))
    }

    /// The key an entrant is ranked by: HMAC-SHA256 keyed by the seed over the id's bytes.
    pub fn rank_key(&self, student: &StudentId) -> [u8; 32] {
        // HMAC takes a key of any length, so this cannot fail; the fallback is never taken.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return [0; 32];
        };
        mac.update(student.as_str().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The entrants in draw order (rank 1 first). Ties are impossible in practice (distinct
    /// ids, 256-bit keys); they would fall back to the id, so the order is always total.
    pub fn order<'a>(&self, entrants: impl IntoIterator<Item = &'a StudentId>) -> Vec<StudentId> {
        let mut keyed: Vec<([u8; 32], &StudentId)> = entrants
            .into_iter()
            .map(|student| (self.rank_key(student), student))
            .collect();
        keyed.sort_unstable();
        keyed.into_iter().map(|(_, s)| s.clone()).collect()
    }
}

/// The seed never appears in logs or debug output: before the draw it is the course's secret.
impl fmt::Debug for DrawSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DrawSeed(..)")
    }
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The id under which a course's draw is recorded: one per course, so the draw is decided and
/// written at most once whoever performs it. `draw-` and the course id, or for an id too long
/// to fit, `draw-` and 40 hex digits of the id's SHA-256. Valid by construction: a valid id,
/// or hex digits, after a valid prefix, within the length limit.
pub fn draw_request_id(course: &CourseId) -> RequestId {
    let raw = format!("draw-{course}");
    if raw.len() <= super::MAX_ID_LEN {
        return RequestId(raw.into());
    }
    let digest = hex(&Sha256::digest(course.as_str().as_bytes()));
    RequestId(format!("draw-{}", &digest[..40]).into())
}

/// A fresh id for a draw wake-up: each is recorded like any request, and one that arrived
/// early must not answer a later one. Valid by construction (a prefix and 32 hex digits).
pub fn wake_request_id() -> RequestId {
    RequestId(format!("wake-{}", uuid::Uuid::new_v4().simple()).into())
}

/// The student id a draw's own record carries (the draw acts for no student).
pub fn draw_actor() -> StudentId {
    StudentId("_draw".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commitment_is_the_sha256_of_the_seed() {
        let seed = DrawSeed::from_bytes([0; 32]);
        // sha256 of 32 zero bytes.
        assert_eq!(
            seed.commitment(),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
        assert_eq!(seed.hex(), "0".repeat(64));
    }

    #[test]
    fn the_rank_key_is_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2 uses a 4-byte key; HMAC pads any key, so a 32-byte key made of
        // "Jefe" and zeros gives the same MAC.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let seed = DrawSeed::from_bytes(key);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").expect("any key length");
        mac.update(b"alice");
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        let student = StudentId::parse("alice").expect("valid id");
        assert_eq!(seed.rank_key(&student), expected);
    }

    #[test]
    fn the_order_is_by_ascending_key() {
        let seed = DrawSeed::from_bytes([7; 32]);
        let students: Vec<StudentId> = (0..50)
            .map(|i| StudentId::parse(format!("s{i}")).expect("valid id"))
            .collect();
        let order = seed.order(&students);
        let keys: Vec<[u8; 32]> = order.iter().map(|s| seed.rank_key(s)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(order.len(), students.len());
    }

    #[test]
    fn draw_ids_fit_the_id_rule() {
        let short = CourseId::parse("CS101").expect("valid id");
        assert_eq!(draw_request_id(&short).as_str(), "draw-CS101");
        let long = CourseId::parse("x".repeat(64)).expect("valid id");
        let id = draw_request_id(&long);
        assert_eq!(id.as_str().len(), 45);
        assert!(RequestId::parse(id.as_str()).is_ok());
        assert!(StudentId::parse(draw_actor().as_str()).is_ok());
        assert!(RequestId::parse(wake_request_id().as_str()).is_ok());
    }
}
