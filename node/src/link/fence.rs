//! The assignment fence: the newest assignment index this agent acted on,
//! and the cluster whose log that index counts in, kept in the data dir.
//!
//! A coordinator that lags may send an assignment set older than one the
//! agent already acted on; acting on it could restart work the cluster has
//! since stopped, or stop work it has since placed here. The fence makes
//! the agent ignore such sets, across agent restarts too. So the file must
//! never be lost quietly:
//!
//! - it is replaced atomically and durably (temp file, fsync, rename, fsync
//!   of the directory, through the workload store's own helper), so a crash
//!   leaves the old fence or the new one, never a torn or empty file;
//! - a file that cannot be read or understood stops the agent with a
//!   message saying where it is, what is wrong and what to do, instead of
//!   being taken for "no fence" (which would open it);
//! - it names the cluster: a rebuilt cluster starts its log again from 1,
//!   so the fence of an old one would make the agent ignore the new one's
//!   sets for as long as its indexes stay lower. When the coordinators
//!   name another cluster the fence starts again from 0, and says so.

use std::io;
use std::path::{Path, PathBuf};

use herd_actors::driver::exec::files;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The fence's file in the agent's data dir.
pub const FENCE_FILE: &str = "last-assigned-index";

/// Why the fence in a data dir cannot be used; the agent does not start.
#[derive(Debug, Error)]
pub enum FenceError {
    /// The file exists but cannot be read.
    #[error(
        "cannot read the assignment fence {path}: {source}; fix the file's permissions \
         (the agent must read it to know which assignments are stale) and start again"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file holds something other than a fence.
    #[error(
        "the assignment fence {path} is corrupt ({problem}); it records the newest \
         assignment index this agent acted on, and starting without it could let a \
         lagging coordinator undo newer assignments. Restore it from a backup, or, once \
         every coordinator of this node's cluster is up to date, remove it and start \
         again: the agent then follows the coordinators' sets from index 0"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        problem: String,
    },
}

/// What the file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    /// The newest assignment index acted on.
    index: u64,
    /// The cluster `index` belongs to; `None` before any coordinator named
    /// one (or in a file an older agent wrote, which held the bare index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster_id: Option<String>,
}

/// Longest cluster id taken from a coordinator (real ones are far shorter);
/// the id comes from the network and ends up in a file and in log lines.
pub const MAX_CLUSTER_ID: usize = 128;

/// What [`AssignmentFence::admit`] decided about one assignment set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Act on the set.
    Act,
    /// Ignore it: a set at a newer index was already acted on.
    Stale {
        /// The newest index acted on.
        newest: u64,
    },
    /// Ignore it: it names its cluster with something no coordinator sends.
    BadCluster {
        /// What is wrong with the id.
        reason: String,
    },
}

/// Checks a cluster id that came over the network: 1 to [`MAX_CLUSTER_ID`]
/// bytes of printable ASCII without spaces.
pub fn check_cluster_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_CLUSTER_ID {
        return Err(format!(
            "cluster ids are 1 to {MAX_CLUSTER_ID} bytes, got {}",
            id.len()
        ));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "cluster id {:?} holds characters other than printable ASCII",
            id.chars().take(MAX_CLUSTER_ID).collect::<String>()
        ));
    }
    Ok(())
}

/// The fence, in memory and in its file. See the module documentation.
#[derive(Debug)]
pub struct AssignmentFence {
    dir: PathBuf,
    stored: Stored,
}

impl AssignmentFence {
    /// Loads the fence of the data dir `dir`: a fresh one (index 0, no
    /// cluster) when there is no file; an error saying what to do when the
    /// file cannot be read or understood.
    pub fn load(dir: &Path) -> Result<Self, FenceError> {
        let path = dir.join(FENCE_FILE);
        let stored = match std::fs::read(&path) {
            Ok(bytes) => parse(&bytes).map_err(|problem| FenceError::Corrupt {
                path: path.clone(),
                problem,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Stored::default(),
            Err(source) => return Err(FenceError::Read { path, source }),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            stored,
        })
    }

    /// The newest assignment index acted on.
    pub fn index(&self) -> u64 {
        self.stored.index
    }

    /// The cluster the fence belongs to, once a coordinator named it.
    pub fn cluster_id(&self) -> Option<&str> {
        self.stored.cluster_id.as_deref()
    }

    /// Where the fence is kept.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FENCE_FILE)
    }

