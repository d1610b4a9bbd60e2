//! The node's last power share, kept on disk so that an agent restarted
//! while the coordinators are away (or before its first heartbeat reply
//! after a restart) caps to the share it last held instead of running its
//! GPUs uncapped: a node crash during a spike must not lift the caps.
//!
//! One small JSON file, replaced atomically (write to a temporary, then
//! rename) whenever the share changes, and removed when no budget covers
//! the node any more. A file that cannot be read or fails the share's
//! checks is ignored with a warning: the next heartbeat reply brings the
//! share again.

use std::path::{Path, PathBuf};

use herd_api::power::Thresholds;
use serde::{Deserialize, Serialize};

use super::governor::NodeShare;

/// The file's name inside the agent's data directory.
pub const SHARE_FILE: &str = "power-share.json";

/// The share as written to disk.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    watts: f64,
    thresholds: Thresholds,
    group: String,
}

/// The share file of an agent whose data directory is `data_dir`.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join(SHARE_FILE)
}

/// Reads the share kept at `path`: Ok(None) when there is none, Err with
/// what is wrong when the file is unreadable, malformed or fails the
/// share's checks.
pub fn load(path: &Path) -> Result<Option<NodeShare>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let stored: Stored =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let share = NodeShare {
        watts: stored.watts,
        thresholds: stored.thresholds,
        group: stored.group,
    };
    share
        .check()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(share))
}

/// Keeps `share` at `path` (None: removes the file).
pub fn save(path: &Path, share: Option<&NodeShare>) -> Result<(), String> {
    let Some(share) = share else {
        return match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        };
    };
    let stored = Stored {
        watts: share.watts,
        thresholds: share.thresholds,
        group: share.group.clone(),
    };
    let bytes = serde_json::to_vec(&stored).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(watts: f64) -> NodeShare {
        NodeShare {
            watts,
            thresholds: Thresholds::default(),
            group: "rack=r1".into(),
        }
    }

    #[test]
    fn a_share_survives_a_round_trip_and_removal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path_in(dir.path());
        assert_eq!(load(&path), Ok(None));
        save(&path, Some(&share(1234.5))).expect("saved");
        assert_eq!(load(&path), Ok(Some(share(1234.5))));
        save(&path, None).expect("removed");
        assert_eq!(load(&path), Ok(None));
        save(&path, None).expect("removing twice is fine");
    }

    #[test]
    fn a_damaged_or_absurd_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path_in(dir.path());
        std::fs::write(&path, b"{not json").expect("write");
        let err = load(&path).expect_err("malformed");
        assert!(err.contains(SHARE_FILE), "{err}");
        save(&path, Some(&share(1000.0))).expect("saved");
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.replace("1000.0", "-5.0")).expect("write");
        let err = load(&path).expect_err("negative watts");
        assert!(err.contains("power share"), "{err}");
    }
}
