//! The bridge between `ClusterState` and the pure placement policy in
//! [`crate::scheduler`]: views of the state for it ([`views`]), the retry
//! policy for failed instances ([`retry`]), a scheduling pass ([`pass`]),
//! and the plan the leader proposes through Raft ([`plan`]).

pub mod moves;
pub mod pass;
pub mod plan;
pub mod retry;
pub mod views;

pub use moves::{gang_targets, move_targets, MoveTarget};
pub use pass::{pass_input, plan_job, plan_pass, PassInput};
pub use plan::{to_scheduler_plan, PlanCommand, PlannedEviction, PlannedPlacement};
pub use retry::{
    exhausted, instance_histories, missing_instances, retry_delay_ms, InstanceHistory,
    BATCH_ATTEMPTS, RETRY_BASE_MS, RETRY_MAX_MS,
};
pub use views::{
    alloc_views, gang_of, is_live, node_views, power_class_of, request_for, reservations,
    touched_views, RESERVATION_PRIORITY,
};
