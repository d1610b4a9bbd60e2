//! Persisted layout of `ClusterState`: one key per record, values versioned.
//!
//! Keys: `cluster_id`, `node/<name>`, `job/<name>`, `var/<key>`, `alloc/<id>`,
//! `drain/<node>` (a drain's deadline, ms since the epoch), `drivers/<node>`
//! (what the node's drivers allow, JSON inside the record), `power/<group>`
//! (a group's GPU power budget, JSON inside the record), `acl/bootstrap`
//! and `acl/token/<accessor>` (client authentication, JSON inside the record),
//! `scaling/<job>` (a service's recent scaling events, JSON inside the record). Values are a
//! format byte followed by bincode, so a later release can tell old records
//! from new ones.
//!
//! Format 2 stores a job's spec as JSON text inside the bincode record
//! ([`crate::machine::spec_codec`]), so that spec fields added later (with a
//! serde default) need no new format; format 1 records are still read (jobs
//! through [`crate::machine::legacy::JobV1`], every other record is unchanged) and
//! rewritten in the current format when next changed.
//!
//! Format 3 (current) adds an allocation's GPU indices at the end of its
//! record; allocations of formats 1 and 2 are read through
//! [`crate::machine::legacy::AllocationV2`] (no GPU indices), every other
//! record is unchanged.

use super::{ClusterState, Job, Variable};
use herd_api::alloc::Allocation;
use herd_api::node::NodeInfo;

/// The format every record is written in.
const FORMAT: u8 = 3;
/// The format before allocations held GPU indices.
const FORMAT_V2: u8 = 2;
/// The format before job specs had placement fields.
const FORMAT_V1: u8 = 1;

