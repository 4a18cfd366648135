//! The crowd of a rush: which students ask for which courses, in which order.

use rand::distr::{Distribution, weighted::WeightedIndex};
use rand::{Rng, SeedableRng};

use seatrush_core::domain::{Action, CourseId, Request, RequestId, StudentId};

/// The course ids of a rush: `<tag>-c0000`, `<tag>-c0001`, ...
pub fn course_ids(tag: &str, count: usize) -> anyhow::Result<Vec<CourseId>> {
    (0..count)
        .map(|k| Ok(CourseId::parse(format!("{tag}-c{k:04}"))?))
        .collect()
}

/// Every student asks for `choices` different courses. Popularity is skewed like a Zipf law:
/// course k is wanted about 1/(k+1) as often as the first, so a few courses are hammered and the
/// long tail stays calm, as on a real opening day. Arrival order is shuffled.
pub fn crowd(
    courses: &[CourseId],
    students: usize,
    choices: usize,
    tag: &str,
    seed: u64,
) -> anyhow::Result<Vec<Request>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let weights: Vec<f64> = (0..courses.len()).map(|k| 1.0 / (k as f64 + 1.0)).collect();
    let pick = WeightedIndex::new(&weights)?;
    let choices = choices.min(courses.len());
    let mut requests = Vec::with_capacity(students * choices);
    let mut chosen = Vec::with_capacity(choices);
    for s in 0..students {
        chosen.clear();
        while chosen.len() < choices {
            let k = pick.sample(&mut rng);
            if !chosen.contains(&k) {
                chosen.push(k);
            }
        }
        let student = StudentId::parse(format!("{tag}-s{s}"))?;
        for (n, &k) in chosen.iter().enumerate() {
            requests.push(Request {
                request_id: RequestId::parse(format!("{tag}-s{s}-{n}"))?,
                action: Action::Enroll,
                course_id: courses[k].clone(),
                student_id: student.clone(),
            });
        }
    }
    for i in (1..requests.len()).rev() {
        requests.swap(i, rng.random_range(0..=i));
    }
    Ok(requests)
}

/// The weekly meetings of course `k` when the rules are on: one of 30 slots (five days, six
/// hours), so every course clashes with the others of its slot.
pub fn meetings_of(k: usize) -> String {
    let day = ["MO", "TU", "WE", "TH", "FR"][k % 5];
    let hour = 8 + (k / 5) % 6;
    format!("{day} {hour:02}:00-{hour:02}:50")
}

/// One student in `every` also sends a swap, at once with their choices: into a course they
/// did not choose, giving up their first choice (which they may not hold yet: then it is
/// refused `not_enrolled`, or, without a registry, it releases nothing).
pub fn with_swaps(
    mut requests: Vec<Request>,
    courses: &[CourseId],
    every: usize,
    seed: u64,
) -> anyhow::Result<Vec<Request>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5a5a);
    let mut first: std::collections::BTreeMap<&StudentId, (&CourseId, Vec<&CourseId>, &RequestId)> =
        Default::default();
    for r in &requests {
        let entry = first
            .entry(&r.student_id)
            .or_insert((&r.course_id, Vec::new(), &r.request_id));
        entry.1.push(&r.course_id);
        if r.request_id.as_str() < entry.2.as_str() {
            entry.0 = &r.course_id;
            entry.2 = &r.request_id;
        }
    }
    let mut swaps = Vec::new();
    for (n, (student, (given_up, chosen, _))) in first.into_iter().enumerate() {
        if n % every.max(1) != 0 || chosen.len() >= courses.len() {
            continue;
        }
        let into = loop {
            let k = rng.random_range(0..courses.len());
            if !chosen.contains(&&courses[k]) {
                break &courses[k];
            }
        };
        swaps.push(Request {
            request_id: RequestId::parse(format!("{student}-swap"))?,
            action: Action::Swap(given_up.clone()),
            course_id: into.clone(),
            student_id: student.clone(),
        });
    }
    // Each swap lands among the choices, in the shuffled order.
    for swap in swaps {
        requests.push(swap);
        let last = requests.len() - 1;
        requests.swap(last, rng.random_range(0..=last));
    }
    Ok(requests)
}

/// Publishes every tenth request a second time under the same request id, at the end, as
/// impatient clients do.
pub fn with_duplicates(mut requests: Vec<Request>) -> Vec<Request> {
    let duplicates: Vec<Request> = requests.iter().step_by(10).cloned().collect();
    requests.extend(duplicates);
    requests
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    #[test]
    fn each_student_asks_for_distinct_courses_and_popularity_is_skewed() {
        let courses = course_ids("t", 50).unwrap();
        let requests = crowd(&courses, 2000, 3, "t", 1).unwrap();
        assert_eq!(requests.len(), 6000);
        let mut per_student: HashMap<&str, HashSet<&str>> = HashMap::new();
        for r in &requests {
            assert!(
                per_student
                    .entry(r.student_id.as_str())
                    .or_default()
                    .insert(r.course_id.as_str())
            );
        }
        let count = |c: &CourseId| requests.iter().filter(|r| &r.course_id == c).count();
        assert!(count(&courses[0]) > 5 * count(&courses[49]));
        let ids: HashSet<&str> = requests.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(ids.len(), requests.len(), "request ids are unique");
    }

    #[test]
    fn the_same_seed_gives_the_same_crowd() {
        let courses = course_ids("t", 10).unwrap();
        assert_eq!(
            crowd(&courses, 100, 2, "t", 9).unwrap(),
            crowd(&courses, 100, 2, "t", 9).unwrap()
        );
    }
}
