//! The cluster as this member's replicated state shows it: nodes, jobs,
//! allocations, migrations in flight and power budgets, read at scrape
//! time. Every member reports the same figures for these (up to what it
//! has applied). What only the leader knows, because heartbeats never go
//! through Raft (heartbeat ages, power drawn), only the leader reports.

use std::collections::BTreeMap;

use herd_api::alloc::AllocStatus;
use herd_api::node::NodeStatus;
use herd_api::proto::v1::GroupPowerStatus;
use herd_metrics::prometheus_client::encoding::DescriptorEncoder;
use herd_metrics::prometheus_client::registry::Unit;
use herd_metrics::write;
use tokio::time::Instant;

use crate::coordinator::Coordinator;
use crate::state::{ClusterState, JobStatus};

use super::migrations::MigrationTally;

const NODE_STATUSES: [NodeStatus; 3] = [NodeStatus::Ready, NodeStatus::Draining, NodeStatus::Down];
const JOB_STATUSES: [JobStatus; 5] = [
    JobStatus::Pending,
    JobStatus::Running,
    JobStatus::Complete,
    JobStatus::Stopped,
    JobStatus::Failed,
];

/// What one scrape read from the state, under one lock.
#[derive(Debug, Default)]
pub struct ClusterView {
    nodes: BTreeMap<&'static str, u64>,
    jobs: BTreeMap<&'static str, u64>,
    blocked_jobs: u64,
    allocs: BTreeMap<&'static str, u64>,
    active_migrations: BTreeMap<(String, &'static str), u64>,
    /// Budget watts, cap and hard thresholds in watts, by group.
    budgets: BTreeMap<String, (u64, f64, f64)>,
    /// Leader only: each group's status from the nodes' heartbeats.
    power: Vec<GroupPowerStatus>,
    /// Leader only: seconds since each node's last heartbeat.
    heartbeat_ages: Vec<(String, f64)>,
}

impl ClusterView {
    /// Reads the state of `coordinator` (and, while it leads, its memory of
    /// heartbeats), counting the migrations that ended since the last read
    /// into `tally`.
    pub fn read(coordinator: &Coordinator, tally: &mut MigrationTally) -> Self {
        let leading = coordinator.is_leader();
        let liveness = coordinator.liveness();
        let heard = if leading {
            liveness.last_heard()
        } else {
            Vec::new()
        };
        let now = Instant::now();
        coordinator.read_state(|state| {
            tally.observe(state.migrations.values());
            let mut view = Self::from_state(state);
            if leading {
                view.power = crate::power::report::group_status(state, |node| {
                    liveness.usage(node).map(|(usage, _)| usage)
                });
                view.heartbeat_ages = heard
                    .into_iter()
                    .filter(|(node, _)| {
                        state
                            .nodes
                            .get(node)
                            .is_some_and(|n| n.status != NodeStatus::Down)
                    })
                    .map(|(node, at)| (node, now.saturating_duration_since(at).as_secs_f64()))
                    .collect();
            }
            view
        })
    }

    /// What every member reads alike.
    fn from_state(state: &ClusterState) -> Self {
        let mut view = Self::default();
        for status in NODE_STATUSES {
            view.nodes.insert(status.as_str(), 0);
        }
        for node in state.nodes.values() {
            *view.nodes.entry(node.status.as_str()).or_default() += 1;
        }
        for status in JOB_STATUSES {
            view.jobs.insert(status.as_str(), 0);
        }
        for job in state.jobs.values() {
            *view.jobs.entry(job.status.as_str()).or_default() += 1;
            let open = matches!(job.status, JobStatus::Pending | JobStatus::Running);
            if open && job.blocked.is_some() {
                view.blocked_jobs += 1;
            }
        }
        for status in AllocStatus::ALL {
            view.allocs.insert(status.as_str(), 0);
        }
        for alloc in state.allocations.values() {
            *view.allocs.entry(alloc.status.as_str()).or_default() += 1;
        }
        for m in state.migrations.values().filter(|m| m.is_active()) {
            *view
                .active_migrations
                .entry((m.kind.clone(), m.phase.as_str()))
                .or_default() += 1;
        }
        for (group, budget) in &state.power_budgets {
            let watts = budget.watts as f64;
            view.budgets.insert(
                group.clone(),
                (
                    budget.watts,
                    watts * f64::from(budget.cap_permille) / 1000.0,
                    watts * f64::from(budget.hard_permille) / 1000.0,
                ),
            );
        }
        view
    }

