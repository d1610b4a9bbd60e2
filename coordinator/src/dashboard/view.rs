//! What each page shows, as plain values: pure functions of the replicated
//! state (and, for what only the leader knows, the node reports it holds),
//! so that the numbers are computed once, tested here, and rendered by
//! [`super::pages`] without further arithmetic.
//!
//! Each figure is computed the way the gRPC API computes it: a job's
//! `placed` as `Jobs.List` does, a node's resources in use as the scheduler
//! counts them (allocations holding resources, and the room migrations in
//! flight reserve on their targets), the fragment rate as
//! `herd reschedule plan` does.

use std::collections::BTreeMap;

use herd_api::alloc::{AllocDesired, Allocation};
use herd_api::capabilities::MigrationMode;
use herd_api::migration::Migration;
use herd_api::proto::v1::{GroupPowerStatus, NodeUsage};

use crate::planning;
use crate::power::report::{budget_to_proto, group_status};
use crate::reschedule;
use crate::state::ClusterState;

use super::history::FR_TARGET_CPU_MILLIS;

/// Recent ended migrations shown, newest first.
pub const RECENT_MIGRATIONS: usize = 50;

/// Most allocations listed on one page (the rest are counted, not shown).
pub const MAX_ALLOC_ROWS: usize = 1000;

/// How this member last heard from another, as far as it can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contact {
    /// In touch within the health window.
    Healthy,
    /// Not in touch: unreachable, or down.
    Unreachable,
    /// This member cannot tell (a follower hears only from the leader).
    Unknown,
}

impl Contact {
    /// A word for the page.
    pub fn as_str(self) -> &'static str {
        match self {
            Contact::Healthy => "healthy",
            Contact::Unreachable => "unreachable",
            Contact::Unknown => "unknown",
        }
    }
}

/// One member of the Raft group, as this member sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInput {
    /// Raft id.
    pub id: u64,
    /// gRPC address.
    pub addr: String,
    /// Votes (false for a learner).
    pub voter: bool,
    /// Whether it is in touch.
    pub contact: Contact,
    /// The log index the leader knows it holds (the leader only knows).
    pub matched_index: Option<u64>,
}

/// What this member knows of Raft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftInfo {
    /// This member's id.
    pub member_id: u64,
    /// Its role: `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// The term it is in.
    pub term: u64,
    /// The leader it knows, if any.
    pub leader: Option<u64>,
    /// Its last log index.
    pub last_log_index: Option<u64>,
    /// Its last snapshot's index.
    pub snapshot_index: Option<u64>,
    /// The members of the current configuration.
    pub members: Vec<MemberInput>,
}

/// How the control plane stands, in one word and one sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `healthy`, `degraded` or `down` (CSS class and test key).
    pub level: &'static str,
    /// Why.
    pub detail: String,
}

/// One member row of the overview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    /// Raft id.
    pub id: u64,
    /// gRPC address.
    pub addr: String,
    /// `leader`, `follower` or `learner`.
    pub role: &'static str,
    /// Whether this is the member serving the page.
    pub this_member: bool,
    /// Whether it is in touch.
    pub contact: Contact,
    /// The log index the leader knows it holds.
    pub matched_index: Option<u64>,
}

/// The overview page.
#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    /// The cluster's id (empty until the first leader set it).
    pub cluster_id: String,
    /// How the control plane stands.
    pub health: Health,
    /// The term this member is in.
    pub term: u64,
    /// The leader this member knows.
    pub leader: Option<u64>,
    /// This member's last log index.
    pub last_log_index: Option<u64>,
    /// This member's last snapshot's index.
    pub snapshot_index: Option<u64>,
    /// The members.
    pub members: Vec<MemberRow>,
    /// Nodes by status.
    pub nodes: BTreeMap<String, usize>,
    /// Jobs by status.
    pub jobs: BTreeMap<String, usize>,
    /// Allocations by status.
    pub allocs: BTreeMap<String, usize>,
    /// Migrations not ended.
    pub migrations_active: usize,
    /// Ended migrations still recorded.
    pub migrations_ended: usize,
    /// Power budgets set.
    pub power_budgets: usize,
    /// The fragment rate now.
    pub fragment_rate: f64,
}

