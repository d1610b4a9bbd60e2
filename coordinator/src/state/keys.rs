//! Persisted layout of `ClusterState`: one key per record, values versioned.
//!
//! Keys: `cluster_id`, `node/<name>`, `job/<name>`, `var/<key>`. Values are a
//! format byte followed by bincode, so a later release can tell old records
//! from new ones.

use super::{ClusterState, Job, Variable};
use herd_api::alloc::Allocation;
use herd_api::node::NodeInfo;

const FORMAT: u8 = 1;

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
        }?;
        let mut value = Vec::with_capacity(body.len() + 1);
        value.push(FORMAT);
        value.extend(body);
        Some(value)
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, String> {
    match value.split_first() {
        Some((&FORMAT, body)) => {
            herd_consensus::codec::decode(body, key).map_err(|e| e.to_string())
        }
        Some((format, _)) => Err(format!(
            "record {key}: unknown format {format} (this herd reads format {FORMAT})"
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
        state
            .jobs
            .insert(name.to_string(), decode::<Job>(key, value)?);
    } else if let Some(id) = key.strip_prefix("alloc/") {
        state
            .allocations
            .insert(id.to_string(), decode::<Allocation>(key, value)?);
    } else if let Some(name) = key.strip_prefix("var/") {
        state
            .variables
            .insert(name.to_string(), decode::<Variable>(key, value)?);
    } else {
        return Err(format!("unknown state key {key:?}"));
    }
    Ok(())
}
