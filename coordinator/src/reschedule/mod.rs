//! The defragmenting rescheduler on the live cluster: the cluster's state
//! as `herd-reschedule`'s model ([`live`]), a plan of live migrations that
//! lowers its fragment rate, checked against herd's migration rules
//! ([`plan`]), the engine that runs a plan's moves ([`apply`]) for the CLI
//! and the leader alike ([`leader`]), the leader's loop on a schedule
//! ([`auto`]), the placement fallback for pending jobs ([`fallback`]) and
//! both loops' settings ([`config`]).
//!
//! Planning is a pure function of a [`crate::state::ClusterState`]; the
//! moves themselves go through `Command::StartMigration` like any
//! operator's, which re-checks each against the state at that moment.

pub mod apply;
pub mod auto;
pub mod config;
pub mod fallback;
pub mod leader;
pub mod live;
pub mod plan;

pub use live::{build, shape, LiveModel, LiveVm};
pub use plan::{plan, LiveMove, LivePlan, LiveSolver, PlanError, PlanRequest};

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::coordinator::Coordinator;

/// Starts the loops `config` turns on (each acts only while this member
/// leads): the defragmenting loop when `every` is set, the placement
/// fallback unless its window is zero.
pub fn spawn_loops(
    coordinator: &Arc<Coordinator>,
    config: &config::Rescheduling,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(auto) = &config.auto {
        tasks.push(tokio::spawn(auto::run(coordinator.clone(), auto.clone())));
    }
    if config.fallback.enabled() {
        tasks.push(tokio::spawn(fallback::run::run(
            coordinator.clone(),
            config.fallback,
        )));
    }
    tasks
}