/// How the control plane stands, from what this member knows.
pub fn health(raft: &RaftInfo) -> Health {
    let Some(leader) = raft.leader else {
        return Health {
            level: "down",
            detail: format!(
                "member {} knows no leader (term {}): writes wait until one is elected",
                raft.member_id, raft.term
            ),
        };
    };
    let voters: Vec<&MemberInput> = raft.members.iter().filter(|m| m.voter).collect();
    let unreachable: Vec<String> = voters
        .iter()
        .filter(|m| m.contact == Contact::Unreachable)
        .map(|m| m.id.to_string())
        .collect();
    let majority = voters.len() / 2 + 1;
    let reachable = voters.len() - unreachable.len();
    let unknown = voters
        .iter()
        .filter(|m| m.contact == Contact::Unknown)
        .count();
    if unreachable.is_empty() {
        let seen = if unknown > 0 {
            format!(
                "; member {} is a follower and sees only the leader: the leader's dashboard shows every member's health",
                raft.member_id
            )
        } else {
            String::new()
        };
        return Health {
            level: "healthy",
            detail: format!("leader {leader}, {} voters{seen}", voters.len()),
        };
    }
    Health {
        level: if reachable >= majority { "degraded" } else { "down" },
        detail: format!(
            "leader {leader}; voters not in touch with member {}: {} ({} of {} needed for a majority are)",
            raft.member_id,
            unreachable.join(", "),
            reachable,
            majority
        ),
    }
}

fn count_by<'a>(words: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for w in words {
        *counts.entry(w.to_string()).or_default() += 1;
    }
    counts
}

/// The overview of `state` as `raft` sees it.
pub fn overview(state: &ClusterState, raft: &RaftInfo) -> Overview {
    let members = raft
        .members
        .iter()
        .map(|m| MemberRow {
            id: m.id,
            addr: m.addr.clone(),
            role: if raft.leader == Some(m.id) {
                "leader"
            } else if m.voter {
                "follower"
            } else {
                "learner"
            },
            this_member: m.id == raft.member_id,
            contact: m.contact,
            matched_index: m.matched_index,
        })
        .collect();
    let active = state.migrations.values().filter(|m| m.is_active()).count();
    Overview {
        cluster_id: state.cluster_id.clone().unwrap_or_default(),
        health: health(raft),
        term: raft.term,
        leader: raft.leader,
        last_log_index: raft.last_log_index,
        snapshot_index: raft.snapshot_index,
        members,
        nodes: count_by(state.nodes.values().map(|n| n.status.as_str())),
        jobs: count_by(state.jobs.values().map(|j| j.status.as_str())),
        allocs: count_by(state.allocations.values().map(|a| a.status.as_str())),
        migrations_active: active,
        migrations_ended: state.migrations.len() - active,
        power_budgets: state.power_budgets.len(),
        fragment_rate: super::history::fragment_rate(state),
    }
}

/// Used and total of one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Used {
    /// Held by allocations and reservations.
    pub used: u64,
    /// The node's capacity.
    pub total: u64,
}

/// What a node's last heartbeat said (the leader's memory).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    /// How long ago it came, ms.
    pub age_ms: u64,
    /// Busy share of the host's CPU, 0.0 to 1.0.
    pub cpu_busy: f64,
    /// Memory available on the host, bytes.
    pub memory_available_bytes: u64,
    /// Workloads the agent runs.
    pub running_allocs: u32,
    /// Whether its GPUs are simulated.
    pub gpus_simulated: bool,
    /// GPU power draw, all GPUs, watts.
    pub power_draw_watts: f64,
    /// The sum of the GPUs' power limits in force, watts (None when the
    /// agent reports no per-GPU figures).
    pub power_limit_watts: Option<u64>,
    /// GPUs held under their maximum by the node's power governor.
    pub capped_gpus: usize,
}

