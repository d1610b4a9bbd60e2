//! Commands: the only way the replicated state changes.
//!
//! A command carries everything `apply` needs, times included: the leader
//! stamps them before proposing, so every member applies the same bytes to
//! the same result.

use crate::planning::PlanCommand;
use herd_api::alloc::AllocUpdate;
use herd_api::job::JobSpec;
use herd_api::migration::MigrationPhase;
use herd_api::node::NodeInfo;
use serde::{Deserialize, Serialize};

/// A change to the cluster state, as proposed through Raft.
///
/// Commands are stored in the log with bincode, which encodes a variant by
/// its position: new variants go at the end, never in between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Names the cluster; proposed once by the first leader.
    InitCluster {
        /// A fresh random id.
        cluster_id: String,
    },
    /// Creates a job or a new version of it.
    SubmitJob {
        /// The validated spec.
        #[serde(with = "crate::machine::spec_codec")]
        spec: JobSpec,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// Stops a job (its allocations are stopped by the scheduler).
    StopJob {
        /// Job name.
        name: String,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// Adds or refreshes a node agent.
    RegisterNode {
        /// The node as it describes itself.
        node: NodeInfo,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// Places (and evicts for) one job version, re-checked against the newest state.
    ///
    /// Its plan keeps the shape of older entries (no GPU indices, see
    /// `machine::plan_codec`); a plan binding GPUs is an
    /// [`Command::ApplyGpuPlan`]. Build either with [`Command::apply_plan`].
    ApplyPlan {
        /// The plan the leader built from a snapshot.
        #[serde(with = "crate::machine::plan_codec")]
        plan: PlanCommand,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// Allows or forbids new placements on a node (what runs stays).
    SetNodeEligibility {
        /// Node name.
        node: String,
        /// Whether new work may be placed there.
        eligible: bool,
    },
    /// Empties a node: no new work, and its allocations are stopped there and
    /// placed again elsewhere.
    DrainNode {
        /// Node name.
        node: String,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// Writes a variable, optionally only if its version matches.
    PutVariable {
        /// Variable key.
        key: String,
        /// New value (a byte string to serde: copied whole, not per byte).
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Required current version (0: must not exist); None writes unconditionally.
        expected_version: Option<u64>,
    },
    /// The node missed its heartbeats for its TTL: its allocations are lost
    /// and placed elsewhere; it is ready again when it registers.
    MarkNodeDown {
        /// Node name.
        node: String,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// What a node's agent observed of its allocations.
    UpdateAllocs {
        /// The reporting node; reports for allocations it does not own are refused.
        node: String,
        /// One entry per allocation event.
        updates: Vec<AllocUpdate>,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// Empties a node gracefully: no new work; service allocations are
    /// stopped and placed elsewhere now, batch allocations may finish until
    /// the deadline, when whatever still runs is stopped (a [`Command::DrainNode`]).
    DrainNodeWithin {
        /// Node name.
        node: String,
        /// How long batch work may keep running, ms.
        grace_ms: u64,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// A leader's own decision (a node marked down, a plan, a lapsed drain),
    /// valid only in the term it was made in: applied when the entry was
    /// appended by the leader of `term`, refused in any other term.
    ///
    /// A leader decides from what only it knows (heartbeats it received, a
    /// snapshot it planned on). Deposed between deciding and proposing, its
    /// proposal must not be committed by the next leader, whose view differs
    /// (a new leader grants every node a fresh TTL first).
    Fenced {
        /// The term the decision was made in.
        term: u64,
        /// The decision.
        command: Box<Command>,
    },
    /// Starts moving a running allocation, keeping its id, to `target`:
    /// records a migration in phase `planned` and reserves the
    /// allocation's resources on the target until it ends.
    StartMigration {
        /// The allocation to move.
        alloc_id: String,
        /// The node it goes to.
        target: String,
        /// The longest pause allowed, ms.
        downtime_limit_ms: u64,
        /// A bandwidth cap, bytes per second (None: as fast as it goes).
        bandwidth_bytes_per_sec: Option<u64>,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// An agent's report of a running migration: its phase (the same, or
    /// the next one) and progress.
    AdvanceMigration {
        /// The migration.
        id: String,
        /// The phase it is in now.
        phase: MigrationPhase,
        /// State moved so far.
        bytes: u64,
        /// Transfer rounds so far.
        rounds: u32,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// The switch-over: the allocation's owner becomes the target and its
    /// generation rises, in one command, so the source's copy is fenced
    /// off from this entry on and the target's may resume.
    SwitchMigration {
        /// The migration, in phase `switching`.
        id: String,
        /// How long the workload was paused, ms.
        downtime_ms: u64,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// Gives a migration up: the source keeps the allocation, the target
    /// cleans up, and the reservation is released.
    AbortMigration {
        /// The migration.
        id: String,
        /// Why, for `herd migration status`.
        reason: String,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// Records the drivers a registered node's agent offers and what each
    /// allows, proposed by the registration handler right after
    /// [`Command::RegisterNode`]. A variant of its own rather than a field
    /// of `RegisterNode` or `NodeInfo`: those are bincode in old log entries
    /// and stored records, which a new field would make unreadable.
    SetNodeDrivers {
        /// Node name; an unknown node is refused.
        node: String,
        /// The drivers by name; None: unknown (an agent too old to say),
        /// which forgets what a newer agent said before. JSON inside the
        /// entry, so capability fields added later can default.
        #[serde(with = "crate::machine::json_codec")]
        drivers: Option<herd_api::capabilities::NodeDrivers>,
    },
    /// Sets (or replaces) a group's GPU power budget (`herd power budget
    /// set`); the nodes' PowerGovernors enforce it through their shares.
    SetPowerBudget {
        /// `cluster` or a node label `key=value`.
        group: String,
        /// Watts the group's GPUs may draw together.
        watts: u64,
        /// First threshold, thousandths of `watts`.
        cap_permille: u32,
        /// Second threshold, thousandths of `watts`.
        hard_permille: u32,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// Removes a group's GPU power budget (`herd power budget remove`).
    RemovePowerBudget {
        /// The group, as set.
        group: String,
    },
    /// Drains a node as `herd node drain` asks now: what can move live is
    /// migrated to a node the scheduler picks (unless `migrate` is false),
    /// the rest is stopped and placed again elsewhere, or, batch work under
    /// a deadline, left to finish until then. Answers which is which.
    /// [`Command::DrainNode`] and [`Command::DrainNodeWithin`] stay for
    /// older log entries and the leader's drain at a deadline.
    DrainNodeLive {
        /// Node name.
        node: String,
        /// How long batch work that does not move may keep running, ms (0:
        /// none).
        grace_ms: u64,
        /// Whether allocations that can move live do.
        migrate: bool,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// [`Command::ApplyPlan`] for a plan whose placements bind GPU indices:
    /// the plan as JSON inside the entry, so placement fields added later
    /// can default. Applied exactly as `ApplyPlan`.
    ApplyGpuPlan {
        /// The plan the leader built from a snapshot.
        #[serde(with = "crate::machine::json_codec")]
        plan: PlanCommand,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// Records where a registered node's agent serves clients besides its
    /// gRPC address (`"http"`: its OpenAI-compatible endpoint), proposed
    /// by the registration handler after [`Command::RegisterNode`]. A
    /// variant of its own, last, for the reason given at
    /// [`Command::SetNodeDrivers`]; empty: none.
    SetNodeEndpoints {
        /// Node name; an unknown node is refused.
        node: String,
        /// `HOST:PORT` by endpoint name.
        endpoints: std::collections::BTreeMap<String, String>,
    },
    /// Turns client authentication on with the first operator token
    /// (`herd acl bootstrap`); refused once done (see `crate::acl`).
    BootstrapAcl {
        /// The token: accessor, role, digest of its secret.
        #[serde(with = "crate::machine::json_codec")]
        grant: crate::acl::TokenGrant,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// Adds a token (`herd acl token create`).
    CreateToken {
        /// The token: accessor, role, digest of its secret, TTL.
        #[serde(with = "crate::machine::json_codec")]
        grant: crate::acl::TokenGrant,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// Refuses a token from now on (`herd acl token revoke`).
    RevokeToken {
        /// The token's accessor.
        accessor: String,
    },
    /// Moves every member of a gang together (`herd job migrate`): one
    /// migration per member, all in one group, each reserving its target;
    /// refused whole, changing nothing, if any member cannot move. See
    /// `machine::apply::gang_migration`.
    StartGangMigration {
        /// (allocation, target) per member, every live member once.
        moves: Vec<(String, String)>,
        /// The longest pause allowed, ms.
        downtime_limit_ms: u64,
        /// A bandwidth cap, bytes per second (None: as fast as it goes).
        bandwidth_bytes_per_sec: Option<u64>,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// A gang member's source says where its learner stands; once every
    /// member did, the group's common stop step is chosen in this entry.
    GangMigrationStep {
        /// The member's migration.
        id: String,
        /// Steps its learner has done.
        step: u64,
        /// Its pace, thousandths of a step per second.
        pace_milli: u64,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// [`Command::PutVariable`] in the next format, its fields as JSON so
    /// that later ones can default: read by this release, written only
    /// with `HERD_TEST_COMMAND_FORMAT=next` (see `machine::next_format`).
    PutVariableJson {
        /// The write.
        #[serde(with = "crate::machine::json_codec")]
        put: crate::machine::next_format::VariablePut,
    },
    /// A balancing move two agents made agent to agent while every
    /// coordinator was away, reported once they answer: the switch-over
    /// (the allocation becomes the target's, one generation higher), taken
    /// only if the allocation is still where the move began, at the same
    /// generation. See `machine::apply::offline_move`.
    AcceptOfflineMove {
        /// The move's id, as both agents journalled it.
        move_id: String,
        /// The allocation that moved (it keeps its id).
        alloc_id: String,
        /// The node it left.
        source: String,
        /// The node it runs on now.
        target: String,
        /// Its generation when the move began.
        from_generation: u64,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// Changes an inference service's instance count without a new job
    /// version (its running instances stay): `herd service scale` and the
    /// autoscaler. Scale-in stops the highest instances, whose engines
    /// drain; each change is kept as a scaling event. See
    /// `crate::autoscale::apply`.
    ScaleJob {
        /// The change, as JSON inside the entry so later fields can default.
        #[serde(with = "crate::machine::json_codec")]
        scale: crate::autoscale::apply::ScaleRequest,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
    /// A balancing move made agent to agent while every coordinator was
    /// away, reported by its source still `switching` (the target never
    /// answered the commit): kept on the source if the target is down or
    /// disowned it, recorded as an aborted migration under the move's id so
    /// that a returning target is refused. See
    /// `machine::apply::offline_move::settle`.
    SettleOfflineMove {
        /// The move's id, as the source journalled it.
        move_id: String,
        /// The allocation.
        alloc_id: String,
        /// The node it was leaving (the reporter).
        source: String,
        /// The node it was going to.
        target: String,
        /// Its generation when the move began.
        from_generation: u64,
        /// The leader had not heard the target for its TTL (a leader's
        /// observation: proposed fenced by its term).
        target_silent: bool,
        /// The target told the source it does not hold the move as taken
        /// over.
        target_disowned: bool,
        /// Leader's clock, ms since the epoch.
        now_ms: u64,
    },
}

impl Command {
    /// The command that applies `plan`: [`Command::ApplyGpuPlan`] when a
    /// placement binds GPU indices, else [`Command::ApplyPlan`] (the
    /// compact shape older releases read).
    pub fn apply_plan(plan: PlanCommand, now_ms: u64) -> Self {
        if plan.placements.iter().any(|p| !p.gpu_indices.is_empty()) {
            Command::ApplyGpuPlan { plan, now_ms }
        } else {
            Command::ApplyPlan { plan, now_ms }
        }
    }

    /// `command` as a decision of the leader of `term` (see [`Command::Fenced`]).
    pub fn fenced(term: u64, command: Command) -> Self {
        Command::Fenced {
            term,
            command: Box::new(command),
        }
    }

    /// Sets the leader-stamped time, for commands that carry one.
    pub fn stamp(&mut self, now: u64) {
        match self {
            Command::SubmitJob { now_ms, .. }
            | Command::StopJob { now_ms, .. }
            | Command::RegisterNode { now_ms, .. }
            | Command::ApplyPlan { now_ms, .. }
            | Command::DrainNode { now_ms, .. }
            | Command::MarkNodeDown { now_ms, .. }
            | Command::UpdateAllocs { now_ms, .. }
            | Command::DrainNodeWithin { now_ms, .. }
            | Command::StartMigration { now_ms, .. }
            | Command::AdvanceMigration { now_ms, .. }
            | Command::SwitchMigration { now_ms, .. }
            | Command::AbortMigration { now_ms, .. }
            | Command::StartGangMigration { now_ms, .. }
            | Command::GangMigrationStep { now_ms, .. }
            | Command::SetPowerBudget { now_ms, .. }
            | Command::DrainNodeLive { now_ms, .. }
            | Command::ApplyGpuPlan { now_ms, .. }
            | Command::BootstrapAcl { now_ms, .. }
            | Command::CreateToken { now_ms, .. }
            | Command::AcceptOfflineMove { now_ms, .. }
            | Command::ScaleJob { now_ms, .. }
            | Command::SettleOfflineMove { now_ms, .. } => *now_ms = now,
            Command::Fenced { command, .. } => command.stamp(now),
            Command::InitCluster { .. }
            | Command::PutVariable { .. }
            | Command::PutVariableJson { .. }
            | Command::SetNodeEligibility { .. }
            | Command::SetNodeDrivers { .. }
            | Command::SetNodeEndpoints { .. }
            | Command::RemovePowerBudget { .. }
            | Command::RevokeToken { .. } => {}
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::InitCluster { .. } => "init_cluster",
            Command::SubmitJob { .. } => "submit_job",
            Command::StopJob { .. } => "stop_job",
            Command::RegisterNode { .. } => "register_node",
            Command::PutVariable { .. } | Command::PutVariableJson { .. } => "put_variable",
            Command::ApplyPlan { .. } => "apply_plan",
            Command::SetNodeEligibility { .. } => "set_node_eligibility",
            Command::DrainNode { .. } => "drain_node",
            Command::MarkNodeDown { .. } => "mark_node_down",
            Command::UpdateAllocs { .. } => "update_allocs",
            Command::DrainNodeWithin { .. } => "drain_node_within",
            Command::Fenced { command, .. } => command.kind(),
            Command::StartMigration { .. } => "start_migration",
            Command::AdvanceMigration { .. } => "advance_migration",
            Command::SwitchMigration { .. } => "switch_migration",
            Command::AbortMigration { .. } => "abort_migration",
            Command::StartGangMigration { .. } => "start_gang_migration",
            Command::GangMigrationStep { .. } => "gang_migration_step",
            Command::SetNodeDrivers { .. } => "set_node_drivers",
            Command::SetNodeEndpoints { .. } => "set_node_endpoints",
            Command::SetPowerBudget { .. } => "set_power_budget",
            Command::RemovePowerBudget { .. } => "remove_power_budget",
            Command::DrainNodeLive { .. } => "drain_node_live",
            Command::ApplyGpuPlan { .. } => "apply_plan",
            Command::BootstrapAcl { .. } => "bootstrap_acl",
            Command::CreateToken { .. } => "create_token",
            Command::RevokeToken { .. } => "revoke_token",
            Command::AcceptOfflineMove { .. } => "accept_offline_move",
            Command::ScaleJob { .. } => "scale_job",
            Command::SettleOfflineMove { .. } => "settle_offline_move",
        }
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// The cluster id now in force (the proposed one, or an earlier one that won).
    ClusterInitialized {
        /// The cluster id in the state.
        cluster_id: String,
    },
    /// A job version exists; `changed` is false when the spec was identical.
    JobSubmitted {
        /// Current version.
        version: u64,
        /// Whether this submission created a new version.
        changed: bool,
    },
    /// The job is stopped.
    JobStopped {
        /// Version after stopping.
        version: u64,
    },
    /// The node is registered.
    NodeRegistered,
    /// The node's eligibility or drain state changed.
    NodeUpdated,
    /// A plan was applied: what was created, evicted and refused.
    PlanApplied {
        /// Ids of the allocations created.
        placed: Vec<String>,
        /// Ids of the allocations evicted.
        evicted: Vec<String>,
        /// Why placements were refused (the state changed since the plan was built).
        rejected: Vec<String>,
    },
    /// Allocation reports were applied.
    AllocsUpdated {
        /// How many reports changed an allocation.
        accepted: u32,
        /// Why the others were refused, one line each.
        refused: Vec<String>,
    },
    /// The variable was written.
    VariablePut {
        /// Its new version.
        version: u64,
    },
    /// The command no longer fits the state; nothing changed.
    Rejected(Rejection),
    /// A migration was recorded or moved on.
    MigrationUpdated {
        /// Its id.
        id: String,
        /// Its phase now.
        phase: MigrationPhase,
    },
    /// A group's power budget was set or removed.
    PowerBudgetUpdated {
        /// The group, as stored.
        group: String,
    },
    /// A node is draining: which of its allocations move live, which
    /// restart elsewhere, which may finish until the deadline.
    NodeDrained(crate::machine::apply::drain::DrainOutcome),
    /// A token was created, or revoked.
    AclToken(crate::acl::TokenWritten),
    /// A service's instance count changed (or already was as asked).
    JobScaled {
        /// The count before.
        from: u32,
        /// The count now.
        to: u32,
    },
}

/// Why `apply` refused a command. Nothing is ever half-applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The named node is not registered.
    #[error("node {0:?} not found")]
    NodeNotFound(String),
    /// The named job does not exist.
    #[error("job {0:?} not found")]
    JobNotFound(String),
    /// The spec fails validation (checked again inside apply: network input is untrusted).
    #[error("invalid job spec: {0}")]
    InvalidSpec(String),
    /// A compare-and-set found another version.
    #[error("variable {key:?} is at version {actual}, not {expected}")]
    VersionMismatch {
        /// The variable.
        key: String,
        /// Version the writer expected.
        expected: u64,
        /// Version found.
        actual: u64,
    },
    /// A plan built for a job version that is no longer current.
    #[error("stale plan: {0}")]
    StalePlan(String),
    /// A malformed command (bad key, oversized value).
    #[error("invalid command: {0}")]
    Invalid(String),
    /// A leader's decision reached the log in a later term than it was made
    /// in: its leader was deposed, and the decision is void.
    #[error("decided by the leader of term {decided_in}, but appended in term {appended_in}: that leader was deposed")]
    StaleLeader {
        /// The term the decision was made in.
        decided_in: u64,
        /// The term of the leader that appended it.
        appended_in: u64,
    },
    /// A migration that cannot start or move on as asked (the reason
    /// names what and where).
    #[error("migration refused: {0}")]
    Migration(String),
    /// A power budget that cannot be set or removed as asked (the reason
    /// names the field and what is wrong).
    #[error("power budget refused: {0}")]
    PowerBudget(String),
    /// An ACL command that does not fit (bootstrapped already, an unknown
    /// accessor...).
    #[error("access control: {0}")]
    Acl(String),
}
