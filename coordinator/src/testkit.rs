//! Builders shared by the state-level unit tests: jobs, nodes, and a
//! command applied at a log index.

use herd_api::job::{JobSpec, JobType, TaskSpec};
use herd_api::node::{NodeInfo, NodeStatus};
use herd_api::resources::Resources;
use herd_consensus::storage::WriteOp;

use crate::machine::apply::apply;
use crate::machine::command::{Command, CommandResult};
use crate::state::{ChangeLog, ClusterState};

/// A job of `count` instances of 100 millicores each.
pub fn spec(name: &str, job_type: JobType, count: u32) -> JobSpec {
    JobSpec {
        name: name.into(),
        job_type,
        count,
        priority: 50,
        task: TaskSpec {
            driver: "exec".into(),
            command: Some("/bin/true".into()),
            args: vec![],
            env: Default::default(),
            workdir: None,
            resources: Resources {
                cpu_millis: 100,
                memory_bytes: 64 << 20,
                gpus: 0,
                gpu_model: None,
            },
            config: Default::default(),
        },
        placement: Default::default(),
        stop_after_disconnect: None,
        balance: Default::default(),
        autoscale: None,
    }
}

/// A ready node of 4 CPUs and 8 GiB.
pub fn node(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        addr: "127.0.0.1:1".into(),
        capacity: Resources {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            gpus: 0,
            gpu_model: None,
        },
        labels: Default::default(),
        status: NodeStatus::Ready,
        eligible: true,
        registered_at_ms: 0,
    }
}

/// Applies `command` at `index`, returning its result and what it persisted.
pub fn run(
    state: &mut ClusterState,
    index: u64,
    command: Command,
) -> (CommandResult, Vec<WriteOp>) {
    let mut ops = Vec::new();
    let result = apply(state, index, command, &mut ChangeLog::new(&mut ops));
    (result, ops)
}

/// What `alloc`'s agent says when its workload reaches `status` (event
/// "test", as the tests match it).
pub fn alloc_update(
    alloc: &herd_api::alloc::Allocation,
    status: herd_api::alloc::AllocStatus,
) -> herd_api::alloc::AllocUpdate {
    herd_api::alloc::AllocUpdate {
        id: alloc.id.clone(),
        generation: alloc.generation,
        status,
        event: "test".into(),
        detail: format!("now {}", status.as_str()),
    }
}

/// Applies `node`'s allocation reports at `index`; returns how many were
/// accepted and why the others were refused.
pub fn report(
    state: &mut ClusterState,
    index: u64,
    node: &str,
    updates: Vec<herd_api::alloc::AllocUpdate>,
    now_ms: u64,
) -> (u32, Vec<String>) {
    match run(
        state,
        index,
        Command::UpdateAllocs {
            node: node.into(),
            updates,
            now_ms,
        },
    )
    .0
    {
        CommandResult::AllocsUpdated { accepted, refused } => (accepted, refused),
        other => panic!("unexpected {other:?}"),
    }
}

/// Registers `nodes`, submits `jobs` and applies the leader's plan for each
/// at time `now_ms`; returns the next free log index.
pub fn place(state: &mut ClusterState, nodes: &[&str], jobs: Vec<JobSpec>, now_ms: u64) -> u64 {
    let mut index = 1;
    for name in nodes {
        run(
            state,
            index,
            Command::RegisterNode {
                node: node(name),
                now_ms,
            },
        );
        index += 1;
    }
    for spec in jobs {
        let name = spec.name.clone();
        run(state, index, Command::SubmitJob { spec, now_ms });
        index += 1;
        if let Some(plan) = crate::planning::plan_job(state, &state.jobs[&name], now_ms) {
            run(state, index, Command::ApplyPlan { plan, now_ms });
            index += 1;
        }
    }
    index
}