/// One node row.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    /// Its name.
    pub name: String,
    /// Its agent's gRPC address.
    pub addr: String,
    /// `ready`, `down`, `draining`...
    pub status: &'static str,
    /// Whether new work may be placed on it.
    pub eligible: bool,
    /// When a drain stops what still runs there, ms since the epoch.
    pub drain_deadline_ms: Option<u64>,
    /// Its labels.
    pub labels: Vec<(String, String)>,
    /// CPU, millicores.
    pub cpu: Used,
    /// Memory, bytes.
    pub memory: Used,
    /// GPUs.
    pub gpus: Used,
    /// The GPU model, when it has GPUs.
    pub gpu_model: Option<String>,
    /// Allocations holding resources there (reservations not counted).
    pub allocs: usize,
    /// Its drivers: `name`, or `name (how)` when it can move a running
    /// workload (`live`, `checkpoint`...).
    pub drivers: Vec<String>,
    /// Its last heartbeat's report, when this member holds it.
    pub report: Option<NodeReport>,
}

/// One power budget row.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRow {
    /// The group (`cluster` or `key=value`).
    pub group: String,
    /// The budget, watts.
    pub watts: u64,
    /// Caps start at this share of the budget, per mille.
    pub cap_permille: u32,
    /// Every GPU is capped at this share, per mille.
    pub hard_permille: u32,
    /// Nodes in the group.
    pub nodes: u32,
    /// The group's GPUs' idle power, watts.
    pub idle_watts: f64,
    /// Draw and headroom from the nodes' reports, when this member holds them.
    pub status: Option<BudgetStatus>,
}

/// A budget's standing from the nodes' reports.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetStatus {
    /// Summed draw, watts.
    pub draw_watts: f64,
    /// Budget minus draw, watts.
    pub headroom_watts: f64,
    /// GPUs capped.
    pub capped_gpus: u32,
    /// Nodes whose report counted.
    pub reporting_nodes: u32,
}

/// The nodes page.
#[derive(Debug, Clone, PartialEq)]
pub struct NodesPage {
    /// Every node, by name.
    pub nodes: Vec<NodeRow>,
    /// Every power budget, by group.
    pub budgets: Vec<BudgetRow>,
}

fn report_of(usage: &NodeUsage, age_ms: u64) -> NodeReport {
    NodeReport {
        age_ms,
        cpu_busy: usage.cpu_busy,
        memory_available_bytes: usage.memory_available_bytes,
        running_allocs: usage.running_allocs,
        gpus_simulated: usage.gpus_simulated,
        power_draw_watts: usage.gpu_power_watts,
        power_limit_watts: (!usage.gpus.is_empty())
            .then(|| usage.gpus.iter().map(|g| u64::from(g.limit_watts)).sum()),
        capped_gpus: usage.gpus.iter().filter(|g| g.capped).count(),
    }
}

