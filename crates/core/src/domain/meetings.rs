//! When a course meets each week, and whether two courses clash.
//!
//! Written as a registrar writes it: `;`-separated weekly slots, each a two-letter day and a
//! half-open interval of minutes, `MO 09:00-10:30;WE 09:00-10:30`. Two courses clash when any
//! slot of one overlaps any slot of the other on the same day; slots that only touch (one ends
//! at 10:30, the other starts at 10:30) do not clash.

use std::fmt;

/// A day of the week, as slots name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Day {
    Mo,
    Tu,
    We,
    Th,
    Fr,
    Sa,
    Su,
}

impl Day {
    const ALL: [(Day, &'static str); 7] = [
        (Day::Mo, "MO"),
        (Day::Tu, "TU"),
        (Day::We, "WE"),
        (Day::Th, "TH"),
        (Day::Fr, "FR"),
        (Day::Sa, "SA"),
        (Day::Su, "SU"),
    ];

    fn parse(raw: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(raw))
            .map(|(day, _)| *day)
    }

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(day, _)| *day == self)
            .map_or("MO", |(_, name)| name)
    }
}

/// One weekly slot: a day and minutes since midnight, start inclusive, end exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    pub day: Day,
    pub start: u16,
    pub end: u16,
}

impl Slot {
    /// Whether the two slots share a minute.
    pub fn overlaps(&self, other: &Slot) -> bool {
        self.day == other.day && self.start < other.end && other.start < self.end
    }
}

/// A course's weekly meetings, sorted; empty for a course that never meets (online, thesis).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Meetings(Vec<Slot>);

/// Most slots a course may list: a bound on what every clash check costs.
pub const MAX_SLOTS: usize = 16;

/// Why a meetings text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("meetings {text:?}: {why} (write slots as \"MO 09:00-10:30;WE 09:00-10:30\")")]
pub struct MeetingsError {
    text: String,
    why: String,
}

impl Meetings {
    /// Parses `DAY HH:MM-HH:MM` slots separated by `;` (blank: no meetings).
    pub fn parse(text: &str) -> Result<Self, MeetingsError> {
        let refuse = |why: String| MeetingsError {
            text: text.to_owned(),
            why,
        };
        let mut slots = Vec::new();
        for raw in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (day, times) = raw
                .split_once(char::is_whitespace)
                .ok_or_else(|| refuse(format!("{raw:?} has no day and times")))?;
            let day = Day::parse(day.trim())
                .ok_or_else(|| refuse(format!("{day:?} is not a day (MO..SU)")))?;
            let (start, end) = times
                .trim()
                .split_once('-')
                .ok_or_else(|| refuse(format!("{times:?} is not a range HH:MM-HH:MM")))?;
            let start =
                minutes(start.trim()).ok_or_else(|| refuse(format!("{start:?} is not HH:MM")))?;
            let end = minutes(end.trim()).ok_or_else(|| refuse(format!("{end:?} is not HH:MM")))?;
            if start >= end {
                return Err(refuse(format!("{raw:?} ends before it starts")));
            }
            slots.push(Slot { day, start, end });
        }
        if slots.len() > MAX_SLOTS {
            return Err(refuse(format!(
                "{} slots, the limit is {MAX_SLOTS}",
                slots.len()
            )));
        }
        slots.sort_unstable();
        slots.dedup();
        Ok(Self(slots))
    }

    pub fn slots(&self) -> &[Slot] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the two courses meet at the same time at least once a week.
    pub fn clashes_with(&self, other: &Meetings) -> bool {
        self.0.iter().any(|a| other.0.iter().any(|b| a.overlaps(b)))
    }

    /// The slots as half-open ranges of minutes of the week, Monday 00:00 being 0: two courses
    /// clash exactly when some of their ranges overlap.
    pub fn minutes_of_week(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.0.iter().map(|slot| {
            let day = u32::from(slot.day as u8) * 24 * 60;
            (day + u32::from(slot.start), day + u32::from(slot.end))
        })
    }
}

/// `HH:MM` as minutes since midnight; `24:00` is allowed as an end of day.
fn minutes(raw: &str) -> Option<u16> {
    let (h, m) = raw.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    let total = h.checked_mul(60)?.checked_add(m)?;
    (m < 60 && total <= 24 * 60).then_some(total)
}

/// The canonical text: sorted slots, upper-case days, `;` without spaces.
impl fmt::Display for Meetings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, slot) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(
                f,
                "{} {:02}:{:02}-{:02}:{:02}",
                slot.day.as_str(),
                slot.start / 60,
                slot.start % 60,
                slot.end / 60,
                slot.end % 60
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_registrars_text_parses_and_prints_canonically() {
        let m = Meetings::parse(" we 09:00-10:30 ; MO 09:00-10:30").expect("valid");
        assert_eq!(m.to_string(), "MO 09:00-10:30;WE 09:00-10:30");
        assert!(Meetings::parse("").expect("blank").is_empty());
    }

    #[test]
    fn bad_texts_say_why() {
        for bad in [
            "XX 09:00-10:00",
            "MO 9-10",
            "MO 10:00-09:00",
            "MO 09:00",
            "MO 09:60-10:00",
            "MO 23:00-24:30",
        ] {
            assert!(Meetings::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn touching_slots_do_not_clash_overlapping_ones_do() {
        let a = Meetings::parse("MO 09:00-10:30").expect("valid");
        let touching = Meetings::parse("MO 10:30-12:00").expect("valid");
        let overlapping = Meetings::parse("MO 10:00-11:00;TU 08:00-09:00").expect("valid");
        let other_day = Meetings::parse("TU 09:00-10:30").expect("valid");
        assert!(!a.clashes_with(&touching));
        assert!(a.clashes_with(&overlapping));
        assert!(!a.clashes_with(&other_day));
        assert!(!a.clashes_with(&Meetings::default()));
    }

    fn arb_meetings() -> impl Strategy<Value = Meetings> {
        prop::collection::vec((0usize..7, 0u16..1439, 1u16..240), 0..5).prop_map(|slots| {
            let text: Vec<String> = slots
                .into_iter()
                .map(|(d, s, len)| {
                    let e = (s + len).min(1440);
                    format!(
                        "{} {:02}:{:02}-{:02}:{:02}",
                        Day::ALL[d].1,
                        s / 60,
                        s % 60,
                        e / 60,
                        e % 60
                    )
                })
                .collect();
            Meetings::parse(&text.join(";")).expect("generated slots are valid")
        })
    }

    proptest! {
        #[test]
        fn clashing_is_symmetric_and_the_canonical_text_round_trips(a in arb_meetings(), b in arb_meetings()) {
            prop_assert_eq!(a.clashes_with(&b), b.clashes_with(&a));
            prop_assert_eq!(Meetings::parse(&a.to_string()).expect("canonical"), a.clone());
            // A course that meets clashes with itself.
            prop_assert_eq!(a.clashes_with(&a), !a.is_empty());
        }

        /// The minutes of the week Postgres's clash constraint compares overlap exactly when
        /// the courses clash.
        #[test]
        fn minutes_of_the_week_overlap_exactly_when_courses_clash(a in arb_meetings(), b in arb_meetings()) {
            let overlap = a.minutes_of_week().any(|(s1, e1)| {
                b.minutes_of_week().any(|(s2, e2)| s1 < e2 && s2 < e1)
            });
            prop_assert_eq!(overlap, a.clashes_with(&b));
        }
    }
}
