//! The defragmenting rescheduler on the live cluster: the cluster's state
//! as `herd-reschedule`'s model ([`live`]) and a plan of live migrations
//! that lowers its fragment rate, checked against herd's migration rules
//! ([`plan`]).
//!
//! Pure functions of a [`crate::state::ClusterState`], so the
//! `Reschedule.Plan` service and a leader loop share them; the moves
//! themselves go through `Migrations.Start` like any operator's, which
//! re-checks each against the state at that moment.

pub mod live;
pub mod plan;

pub use live::{build, shape, LiveModel, LiveVm};
pub use plan::{plan, LiveMove, LivePlan, LiveSolver, PlanError, PlanRequest};
