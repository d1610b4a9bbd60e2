//! The dashboard's memory of the recent past: a bounded ring of samples
//! (fragment rate, CPU in use, running allocations) taken every
//! [`SAMPLE_EVERY`] by [`run_sampler`], so that the pages can chart "over
//! time" without anything persisted or replicated.
//!
//! Each member samples its own applied state: a member restarted starts
//! with an empty history, and a follower's samples may lag the leader's by
//! what it has not applied yet.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_api::node::NodeStatus;

use crate::coordinator::Coordinator;
use crate::reschedule;
use crate::state::ClusterState;

/// How often the sampler reads the state.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Samples kept: one hour at [`SAMPLE_EVERY`].
pub const HISTORY_LEN: usize = 720;

/// The CPU of the VM shape whose fragments the fragment rate counts, in
/// millicores: the default of `herd reschedule plan` (16 cores, the VMR2L
/// paper's target), so the dashboard and that command agree.
pub const FR_TARGET_CPU_MILLIS: u64 = 16_000;

/// One reading of the cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it was taken, ms since the epoch (this member's clock).
    pub at_ms: u64,
    /// The log index of the state it was read from.
    pub applied_index: u64,
    /// The fragment rate for a [`FR_TARGET_CPU_MILLIS`] shape, 0.0 to 1.0.
    pub fragment_rate: f64,
    /// CPU held by allocations on ready nodes, millicores.
    pub cpu_used_millis: u64,
    /// CPU of the ready nodes, millicores.
    pub cpu_total_millis: u64,
    /// Allocations running.
    pub running_allocs: u64,
}

/// The fragment rate of `state` for a [`FR_TARGET_CPU_MILLIS`] shape (no
/// memory in the shape), computed exactly as `herd reschedule plan`
/// computes its "before" figure.
pub fn fragment_rate(state: &ClusterState) -> f64 {
    let shape = reschedule::shape(FR_TARGET_CPU_MILLIS, 0);
    let model = reschedule::build(state, shape);
    herd_reschedule::objective::initial_fragment_rate(&model.instance, shape)
}

/// A sample of `state`, read at `applied_index`, taken at `at_ms`.
pub fn sample(state: &ClusterState, applied_index: u64, at_ms: u64) -> Sample {
    let mut cpu_used = 0u64;
    let mut cpu_total = 0u64;
    for node in state.nodes.values() {
        if node.status != NodeStatus::Ready {
            continue;
        }
        cpu_total = cpu_total.saturating_add(node.capacity.cpu_millis);
        for alloc in state.allocs_on_node(&node.name) {
            if alloc.status.holds_resources() {
                cpu_used = cpu_used.saturating_add(alloc.resources.cpu_millis);
            }
        }
    }
    let running = state
        .allocations
        .values()
        .filter(|a| a.status == herd_api::alloc::AllocStatus::Running)
        .count();
    Sample {
        at_ms,
        applied_index,
        fragment_rate: fragment_rate(state),
        cpu_used_millis: cpu_used,
        cpu_total_millis: cpu_total,
        running_allocs: u64::try_from(running).unwrap_or(u64::MAX),
    }
}

/// The last samples, oldest first, at most `capacity` of them.
#[derive(Debug)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
    capacity: usize,
}

impl History {
    /// An empty history keeping at most `capacity` samples (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            samples: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    /// Adds `sample`, forgetting the oldest when full.
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        while samples.len() >= self.capacity {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Every sample kept, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new(HISTORY_LEN)
    }
}

/// Samples `coordinator`'s applied state into `history` every
/// [`SAMPLE_EVERY`], the first at once, until the task is aborted.
pub async fn run_sampler(coordinator: Arc<Coordinator>, history: Arc<History>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = herd_api::clock::now_ms();
        let (index, reading) = coordinator.read_state_at(|s| sample(s, 0, now));
        history.push(Sample {
            applied_index: index,
            ..reading
        });
    }
}

#[cfg(test)]
mod tests {
    use herd_api::alloc::AllocStatus;
    use herd_api::job::JobType;

    use super::*;
    use crate::testkit::{alloc_update, place, report, spec};

    fn at(ms: u64) -> Sample {
        Sample {
            at_ms: ms,
            applied_index: ms,
            fragment_rate: 0.5,
            cpu_used_millis: 0,
            cpu_total_millis: 0,
            running_allocs: 0,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_samples_oldest_first() {
        let history = History::new(3);
        assert!(history.samples().is_empty());
        for ms in 1..=5 {
            history.push(at(ms));
        }
        let kept: Vec<u64> = history.samples().iter().map(|s| s.at_ms).collect();
        assert_eq!(kept, vec![3, 4, 5]);
        let one = History::new(0);
        one.push(at(1));
        one.push(at(2));
        assert_eq!(one.samples(), vec![at(2)]);
    }

    #[test]
    fn a_sample_counts_what_allocations_hold_on_ready_nodes() {
        let mut state = ClusterState::default();
        let mut web = spec("web", JobType::Service, 3);
        web.task.resources.cpu_millis = 1000;
        let first = place(&mut state, &["n1", "n2"], vec![web], 0);
        for (index, n) in (first..).zip(["n1", "n2"]) {
            let updates: Vec<_> = state
                .allocs_on_node(n)
                .map(|a| alloc_update(a, AllocStatus::Running))
                .collect();
            report(&mut state, index, n, updates, 1);
        }
        let total: u64 = state.nodes.values().map(|n| n.capacity.cpu_millis).sum();
        let s = sample(&state, 42, 7);
        assert_eq!((s.at_ms, s.applied_index), (7, 42));
        assert_eq!(s.cpu_used_millis, 3000);
        assert_eq!(s.cpu_total_millis, total);
        assert_eq!(s.running_allocs, 3);
        assert_eq!(s.fragment_rate, fragment_rate(&state));
        assert!((0.0..=1.0).contains(&s.fragment_rate));
    }
}