/// One persisted record of the state.
#[derive(Debug, Clone, Copy)]
pub enum Record<'a> {
    /// The cluster id.
    ClusterId,
    /// A node by name.
    Node(&'a str),
    /// A job by name.
    Job(&'a str),
    /// A variable by key.
    Variable(&'a str),
    /// An allocation by id.
    Alloc(&'a str),
    /// The deadline of a node's drain, by node name.
    DrainDeadline(&'a str),
    /// A live migration by id (JSON inside the record, so that later
    /// fields can default).
    Migration(&'a str),
    /// The drivers a node's agent offers and what each allows, by node name
    /// (JSON inside the record, so that capability fields added later can
    /// default; absent: the agent did not say).
    NodeDrivers(&'a str),
    /// A group's GPU power budget, by group (JSON inside the record, so
    /// that later fields can default).
    PowerBudget(&'a str),
    /// Where a node's agent serves clients besides gRPC, by node name.
    NodeEndpoints(&'a str),
    /// When client authentication was turned on (JSON inside the record).
    AclBootstrap,
    /// A client token by accessor, its secret hashed (JSON inside the
    /// record, so that later fields can default).
    AclToken(&'a str),
    /// An inference service's recent scaling events, by job name (JSON
    /// inside the record, so that later fields can default).
    Scaling(&'a str),
}

impl Record<'_> {
    /// The storage key.
    pub fn key(&self) -> Vec<u8> {
        match self {
            Record::ClusterId => b"cluster_id".to_vec(),
            Record::Node(name) => format!("node/{name}").into_bytes(),
            Record::Job(name) => format!("job/{name}").into_bytes(),
            Record::Variable(key) => format!("var/{key}").into_bytes(),
            Record::Alloc(id) => format!("alloc/{id}").into_bytes(),
            Record::DrainDeadline(node) => format!("drain/{node}").into_bytes(),
            Record::Migration(id) => format!("migration/{id}").into_bytes(),
            Record::NodeDrivers(node) => format!("drivers/{node}").into_bytes(),
            Record::PowerBudget(group) => format!("power/{group}").into_bytes(),
            Record::NodeEndpoints(node) => format!("endpoints/{node}").into_bytes(),
            Record::AclBootstrap => b"acl/bootstrap".to_vec(),
            Record::AclToken(accessor) => format!("acl/token/{accessor}").into_bytes(),
            Record::Scaling(job) => format!("scaling/{job}").into_bytes(),
        }
    }

    /// The value as stored, or None when the record no longer exists.
    pub(super) fn encode_value(&self, state: &ClusterState) -> Option<Vec<u8>> {
        let body = match self {
            Record::ClusterId => state
                .cluster_id
                .as_ref()
                .and_then(|id| herd_consensus::codec::encode(id).ok()),
            Record::Node(name) => state
                .nodes
                .get(*name)
                .and_then(|n| herd_consensus::codec::encode(n).ok()),
            Record::Job(name) => state
                .jobs
                .get(*name)
                .and_then(|j| herd_consensus::codec::encode(j).ok()),
            Record::Variable(key) => state
                .variables
                .get(*key)
                .and_then(|v| herd_consensus::codec::encode(v).ok()),
            Record::Alloc(id) => state
                .allocations
                .get(*id)
                .and_then(|a| herd_consensus::codec::encode(a).ok()),
            Record::DrainDeadline(node) => state
                .drain_deadlines
                .get(*node)
                .and_then(|d| herd_consensus::codec::encode(d).ok()),
            Record::Migration(id) => state
                .migrations
                .get(*id)
                .and_then(|m| serde_json::to_vec(m).ok())
                .and_then(|json| herd_consensus::codec::encode(&json).ok()),
            Record::NodeDrivers(node) => state
                .node_drivers
                .get(*node)
                .and_then(|d| serde_json::to_vec(d).ok())
                .and_then(|json| herd_consensus::codec::encode(&json).ok()),
            Record::PowerBudget(group) => state
                .power_budgets
                .get(*group)
                .and_then(|b| serde_json::to_vec(b).ok())
                .and_then(|json| herd_consensus::codec::encode(&json).ok()),
            Record::NodeEndpoints(node) => state
                .node_endpoints
                .get(*node)
                .and_then(|e| herd_consensus::codec::encode(e).ok()),
            Record::AclBootstrap => state
                .acl
                .bootstrapped
                .as_ref()
                .and_then(|b| serde_json::to_vec(b).ok())
                .and_then(|json| herd_consensus::codec::encode(&json).ok()),
            Record::AclToken(accessor) => state
                .acl
                .tokens
                .get(*accessor)
                .and_then(|t| serde_json::to_vec(t).ok())
                .and_then(|json| herd_consensus::codec::encode(&json).ok()),
            Record::Scaling(job) => state
                .scaling
                .get(*job)
                .and_then(|l| serde_json::to_vec(l).ok())
                .and_then(|json| herd_consensus::codec::encode(&json).ok()),
        }?;
        let mut value = Vec::with_capacity(body.len() + 1);
        value.push(FORMAT);
        value.extend(body);
        Some(value)
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, String> {
    match value.split_first() {
        Some((&FORMAT | &FORMAT_V2 | &FORMAT_V1, body)) => {
            herd_consensus::codec::decode(body, key).map_err(|e| e.to_string())
        }
        Some((format, _)) => Err(format!(
            "record {key}: unknown format {format} (this herd reads formats {FORMAT_V1} to {FORMAT})"
        )),
        None => Err(format!("record {key}: empty value")),
    }
}

/// Loads one persisted pair into `state`.
pub(super) fn load_pair(state: &mut ClusterState, key: &[u8], value: &[u8]) -> Result<(), String> {
    let key = std::str::from_utf8(key).map_err(|_| format!("state key {key:?} is not UTF-8"))?;
    if key == "cluster_id" {
        state.cluster_id = Some(decode::<String>(key, value)?);
    } else if let Some(name) = key.strip_prefix("node/") {
        state
            .nodes
            .insert(name.to_string(), decode::<NodeInfo>(key, value)?);
    } else if let Some(name) = key.strip_prefix("job/") {
        let job = match value.first() {
            Some(&FORMAT_V1) => decode::<crate::machine::legacy::JobV1>(key, value)?.into(),
            _ => decode::<Job>(key, value)?,
        };
        state.jobs.insert(name.to_string(), job);
    } else if let Some(id) = key.strip_prefix("alloc/") {
        let alloc = match value.first() {
            Some(&FORMAT_V1 | &FORMAT_V2) => {
                decode::<crate::machine::legacy::AllocationV2>(key, value)?.into()
            }
            _ => decode::<Allocation>(key, value)?,
        };
        state.allocations.insert(id.to_string(), alloc);
    } else if let Some(node) = key.strip_prefix("drain/") {
        state
            .drain_deadlines
            .insert(node.to_string(), decode::<u64>(key, value)?);
    } else if let Some(id) = key.strip_prefix("migration/") {
        let json: Vec<u8> = decode(key, value)?;
        let migration =
            serde_json::from_slice(&json).map_err(|e| format!("record {key}: migration: {e}"))?;
        state.migrations.insert(id.to_string(), migration);
    } else if let Some(node) = key.strip_prefix("drivers/") {
        let json: Vec<u8> = decode(key, value)?;
        let drivers = serde_json::from_slice(&json)
            .map_err(|e| format!("record {key}: node drivers: {e}"))?;
        state.node_drivers.insert(node.to_string(), drivers);
    } else if let Some(node) = key.strip_prefix("endpoints/") {
        state.node_endpoints.insert(
            node.to_string(),
            decode::<std::collections::BTreeMap<String, String>>(key, value)?,
        );
    } else if let Some(group) = key.strip_prefix("power/") {
        let json: Vec<u8> = decode(key, value)?;
        let budget = serde_json::from_slice(&json)
            .map_err(|e| format!("record {key}: power budget: {e}"))?;
        state.power_budgets.insert(group.to_string(), budget);
    } else if key == "acl/bootstrap" {
        let json: Vec<u8> = decode(key, value)?;
        let bootstrapped = serde_json::from_slice(&json)
            .map_err(|e| format!("record {key}: acl bootstrap: {e}"))?;
        state.acl.bootstrapped = Some(bootstrapped);
    } else if let Some(accessor) = key.strip_prefix("acl/token/") {
        let json: Vec<u8> = decode(key, value)?;
        let token =
            serde_json::from_slice(&json).map_err(|e| format!("record {key}: acl token: {e}"))?;
        state.acl.tokens.insert(accessor.to_string(), token);
    } else if let Some(job) = key.strip_prefix("scaling/") {
        let json: Vec<u8> = decode(key, value)?;
        let log = serde_json::from_slice(&json)
            .map_err(|e| format!("record {key}: scaling events: {e}"))?;
        state.scaling.insert(job.to_string(), log);
    } else if let Some(name) = key.strip_prefix("var/") {
        state
            .variables
            .insert(name.to_string(), decode::<Variable>(key, value)?);
    } else {
        return Err(format!("unknown state key {key:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::JobStatus;
    use herd_api::job::{JobSpec, JobType, TaskSpec};
    use herd_api::resources::Resources;
    use serde::Serialize;

    #[test]
    fn a_format_1_job_record_is_read_with_default_placement() {
        #[derive(Serialize)]
        struct OldSpec<'a> {
            name: &'a str,
            job_type: JobType,
            count: u32,
            priority: u32,
            task: crate::machine::legacy::OldTask<'a>,
        }
        #[derive(Serialize)]
        struct OldJob<'a> {
            spec: OldSpec<'a>,
            version: u64,
            status: JobStatus,
            submitted_at_ms: u64,
            updated_at_ms: u64,
            modify_index: u64,
            blocked: Option<String>,
        }
        let task = TaskSpec {
            driver: "exec".into(),
            command: Some("/bin/true".into()),
            args: vec![],
            env: Default::default(),
            workdir: None,
            resources: Resources {
                cpu_millis: 100,
                memory_bytes: 1 << 20,
                gpus: 0,
                gpu_model: None,
            },
            config: Default::default(),
        };
        let old = OldJob {
            spec: OldSpec {
                name: "web",
                job_type: JobType::Service,
                count: 3,
                priority: 50,
                task: (&task).into(),
            },
            version: 4,
            status: JobStatus::Running,
            submitted_at_ms: 1,
            updated_at_ms: 2,
            modify_index: 3,
            blocked: None,
        };
        let mut value = vec![FORMAT_V1];
        value.extend(herd_consensus::codec::encode(&old).expect("encode"));
        let mut state = ClusterState::default();
        load_pair(&mut state, b"job/web", &value).expect("format 1 reads");
        let job = &state.jobs["web"];
        assert_eq!(
            job.spec,
            JobSpec {
                name: "web".into(),
                job_type: JobType::Service,
                count: 3,
                priority: 50,
                task,
                placement: Default::default(),
                stop_after_disconnect: None,
                balance: Default::default(),
                autoscale: None,
            }
        );
        assert_eq!((job.version, job.modify_index), (4, 3));
        // Written back, it is format 2 and reads the same.
        let pairs = state.to_pairs();
        assert_eq!(pairs[0].1[0], FORMAT);
        assert_eq!(ClusterState::from_pairs(pairs).expect("reads"), state);
        assert!(load_pair(&mut state, b"job/web", &[9, 0]).is_err());
    }

    #[test]
    fn node_drivers_records_round_trip_and_read_newer_fields() {
        use herd_api::capabilities::{DriverCaps, MigrationMode};
        let mut state = ClusterState::default();
        let vm = DriverCaps {
            migration: MigrationMode::LivePreCopy,
            pause: true,
            power_cap: false,
        };
        state
            .node_drivers
            .insert("n1".into(), [("vm".to_string(), vm)].into());
        let pairs = state.to_pairs();
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].0, b"drivers/n1");
        assert_eq!(pairs[0].1[0], FORMAT);
        assert_eq!(ClusterState::from_pairs(pairs).expect("reads"), state);
        assert_eq!(state.driver_capabilities("n1", "vm"), Some(&vm));
        assert_eq!(state.driver_capabilities("n1", "exec"), None);
        assert_eq!(state.driver_capabilities("n2", "vm"), None);

        // A later release's record, with a capability this one does not
        // know, still reads (JSON inside the record).
        let record = |json: &str| {
            let mut value = vec![FORMAT];
            value.extend(herd_consensus::codec::encode(&json.as_bytes().to_vec()).expect("encode"));
            value
        };
        let newer = r#"{"vm":{"migration":"live","pause":true,"power_cap":false,"later":7}}"#;
        let mut read = ClusterState::default();
        load_pair(&mut read, b"drivers/n1", &record(newer)).expect("reads");
        assert_eq!(read, state);
        // A mode it does not know is an error naming the record.
        let unknown = r#"{"vm":{"migration":"teleport","pause":true,"power_cap":false}}"#;
        let e = load_pair(&mut read, b"drivers/n1", &record(unknown)).expect_err("unknown");
        assert!(e.contains("drivers/n1"), "{e}");
    }

    #[test]
    fn power_budget_records_round_trip() {
        let mut state = ClusterState::default();
        state.power_budgets.insert(
            "rack=r1".into(),
            crate::power::PowerBudget {
                watts: 40_000,
                cap_permille: 900,
                hard_permille: 970,
                set_at_ms: 7,
                modify_index: 3,
            },
        );
        let pairs = state.to_pairs();
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].0, b"power/rack=r1");
        assert_eq!(ClusterState::from_pairs(pairs).expect("reads"), state);
    }
}
