//! What a backup holds, counted: for `herd operator snapshot inspect` and
//! for the messages of a restore.
//!
//! The payload is decoded exactly as a restore decodes it (the Raft
//! snapshot body, then every record into a `ClusterState`), so a file that
//! inspects cleanly is one this release can restore.

use std::collections::BTreeMap;

use herd_consensus::state_machine::decode_snapshot_body;
use herd_consensus::storage::Pair;
use serde::Serialize;

use crate::state::ClusterState;

/// Counts of what a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The cluster id recorded in the state (may differ from the header's
    /// only in a hand-made file).
    pub cluster_id: Option<String>,
    /// Every record, of every kind.
    pub records: u64,
    /// Records by kind: the part of the key before its first `/`
    /// (`job`, `node`, `alloc`, `var`...); kinds a later release adds are
    /// counted too.
    pub by_kind: BTreeMap<String, u64>,
    /// Jobs.
    pub jobs: u64,
    /// Registered nodes.
    pub nodes: u64,
    /// Allocations (every status).
    pub allocations: u64,
    /// Variables.
    pub variables: u64,
    /// Migrations (running and ended).
    pub migrations: u64,
}

impl Summary {
    /// Counts the records of `pairs`, which must all decode.
    pub fn of(pairs: &[Pair]) -> Result<Self, String> {
        let mut by_kind = BTreeMap::new();
        for (key, _) in pairs {
            let kind = key.split(|b| *b == b'/').next().unwrap_or_default();
            *by_kind
                .entry(String::from_utf8_lossy(kind).into_owned())
                .or_insert(0u64) += 1;
        }
        let state = ClusterState::from_pairs(pairs.to_vec())?;
        Ok(Self {
            cluster_id: state.cluster_id.clone(),
            records: pairs.len() as u64,
            by_kind,
            jobs: state.jobs.len() as u64,
            nodes: state.nodes.len() as u64,
            allocations: state.allocations.len() as u64,
            variables: state.variables.len() as u64,
            migrations: state.migrations.len() as u64,
        })
    }
}

/// Decodes a backup's payload into its records and counts them; `what`
/// names the source in errors.
pub fn decode_payload(payload: &[u8], what: &str) -> Result<(Vec<Pair>, Summary), String> {
    let pairs = decode_snapshot_body(payload, what).map_err(|e| e.to_string())?;
    let summary =
        Summary::of(&pairs).map_err(|e| format!("{what}: a record cannot be read: {e}"))?;
    Ok((pairs, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_records_by_kind_and_refuses_garbage() {
        let mut state = ClusterState::default();
        state.cluster_id = Some("c-9".into());
        state.variables.insert(
            "a".into(),
            crate::state::Variable {
                value: b"1".to_vec(),
                version: 1,
                modify_index: 3,
            },
        );
        let pairs = state.to_pairs();
        let body = herd_consensus::state_machine::encode_snapshot_body(pairs).expect("encode");
        let (pairs, summary) = decode_payload(&body, "test payload").expect("decode");
        assert_eq!(pairs.len(), 2);
        assert_eq!(summary.variables, 1);
        assert_eq!(summary.jobs, 0);
        assert_eq!(summary.cluster_id.as_deref(), Some("c-9"));
        assert_eq!(summary.by_kind.get("var"), Some(&1));
        let err = decode_payload(b"\x07not a body", "test payload").expect_err("garbage");
        assert!(err.contains("test payload"), "{err}");
    }
}
