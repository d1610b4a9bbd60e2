//! Seeding an empty store from a snapshot: how a member starts a new
//! cluster from a backup (`herd coordinator --recover-from`, `herd operator
//! snapshot restore`).
//!
//! The store is written as if this member had built the snapshot itself and
//! purged its log behind it: the state machine holds the snapshot's pairs at
//! the snapshot's log position, the log is empty up to that position, the
//! member's current snapshot is that one (so members that join later receive
//! it), and the membership is a fresh one naming this member alone. openraft
//! then starts it as the only voter of a cluster whose next entry follows the
//! snapshot's index: indexes, which name allocations and migrations, keep
//! growing past every index the backed-up cluster used, so no new id can
//! collide with a restored one.
//!
//! openraft 0.9 offers no way for a running leader to install a snapshot of
//! its own choosing (hashicorp/raft's `Restore`, which Consul and Nomad use,
//! has no counterpart), so a restore seeds a data dir before its member
//! starts, as etcd's `etcdutl snapshot restore` does.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{BasicNode, Membership};

use crate::codec;
use crate::error::ConsensusError;
use crate::log_store::{KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE};
use crate::state_machine::{
    app_key, encode_snapshot_body, KEY_APPLIED, KEY_MEMBERSHIP, KEY_SNAPSHOT_DATA,
    KEY_SNAPSHOT_META,
};
use crate::storage::{KvStore, Pair, Space, StoreError, WriteOp};
use crate::types::{LogId, NodeId, SnapshotMeta, StoredMembership, Vote};

/// What a new cluster starts from: the backed-up state and the member that
/// holds it first.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The log position the pairs reflect, as the backed-up cluster numbered
    /// it (index, term and the leader of that term).
    pub last_log_id: LogId,
    /// The member that starts the new cluster alone.
    pub member: NodeId,
    /// The address other members reach it at.
    pub addr: String,
    /// Every application pair of the backed-up state.
    pub pairs: Vec<Pair>,
}

/// Whether `store` holds anything at all: a log entry, a vote, a snapshot,
/// applied state. Seeding is only for a store that holds nothing, and a
/// seed interrupted half-way leaves a store this reports as not empty.
pub fn holds_state(store: &dyn KvStore) -> Result<bool, StoreError> {
    for space in [Space::Log, Space::Meta, Space::State] {
        if store.last(space)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ConsensusError> {
    codec::encode(value)
}

/// Writes `seed` into `store`, which must hold nothing (checked), and syncs it.
///
/// The state space is written first and the vote last: a crash in between
/// leaves a store that [`holds_state`] reports as not empty, so a second
/// seed is refused rather than mixed with the first, and the caller decides
/// (herd refuses to start on it without a completed-restore marker).
pub fn seed(store: &dyn KvStore, seed: Seed) -> Result<(), ConsensusError> {
    let storage = |e: StoreError| ConsensusError::Storage {
        dir: e.location.clone(),
        message: e.message,
    };
    if holds_state(store).map_err(storage)? {
        return Err(ConsensusError::Storage {
            dir: String::new(),
            message: "the store already holds Raft state; a snapshot seeds only an empty one"
                .to_string(),
        });
    }
    let Seed {
        last_log_id,
        member,
        addr,
        pairs,
    } = seed;
    let voters: BTreeSet<NodeId> = [member].into_iter().collect();
    let nodes: BTreeMap<NodeId, BasicNode> = [(member, BasicNode::new(addr))].into_iter().collect();
    let membership = StoredMembership::new(Some(last_log_id), Membership::new(vec![voters], nodes));
    let data = encode_snapshot_body(pairs.clone())?;
    let meta = SnapshotMeta {
        last_log_id: Some(last_log_id),
        last_membership: membership.clone(),
        snapshot_id: format!(
            "{}-{}-restored",
            last_log_id.leader_id.term, last_log_id.index
        ),
    };

    let mut state: Vec<WriteOp> = pairs
        .into_iter()
        .map(|(k, v)| WriteOp::Put(app_key(&k), v))
        .collect();
    state.push(WriteOp::Put(
        KEY_APPLIED.to_vec(),
        encode(&Some(last_log_id))?,
    ));
    state.push(WriteOp::Put(KEY_MEMBERSHIP.to_vec(), encode(&membership)?));
    store.write(Space::State, state).map_err(storage)?;

    // The log is purged up to the snapshot and committed to it; the vote,
    // in the snapshot's term and not committed, makes the member's first
    // election use a later term than any entry it holds.
    let meta_ops = vec![
        WriteOp::Put(KEY_SNAPSHOT_META.to_vec(), encode(&meta)?),
        WriteOp::Put(KEY_SNAPSHOT_DATA.to_vec(), data),
        WriteOp::Put(KEY_LAST_PURGED.to_vec(), encode(&last_log_id)?),
        WriteOp::Put(KEY_COMMITTED.to_vec(), encode(&Some(last_log_id))?),
    ];
    store.write(Space::Meta, meta_ops).map_err(storage)?;
    let vote = Vote::new(last_log_id.leader_id.term, member);
    store
        .write(
            Space::Meta,
            vec![WriteOp::Put(KEY_VOTE.to_vec(), encode(&vote)?)],
        )
        .map_err(storage)?;
    store.sync().map_err(storage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;

    fn log_id(term: u64, index: u64) -> LogId {
        openraft::LogId::new(openraft::CommittedLeaderId::new(term, 2), index)
    }

    #[test]
    fn a_store_with_anything_in_it_is_not_seeded_again() {
        let store = MemoryStore::new();
        assert!(!holds_state(&store).expect("check"));
        let first = Seed {
            last_log_id: log_id(3, 40),
            member: 1,
            addr: "127.0.0.1:7001".into(),
            pairs: vec![(b"k".to_vec(), b"v".to_vec())],
        };
        seed(&store, first.clone()).expect("seed");
        assert!(holds_state(&store).expect("check"));
        let err = seed(&store, first).expect_err("second seed").to_string();
        assert!(err.contains("already holds Raft state"), "{err}");
    }
}