/// The nodes page of `state`; `reports` holds each node's last heartbeat
/// and its age in ms (empty on a follower, which receives none). A budget's
/// draw counts only reports at most `ttl_ms` old, as `herd power status`
/// does: an older one says nothing of now.
pub fn nodes(
    state: &ClusterState,
    reports: &BTreeMap<String, (NodeUsage, u64)>,
    ttl_ms: u64,
) -> NodesPage {
    let mut held: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for view in planning::alloc_views(state) {
        let h = held.entry(view.node).or_default();
        h.0 = h.0.saturating_add(view.resources.cpu_millis);
        h.1 = h.1.saturating_add(view.resources.memory_bytes);
        h.2 = h.2.saturating_add(u64::from(view.resources.gpus));
    }
    let nodes = state
        .nodes
        .values()
        .map(|n| {
            let (cpu, mem, gpus) = held.get(&n.name).copied().unwrap_or_default();
            NodeRow {
                name: n.name.clone(),
                addr: n.addr.clone(),
                status: n.status.as_str(),
                eligible: n.eligible,
                drain_deadline_ms: state.drain_deadlines.get(&n.name).copied(),
                labels: n
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                cpu: Used {
                    used: cpu,
                    total: n.capacity.cpu_millis,
                },
                memory: Used {
                    used: mem,
                    total: n.capacity.memory_bytes,
                },
                gpus: Used {
                    used: gpus,
                    total: u64::from(n.capacity.gpus),
                },
                gpu_model: (n.capacity.gpus > 0)
                    .then(|| n.capacity.gpu_model.clone())
                    .flatten(),
                allocs: state
                    .allocs_on_node(&n.name)
                    .filter(|a| a.status.holds_resources())
                    .count(),
                drivers: state
                    .node_drivers
                    .get(&n.name)
                    .map(|d| {
                        d.iter()
                            .map(|(name, caps)| match caps.migration {
                                MigrationMode::None => name.clone(),
                                mode => format!("{name} ({})", mode.as_str()),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                report: reports.get(&n.name).map(|(u, age)| report_of(u, *age)),
            }
        })
        .collect();
    let statuses: BTreeMap<String, GroupPowerStatus> = if reports.is_empty() {
        BTreeMap::new()
    } else {
        group_status(state, |node| {
            reports
                .get(node)
                .filter(|(_, age)| *age <= ttl_ms)
                .map(|(u, _)| u.clone())
        })
        .into_iter()
        .filter_map(|g| Some((g.budget.as_ref()?.group.clone(), g)))
        .collect()
    };
    let budgets = state
        .power_budgets
        .iter()
        .map(|(group, budget)| {
            let wire = budget_to_proto(state, group, budget);
            BudgetRow {
                group: group.clone(),
                watts: budget.watts,
                cap_permille: budget.cap_permille,
                hard_permille: budget.hard_permille,
                nodes: wire.nodes,
                idle_watts: wire.idle_watts,
                status: statuses.get(group).map(|g| BudgetStatus {
                    draw_watts: g.draw_watts,
                    headroom_watts: g.headroom_watts,
                    capped_gpus: g.capped_gpus,
                    reporting_nodes: g.reporting_nodes,
                }),
            }
        })
        .collect();
    NodesPage { nodes, budgets }
}

/// One job row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    /// Its name.
    pub name: String,
    /// `service` or `batch`.
    pub job_type: &'static str,
    /// `pending`, `running`...
    pub status: &'static str,
    /// Its version.
    pub version: u64,
    /// Instances wanted.
    pub count: u32,
    /// Instances with a live allocation (as `herd job list` counts them).
    pub placed: usize,
    /// Its priority.
    pub priority: u32,
    /// Its driver.
    pub driver: String,
    /// What one instance needs: millicores, bytes, GPUs.
    pub cpu_millis: u64,
    /// Memory per instance, bytes.
    pub memory_bytes: u64,
    /// GPUs per instance.
    pub gpus: u32,
    /// Allocation records of the job (every status).
    pub allocs: usize,
    /// Why instances are not placed, when some are not.
    pub blocked: Option<String>,
}

/// Every job of `state`, by name.
pub fn jobs(state: &ClusterState) -> Vec<JobRow> {
    state
        .jobs
        .values()
        .map(|job| JobRow {
            name: job.spec.name.clone(),
            job_type: job.spec.job_type.as_str(),
            status: job.status.as_str(),
            version: job.version,
            count: job.spec.count,
            placed: planning::instance_histories(state, job)
                .values()
                .filter(|h| h.live)
                .count(),
            priority: job.spec.priority,
            driver: job.spec.task.driver.clone(),
            cpu_millis: job.spec.task.resources.cpu_millis,
            memory_bytes: job.spec.task.resources.memory_bytes,
            gpus: job.spec.task.resources.gpus,
            allocs: state.allocs_of_job(&job.spec.name).count(),
            blocked: job.blocked.clone(),
        })
        .collect()
}

/// One allocation row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocRow {
    /// Its id.
    pub id: String,
    /// Its job.
    pub job: String,
    /// The job version it runs.
    pub job_version: u64,
    /// Its instance number.
    pub instance: u32,
    /// Its node.
    pub node: String,
    /// `pending`, `running`...
    pub status: &'static str,
    /// `run` or `stop`.
    pub desired: &'static str,
    /// Raised by each switch-over and restart in place.
    pub generation: u64,
    /// CPU, millicores.
    pub cpu_millis: u64,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// The GPUs it holds.
    pub gpu_indices: Vec<u32>,
    /// Its latest event: kind and detail.
    pub last_event: Option<String>,
    /// The migration moving it, if one is in flight.
    pub moving: Option<String>,
}

/// The allocations page: rows (at most [`MAX_ALLOC_ROWS`]) and how many
/// matched in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocsPage {
    /// The job they were filtered by.
    pub job: Option<String>,
    /// The rows shown, by id.
    pub rows: Vec<AllocRow>,
    /// How many matched (more than `rows` when cut).
    pub matched: usize,
}

fn alloc_row(state: &ClusterState, a: &Allocation) -> AllocRow {
    AllocRow {
        id: a.id.clone(),
        job: a.job.clone(),
        job_version: a.job_version,
        instance: a.instance,
        node: a.node.clone(),
        status: a.status.as_str(),
        desired: match a.desired {
            AllocDesired::Run => "run",
            AllocDesired::Stop => "stop",
        },
        generation: a.generation,
        cpu_millis: a.resources.cpu_millis,
        memory_bytes: a.resources.memory_bytes,
        gpu_indices: a.gpu_indices.clone(),
        last_event: a.events.last().map(|e| format!("{}: {}", e.kind, e.detail)),
        moving: state
            .migrations
            .values()
            .find(|m| m.is_active() && m.alloc_id == a.id)
            .map(|m| m.id.clone()),
    }
}

/// The allocations of `state` (of `job` only, when given), by id.
pub fn allocs(state: &ClusterState, job: Option<&str>) -> AllocsPage {
    let all: Box<dyn Iterator<Item = &Allocation> + '_> = match job {
        Some(job) => Box::new(state.allocs_of_job(job)),
        None => Box::new(state.allocations.values()),
    };
    let mut rows = Vec::new();
    let mut matched = 0usize;
    for a in all {
        matched += 1;
        if rows.len() < MAX_ALLOC_ROWS {
            rows.push(alloc_row(state, a));
        }
    }
    AllocsPage {
        job: job.map(str::to_string),
        rows,
        matched,
    }
}