    /// Takes note of the cluster a coordinator says it serves (`""`: it
    /// does not say, being older or not named yet, and nothing changes).
    /// Another cluster than the fence's resets the fence to 0: the new
    /// cluster's indexes start again, and the old fence would hide its sets.
    /// An id no coordinator would send is refused and changes nothing.
    pub fn observe_cluster(&mut self, cluster_id: &str) -> Result<(), String> {
        if cluster_id.is_empty() || self.cluster_id() == Some(cluster_id) {
            return Ok(());
        }
        check_cluster_id(cluster_id)?;
        match self.stored.cluster_id.take() {
            Some(old) => {
                tracing::warn!(
                    path = %self.path().display(),
                    old_cluster = %old,
                    new_cluster = %cluster_id,
                    old_index = self.stored.index,
                    "the coordinators serve another cluster than the one this agent's \
                     assignment fence was kept for (a rebuilt cluster?); its indexes start \
                     again, so the fence is reset to 0"
                );
                self.stored.index = 0;
            }
            // A fresh fence, or one an older agent kept without naming its
            // cluster: its index is taken to be this cluster's.
            None => tracing::info!(
                cluster = %cluster_id,
                index = self.stored.index,
                "the assignment fence now names its cluster"
            ),
        }
        self.stored.cluster_id = Some(cluster_id.to_string());
        self.persist();
        Ok(())
    }

    /// Decides whether to act on a set read at `index` in `cluster_id`
    /// (empty: not said), moving the fence (and its file, before the set is
    /// acted on) when the set is newer.
    pub fn admit(&mut self, index: u64, cluster_id: &str) -> Admission {
        if let Err(reason) = self.observe_cluster(cluster_id) {
            return Admission::BadCluster { reason };
        }
        if index < self.stored.index {
            return Admission::Stale {
                newest: self.stored.index,
            };
        }
        if index > self.stored.index {
            self.stored.index = index;
            self.persist();
        }
        Admission::Act
    }

    /// Writes the fence; a failure is logged and the fence in memory still
    /// holds (the file keeps the previous, older fence, never a torn one).
    fn persist(&self) {
        if let Err(e) = files::write_atomic(&self.dir, FENCE_FILE, &self.stored) {
            tracing::warn!(
                path = %self.path().display(),
                error = %e,
                "cannot record the assignment fence; a restart now would fence at an older index"
            );
        }
    }
}

