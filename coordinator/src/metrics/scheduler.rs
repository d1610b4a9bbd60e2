//! What the leader's scheduling loop counts as its plans are applied: the
//! one place that sees each plan's outcome, so nothing in `apply` counts.

use herd_metrics::prometheus_client::metrics::counter::Counter;
use herd_metrics::prometheus_client::metrics::family::Family;
use herd_metrics::prometheus_client::registry::Registry;

use crate::error::CoordinatorError;
use crate::machine::command::CommandResult;
use crate::routing::forward::Written;

/// The outcome label of a plan.
type Outcome = [(&'static str, &'static str); 1];

/// Plans and placements, counted by the member that led when each plan
/// was applied (sum them over the members for the cluster's count).
#[derive(Debug, Default)]
pub struct SchedulerCounters {
    plans: Family<Outcome, Counter>,
    placements: Counter,
    placement_rejections: Counter,
    evictions: Counter,
}

impl SchedulerCounters {
    /// Counts what proposing one plan came to.
    ///
    /// `applied`: every placement committed; `partial`: some refused at
    /// apply (the state moved since the plan was built); `refused`: the
    /// whole plan refused at apply (a stale job version, a fenced term) or
    /// every placement refused; `failed`: not committed (leadership lost).
    pub fn record(&self, result: &Result<Written, CoordinatorError>) {
        let outcome = match result {
            Ok(written) => match &written.result {
                CommandResult::PlanApplied {
                    placed,
                    evicted,
                    rejected,
                } => {
                    self.placements.inc_by(placed.len() as u64);
                    self.evictions.inc_by(evicted.len() as u64);
                    self.placement_rejections.inc_by(rejected.len() as u64);
                    match (placed.is_empty(), rejected.is_empty()) {
                        (_, true) => "applied",
                        (false, false) => "partial",
                        (true, false) => "refused",
                    }
                }
                _ => "applied",
            },
            Err(CoordinatorError::Rejected(_)) => "refused",
            Err(_) => "failed",
        };
        self.plans.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// Registers the counters in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "scheduler_plans",
            "Placement plans this member proposed as leader, by outcome (applied, partial, refused, failed)",
            self.plans.clone(),
        );
        registry.register(
            "scheduler_placements",
            "Allocations placed by plans this member proposed as leader",
            self.placements.clone(),
        );
        registry.register(
            "scheduler_placement_rejections",
            "Placements refused when their plan was applied (the state had changed since it was built)",
            self.placement_rejections.clone(),
        );
        registry.register(
            "scheduler_evictions",
            "Allocations evicted (preempted) by plans this member proposed as leader",
            self.evictions.clone(),
        );
    }

    /// Placements counted so far (for tests).
    pub fn placements(&self) -> u64 {
        self.placements.get()
    }

    /// Plans counted so far with `outcome` (for tests).
    pub fn plans(&self, outcome: &'static str) -> u64 {
        self.plans
            .get(&[("outcome", outcome)])
            .map_or(0, |c| c.get())
    }
}

#[cfg(test)]
mod tests {
    use crate::machine::command::Rejection;

    use super::*;

    fn applied(placed: usize, rejected: usize) -> Result<Written, CoordinatorError> {
        Ok(Written {
            result: CommandResult::PlanApplied {
                placed: (0..placed).map(|i| format!("a-{i}")).collect(),
                evicted: vec!["old".into()],
                rejected: (0..rejected).map(|i| format!("no room {i}")).collect(),
            },
            log_index: 7,
        })
    }

    #[test]
    fn each_plan_is_counted_by_outcome_and_its_placements_summed() {
        let counters = SchedulerCounters::default();
        counters.record(&applied(3, 0));
        counters.record(&applied(1, 2));
        counters.record(&applied(0, 1));
        counters.record(&Err(CoordinatorError::Rejected(Rejection::StalePlan(
            "old version".into(),
        ))));
        counters.record(&Err(CoordinatorError::Unavailable("stepped down".into())));
        assert_eq!(counters.plans("applied"), 1);
        assert_eq!(counters.plans("partial"), 1);
        assert_eq!(counters.plans("refused"), 2);
        assert_eq!(counters.plans("failed"), 1);
        assert_eq!(counters.placements(), 4);
        assert_eq!(counters.placement_rejections.get(), 3);
        assert_eq!(counters.evictions.get(), 3);
    }
}
