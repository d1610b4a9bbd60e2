//! What each node agent is told to run: the allocations placed on its node
//! that should run, with the environment their workloads get.
//!
//! Kept apart from the agent service because it is a pure function of the
//! replicated state: every member computes the same set for the same
//! applied index, and the rules below are tested without a server.
//!
//! One rule holds work back. A job that set `stop_after_disconnect` has
//! said that two copies of one instance must never run at once (a training
//! job writing one checkpoint directory, a leader holding a lease). The
//! agent side of that promise stops a cut-off node's copy before the node
//! TTL runs out; this side makes herd's own moves keep it too: a copy that
//! replaces another (a drain, an update, a node lost) is handed to its node
//! only once every older copy of its instance has ended, reported by its
//! agent or declared lost with its node. Other jobs start replacements at
//! once, as Nomad does, and may overlap briefly.

use std::collections::HashMap;

use herd_api::alloc::{AllocDesired, Allocation};
use herd_api::migration::Migration;
use herd_api::proto::agent::{AssignedAllocation, MigrationAssignment};

use crate::state::changes::NodeInterest;
use crate::state::{ClusterState, Job};

/// The allocations `node` should run, as its agent receives them.
///
/// An allocation that moves (a migration in flight, not ended) is listed
/// on both of its nodes, each told its part ([`MigrationAssignment`]): on
/// the source as it runs, on the target with the generation the
/// switch-over will give it, to be readied but not run. An ended migration
/// adds nothing: after a switch-over the allocation is the target's own,
/// after an abort the source's.
pub fn assigned_to(state: &ClusterState, node: &str) -> Vec<AssignedAllocation> {
    let moving = migrations_of(state, node);
    let mut request_ids = RequestIds::new(state);
    let mut oldest_live: HashMap<&str, HashMap<u32, u64>> = HashMap::new();
    let mut assigned: Vec<AssignedAllocation> = state
        .allocs_on_node(node)
        .filter(|a| a.desired == AllocDesired::Run && !a.status.is_terminal())
        .filter_map(|a| {
            let job = state.jobs.get(&a.job)?;
            if job.version != a.job_version {
                return None;
            }
            if job.spec.stop_after_disconnect.is_some() {
                let oldest = oldest_live
                    .entry(a.job.as_str())
                    .or_insert_with(|| oldest_live_copies(state, &a.job));
                if oldest.get(&a.instance).is_some_and(|i| *i < a.create_index) {
                    return None;
                }
            }
            let migration = moving
                .iter()
                .find(|m| m.alloc_id == a.id && m.source == node)
                .map(|m| migration_assignment(state, m, node));
            let request_id = request_ids.of(job);
            Some(assignment(
                state,
                job,
                a,
                node,
                a.generation,
                migration,
                request_id,
            ))
        })
        .collect();
    // Incoming: allocations of other nodes that move here.
    for m in moving.iter().filter(|m| m.target == node) {
        let Some(a) = state.allocations.get(&m.alloc_id) else {
            continue;
        };
        if a.node != m.source || a.desired != AllocDesired::Run || a.status.is_terminal() {
            continue;
        }
        let Some(job) = state
            .jobs
            .get(&a.job)
            .filter(|j| j.version == a.job_version)
        else {
            continue;
        };
        let migration = Some(migration_assignment(state, m, node));
        let request_id = request_ids.of(job);
        assigned.push(assignment(
            state,
            job,
            a,
            node,
            m.from_generation + 1,
            migration,
            request_id,
        ));
    }
    assigned
}

/// The request id that made each job's current version, read from its
/// record (a JSON variable, [`crate::request_record`]) once per job and
/// call of [`assigned_to`], not once per allocation: a service of many
/// instances on one node would parse the same record for each.
struct RequestIds<'s> {
    state: &'s ClusterState,
    by_job: HashMap<&'s str, String>,
}

impl<'s> RequestIds<'s> {
    fn new(state: &'s ClusterState) -> Self {
        Self {
            state,
            by_job: HashMap::new(),
        }
    }