/// One migration row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationRow {
    /// Its id.
    pub id: String,
    /// The allocation it moves.
    pub alloc_id: String,
    /// The allocation's job.
    pub job: String,
    /// The driver that moves it.
    pub kind: String,
    /// The node it leaves.
    pub source: String,
    /// The node it goes to.
    pub target: String,
    /// Where it stands.
    pub phase: &'static str,
    /// State moved so far, bytes.
    pub bytes: u64,
    /// Transfer rounds.
    pub rounds: u32,
    /// The pause, once known, ms.
    pub downtime_ms: Option<u64>,
    /// The longest pause allowed, ms.
    pub downtime_limit_ms: u64,
    /// From start to end (or to now while it runs), ms; as
    /// `herd migration list` counts it.
    pub total_ms: u64,
    /// When it started, ms since the epoch.
    pub started_at_ms: u64,
    /// Why it was aborted.
    pub error: Option<String>,
}

/// The migrations page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationsPage {
    /// Not ended, oldest first.
    pub active: Vec<MigrationRow>,
    /// Ended, newest first, at most [`RECENT_MIGRATIONS`].
    pub recent: Vec<MigrationRow>,
    /// Ended migrations recorded in all.
    pub ended: usize,
}

fn migration_row(m: &Migration, now_ms: u64) -> MigrationRow {
    MigrationRow {
        id: m.id.clone(),
        alloc_id: m.alloc_id.clone(),
        job: m.job.clone(),
        kind: m.kind.clone(),
        source: m.source.clone(),
        target: m.target.clone(),
        phase: m.phase.as_str(),
        bytes: m.bytes,
        rounds: m.rounds,
        downtime_ms: m.downtime_ms,
        downtime_limit_ms: m.downtime_limit_ms,
        total_ms: m
            .ended_at_ms
            .unwrap_or(now_ms)
            .saturating_sub(m.started_at_ms),
        started_at_ms: m.started_at_ms,
        error: m.error.clone(),
    }
}

/// The migrations of `state`, their running times counted to `now_ms`.
pub fn migrations(state: &ClusterState, now_ms: u64) -> MigrationsPage {
    let mut active: Vec<&Migration> = state
        .migrations
        .values()
        .filter(|m| m.is_active())
        .collect();
    active.sort_by_key(|m| m.create_index);
    let mut ended: Vec<&Migration> = state
        .migrations
        .values()
        .filter(|m| !m.is_active())
        .collect();
    ended.sort_by_key(|m| std::cmp::Reverse((m.ended_at_ms.unwrap_or(0), m.create_index)));
    MigrationsPage {
        active: active
            .into_iter()
            .map(|m| migration_row(m, now_ms))
            .collect(),
        ended: ended.len(),
        recent: ended
            .into_iter()
            .take(RECENT_MIGRATIONS)
            .map(|m| migration_row(m, now_ms))
            .collect(),
    }
}

