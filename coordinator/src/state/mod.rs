//! `ClusterState`: everything the coordinators replicate, and how it persists.
//!
//! The state lives in memory for reads and is persisted as one key per
//! record, so applying a command writes only what it changed.

mod alloc_index;
pub mod assignments;
pub mod changes;
mod keys;

use std::collections::BTreeMap;

use herd_api::alloc::Allocation;
use herd_api::job::JobSpec;
use herd_api::migration::Migration;
use herd_api::node::NodeInfo;
use herd_consensus::storage::WriteOp;
use serde::{Deserialize, Serialize};

pub use alloc_index::AllocIndex;
pub use changes::{ChangeFeed, Changed};
pub use keys::Record;

/// What a job is doing, as the replicated state knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    /// Accepted; waiting for the scheduler to place it.
    Pending,
    /// At least one allocation runs.
    Running,
    /// A batch job that ran to completion.
    Complete,
    /// Stopped by a user.
    Stopped,
    /// A batch job with an instance that failed every attempt it was given.
    Failed,
}

impl JobStatus {
    /// The stable name scripts read in `--output json`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Complete => "complete",
            JobStatus::Stopped => "stopped",
            JobStatus::Failed => "failed",
        }
    }
}

/// A submitted job and its history counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The spec of the current version.
    #[serde(with = "crate::machine::spec_codec")]
    pub spec: JobSpec,
    /// Bumped on every change of spec or desired state (starts at 1).
    pub version: u64,
    /// Where the job stands.
    pub status: JobStatus,
    /// When version 1 was submitted (ms since the epoch, stamped by the leader).
    pub submitted_at_ms: u64,
    /// When the current version was written.
    pub updated_at_ms: u64,
    /// Raft index of the command that wrote the current version.
    pub modify_index: u64,
    /// Why instances of the current version are not placed, when some are not.
    pub blocked: Option<String>,
}

/// A replicated register with a version for compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variable {
    /// The stored bytes (a byte string to serde: copied whole, not per byte).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Bumped on every write (starts at 1; 0 means "absent" in a CAS).
    pub version: u64,
    /// Raft index of the last write.
    pub modify_index: u64,
}

/// The whole replicated state of a herd cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// Set once by the first leader; guards against mixing clusters.
    pub cluster_id: Option<String>,
    /// Registered node agents by name.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Jobs by name.
    pub jobs: BTreeMap<String, Job>,
    /// Variables by key.
    pub variables: BTreeMap<String, Variable>,
    /// Allocations by id. Add new ones with [`ClusterState::insert_alloc`],
    /// which keeps [`ClusterState::alloc_index`] current.
    pub allocations: BTreeMap<String, Allocation>,
    /// Nodes draining with a deadline: when it passes, what still runs there
    /// is stopped (ms since the epoch, by node name).
    pub drain_deadlines: BTreeMap<String, u64>,
    /// Live migrations by id, running and ended (the newest ended ones are
    /// kept, a bounded number per allocation: see
    /// `machine::apply::migration::ENDED_KEPT_PER_ALLOC`).
    pub migrations: BTreeMap<String, Migration>,
    /// The drivers each node's agent offers and what each allows, by node
    /// name, as its agent declared at registration; a node without an entry
    /// registered through an agent too old to say (its capabilities are
    /// unknown). Read it through [`ClusterState::driver_capabilities`].
    pub node_drivers: BTreeMap<String, herd_api::capabilities::NodeDrivers>,
    /// Where each node's agent serves clients besides its gRPC address
    /// (`"http"`: its OpenAI-compatible endpoint), `HOST:PORT` by name, as
    /// declared at registration; no entry: none.
    pub node_endpoints: BTreeMap<String, BTreeMap<String, String>>,
    /// GPU power budgets by group (`cluster` or a node label `key=value`,
    /// as `herd_api::power::PowerGroup` prints it).
    pub power_budgets: BTreeMap<String, crate::power::PowerBudget>,
    /// Client authentication: whether it is on, and the tokens (hashed).
    pub acl: crate::acl::AclState,
    /// Each inference service's recent scaling events, by job name (a
    /// bounded number, newest last: `crate::autoscale::apply`).
    pub scaling: BTreeMap<String, crate::autoscale::apply::ScalingLog>,
    /// Allocation ids by job and by node (derived, not persisted).
    alloc_index: AllocIndex,
}

