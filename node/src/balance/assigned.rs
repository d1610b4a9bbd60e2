//! The allocations the coordinators last assigned to this node, reduced to
//! what balancing needs, published by the link on every assignment set.
//!
//! A `watch` channel rather than a message: the balancer only ever wants
//! the latest set, and reads it at its own pace (every tick).

use herd_api::proto::agent::AssignedAllocation;
use herd_api::resources::Resources;
use tokio::sync::watch;

/// One allocation assigned here.
#[derive(Debug, Clone, PartialEq)]
pub struct AssignedWork {
    /// The allocation.
    pub alloc_id: String,
    /// Its generation here (what an offline move begins from).
    pub generation: u64,
    /// Its job.
    pub job: String,
    /// Its driver (what can move it, if anything).
    pub driver: String,
    /// What it reserves on this node (counted in the node's load).
    pub resources: Resources,
    /// The job's `[balance] movable`.
    pub movable: bool,
    /// A migration involves it here (either side): it is already moving,
    /// so balancing leaves it alone.
    pub migrating: bool,
    /// The GPUs it holds here (none while only readied as a migration's
    /// target).
    pub gpu_indices: Vec<u32>,
}

/// The link's end.
pub type AssignedTx = watch::Sender<Vec<AssignedWork>>;
/// The balancer's end.
pub type AssignedRx = watch::Receiver<Vec<AssignedWork>>;

/// A channel holding the empty set until the first assignment arrives.
pub fn channel() -> (AssignedTx, AssignedRx) {
    watch::channel(Vec::new())
}

/// The balancing view of one assignment; `None` when it names no task (the
/// link reports such an assignment as failed anyway).
pub fn from_assignment(alloc: &AssignedAllocation) -> Option<AssignedWork> {
    let task = alloc.task.as_ref()?;
    let resources = task
        .resources
        .as_ref()
        .map(|r| Resources {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            gpus: r.gpus,
            gpu_model: None,
        })
        .unwrap_or_default();
    Some(AssignedWork {
        alloc_id: alloc.id.clone(),
        generation: alloc.generation,
        job: alloc.job.clone(),
        driver: task.driver.clone(),
        resources,
        movable: alloc.balance_movable,
        migrating: alloc.migration.is_some(),
        gpu_indices: if alloc.migration.as_ref().is_some_and(|m| m.role == "target") {
            Vec::new()
        } else {
            alloc.gpu_indices.clone()
        },
    })
}
