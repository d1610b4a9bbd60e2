//! The data directory's identity file: a member's data dir is its own.
//!
//! Starting member 2 on member 1's directory, or a member on a directory of
//! another cluster, would corrupt both clusters' logs; refuse it up front.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file in each data dir that names its owner.
pub const MEMBER_FILE: &str = "member.toml";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberFile {
    member_id: u64,
    created_by: String,
}

/// Why a data dir cannot be used by this member.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another member's directory.
    #[error("data dir {dir} belongs to member {found}, not member {wanted}: use that member's id or another directory")]
    WrongMember {
        /// The directory.
        dir: PathBuf,
        /// Id recorded in it.
        found: u64,
        /// Id this process was started with.
        wanted: u64,
    },
    /// Unreadable or malformed.
    #[error("data dir {dir}: {message}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        message: String,
    },
}

/// Creates `dir` if needed and checks or records that it belongs to member `id`.
/// Returns whether the directory was already claimed (a restart).
pub fn claim(dir: &Path, id: u64) -> Result<bool, DataDirError> {
    let io = |message: String| DataDirError::Io {
        dir: dir.to_path_buf(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(format!("cannot create: {e}")))?;
    let path = dir.join(MEMBER_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let file: MemberFile = toml::from_str(&text)
                .map_err(|e| io(format!("{MEMBER_FILE} is malformed: {e}")))?;
            if file.member_id != id {
                return Err(DataDirError::WrongMember {
                    dir: dir.to_path_buf(),
                    found: file.member_id,
                    wanted: id,
                });
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let file = MemberFile {
                member_id: id,
                created_by: format!("herd {}", env!("CARGO_PKG_VERSION")),
            };
            let text = toml::to_string(&file).map_err(|e| io(e.to_string()))?;
            let tmp = dir.join(format!("{MEMBER_FILE}.tmp"));
            std::fs::write(&tmp, text)
                .map_err(|e| io(format!("cannot write {MEMBER_FILE}: {e}")))?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .and_then(|_| std::fs::rename(&tmp, &path))
                .and_then(|_| std::fs::File::open(dir)?.sync_all())
                .map_err(|e| io(format!("cannot persist {MEMBER_FILE}: {e}")))?;
            Ok(false)
        }
        Err(e) => Err(io(format!("cannot read {MEMBER_FILE}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dir_belongs_to_one_member() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!claim(dir.path(), 3).expect("first claim"));
        assert!(claim(dir.path(), 3).expect("restart"));
        let err = claim(dir.path(), 4).unwrap_err();
        assert!(
            err.to_string()
                .contains("belongs to member 3, not member 4"),
            "{err}"
        );
    }
}
