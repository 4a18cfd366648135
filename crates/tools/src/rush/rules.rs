//! The registration rules' cost, measured: the same crowd (courses with credits and clashing
//! meetings, choices fired at once, one student in ten also swapping) run twice in one
//! invocation, without a student registry and with one, each in a fresh database of its own
//! (a registry, once loaded, stays on for its database), and the throughputs compared.

use serde::Serialize;

use super::{RulesCrowd, Rush, RushConfig, RushReport};

/// The two runs and the throughput with the rules as a share of the throughput without.
#[derive(Debug, Clone, Serialize)]
pub struct RulesComparison {
    pub without_registry: RushReport,
    pub with_registry: RushReport,
    pub throughput_ratio: f64,
}

impl RulesComparison {
    pub fn passed(&self) -> bool {
        self.without_registry.passed()
            && self.with_registry.passed()
            && self.with_registry.contradicted == 0
    }
}

/// Runs the crowd of `config` without and then with a registry.
pub async fn compare(config: RushConfig, show_progress: bool) -> anyhow::Result<RulesComparison> {
    let without = phase(&config, false, show_progress).await?;
    let with = phase(&config, true, show_progress).await?;
    let ratio = with.report.throughput_rps / without.report.throughput_rps.max(1e-9);
    Ok(RulesComparison {
        without_registry: without.report,
        with_registry: with.report,
        throughput_ratio: ratio,
    })
}

/// One run, in a database created for it and dropped after.
async fn phase(config: &RushConfig, registry: bool, show_progress: bool) -> anyhow::Result<Rush> {
    let suffix = if registry { "rules" } else { "plain" };
    super::fresh::in_fresh_database(config, suffix, |mut config| {
        config.rules = Some(RulesCrowd { registry });
        super::run(config, show_progress)
    })
    .await
}

/// The comparison as a short text for people.
pub fn describe(c: &RulesComparison) -> String {
    format!(
        "without a registry:\n{}\nwith a registry of {} students:\n{}\nthroughput with the rules: \
         {:.2} of the throughput without (target at least 0.70)\n",
        super::describe(&c.without_registry),
        c.with_registry.students,
        super::describe(&c.with_registry),
        c.throughput_ratio
    )
}
