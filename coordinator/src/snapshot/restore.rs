//! Restoring a backup: seeding a member's data dir so that it starts a new
//! one-member cluster holding the backed-up state, which other members
//! then join as usual (`herd coordinator --join`).
//!
//! Used both for a restore into a new cluster and for disaster recovery of
//! a cluster that lost its quorum (`herd coordinator --recover-from FILE`,
//! `herd operator snapshot restore FILE --data-dir DIR`). Everything is
//! checked before anything is written: the file (magic, version, both
//! checksums, length), its records (decoded as this release decodes
//! state), and the data dir, which must belong to this member and hold no
//! Raft state unless `force` says to replace it.
//!
//! The new cluster gets a new cluster id. Its log continues after the
//! backup's index, but any writes the old cluster acknowledged after the
//! backup are not in it: under a new id, node agents, which fence
//! assignment sets by (cluster, index), take the new cluster's sets from
//! its first index instead of ignoring them as older than what the old
//! cluster sent, and members of the old cluster that come back are refused
//! by the new one rather than mixed with it.

use std::path::{Path, PathBuf};

use herd_consensus::seed::{holds_state, seed, Seed};
use herd_consensus::storage::{KvStore, Pair, SledStore};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::data_dir::{self, DataDirError};
use crate::snapshot::file::{self, SnapshotFileError, SnapshotHeader};
use crate::snapshot::summary::{decode_payload, Summary};
use crate::state::ClusterState;

/// The file a restore leaves in the data dir, once the seed is complete.
pub const RESTORED_FILE: &str = "restored.toml";
/// The Raft store inside a data dir (as `start` opens it).
const RAFT_DIR: &str = "raft";

/// What to restore, and where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The backup file.
    pub file: PathBuf,
    /// The member's data dir.
    pub data_dir: PathBuf,
    /// The member's id.
    pub member: u64,
    /// The address other members and clients reach it at.
    pub advertise: String,
    /// Replace Raft state the data dir already holds.
    pub force: bool,
    /// Accept a data dir this same backup already seeded, writing nothing
    /// (`herd coordinator --recover-from` restarted with its flag still
    /// set); otherwise such a data dir is refused like any that holds state.
    pub resume_if_restored: bool,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The backup's header.
    pub header: SnapshotHeader,
    /// What the backup holds.
    pub summary: Summary,
    /// The new cluster's id.
    pub cluster_id: String,
    /// True when the data dir had already been seeded from this same
    /// backup (a member restarted with its `--recover-from` flag still
    /// set): nothing was written, and it resumes from its data dir.
    pub already_restored: bool,
}

/// Why a restore was refused; nothing was changed.
#[derive(Debug, Error)]
pub enum RestoreError {
    /// The file is unreadable, corrupt or truncated.
    #[error(transparent)]
    File(#[from] SnapshotFileError),
    /// The file is intact but its state cannot be read by this release.
    #[error("snapshot file {file}: {message}")]
    Payload {
        /// The file.
        file: PathBuf,
        /// What failed to decode.
        message: String,
    },
    /// The data dir belongs to another member, or cannot be used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The data dir already holds Raft state.
    #[error("data dir {} already holds Raft state{}; a restore starts a new cluster and seeds only an empty data dir: use an empty --data-dir, or pass --force to replace what this one holds", dir.display(), detail)]
    NotEmpty {
        /// The data dir.
        dir: PathBuf,
        /// What it holds, when known (" of cluster X").
        detail: String,
    },
    /// Storage could not be opened, cleared or written.
    #[error("data dir {}: {message}", dir.display())]
    Storage {
        /// The data dir.
        dir: PathBuf,
        /// What failed.
        message: String,
    },
}

/// The record of a completed restore, kept in the data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RestoredMarker {
    /// The backup file, as given.
    file: String,
    /// Its payload checksum and position: which backup this was.
    checksum: String,
    index: u64,
    term: u64,
    /// The cluster it was taken from, and the new one.
    from_cluster: String,
    cluster_id: String,
    /// When (ms since the epoch).
    restored_at_ms: u64,
}

