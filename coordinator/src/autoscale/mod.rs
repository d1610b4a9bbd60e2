//! Autoscaling of inference services, and `herd service status|scale`.
//!
//! - [`policy`]: the decision, pure (load and latency objectives,
//!   hysteresis, cooldowns; in the spirit of Faro, see there).
//! - [`stats`]: each instance's engine stats read from its agent, and the
//!   service-wide load and percentiles.
//! - [`apply`]: [`Command::ScaleJob`], the replicated change of a service's
//!   count and its bounded log of scaling events.
//! - [`service`]: the `Services` gRPC service.
//! - [`resubmit`]: a resubmitted spec keeps the autoscaler's count.
//! - [`run`]: the leader's loop.
//!
//! Why the leader decides (and not the agents, which already see every
//! instance's stats for dispatch): a scaling decision ends in a Raft write
//! anyway; one decider per term needs no agreement between agents that
//! may see different stats at different times, and fencing the write by
//! the leader's term (as node-down verdicts are) means a deposed leader's
//! late decision is void. The cooldowns are measured from the replicated
//! scaling events, so a new leader honours them; only the load history
//! behind scale-in (the peak over the scale-in window) starts afresh, so
//! a new leader waits one window before scaling in.

pub mod apply;
pub mod policy;
pub mod resubmit;
pub mod service;
pub mod stats;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use herd_api::autoscale::AutoscaleSpec;

use crate::coordinator::{now_ms, Coordinator};
use crate::machine::command::Command;
use crate::state::{ClusterState, JobStatus};
use apply::{ScaleRequest, SOURCE_AUTOSCALER};
use policy::{decide, Decision, Observation};
use stats::InstanceView;

/// How often the leader looks at its autoscaled services.
pub const TICK: Duration = Duration::from_millis(1000);

/// A service's summed load over time, as this leader watched it.
#[derive(Debug, Default)]
struct History {
    /// When watching began (leader's clock, ms).
    since_ms: u64,
    /// (when, summed load), oldest first, within the scale-in window.
    loads: VecDeque<(u64, f64)>,
}

impl History {
    /// Records `load` at `now_ms`, forgets what is older than `window_ms`,
    /// and returns the peak over what is left.
    fn record(&mut self, now_ms: u64, load: f64, window_ms: u64) -> f64 {
        if self.loads.is_empty() && self.since_ms == 0 {
            self.since_ms = now_ms;
        }
        self.loads.push_back((now_ms, load));
        while self
            .loads
            .front()
            .is_some_and(|(at, _)| now_ms.saturating_sub(*at) > window_ms)
        {
            self.loads.pop_front();
        }
        self.loads.iter().map(|(_, l)| *l).fold(0.0, f64::max)
    }
}

/// What one tick reads of an autoscaled service.
struct Watched {
    job: String,
    spec: AutoscaleSpec,
    count: u32,
    last_change_ms: Option<u64>,
    instances: Vec<(InstanceView, Option<String>)>,
}

fn autoscaled(state: &ClusterState) -> Vec<Watched> {
    state
        .jobs
        .values()
        .filter(|job| matches!(job.status, JobStatus::Pending | JobStatus::Running))
        .filter(|job| job.spec.task.driver == "inference")
        .filter_map(|job| {
            let spec = *job.spec.autoscale.clone()?;
            let name = job.spec.name.clone();
            Some(Watched {
                last_change_ms: state
                    .scaling
                    .get(&name)
                    .and_then(|log| log.last())
                    .map(|e| e.at_ms),
                instances: stats::instances_of(state, &name),
                count: job.spec.count,
                spec,
                job: name,
            })
        })
        .collect()
}

/// The leader's autoscaler: every [`TICK`], for each inference service
/// with an `[autoscale]` table, reads its instances' stats, asks
/// [`policy::decide`] and proposes the change, fenced by its term. Runs
/// until the member shuts down; idle on followers.
pub async fn run(coordinator: Arc<Coordinator>) {
    let mut histories: BTreeMap<String, History> = BTreeMap::new();
    let mut leading: Option<u64> = None;
    loop {
        tokio::time::sleep(TICK).await;
        let Some(term) = coordinator.leading_term() else {
            leading = None;
            histories.clear();
            continue;
        };
        if leading != Some(term) {
            // A new term: what an earlier term watched is not this one's.
            histories.clear();
            leading = Some(term);
        }
        let services = coordinator.read_state(autoscaled);
        histories.retain(|job, _| services.iter().any(|s| &s.job == job));
        for service in services {
            let view = stats::gather(service.instances).await;
            let now = now_ms();
            let history = histories.entry(service.job.clone()).or_default();
            let load = view.total_load();
            let peak_load = history.record(now, load, service.spec.scale_in_cooldown_ms);
            let observation = Observation {
                now_ms: now,
                count: service.count,
                ready: view.ready(),
                load,
                peak_load,
                observed_ms: now.saturating_sub(history.since_ms),
                ttft_p99_ms: view.ttft().p99_to_act_on(),
                tbt_p99_ms: view.tbt().p99_to_act_on(),
                last_change_ms: service.last_change_ms,
            };
            match decide(&service.spec, &observation) {
                Decision::Hold(why) => {
                    tracing::trace!(service = %service.job, %why, "autoscaler holds");
                }
                Decision::Scale { to, reason } => {
                    tracing::info!(
                        service = %service.job,
                        from = service.count,
                        to,
                        %reason,
                        "autoscaler scales"
                    );
                    let command = Command::ScaleJob {
                        scale: ScaleRequest {
                            job: service.job.clone(),
                            count: to,
                            expect_count: Some(service.count),
                            source: SOURCE_AUTOSCALER.to_string(),
                            reason,
                        },
                        now_ms: 0,
                    };
                    if let Err(e) = coordinator.decide_as_leader(term, command).await {
                        tracing::debug!(service = %service.job, error = %e, "scaling not applied");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_keeps_the_peak_of_its_window_only() {
        let mut history = History::default();
        assert_eq!(history.record(1_000, 2.0, 5_000), 2.0);
        assert_eq!(history.record(3_000, 0.5, 5_000), 2.0);
        assert_eq!(history.record(6_000, 0.4, 5_000), 2.0);
        // The 2.0 at 1 000 is now more than 5 s old.
        assert_eq!(history.record(6_500, 0.3, 5_000), 0.5);
        assert_eq!(history.since_ms, 1_000);
    }
}