    /// Writes what was read.
    pub fn encode(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let by = |label: &'static str, rows: &BTreeMap<&'static str, u64>| {
            rows.iter()
                .map(move |(value, n)| ([(label, *value)], *n))
                .collect::<Vec<_>>()
        };
        write::gauge_family(
            encoder,
            "nodes",
            "Registered nodes, by status (ready, draining, down).",
            None,
            by("status", &self.nodes),
        )?;
        write::gauge_family(
            encoder,
            "jobs",
            "Jobs, by status (pending, running, complete, stopped, failed).",
            None,
            by("status", &self.jobs),
        )?;
        write::gauge(
            encoder,
            "scheduler_blocked_jobs",
            "Pending or running jobs with instances the scheduler cannot place now.",
            None,
            self.blocked_jobs,
        )?;
        write::gauge_family(
            encoder,
            "allocations",
            "Allocations the state holds, by status.",
            None,
            by("status", &self.allocs),
        )?;
        write::gauge_family(
            encoder,
            "migrations_active",
            "Live migrations in flight, by kind and phase.",
            None,
            self.active_migrations
                .iter()
                .map(|((kind, phase), n)| ([("kind", kind.as_str()), ("phase", *phase)], *n)),
        )?;
        let watts = write::watts();
        write::gauge_family(
            encoder,
            "power_budget",
            "The GPU power budget of each group (cluster, or a node label KEY=VALUE).",
            Some(&watts),
            self.budgets
                .iter()
                .map(|(group, (budget, _, _))| ([("group", group.as_str())], *budget)),
        )?;
        write::gauge_family(
            encoder,
            "power_threshold",
            "Each group's capping thresholds: cap (low-priority work capped) and hard (everything capped).",
            Some(&watts),
            self.budgets.iter().flat_map(|(group, (_, cap, hard))| {
                [
                    ([("group", group.as_str()), ("threshold", "cap")], *cap),
                    ([("group", group.as_str()), ("threshold", "hard")], *hard),
                ]
            }),
        )?;
        let group = |s: &GroupPowerStatus| {
            s.budget
                .as_ref()
                .map(|b| b.group.clone())
                .unwrap_or_default()
        };
        write::gauge_family(
            encoder,
            "power_draw",
            "Leader only: GPU power each group draws, summed from its nodes' last heartbeats.",
            Some(&watts),
            self.power
                .iter()
                .map(|s| (vec![("group", group(s))], s.draw_watts)),
        )?;
        write::gauge_family(
            encoder,
            "power_capped_gpus",
            "Leader only: GPUs of each group held under their maximum power limit.",
            None,
            self.power
                .iter()
                .map(|s| (vec![("group", group(s))], u64::from(s.capped_gpus))),
        )?;
        write::gauge_family(
            encoder,
            "power_reporting_nodes",
            "Leader only: nodes of each group whose heartbeats carried power figures.",
            None,
            self.power
                .iter()
                .map(|s| (vec![("group", group(s))], u64::from(s.reporting_nodes))),
        )?;
        write::gauge_family(
            encoder,
            "node_heartbeat_age",
            "Leader only: time since each node not marked down last heartbeated (one series per node).",
            Some(&Unit::Seconds),
            self.heartbeat_ages
                .iter()
                .map(|(node, age)| ([("node", node.as_str())], *age)),
        )?;
        write::gauge(
            encoder,
            "node_heartbeat_age_max",
            "Leader only (0 elsewhere): the longest time since a node not marked down heartbeated.",
            Some(&Unit::Seconds),
            self.heartbeat_ages
                .iter()
                .map(|(_, age)| *age)
                .fold(0.0f64, f64::max),
        )
    }
}
