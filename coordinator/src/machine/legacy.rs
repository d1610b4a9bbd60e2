//! Decoding of data written by the first release, whose job specs were plain
//! bincode structs without `placement` or driver `config`.
//!
//! bincode is not self-describing: a [`JobSpec`] with one more field cannot
//! read the bytes of an older one, and `#[serde(default)]` does not help. So
//! specs are now written as JSON text inside bincode ([`crate::machine::spec_codec`]),
//! where later fields can default; the first release's shapes are kept
//! here, frozen, and converted on read:
//! - state records of format 1 (`state::keys`): jobs decode as [`JobV1`];
//!   every record written now is format 2;
//! - Raft log entries proposed by an older release: a command that does not
//!   decode as [`Command`] is retried as [`CommandV1`].
//!
//! Members of a mixed-version cluster cannot read each other's new entries:
//! upgrade all members before submitting jobs.

use std::collections::BTreeMap;

use herd_api::alloc::{AllocDesired, AllocEvent, AllocStatus, Allocation};
use herd_api::job::{JobSpec, JobType, TaskSpec};
use herd_api::node::NodeInfo;
use herd_api::resources::Resources;
use serde::Deserialize;

use crate::machine::command::Command;
use crate::planning::PlanCommand;
use crate::state::{Job, JobStatus};

/// A job spec as format 1 stored it: no placement.
#[derive(Deserialize)]
struct JobSpecV1 {
    name: String,
    job_type: JobType,
    count: u32,
    priority: u32,
    task: TaskSpecV1,
}

/// [`TaskSpec`], unchanged, restated so the frozen shape cannot drift.
#[derive(Deserialize)]
struct TaskSpecV1 {
    driver: String,
    command: Option<String>,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    workdir: Option<String>,
    resources: Resources,
}

impl From<JobSpecV1> for JobSpec {
    fn from(v1: JobSpecV1) -> Self {
        let t = v1.task;
        JobSpec {
            name: v1.name,
            job_type: v1.job_type,
            count: v1.count,
            priority: v1.priority,
            task: TaskSpec {
                driver: t.driver,
                command: t.command,
                args: t.args,
                env: t.env,
                workdir: t.workdir,
                resources: t.resources,
                config: Default::default(),
            },
            placement: Default::default(),
            stop_after_disconnect: None,
            balance: Default::default(),
            autoscale: None,
        }
    }
}

/// A job record of format 1.
#[derive(Deserialize)]
pub(crate) struct JobV1 {
    spec: JobSpecV1,
    version: u64,
    status: JobStatus,
    submitted_at_ms: u64,
    updated_at_ms: u64,
    modify_index: u64,
    blocked: Option<String>,
}

impl From<JobV1> for Job {
    fn from(v1: JobV1) -> Self {
        Job {
            spec: v1.spec.into(),
            version: v1.version,
            status: v1.status,
            submitted_at_ms: v1.submitted_at_ms,
            updated_at_ms: v1.updated_at_ms,
            modify_index: v1.modify_index,
            blocked: v1.blocked,
        }
    }
}

/// An allocation record of formats 1 and 2, before allocations held GPU
/// indices (`state::keys`): the same fields, in the same order, without
/// `gpu_indices`, which reads as empty (a count-only holder of GPUs).
#[derive(Deserialize)]
pub(crate) struct AllocationV2 {
    id: String,
    job: String,
    job_version: u64,
    instance: u32,
    node: String,
    resources: Resources,
    priority: u32,
    gang: Option<String>,
    generation: u64,
    desired: AllocDesired,
    status: AllocStatus,
    events: Vec<AllocEvent>,
    create_index: u64,
    modify_index: u64,
}

impl From<AllocationV2> for Allocation {
    fn from(v2: AllocationV2) -> Self {
        Allocation {
            id: v2.id,
            job: v2.job,
            job_version: v2.job_version,
            instance: v2.instance,
            node: v2.node,
            resources: v2.resources,
            priority: v2.priority,
            gang: v2.gang,
            generation: v2.generation,
            desired: v2.desired,
            status: v2.status,
            events: v2.events,
            create_index: v2.create_index,
            modify_index: v2.modify_index,
            gpu_indices: Vec::new(),
        }
    }
}

