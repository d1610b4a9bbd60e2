//! The plan the leader proposes for one job version, as it travels through
//! Raft, and its form for the scheduler's re-check inside `apply`.
//!
//! Encoded with bincode in the log: fields keep their order (a named struct
//! encodes exactly as the tuple it replaced, so older entries still decode).
//! A plan that binds GPU indices travels as JSON in its own command
//! (`Command::ApplyGpuPlan`, see `machine::plan_codec`), so that entries
//! logged before placements had GPU indices still decode.

use serde::{Deserialize, Serialize};

use crate::scheduler::{self, Placement, PlacementPlan};

/// A placement plan for one job version, as proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCommand {
    /// The job.
    pub job: String,
    /// The version the plan was built for; a plan for an older version is stale.
    pub job_version: u64,
    /// Allocations to create.
    pub placements: Vec<PlannedPlacement>,
    /// Allocations to evict to make room.
    pub evictions: Vec<PlannedEviction>,
    /// Why instances stay unplaced, when some do.
    pub blocked: Option<String>,
}

/// One instance to place on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedPlacement {
    /// The job's instance number.
    pub instance: u32,
    /// The node it goes to.
    pub node: String,
    /// The GPUs it gets there, by index (empty: none asked for; in a plan
    /// logged before GPUs were bound, `apply` chooses them).
    #[serde(default)]
    pub gpu_indices: Vec<u32>,
}

/// One allocation to evict, and the instance it makes room for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedEviction {
    /// The allocation evicted.
    pub alloc_id: String,
    /// The node it runs on.
    pub node: String,
    /// The instance of the planned job that needs its room.
    pub for_instance: u32,
}

impl PlannedPlacement {
    /// `instance` on `node`.
    pub fn new(instance: u32, node: impl Into<String>) -> Self {
        Self {
            instance,
            node: node.into(),
            gpu_indices: Vec::new(),
        }
    }
}

/// The scheduler's form of a proposed plan, for re-checking inside `apply`.
pub fn to_scheduler_plan(command: &PlanCommand) -> PlacementPlan {
    PlacementPlan {
        placements: command
            .placements
            .iter()
            .map(|p| Placement {
                instance: p.instance,
                node: p.node.clone(),
                gpu_indices: p.gpu_indices.clone(),
            })
            .collect(),
        evictions: command
            .evictions
            .iter()
            .map(|e| scheduler::Eviction {
                alloc_id: e.alloc_id.clone(),
                node: e.node.clone(),
                for_instance: e.for_instance,
            })
            .collect(),
        blocked: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_logged_with_tuples_decode_as_named_fields() {
        // The shape PlanCommand had before its pairs were named.
        #[derive(Serialize)]
        struct TupledPlan {
            job: String,
            job_version: u64,
            placements: Vec<(u32, String)>,
            evictions: Vec<(String, String, u32)>,
            blocked: Option<String>,
        }
        let old = TupledPlan {
            job: "web".into(),
            job_version: 3,
            placements: vec![(0, "n1".into()), (2, "n2".into())],
            evictions: vec![("a-1".into(), "n2".into(), 2)],
            blocked: Some("instance 1: no room".into()),
        };
        let bytes = bincode::serialize(&old).expect("encode");
        // As `Command::ApplyPlan` reads it (crate::machine::plan_codec).
        #[derive(Deserialize)]
        struct Logged(#[serde(with = "crate::machine::plan_codec")] PlanCommand);
        let Logged(decoded) = bincode::deserialize(&bytes).expect("decode");
        assert_eq!(
            decoded,
            PlanCommand {
                job: "web".into(),
                job_version: 3,
                placements: vec![
                    PlannedPlacement::new(0, "n1"),
                    PlannedPlacement::new(2, "n2")
                ],
                evictions: vec![PlannedEviction {
                    alloc_id: "a-1".into(),
                    node: "n2".into(),
                    for_instance: 2,
                }],
                blocked: Some("instance 1: no room".into()),
            }
        );
    }
}