    /// The id for `job`'s current version; empty when no record names it.
    fn of(&mut self, job: &'s Job) -> String {
        let state = self.state;
        self.by_job
            .entry(job.spec.name.as_str())
            .or_insert_with(|| {
                crate::request_record::of_current_version(state, &job.spec.name)
                    .map(String::from)
                    .unwrap_or_default()
            })
            .clone()
    }
}

/// The migrations in flight that `node` takes part in, as source or target.
fn migrations_of<'s>(state: &'s ClusterState, node: &str) -> Vec<&'s Migration> {
    state
        .migrations
        .values()
        .filter(|m| m.is_active() && (m.source == node || m.target == node))
        .collect()
}

/// `node`'s part in migration `m`, with the other node's agent address.
fn migration_assignment(state: &ClusterState, m: &Migration, node: &str) -> MigrationAssignment {
    let (role, peer) = if m.source == node {
        ("source", &m.target)
    } else {
        ("target", &m.source)
    };
    MigrationAssignment {
        id: m.id.clone(),
        role: role.to_string(),
        peer_node: peer.clone(),
        peer_addr: state
            .nodes
            .get(peer)
            .map(|n| n.addr.clone())
            .unwrap_or_default(),
        phase: m.phase.as_str().to_string(),
        kind: m.kind.clone(),
        downtime_limit_ms: m.downtime_limit_ms,
        bandwidth_bytes_per_sec: m.bandwidth_bytes_per_sec.unwrap_or(0),
        from_generation: m.from_generation,
        phase_deadline_ms: m.phase_deadline_ms,
        group: m.gang.as_ref().map(|g| g.group.clone()).unwrap_or_default(),
    }
}

