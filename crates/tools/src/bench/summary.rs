//! The medians over a bench run's rounds.

use std::collections::BTreeMap;

use super::{BenchReport, Medians, Round, Scenario};
use crate::cpu::CpuShare;
use crate::rush::{RushReport, StageShare};

/// The median of some figures (0 for none).
fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The median over the rounds of one figure.
fn over(rounds: &[Round], figure: impl Fn(&Round) -> f64) -> f64 {
    median(rounds.iter().map(figure).collect())
}

/// One seatrush report standing for several: the round at the median throughput, with every
/// timing and cost replaced by its median, and the losses and violations summed, so that a
/// problem in any round shows.
fn median_rush(reports: &[&RushReport]) -> RushReport {
    let mut by_throughput: Vec<&&RushReport> = reports.iter().collect();
    by_throughput.sort_by(|a, b| a.throughput_rps.total_cmp(&b.throughput_rps));
    let Some(middle) = by_throughput.get(reports.len() / 2) else {
        unreachable!("a bench run has at least one round")
    };
    let mut out = (**middle).clone();
    let of = |f: &dyn Fn(&RushReport) -> f64| median(reports.iter().map(|r| f(r)).collect());
    let of_some = |f: &dyn Fn(&RushReport) -> Option<f64>| {
        let values: Vec<f64> = reports.iter().filter_map(|r| f(r)).collect();
        (!values.is_empty()).then(|| median(values))
    };
    out.throughput_rps = of(&|r| r.throughput_rps);
    out.publish_rps = of(&|r| r.publish_rps);
    out.elapsed_s = of(&|r| r.elapsed_s);
    out.provisional_p50_ms = of(&|r| r.provisional_p50_ms);
    out.provisional_p90_ms = of(&|r| r.provisional_p90_ms);
    out.provisional_p99_ms = of(&|r| r.provisional_p99_ms);
    out.provisional_max_ms = of(&|r| r.provisional_max_ms);
    out.final_p50_ms = of(&|r| r.final_p50_ms);
    out.final_p90_ms = of(&|r| r.final_p90_ms);
    out.final_p99_ms = of(&|r| r.final_p99_ms);
    out.final_max_ms = of(&|r| r.final_max_ms);
    out.requests_per_commit = of(&|r| r.requests_per_commit);
    out.worker_cpu_us_per_request = of_some(&|r| r.worker_cpu_us_per_request);
    out.worker_publishes_per_request = of_some(&|r| r.worker_publishes_per_request);
    out.worker_peak_rss_mib = of_some(&|r| r.worker_peak_rss_mib);
    out.worker_cpu_by_stage_us_per_request = stage_medians(reports);
    out.lost = reports.iter().map(|r| r.lost).sum();
    out.duplicated = reports.iter().map(|r| r.duplicated).sum();
    out.contradicted = reports.iter().map(|r| r.contradicted).sum();
    out.violations = reports.iter().map(|r| r.violations).sum();
    out.audit = reports.iter().flat_map(|r| r.audit.clone()).collect();
    out
}

/// The median of each part of the workers' CPU per request over the runs that measured it.
fn stage_medians(reports: &[&RushReport]) -> Option<StageShare> {
    let shares: Vec<&StageShare> = reports
        .iter()
        .filter_map(|r| r.worker_cpu_by_stage_us_per_request.as_ref())
        .collect();
    let first = shares.first()?;
    let of = |f: &dyn Fn(&StageShare) -> f64| median(shares.iter().map(|s| f(s)).collect());
    Some(StageShare {
        stages: first
            .stages
            .keys()
            .map(|&stage| (stage, of(&|s| s.stages.get(stage).copied().unwrap_or(0.0))))
            .collect(),
        broker_client_thread: of(&|s| s.broker_client_thread),
        rest: of(&|s| s.rest),
    })
}

/// Every design's CPU per request and process, the median of each over the rounds.
fn cpu_medians(rounds: &[Round]) -> BTreeMap<&'static str, CpuShare> {
    let designs: Vec<&'static str> = rounds
        .iter()
        .flat_map(|r| r.cpu_us_per_request.keys().copied())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    designs
        .into_iter()
        .map(|design| {
            let of = |f: fn(&CpuShare) -> f64| {
                median(
                    rounds
                        .iter()
                        .filter_map(|r| r.cpu_us_per_request.get(design))
                        .map(f)
                        .collect(),
                )
            };
            let share = CpuShare {
                broker: of(|c| c.broker),
                database: of(|c| c.database),
                redis: of(|c| c.redis),
                bench: of(|c| c.bench),
                workers: of(|c| c.workers),
            };
            (design, share)
        })
        .collect()
}

/// The report of a run: its rounds, and their medians.
pub fn of(scenario: Scenario, rounds: Vec<Round>) -> BenchReport {
    let batched: Vec<&RushReport> = rounds.iter().map(|r| &r.seatrush).collect();
    let single: Vec<&RushReport> = rounds.iter().map(|r| &r.seatrush_single).collect();
    let seatrush = median_rush(&batched);
    let seatrush_single = median_rush(&single);
    let budget = over(&rounds, |r| r.ceiling.elapsed_s) * 1000.0 + 1000.0;
    BenchReport {
        scenario: scenario.name(),
        ratio_to_ceiling: over(&rounds, |r| r.ratio_to_ceiling),
        ratio_to_intake_ceiling: over(&rounds, |r| r.ratio_to_intake_ceiling),
        ratio_to_stream_intake_ceiling: over(&rounds, |r| r.ratio_to_stream_intake_ceiling),
        ratio_to_naive: over(&rounds, |r| r.ratio_to_naive),
        ratio_to_redis: over(&rounds, |r| r.ratio_to_redis),
        ratio_to_redis_everysec: over(&rounds, |r| r.ratio_to_redis_everysec),
        ratio_single_to_batched: over(&rounds, |r| r.ratio_single_to_batched),
        final_p99_budget_ms: budget,
        final_p99_within_budget: seatrush.final_p99_ms <= budget,
        final_max_within_budget: seatrush.final_max_ms <= budget,
        median: Medians {
            ceiling_rps: over(&rounds, |r| r.ceiling.throughput_rps),
            intake_ceiling_rps: over(&rounds, |r| r.intake_ceiling.throughput_rps),
            stream_intake_ceiling_rps: over(&rounds, |r| r.stream_intake_ceiling.throughput_rps),
            naive_rps: over(&rounds, |r| r.naive.figures.throughput_rps),
            redis_rps: over(&rounds, |r| r.redis.figures.throughput_rps),
            redis_everysec_rps: over(&rounds, |r| r.redis_everysec.figures.throughput_rps),
            seatrush_rps: seatrush.throughput_rps,
            seatrush_single_rps: seatrush_single.throughput_rps,
        },
        cpu_us_per_request: cpu_medians(&rounds),
        seatrush,
        seatrush_single,
        rounds,
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_of_odd_and_even_counts_and_of_nothing() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![f64::NAN, 5.0]), 5.0);
    }
}