/// Reads the file's content: the JSON this agent writes, or the bare index
/// an older agent wrote.
fn parse(bytes: &[u8]) -> Result<Stored, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("the file is empty".to_string());
    }
    if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return trimmed
            .parse()
            .map(|index| Stored {
                index,
                cluster_id: None,
            })
            .map_err(|e| format!("the index {trimmed:?} is out of range: {e}"));
    }
    let stored: Stored = serde_json::from_str(trimmed).map_err(|e| {
        format!("expected {{\"index\": N, \"cluster_id\": \"...\"}} or a bare index: {e}")
    })?;
    if let Some(id) = &stored.cluster_id {
        check_cluster_id(id).map_err(|e| format!("field `cluster_id`: {e}"))?;
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(dir: &Path) -> AssignmentFence {
        AssignmentFence::load(dir).expect("load")
    }

    #[test]
    fn the_fence_survives_a_restart_with_its_cluster() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = fence(dir.path());
        assert_eq!((first.index(), first.cluster_id()), (0, None));
        assert_eq!(first.admit(40, "c-1"), Admission::Act);
        assert_eq!(first.admit(39, "c-1"), Admission::Stale { newest: 40 });

        let again = fence(dir.path());
        assert_eq!((again.index(), again.cluster_id()), (40, Some("c-1")));
    }

    #[test]
    fn the_fence_is_replaced_whole_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut fence = fence(dir.path());
        for index in [7, 1_000_000_007, 12_345_678_901] {
            assert_eq!(fence.admit(index, "c-1"), Admission::Act);
            let text = std::fs::read_to_string(fence.path()).expect("read");
            assert_eq!(
                parse(text.as_bytes()).expect("parse"),
                Stored {
                    index,
                    cluster_id: Some("c-1".into())
                }
            );
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![FENCE_FILE.to_string()], "a temp file was left");
    }

    #[test]
    fn a_crash_before_the_rename_leaves_the_old_fence() {
        let dir = tempfile::tempdir().expect("tempdir");
        fence(dir.path()).admit(50, "c-1");
        // What a crash between writing the temp file and renaming it leaves.
        std::fs::write(dir.path().join(format!(".{FENCE_FILE}.tmp")), "{\"ind").expect("write");
        let mut restarted = fence(dir.path());
        assert_eq!(restarted.index(), 50);
        // And the next write goes through regardless.
        assert_eq!(restarted.admit(51, "c-1"), Admission::Act);
        assert_eq!(fence(dir.path()).index(), 51);
    }

    #[test]
    fn a_corrupt_fence_is_refused_with_its_path_and_what_to_do() {
        for (content, problem) in [
            (&b""[..], "empty"),
            (b"  \n", "empty"),
            (b"{\"index\": 12", "expected"),
            (b"12abc", "expected"),
            (b"\xff\xfe", "UTF-8"),
            (b"99999999999999999999999", "out of range"),
            (b"{\"index\": 3, \"cluster_id\": \"\"}", "cluster_id"),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join(FENCE_FILE), content).expect("write");
            let err = AssignmentFence::load(dir.path()).expect_err("a corrupt fence");
            let message = err.to_string();
            assert!(matches!(err, FenceError::Corrupt { .. }), "{message}");
            assert!(
                message.contains(&dir.path().join(FENCE_FILE).display().to_string()),
                "{message}"
            );
            assert!(message.contains(problem), "{content:?}: {message}");
            assert!(message.contains("remove it"), "{message}");
        }
    }

    #[test]
    fn an_unreadable_fence_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where the file should be: it exists, but cannot be read.
        std::fs::create_dir(dir.path().join(FENCE_FILE)).expect("mkdir");
        let err = AssignmentFence::load(dir.path()).expect_err("unreadable");
        assert!(matches!(err, FenceError::Read { .. }), "{err}");
    }

    #[test]
    fn an_older_agents_bare_index_is_read_and_named_by_the_first_cluster_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FENCE_FILE), "812\n").expect("write");
        let mut fence = fence(dir.path());
        assert_eq!((fence.index(), fence.cluster_id()), (812, None));
        // A coordinator that does not say which cluster: the index alone.
        assert_eq!(fence.admit(811, ""), Admission::Stale { newest: 812 });
        // The first named cluster adopts the kept index.
        assert_eq!(fence.admit(811, "c-1"), Admission::Stale { newest: 812 });
        assert_eq!(fence.cluster_id(), Some("c-1"));
        assert_eq!(
            AssignmentFence::load(dir.path()).expect("load").index(),
            812
        );
    }

    #[test]
    fn another_cluster_resets_the_fence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut fence = fence(dir.path());
        assert_eq!(fence.admit(9_000, "old"), Admission::Act);
        // The cluster was rebuilt: its log starts again.
        assert_eq!(fence.admit(12, "new"), Admission::Act);
        assert_eq!((fence.index(), fence.cluster_id()), (12, Some("new")));
        assert_eq!(fence.admit(11, "new"), Admission::Stale { newest: 12 });
        // The reset is on disk too.
        let restarted = AssignmentFence::load(dir.path()).expect("load");
        assert_eq!(
            (restarted.index(), restarted.cluster_id()),
            (12, Some("new"))
        );
        // A coordinator that does not name its cluster changes nothing.
        let mut restarted = restarted;
        assert_eq!(restarted.admit(5, ""), Admission::Stale { newest: 12 });
        assert_eq!(restarted.cluster_id(), Some("new"));
    }

    #[test]
    fn a_cluster_id_no_coordinator_sends_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut fence = fence(dir.path());
        assert_eq!(fence.admit(70, "c-1"), Admission::Act);
        for bad in [
            "x".repeat(MAX_CLUSTER_ID + 1),
            "two words".into(),
            "nl\n".into(),
        ] {
            assert!(
                matches!(fence.admit(90, &bad), Admission::BadCluster { .. }),
                "{bad:?} was taken"
            );
        }
        assert_eq!((fence.index(), fence.cluster_id()), (70, Some("c-1")));
        assert!(fence.observe_cluster("two words").is_err());
    }

    #[test]
    fn a_registration_naming_another_cluster_resets_the_fence_before_any_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        fence(dir.path()).admit(500, "old");
        let mut fence = AssignmentFence::load(dir.path()).expect("load");
        fence.observe_cluster("new").expect("a valid id");
        assert_eq!((fence.index(), fence.cluster_id()), (0, Some("new")));
        assert_eq!(fence.admit(3, "new"), Admission::Act);
    }
}