/// Allocation `a` of `job` as `node`'s agent is told it, at `generation`;
/// `request_id`: the request that made `job`'s current version.
fn assignment(
    state: &ClusterState,
    job: &Job,
    a: &Allocation,
    node: &str,
    generation: u64,
    migration: Option<MigrationAssignment>,
    request_id: String,
) -> AssignedAllocation {
    let mut env: HashMap<String, String> = [
        ("HERD_ALLOC_INSTANCE", a.instance.to_string()),
        ("HERD_JOB_VERSION", a.job_version.to_string()),
        ("HERD_JOB_COUNT", job.spec.count.to_string()),
        ("HERD_NODE", node.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if job.spec.placement.gang {
        env.extend(gang_env(state, a));
    }
    let gpu_indices = gpus_on(state, a, node);
    if !gpu_indices.is_empty() {
        let list = crate::machine::apply::plan::gpu_list(&gpu_indices);
        for key in GPU_ENV {
            env.insert(key.to_string(), list.clone());
        }
    }
    AssignedAllocation {
        id: a.id.clone(),
        generation,
        job: a.job.clone(),
        job_type: job.spec.job_type.as_str().to_string(),
        task: Some((&job.spec.task).into()),
        env,
        stop_after_disconnect_ms: herd_api::duration::to_wire_ms(job.spec.stop_after_disconnect),
        migration,
        gpu_indices,
        balance_movable: job.spec.balance.movable,
        request_id,
    }
}

/// The variables that name an allocation's GPUs to its workload, each set
/// to the indices comma-separated: CUDA's and the NVIDIA container
/// runtime's, and herd's own for programs that want to know.
pub const GPU_ENV: [&str; 3] = [
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "HERD_GPU_INDICES",
];

/// The GPUs allocation `a` holds on `node`: its own on its node, those its
/// migration reserved on the target.
fn gpus_on(state: &ClusterState, a: &Allocation, node: &str) -> Vec<u32> {
    if a.node == node {
        return a.gpu_indices.clone();
    }
    state
        .migrations
        .values()
        .find(|m| m.is_active() && m.alloc_id == a.id && m.target == node)
        .map(|m| m.target_gpu_indices.clone())
        .unwrap_or_default()
}

/// What [`assigned_to`] reads for `node`: its watch stream recomputes the
/// set only when apply reports a change to one of these.
pub fn interest_of(state: &ClusterState, node: &str) -> NodeInterest {
    let mut interest = NodeInterest {
        node: node.to_string(),
        ..NodeInterest::default()
    };
    for alloc in state.allocs_on_node(node) {
        if interest.jobs.insert(alloc.job.clone()) {
            interest.other_nodes |= state
                .jobs
                .get(&alloc.job)
                .is_some_and(|job| job.spec.placement.gang);
        }
    }
    // A migration's record (its phase, its end) touches both of its nodes;
    // the set also reads an incoming allocation's job and the peer's address.
    for m in migrations_of(state, node) {
        interest.jobs.insert(m.job.clone());
        let peer = if m.source == node {
            &m.target
        } else {
            &m.source
        };
        interest.peers.insert(peer.clone());
    }
    interest
}

/// Per instance of `job`, the creation index of its oldest copy that has
/// not ended. A copy of a job that set `stop_after_disconnect` waits while
/// an older one lives: only older copies count, so two copies can never
/// hold each other back. Computed once per job and node, not per copy.
///
/// A preempted copy is terminal from the moment it is evicted, though its
/// node may take a moment to stop it; its replacement does not wait.
fn oldest_live_copies(state: &ClusterState, job: &str) -> HashMap<u32, u64> {
    let mut oldest: HashMap<u32, u64> = HashMap::new();
    for copy in state.allocs_of_job(job).filter(|a| !a.status.is_terminal()) {
        oldest
            .entry(copy.instance)
            .and_modify(|index| *index = (*index).min(copy.create_index))
            .or_insert(copy.create_index);
    }
    oldest
}

/// What a gang member needs to find the others: its rank (the instance
/// number), the gang's size, and the hosts of every member in rank order
/// (the host part of each node's agent address; rank 0's is the master).
fn gang_env(state: &ClusterState, alloc: &Allocation) -> Vec<(String, String)> {
    let mut members: Vec<(u32, String)> = state
        .allocs_of_job(&alloc.job)
        .filter(|m| {
            m.job_version == alloc.job_version
                && m.desired == AllocDesired::Run
                && !m.status.is_terminal()
        })
        .map(|m| {
            let addr = state.nodes.get(&m.node).map_or("", |n| n.addr.as_str());
            let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
            (m.instance, host.to_string())
        })
        .collect();
    members.sort();
    let hosts: Vec<String> = members.iter().map(|(_, host)| host.clone()).collect();
    vec![
        ("HERD_GANG_RANK".to_string(), alloc.instance.to_string()),
        ("HERD_GANG_SIZE".to_string(), members.len().to_string()),
        ("HERD_GANG_PEERS".to_string(), hosts.join(",")),
        (
            "HERD_GANG_MASTER".to_string(),
            hosts.first().cloned().unwrap_or_default(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use herd_api::alloc::AllocStatus;
    use herd_api::job::{JobSpec, JobType};

    use super::*;
    use crate::machine::command::Command;
    use crate::planning::plan_job;
    use crate::testkit::{alloc_update, place, report, run, spec};

    fn careful(name: &str) -> JobSpec {
        JobSpec {
            stop_after_disconnect: Some(Duration::from_secs(1)),
            ..spec(name, JobType::Service, 1)
        }
    }

    /// The node running `job`'s instance 0 and its allocation.
    fn running_copy(state: &ClusterState, job: &str) -> (String, Allocation) {
        let alloc = state
            .allocs_of_job(job)
            .find(|a| a.desired == AllocDesired::Run)
            .expect("a copy to run")
            .clone();
        (alloc.node.clone(), alloc)
    }

    /// `alloc`'s agent reports it `status`.
    fn observe(state: &mut ClusterState, index: u64, alloc: &Allocation, status: AllocStatus) {
        let update = alloc_update(alloc, status);
        let (accepted, refused) = report(state, index, &alloc.node, vec![update], 3_000);
        assert_eq!(accepted, 1, "{refused:?}");
    }

    /// Drains the node running `job` and places its replacement; returns
    /// the old copy, the replacement's node and the next free index.
    fn drain_and_replace(
        state: &mut ClusterState,
        index: u64,
        job: &str,
    ) -> (Allocation, String, u64) {
        let (from, old) = running_copy(state, job);
        observe(state, index, &old, AllocStatus::Running);
        run(
            state,
            index + 1,
            Command::DrainNode {
                node: from.clone(),
                now_ms: 2_000,
            },
        );
        let plan = plan_job(state, &state.jobs[job], 2_000).expect("a replacement plan");
        run(
            state,
            index + 2,
            Command::ApplyPlan {
                plan,
                now_ms: 2_000,
            },
        );
        let (to, _) = running_copy(state, job);
        assert_ne!(to, from, "the replacement is placed on the other node");
        (old, to, index + 3)
    }

    fn ids(assigned: &[AssignedAllocation]) -> Vec<&str> {
        assigned.iter().map(|a| a.job.as_str()).collect()
    }

    #[test]
    fn a_careful_replacement_waits_until_the_copy_it_replaces_has_stopped() {
        let mut state = ClusterState::default();
        let index = place(&mut state, &["n1", "n2"], vec![careful("lease")], 1_000);
        let (old, to, index) = drain_and_replace(&mut state, index, "lease");

        assert!(
            assigned_to(&state, &to).is_empty(),
            "the old copy still runs on {}: its replacement must not start yet",
            old.node
        );
        // The old node is told to stop its copy meanwhile.
        assert!(assigned_to(&state, &old.node).is_empty());

        observe(&mut state, index, &old, AllocStatus::Stopped);
        assert_eq!(ids(&assigned_to(&state, &to)), vec!["lease"]);
    }

    #[test]
    fn a_careful_replacement_starts_once_the_old_node_is_declared_lost() {
        let mut state = ClusterState::default();
        let index = place(&mut state, &["n1", "n2"], vec![careful("lease")], 1_000);
        let (old, to, index) = drain_and_replace(&mut state, index, "lease");
        assert!(assigned_to(&state, &to).is_empty());

        // A node that misses its heartbeats has stopped the job itself
        // (stop_after_disconnect is shorter than the TTL).
        run(
            &mut state,
            index,
            Command::MarkNodeDown {
                node: old.node.clone(),
                now_ms: 9_000,
            },
        );
        assert_eq!(ids(&assigned_to(&state, &to)), vec!["lease"]);
    }

    #[test]
    fn other_jobs_start_their_replacements_at_once() {
        let mut state = ClusterState::default();
        let index = place(
            &mut state,
            &["n1", "n2"],
            vec![spec("web", JobType::Service, 1)],
            1_000,
        );
        let (_, to, _) = drain_and_replace(&mut state, index, "web");
        assert_eq!(ids(&assigned_to(&state, &to)), vec!["web"]);
    }
    #[test]
    fn every_copy_of_a_version_names_the_request_that_made_it() {
        use crate::request_record::{record_command, Action, JobRequest};
        use herd_api::request_id::RequestId;

        let mut state = ClusterState::default();
        let mut index = place(
            &mut state,
            &["n1"],
            vec![spec("web", JobType::Service, 1)],
            1_000,
        );
        assert_eq!(
            assigned_to(&state, "n1")[0].request_id,
            "",
            "no record: no id"
        );
        // The record, then a new version of three copies.
        let id = RequestId::parse("cli-42").expect("id");
        let request = JobRequest::new(&state, "web", id, Action::Submit, 1_000);
        let command = record_command("web", &request).expect("record");
        run(&mut state, index, command);
        let web3 = spec("web", JobType::Service, 3);
        run(
            &mut state,
            index + 1,
            Command::SubmitJob {
                spec: JobSpec {
                    priority: 60,
                    ..web3
                },
                now_ms: 1_000,
            },
        );
        index += 2;
        let plan = plan_job(&state, &state.jobs["web"], 1_000).expect("a plan");
        run(
            &mut state,
            index,
            Command::ApplyPlan {
                plan,
                now_ms: 1_000,
            },
        );
        let assigned = assigned_to(&state, "n1");
        assert_eq!(assigned.len(), 3, "{assigned:?}");
        for a in &assigned {
            assert_eq!(a.request_id, "cli-42", "{a:?}");
        }
    }

    /// A running simvm `vm` on one of n1, n2 (both able to move it live)
    /// and a migration of it to the other; returns the state, the
    /// allocation, the migration id, the target and the next free index.
    fn moving() -> (ClusterState, Allocation, String, String, u64) {
        use herd_api::capabilities::{DriverCaps, MigrationMode};
        let mut state = ClusterState::default();
        let mut vm = spec("vm", JobType::Service, 1);
        vm.task.driver = "simvm".into();
        let mut index = place(&mut state, &["n1", "n2"], vec![vm], 1_000);
        for node in ["n1", "n2"] {
            let caps = DriverCaps {
                migration: MigrationMode::LivePreCopy,
                pause: true,
                power_cap: false,
            };
            run(
                &mut state,
                index,
                Command::SetNodeDrivers {
                    node: node.into(),
                    drivers: Some([("simvm".to_string(), caps)].into()),
                },
            );
            index += 1;
        }
        let (_, alloc) = running_copy(&state, "vm");
        observe(&mut state, index, &alloc, AllocStatus::Running);
        let target = if alloc.node == "n1" { "n2" } else { "n1" };
        let (result, _) = run(
            &mut state,
            index + 1,
            Command::StartMigration {
                alloc_id: alloc.id.clone(),
                target: target.into(),
                downtime_limit_ms: 250,
                bandwidth_bytes_per_sec: Some(1 << 30),
                now_ms: 2_000,
            },
        );
        let crate::machine::command::CommandResult::MigrationUpdated { id, .. } = result else {
            panic!("not started: {result:?}");
        };
        let alloc = state.allocations[&alloc.id].clone();
        (state, alloc, id, target.to_string(), index + 2)
    }

    #[test]
    fn both_nodes_of_a_migration_are_told_their_part_until_it_ends() {
        let (mut state, alloc, id, target, index) = moving();
        let source = alloc.node.clone();
        let on_source = assigned_to(&state, &source);
        assert_eq!(on_source.len(), 1);
        let outgoing = on_source[0].migration.clone().expect("the source's part");
        assert_eq!(on_source[0].generation, alloc.generation);
        assert_eq!(
            (
                outgoing.id.as_str(),
                outgoing.role.as_str(),
                outgoing.peer_node.as_str()
            ),
            (id.as_str(), "source", target.as_str())
        );
        assert_eq!(outgoing.peer_addr, state.nodes[&target].addr);
        assert_eq!(
            (outgoing.phase.as_str(), outgoing.kind.as_str()),
            ("planned", "simvm")
        );
        assert_eq!(
            (outgoing.downtime_limit_ms, outgoing.bandwidth_bytes_per_sec),
            (250, 1 << 30)
        );

        let on_target = assigned_to(&state, &target);
        assert_eq!(on_target.len(), 1, "the target readies the same allocation");
        let incoming = &on_target[0];
        assert_eq!(incoming.id, alloc.id);
        assert_eq!(incoming.generation, alloc.generation + 1);
        assert_eq!(incoming.env["HERD_NODE"], target);
        assert_eq!(
            incoming.env["HERD_ALLOC_INSTANCE"],
            on_source[0].env["HERD_ALLOC_INSTANCE"]
        );
        assert_eq!(incoming.task, on_source[0].task);
        let part = incoming.migration.clone().expect("the target's part");
        assert_eq!(
            (
                part.role.as_str(),
                part.peer_node.as_str(),
                part.from_generation
            ),
            ("target", source.as_str(), alloc.generation)
        );

        // Aborted: the source keeps running it, the target has nothing.
        let mut aborted = state.clone();
        run(
            &mut aborted,
            index,
            Command::AbortMigration {
                id: id.clone(),
                reason: "test".into(),
                now_ms: 2_100,
            },
        );
        let kept = assigned_to(&aborted, &source);
        assert_eq!(kept.len(), 1);
        assert_eq!(
            (kept[0].migration.as_ref(), kept[0].generation),
            (None, alloc.generation)
        );
        assert!(assigned_to(&aborted, &target).is_empty());

        // Switched over: the target runs it, one generation up; the source
        // has nothing.
        for (i, phase) in [
            herd_api::migration::MigrationPhase::Preparing,
            herd_api::migration::MigrationPhase::Transferring,
            herd_api::migration::MigrationPhase::Switching,
        ]
        .into_iter()
        .enumerate()
        {
            run(
                &mut state,
                index + i as u64,
                Command::AdvanceMigration {
                    id: id.clone(),
                    phase,
                    bytes: 1,
                    rounds: 1,
                    now_ms: 2_100,
                },
            );
        }
        let phase = assigned_to(&state, &target)[0]
            .migration
            .clone()
            .map(|m| m.phase);
        assert_eq!(phase.as_deref(), Some("switching"));
        run(
            &mut state,
            index + 3,
            Command::SwitchMigration {
                id,
                downtime_ms: 3,
                now_ms: 2_200,
            },
        );
        assert!(assigned_to(&state, &source).is_empty());
        let owned = assigned_to(&state, &target);
        assert_eq!(owned.len(), 1);
        assert_eq!(
            (owned[0].migration.as_ref(), owned[0].generation),
            (None, alloc.generation + 1)
        );
    }

    #[test]
    fn a_migration_concerns_both_of_its_nodes_watch_streams() {
        use crate::machine::apply::apply;
        use crate::state::{ChangeLog, Changed};
        let (mut state, alloc, id, target, index) = moving();
        let interest = interest_of(&state, &target);
        assert!(interest.jobs.contains("vm"), "{interest:?}");
        assert!(interest.peers.contains(&alloc.node), "{interest:?}");
        for (i, node) in [alloc.node.clone(), target.clone()].into_iter().enumerate() {
            let interest = interest_of(&state, &node);
            let (mut ops, mut touched) = (Vec::new(), Changed::default());
            apply(
                &mut state,
                index + i as u64,
                Command::AdvanceMigration {
                    id: id.clone(),
                    phase: herd_api::migration::MigrationPhase::Preparing,
                    bytes: 1 + i as u64,
                    rounds: 1,
                    now_ms: 2_100,
                },
                &mut ChangeLog::recording(&mut ops, &mut touched),
            );
            assert!(touched.concerns(&interest), "{node}: {touched:?}");
        }
    }

    #[test]
    fn a_change_to_what_a_nodes_set_reads_concerns_that_node_only() {
        use crate::machine::apply::apply;
        use crate::state::{ChangeLog, Changed};
        let mut state = ClusterState::default();
        let index = place(
            &mut state,
            &["n1", "n2"],
            vec![spec("web", JobType::Service, 1)],
            1_000,
        );
        let (here, _) = running_copy(&state, "web");
        let elsewhere = if here == "n1" { "n2" } else { "n1" };
        let interest = interest_of(&state, &here);
        assert_eq!(interest.jobs, ["web".to_string()].into());
        assert!(!interest.other_nodes, "web is no gang");
        let before = assigned_to(&state, &here);

        let (mut ops, mut touched) = (Vec::new(), Changed::default());
        apply(
            &mut state,
            index,
            Command::StopJob {
                name: "web".into(),
                now_ms: 5_000,
            },
            &mut ChangeLog::recording(&mut ops, &mut touched),
        );
        assert_ne!(assigned_to(&state, &here), before, "the set changed");
        assert!(touched.concerns(&interest), "{touched:?}");
        assert!(
            !touched.concerns(&interest_of(&state, elsewhere)),
            "{touched:?}"
        );

        // A variable write concerns no node.
        let (mut ops, mut touched) = (Vec::new(), Changed::default());
        apply(
            &mut state,
            index + 1,
            Command::PutVariable {
                key: "k".into(),
                value: b"v".to_vec(),
                expected_version: None,
            },
            &mut ChangeLog::recording(&mut ops, &mut touched),
        );
        assert!(touched.variables);
        assert!(!touched.concerns(&interest) && !touched.concerns_scheduling());
    }
}