/// Collects the persisted form of what a command changed, and (when
/// recording) which records, for the loops that wake on changes.
pub struct ChangeLog<'a> {
    ops: &'a mut Vec<WriteOp>,
    touched: Option<&'a mut Changed>,
}

impl<'a> ChangeLog<'a> {
    /// Records into `ops` only.
    pub fn new(ops: &'a mut Vec<WriteOp>) -> Self {
        Self { ops, touched: None }
    }

    /// Records into `ops`, and which records changed into `touched`.
    pub fn recording(ops: &'a mut Vec<WriteOp>, touched: &'a mut Changed) -> Self {
        Self {
            ops,
            touched: Some(touched),
        }
    }

    /// Records that `record` now has this value. Call it after the change
    /// (an allocation's node is read from the state), or call
    /// [`ChangeLog::removed_alloc`] for an allocation that is gone.
    pub fn put(&mut self, record: Record<'_>, state: &ClusterState) {
        match record.encode_value(state) {
            Some(value) => self.ops.push(WriteOp::Put(record.key(), value)),
            None => self.ops.push(WriteOp::Delete(record.key())),
        }
        let Some(touched) = self.touched.as_deref_mut() else {
            return;
        };
        match record {
            Record::ClusterId => {}
            Record::Node(name) | Record::DrainDeadline(name) => {
                touched.nodes.insert(name.to_string());
            }
            Record::Job(name) => {
                touched.jobs.insert(name.to_string());
            }
            Record::Variable(_) => touched.variables = true,
            // What a node's drivers allow is part of the node, for the
            // loops that will place and move work by it.
            Record::NodeDrivers(name) => {
                touched.nodes.insert(name.to_string());
            }
            // Budgets are read at every heartbeat; no loop waits on them.
            // Endpoints are only listed; nothing places work by them.
            Record::PowerBudget(_) | Record::NodeEndpoints(_) => {}
            // Tokens are checked per request; no loop waits on them.
            Record::AclBootstrap | Record::AclToken(_) | Record::Scaling(_) => {}
            Record::Migration(id) => {
                // A migration reserves room on its target and fences its
                // allocation: both nodes' views and the scheduler care.
                if let Some(m) = state.migrations.get(id) {
                    touched.alloc_nodes.insert(m.source.clone());
                    touched.alloc_nodes.insert(m.target.clone());
                    touched.alloc_jobs.insert(m.job.clone());
                } else {
                    touched.everything = true;
                }
            }
            Record::Alloc(id) => match state.allocations.get(id) {
                Some(alloc) => {
                    touched.alloc_nodes.insert(alloc.node.clone());
                    touched.alloc_jobs.insert(alloc.job.clone());
                }
                // Its node is unknown here: assume the worst.
                None => touched.everything = true,
            },
        }
    }

    /// Records that migration `m` was deleted from the state.
    pub fn removed_migration(&mut self, m: &Migration) {
        self.ops
            .push(WriteOp::Delete(Record::Migration(&m.id).key()));
        if let Some(touched) = self.touched.as_deref_mut() {
            touched.alloc_nodes.insert(m.source.clone());
            touched.alloc_nodes.insert(m.target.clone());
            touched.alloc_jobs.insert(m.job.clone());
        }
    }

    /// Records that `alloc` was deleted from the state.
    pub fn removed_alloc(&mut self, alloc: &Allocation) {
        self.ops
            .push(WriteOp::Delete(Record::Alloc(&alloc.id).key()));
        if let Some(touched) = self.touched.as_deref_mut() {
            touched.alloc_nodes.insert(alloc.node.clone());
            touched.alloc_jobs.insert(alloc.job.clone());
        }
    }
}

impl ClusterState {
    /// What `driver` allows on `node`, as the node's agent declared it;
    /// None when the node is unknown, its agent did not say (an older
    /// release), or it does not offer that driver. A migration must treat
    /// None as "cannot move": nothing is moved on a guess.
    pub fn driver_capabilities(
        &self,
        node: &str,
        driver: &str,
    ) -> Option<&herd_api::capabilities::DriverCaps> {
        self.node_drivers.get(node)?.get(driver)
    }