/// The fragmentation page's figures now.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragmentation {
    /// The fragment rate, 0.0 to 1.0.
    pub fragment_rate: f64,
    /// The target shape's CPU, millicores.
    pub target_cpu_millis: u64,
    /// Registered nodes.
    pub nodes: usize,
    /// Nodes that count (ready, eligible, not over capacity).
    pub active_nodes: usize,
    /// Allocations holding resources.
    pub allocations: usize,
    /// How many a plan may move.
    pub movable: usize,
    /// Why the others may not: reason, count.
    pub immovable: Vec<(String, u32)>,
}

/// The fragmentation figures of `state`, for the target shape of
/// [`FR_TARGET_CPU_MILLIS`].
pub fn fragmentation(state: &ClusterState) -> Fragmentation {
    let shape = reschedule::shape(FR_TARGET_CPU_MILLIS, 0);
    let model = reschedule::build(state, shape);
    Fragmentation {
        fragment_rate: herd_reschedule::objective::initial_fragment_rate(&model.instance, shape),
        target_cpu_millis: FR_TARGET_CPU_MILLIS,
        nodes: model.nodes,
        active_nodes: model.active_nodes,
        allocations: model.allocations,
        movable: model.movable,
        immovable: model.immovable.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use herd_api::alloc::AllocStatus;
    use herd_api::job::JobType;
    use herd_api::proto::v1::GpuPower;

    use super::*;
    use crate::machine::apply::migration::{start_migration, MoveRequest};
    use crate::state::ChangeLog;
    use crate::testkit::{alloc_update, place, report, run, spec};

    fn member(id: u64, contact: Contact) -> MemberInput {
        MemberInput {
            id,
            addr: format!("127.0.0.1:700{id}"),
            voter: true,
            contact,
            matched_index: None,
        }
    }

    fn raft(leader: Option<u64>, members: Vec<MemberInput>) -> RaftInfo {
        RaftInfo {
            member_id: 1,
            role: "leader".into(),
            term: 3,
            leader,
            last_log_index: Some(10),
            snapshot_index: None,
            members,
        }
    }

    /// Two nodes, `web` (3 x 1000m) placed and reported running.
    fn cluster() -> ClusterState {
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
        state
    }

    #[test]
    fn health_follows_the_leader_and_the_voters_in_touch() {
        use Contact::*;
        let all = raft(
            Some(1),
            vec![member(1, Healthy), member(2, Healthy), member(3, Healthy)],
        );
        assert_eq!(health(&all).level, "healthy");
        let one_down = raft(
            Some(1),
            vec![
                member(1, Healthy),
                member(2, Healthy),
                member(3, Unreachable),
            ],
        );
        let h = health(&one_down);
        assert_eq!(h.level, "degraded");
        assert!(h.detail.contains(": 3 (2 of 2"), "{}", h.detail);
        let two_down = raft(
            Some(1),
            vec![
                member(1, Healthy),
                member(2, Unreachable),
                member(3, Unreachable),
            ],
        );
        assert_eq!(health(&two_down).level, "down");
        let none = raft(None, vec![member(1, Healthy)]);
        assert_eq!(health(&none).level, "down");
        let follower = raft(
            Some(2),
            vec![member(1, Healthy), member(2, Healthy), member(3, Unknown)],
        );
        let h = health(&follower);
        assert_eq!(h.level, "healthy");
        assert!(h.detail.contains("follower"), "{}", h.detail);
    }

    #[test]
    fn the_overview_names_roles_and_counts_by_status() {
        let mut state = cluster();
        state.cluster_id = Some("c-1".into());
        let mut members = vec![member(1, Contact::Healthy), member(2, Contact::Healthy)];
        members.push(MemberInput {
            voter: false,
            ..member(3, Contact::Healthy)
        });
        let o = overview(&state, &raft(Some(2), members));
        let roles: Vec<(u64, &str, bool)> = o
            .members
            .iter()
            .map(|m| (m.id, m.role, m.this_member))
            .collect();
        assert_eq!(
            roles,
            vec![
                (1, "follower", true),
                (2, "leader", false),
                (3, "learner", false)
            ]
        );
        assert_eq!(o.cluster_id, "c-1");
        assert_eq!(o.nodes.get("ready"), Some(&2));
        assert_eq!(o.jobs.get("running"), Some(&1));
        assert_eq!(o.allocs.get("running"), Some(&3));
        assert_eq!((o.migrations_active, o.migrations_ended), (0, 0));
    }

    /// Starts moving `alloc_id` to `target` at log `index`.
    fn start_move(state: &mut ClusterState, index: u64, alloc_id: &str, target: &str) {
        let mut ops = Vec::new();
        start_migration(
            state,
            index,
            MoveRequest {
                alloc_id,
                target,
                downtime_limit_ms: 300,
                bandwidth_bytes_per_sec: None,
            },
            2,
            &mut ChangeLog::new(&mut ops),
        );
        assert!(
            state
                .migrations
                .values()
                .any(|m| m.is_active() && m.alloc_id == alloc_id),
            "the move started"
        );
    }

    #[test]
    fn nodes_show_what_allocations_and_moves_hold_and_the_leaders_reports() {
        let state = cluster();
        let on_n1 = state.allocs_on_node("n1").count() as u64;
        let page = nodes(&state, &BTreeMap::new(), 5_000);
        let n1 = &page.nodes[0];
        assert_eq!(n1.name, "n1");
        assert_eq!(
            n1.cpu,
            Used {
                used: 1000 * on_n1,
                total: 4000
            }
        );
        assert_eq!(n1.memory.used, (64 << 20) * on_n1);
        assert_eq!(n1.allocs as u64, on_n1);
        assert!(n1.report.is_none());
        let used: u64 = page.nodes.iter().map(|n| n.cpu.used).sum();
        assert_eq!(used, 3000);

        // A move in flight holds room on its target too.
        let mut state = crate::reschedule::live::tests::cluster(&[("a", 1000, 3)]);
        let alloc = state.allocations.values().next().expect("one").clone();
        let target = if alloc.node == "n1" { "n2" } else { "n1" };
        let held_before = state.allocs_on_node(target).count() as u64;
        start_move(&mut state, 100, &alloc.id, target);
        let usage = NodeUsage {
            cpu_busy: 0.25,
            gpu_power_watts: 350.0,
            gpus: vec![
                GpuPower {
                    limit_watts: 700,
                    capped: true,
                    ..Default::default()
                },
                GpuPower {
                    limit_watts: 500,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let reports = BTreeMap::from([(target.to_string(), (usage, 1500))]);
        let page = nodes(&state, &reports, 5_000);
        let row = page
            .nodes
            .iter()
            .find(|n| n.name == target)
            .expect("target");
        assert_eq!(row.cpu.used, 1000 * (held_before + 1));
        assert_eq!(
            row.allocs as u64, held_before,
            "a reservation is no allocation"
        );
        assert_eq!(row.drivers, vec!["simvm (live)".to_string()]);
        let r = row.report.as_ref().expect("report");
        assert_eq!(
            (r.age_ms, r.power_limit_watts, r.capped_gpus),
            (1500, Some(1200), 1)
        );
        assert_eq!(r.power_draw_watts, 350.0);
        assert!(page
            .nodes
            .iter()
            .filter(|n| n.name != target)
            .all(|n| n.report.is_none()));
    }

    #[test]
    fn budgets_sum_the_draw_of_fresh_reports_only() {
        let mut state = cluster();
        state.power_budgets.insert(
            "cluster".into(),
            crate::power::PowerBudget {
                watts: 1000,
                cap_permille: 800,
                hard_permille: 950,
                set_at_ms: 0,
                modify_index: 1,
            },
        );
        let usage = |watts: f64| NodeUsage {
            gpu_power_watts: watts,
            ..Default::default()
        };
        let reports = BTreeMap::from([
            ("n1".to_string(), (usage(300.0), 100)),
            // Older than the TTL: it says nothing of now.
            ("n2".to_string(), (usage(200.0), 10_000)),
        ]);
        let page = nodes(&state, &reports, 5_000);
        let b = &page.budgets[0];
        assert_eq!((b.group.as_str(), b.watts, b.nodes), ("cluster", 1000, 2));
        assert_eq!((b.cap_permille, b.hard_permille), (800, 950));
        let status = b.status.as_ref().expect("status on the leader");
        assert_eq!((status.draw_watts, status.headroom_watts), (300.0, 700.0));
        assert_eq!(status.reporting_nodes, 1);
        // A follower holds no reports: the budget, but no draw.
        let page = nodes(&state, &BTreeMap::new(), 5_000);
        assert!(page.budgets[0].status.is_none());
        assert!(page.nodes.iter().all(|n| n.report.is_none()));
    }

    #[test]
    fn jobs_count_placed_instances_and_allocations_filter_by_job() {
        let mut state = cluster();
        run(
            &mut state,
            50,
            crate::machine::command::Command::SubmitJob {
                spec: spec("idle", JobType::Batch, 2),
                now_ms: 5,
            },
        );
        let rows = jobs(&state);
        let web = rows.iter().find(|j| j.name == "web").expect("web");
        assert_eq!(
            (web.count, web.placed, web.allocs, web.status),
            (3, 3, 3, "running")
        );
        let idle = rows.iter().find(|j| j.name == "idle").expect("idle");
        assert_eq!(
            (idle.placed, idle.status, idle.job_type),
            (0, "pending", "batch")
        );

        let all = allocs(&state, None);
        assert_eq!((all.rows.len(), all.matched), (3, 3));
        assert!(all
            .rows
            .iter()
            .all(|r| r.status == "running" && r.generation >= 1));
        assert_eq!(allocs(&state, Some("idle")).matched, 0);
        assert_eq!(allocs(&state, Some("web")).rows.len(), 3);
    }

    #[test]
    fn migrations_split_into_active_and_recent() {
        let mut state = crate::reschedule::live::tests::cluster(&[("a", 1000, 2)]);
        let ids: Vec<(String, String)> = state
            .allocations
            .values()
            .map(|a| {
                (
                    a.id.clone(),
                    if a.node == "n3" { "n1" } else { "n3" }.to_string(),
                )
            })
            .collect();
        for (index, (id, target)) in (100..).zip(&ids) {
            start_move(&mut state, index, id, target);
        }
        // The first one ends (aborted), the other keeps running.
        let first = state
            .migrations
            .values_mut()
            .find(|m| m.alloc_id == ids[0].0)
            .expect("first");
        first.phase = herd_api::migration::MigrationPhase::Aborted;
        first.ended_at_ms = Some(first.started_at_ms + 40);
        first.error = Some("test".into());
        let page = migrations(&state, 1_000_000);
        assert_eq!(
            (page.active.len(), page.recent.len(), page.ended),
            (1, 1, 1)
        );
        assert_eq!(page.active[0].alloc_id, ids[1].0);
        assert_eq!(
            page.active[0].total_ms,
            1_000_000 - page.active[0].started_at_ms
        );
        assert_eq!(page.recent[0].phase, "aborted");
        assert_eq!(page.recent[0].total_ms, 40);
        assert_eq!(page.recent[0].error.as_deref(), Some("test"));
        let rows = allocs(&state, None).rows;
        let moving = rows.iter().find(|r| r.id == ids[1].0).expect("moving");
        assert_eq!(moving.moving.as_deref(), Some(page.active[0].id.as_str()));
        assert!(rows
            .iter()
            .find(|r| r.id == ids[0].0)
            .expect("stayed")
            .moving
            .is_none());
    }

    #[test]
    fn fragmentation_matches_the_sampled_rate() {
        let state = cluster();
        let f = fragmentation(&state);
        assert_eq!(
            f.fragment_rate,
            super::super::history::fragment_rate(&state)
        );
        assert_eq!((f.nodes, f.allocations), (2, 3));
        assert_eq!(f.target_cpu_millis, 16_000);
        // Two 4-core nodes hold no 16-core slot: every free core is a fragment.
        assert_eq!(f.fragment_rate, 1.0);
    }
}