/// [`Command`] as releases before placement fields proposed it; variants in
/// the same order, so that bincode's variant indexes match.
#[derive(Deserialize)]
enum CommandV1 {
    InitCluster {
        cluster_id: String,
    },
    SubmitJob {
        spec: JobSpecV1,
        now_ms: u64,
    },
    StopJob {
        name: String,
        now_ms: u64,
    },
    RegisterNode {
        node: NodeInfo,
        now_ms: u64,
    },
    ApplyPlan {
        #[serde(with = "crate::machine::plan_codec")]
        plan: PlanCommand,
        now_ms: u64,
    },
    SetNodeEligibility {
        node: String,
        eligible: bool,
    },
    DrainNode {
        node: String,
        now_ms: u64,
    },
    PutVariable {
        key: String,
        value: Vec<u8>,
        expected_version: Option<u64>,
    },
}

impl From<CommandV1> for Command {
    fn from(v1: CommandV1) -> Self {
        match v1 {
            CommandV1::InitCluster { cluster_id } => Command::InitCluster { cluster_id },
            CommandV1::SubmitJob { spec, now_ms } => Command::SubmitJob {
                spec: spec.into(),
                now_ms,
            },
            CommandV1::StopJob { name, now_ms } => Command::StopJob { name, now_ms },
            CommandV1::RegisterNode { node, now_ms } => Command::RegisterNode { node, now_ms },
            CommandV1::ApplyPlan { plan, now_ms } => Command::ApplyPlan { plan, now_ms },
            CommandV1::SetNodeEligibility { node, eligible } => {
                Command::SetNodeEligibility { node, eligible }
            }
            CommandV1::DrainNode { node, now_ms } => Command::DrainNode { node, now_ms },
            CommandV1::PutVariable {
                key,
                value,
                expected_version,
            } => Command::PutVariable {
                key,
                value,
                expected_version,
            },
        }
    }
}

/// Decodes a command from the log: the current shape, else the format-1
/// shape (the error reported is the current shape's).
pub fn decode_command(bytes: &[u8]) -> Result<Command, herd_consensus::error::ConsensusError> {
    herd_consensus::codec::decode::<Command>(bytes, "command").or_else(|e| {
        herd_consensus::codec::decode::<CommandV1>(bytes, "command")
            .map(Command::from)
            .map_err(|_| e)
    })
}

/// A task as format 1 wrote it (no `config`), for tests that write old bytes.
#[cfg(test)]
#[derive(serde::Serialize)]
pub(crate) struct OldTask<'a> {
    driver: &'a str,
    command: &'a Option<String>,
    args: &'a [String],
    env: &'a BTreeMap<String, String>,
    workdir: &'a Option<String>,
    resources: &'a Resources,
}

#[cfg(test)]
impl<'a> From<&'a TaskSpec> for OldTask<'a> {
    fn from(t: &'a TaskSpec) -> Self {
        OldTask {
            driver: &t.driver,
            command: &t.command,
            args: &t.args,
            env: &t.env,
            workdir: &t.workdir,
            resources: &t.resources,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;

    /// The format-1 shapes, for writing old bytes in tests.
    #[derive(Serialize)]
    struct OldSpec<'a> {
        name: &'a str,
        job_type: JobType,
        count: u32,
        priority: u32,
        task: OldTask<'a>,
    }

    #[derive(Serialize)]
    enum OldCommand<'a> {
        _InitCluster,
        SubmitJob { spec: OldSpec<'a>, now_ms: u64 },
    }

    fn spec() -> JobSpec {
        JobSpec {
            name: "old".into(),
            job_type: JobType::Service,
            count: 2,
            priority: 40,
            task: TaskSpec {
                driver: "exec".into(),
                command: Some("/bin/true".into()),
                args: vec!["x".into()],
                env: BTreeMap::from([("A".into(), "b".into())]),
                workdir: None,
                resources: Resources {
                    cpu_millis: 100,
                    memory_bytes: 1 << 20,
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

    #[test]
    fn a_submit_from_an_older_release_decodes_with_default_placement() {
        let spec = spec();
        let old = OldCommand::SubmitJob {
            spec: OldSpec {
                name: &spec.name,
                job_type: spec.job_type,
                count: spec.count,
                priority: spec.priority,
                task: (&spec.task).into(),
            },
            now_ms: 1_700_000_000_000,
        };
        let bytes = herd_consensus::codec::encode(&old).expect("encode");
        assert!(herd_consensus::codec::decode::<Command>(&bytes, "command").is_err());
        let decoded = decode_command(&bytes).expect("decodes as format 1");
        assert_eq!(
            decoded,
            Command::SubmitJob {
                spec: spec.clone(),
                now_ms: 1_700_000_000_000
            }
        );
        // And the current shape still decodes directly.
        let new = herd_consensus::codec::encode(&decoded).expect("encode");
        assert_eq!(decode_command(&new).expect("decodes"), decoded);
    }
}