    /// Rebuilds the state from its persisted pairs.
    pub fn from_pairs(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Self, String> {
        let mut state = ClusterState::default();
        for (key, value) in pairs {
            keys::load_pair(&mut state, &key, &value)?;
        }
        state.alloc_index = AllocIndex::build(&state.allocations);
        Ok(state)
    }

    /// Adds (or replaces) an allocation and indexes it. An allocation's job
    /// never changes and its node only through [`ClusterState::move_alloc`],
    /// so the index moves only in these three places.
    pub fn insert_alloc(&mut self, alloc: Allocation) {
        self.alloc_index.add(&alloc);
        self.allocations.insert(alloc.id.clone(), alloc);
    }

    /// Gives allocation `id` to `node` (a migration's switch-over), keeping
    /// the index current; false when there is no such allocation.
    pub fn move_alloc(&mut self, id: &str, node: &str) -> bool {
        let Some(alloc) = self.allocations.get_mut(id) else {
            return false;
        };
        self.alloc_index.remove(alloc);
        alloc.node = node.to_string();
        self.alloc_index.add(alloc);
        true
    }

    /// Removes an allocation (garbage collection of ended ones), keeping the
    /// index current.
    pub fn remove_alloc(&mut self, id: &str) -> Option<Allocation> {
        let alloc = self.allocations.remove(id)?;
        self.alloc_index.remove(&alloc);
        Some(alloc)
    }

    /// The allocations of `job`, in id order: O(the job's allocations).
    pub fn allocs_of_job<'s>(&'s self, job: &str) -> impl Iterator<Item = &'s Allocation> + 's {
        self.alloc_index
            .of_job(job)
            .filter_map(move |id| self.allocations.get(id))
    }

    /// The allocations on `node`, in id order: O(the node's allocations).
    pub fn allocs_on_node<'s>(&'s self, node: &str) -> impl Iterator<Item = &'s Allocation> + 's {
        self.alloc_index
            .on_node(node)
            .filter_map(move |id| self.allocations.get(id))
    }

    /// Whether the derived index matches the allocations (for tests).
    pub fn alloc_index_is_current(&self) -> bool {
        self.alloc_index == AllocIndex::build(&self.allocations)
    }

    /// A digest of every record (FNV-1a 64 over the persisted pairs, in key
    /// order): equal states give equal digests on every member and release.
    pub fn digest(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for &b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        };
        let mut pairs = self.to_pairs();
        pairs.sort();
        for (k, v) in &pairs {
            feed(k);
            feed(v);
        }
        hash
    }

    /// Every record as persisted pairs (used by tests to compare members).
    pub fn to_pairs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut ops = Vec::new();
        let mut log = ChangeLog::new(&mut ops);
        if self.cluster_id.is_some() {
            log.put(Record::ClusterId, self);
        }
        for name in self.nodes.keys() {
            log.put(Record::Node(name), self);
        }
        for name in self.jobs.keys() {
            log.put(Record::Job(name), self);
        }
        for key in self.variables.keys() {
            log.put(Record::Variable(key), self);
        }
        for node in self.drain_deadlines.keys() {
            log.put(Record::DrainDeadline(node), self);
        }
        for id in self.allocations.keys() {
            log.put(Record::Alloc(id), self);
        }
        for id in self.migrations.keys() {
            log.put(Record::Migration(id), self);
        }
        for node in self.node_drivers.keys() {
            log.put(Record::NodeDrivers(node), self);
        }
        for node in self.node_endpoints.keys() {
            log.put(Record::NodeEndpoints(node), self);
        }
        for group in self.power_budgets.keys() {
            log.put(Record::PowerBudget(group), self);
        }
        if self.acl.bootstrapped.is_some() {
            log.put(Record::AclBootstrap, self);
        }
        for accessor in self.acl.tokens.keys() {
            log.put(Record::AclToken(accessor), self);
        }
        for job in self.scaling.keys() {
            log.put(Record::Scaling(job), self);
        }
        ops.into_iter()
            .filter_map(|op| match op {
                WriteOp::Put(k, v) => Some((k, v)),
                WriteOp::Delete(_) => None,
            })
            .collect()
    }
}