/// Checks `options.file` and seeds `options.data_dir` from it; see the
/// module's documentation.
pub fn restore_data_dir(options: &RestoreOptions) -> Result<Restored, RestoreError> {
    let backup = file::read(&options.file)?;
    let what = format!("the payload of {}", options.file.display());
    let (pairs, summary) =
        decode_payload(&backup.payload, &what).map_err(|message| RestoreError::Payload {
            file: options.file.clone(),
            message,
        })?;
    data_dir::claim(&options.data_dir, options.member)?;
    let dir = &options.data_dir;
    let storage = |message: String| RestoreError::Storage {
        dir: dir.clone(),
        message,
    };
    let marker_path = dir.join(RESTORED_FILE);
    let marker = read_marker(&marker_path).map_err(storage)?;
    let raft_dir = dir.join(RAFT_DIR);
    let mut store = open(&raft_dir).map_err(storage)?;
    if holds_state(&store).map_err(|e| storage(e.to_string()))? {
        let same_backup = marker.as_ref().is_some_and(|m| {
            m.checksum == backup.header.checksum() && m.index == backup.header.index
        });
        let resume = same_backup && options.resume_if_restored;
        match (resume, options.force, &marker) {
            (true, false, Some(marker)) => {
                return Ok(Restored {
                    header: backup.header,
                    summary,
                    cluster_id: marker.cluster_id.clone(),
                    already_restored: true,
                })
            }
            (_, false, _) => {
                let mut detail = describe(&store);
                if same_backup {
                    detail.push_str(
                        " (seeded from this backup earlier; it may have taken writes since)",
                    );
                }
                return Err(RestoreError::NotEmpty {
                    dir: dir.clone(),
                    detail,
                });
            }
            (_, true, _) => {
                drop(store);
                tracing::warn!(dir = %raft_dir.display(), "--force: replacing the Raft state this data dir holds");
                std::fs::remove_dir_all(&raft_dir)
                    .map_err(|e| storage(format!("cannot remove {}: {e}", raft_dir.display())))?;
                store = open(&raft_dir).map_err(storage)?;
            }
        }
    }
    if marker.is_some() {
        // A marker without the state it describes (the store was removed
        // by hand): it describes nothing now.
        std::fs::remove_file(&marker_path)
            .map_err(|e| storage(format!("cannot remove {RESTORED_FILE}: {e}")))?;
    }

    let cluster_id = uuid::Uuid::new_v4().to_string();
    let header = backup.header;
    seed(
        &store,
        Seed {
            last_log_id: openraft::LogId::new(
                openraft::CommittedLeaderId::new(header.term, header.leader),
                header.index,
            ),
            member: options.member,
            addr: options.advertise.clone(),
            pairs: with_cluster_id(pairs, &cluster_id),
        },
    )
    .map_err(|e| storage(e.to_string()))?;
    drop(store);
    let marker = RestoredMarker {
        file: options.file.display().to_string(),
        checksum: header.checksum(),
        index: header.index,
        term: header.term,
        from_cluster: header.cluster_id.clone(),
        cluster_id: cluster_id.clone(),
        restored_at_ms: herd_api::clock::now_ms(),
    };
    let text = toml::to_string(&marker).map_err(|e| storage(e.to_string()))?;
    file::write_atomically(&marker_path, text.as_bytes()).map_err(|e| storage(e.to_string()))?;
    tracing::info!(
        file = %options.file.display(),
        index = header.index,
        term = header.term,
        from_cluster = %header.cluster_id,
        cluster = %cluster_id,
        member = options.member,
        "data dir seeded from a snapshot"
    );
    Ok(Restored {
        header,
        summary,
        cluster_id,
        already_restored: false,
    })
}

fn open(raft_dir: &Path) -> Result<SledStore, String> {
    // sled locks its files: a member running on this data dir keeps it
    // from being opened here, which is the refusal wanted.
    SledStore::open(raft_dir).map_err(|e| {
        format!("cannot open its Raft store ({e}); if a coordinator runs on it, stop it first")
    })
}

fn read_marker(path: &Path) -> Result<Option<RestoredMarker>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{RESTORED_FILE} is malformed: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {RESTORED_FILE}: {e}")),
    }
}

/// " of cluster X" for a store whose applied state names its cluster.
fn describe(store: &dyn KvStore) -> String {
    let key = [b"a/".as_slice(), b"cluster_id"].concat();
    match store.get(herd_consensus::storage::Space::State, &key) {
        Ok(Some(value)) => ClusterState::from_pairs(vec![(b"cluster_id".to_vec(), value)])
            .ok()
            .and_then(|state| state.cluster_id)
            .map(|id| format!(" of cluster {id}"))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// `pairs` with the cluster id record set to `cluster_id`.
fn with_cluster_id(pairs: Vec<Pair>, cluster_id: &str) -> Vec<Pair> {
    let mut named = ClusterState::default();
    named.cluster_id = Some(cluster_id.to_string());
    let mut out: Vec<Pair> = pairs
        .into_iter()
        .filter(|(key, _)| key.as_slice() != b"cluster_id")
        .collect();
    out.extend(named.to_pairs());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_id_record_is_replaced_and_nothing_else() {
        let mut state = ClusterState::default();
        state.cluster_id = Some("old".into());
        state.variables.insert(
            "k".into(),
            crate::state::Variable {
                value: b"v".to_vec(),
                version: 2,
                modify_index: 9,
            },
        );
        let pairs = with_cluster_id(state.to_pairs(), "new");
        let back = ClusterState::from_pairs(pairs).expect("decode");
        assert_eq!(back.cluster_id.as_deref(), Some("new"));
        assert_eq!(back.variables, state.variables);
    }
}
