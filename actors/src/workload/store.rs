//! The allocation directories on disk: where the supervisor persists what it
//! started (`handle.json`) and why (`desired.json`), so that a restarted agent
//! re-adopts running workloads instead of starting second copies.
//!
//! Layout: `<data_dir>/allocs/<alloc_id>/` holds both files next to the
//! driver's own files and the workload's logs. Writes are atomic and durable
//! (temporary file, fsync, rename, fsync of the directory).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::report::DesiredAlloc;
use crate::driver::exec::files;
use crate::driver::WorkloadHandle;

/// The persisted handle of the workload running for an allocation.
pub const HANDLE: &str = "handle.json";
/// The persisted desired allocation it runs for.
pub const DESIRED: &str = "desired.json";
/// Present while the allocation's workload takes part in a migration out of
/// this node (it holds the migration's id): a workload found stopped or
/// paused with it is not finished but moving, and is resumed if the
/// migration is aborted, even by an agent that restarted meanwhile.
pub const MOVING: &str = "moving.json";
/// Present while the allocation's directory holds a workload arriving by a
/// live migration (it holds the migration's id): the agent's migration
/// manager owns it until the switch-over lets it run, so the supervisor's
/// scans at start-up leave such a directory alone.
pub const INCOMING: &str = "incoming.json";

/// Why the allocation directories could not be read or written.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS or decoding error.
        source: io::Error,
    },
    /// An allocation id that cannot name a directory (empty, `/`, `..`).
    #[error("allocation id {0:?} cannot name a directory")]
    BadId(String),
}

/// What was persisted for one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    /// The allocation id (its directory name).
    pub alloc_id: String,
    /// The running workload's handle.
    pub handle: WorkloadHandle,
    /// The desired allocation it was started for; `None` when the file is
    /// missing or unreadable (the workload is still adopted).
    pub desired: Option<DesiredAlloc>,
}

/// The allocation directories under one agent data directory.
#[derive(Debug, Clone)]
pub struct AllocStore {
    root: PathBuf,
}

impl AllocStore {
    /// The store of the agent whose data directory is `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("allocs"),
        }
    }

    /// The directory every allocation's directory is in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of an allocation (whether or not it exists).
    pub fn alloc_dir(&self, alloc_id: &str) -> Result<PathBuf, StoreError> {
        let valid = !alloc_id.is_empty()
            && alloc_id != "."
            && alloc_id != ".."
            && !alloc_id.contains('/')
            && !alloc_id.contains('\0');
        if valid {
            Ok(self.root.join(alloc_id))
        } else {
            Err(StoreError::BadId(alloc_id.to_string()))
        }
    }

    /// Creates the allocation's directory and persists its desired state.
    pub fn save_desired(&self, desired: &DesiredAlloc) -> Result<PathBuf, StoreError> {
        let dir = self.alloc_dir(&desired.alloc_id)?;
        fs::create_dir_all(&dir).map_err(|source| io_err(&dir, source))?;
        files::write_atomic(&dir, DESIRED, desired).map_err(|s| io_err(&dir.join(DESIRED), s))?;
        Ok(dir)
    }

    /// Persists the handle of the workload now running for the allocation.
    pub fn save_handle(&self, handle: &WorkloadHandle) -> Result<(), StoreError> {
        let dir = self.alloc_dir(&handle.alloc_id)?;
        fs::create_dir_all(&dir).map_err(|source| io_err(&dir, source))?;
        files::write_atomic(&dir, HANDLE, handle).map_err(|s| io_err(&dir.join(HANDLE), s))
    }

    /// Forgets the allocation's workload: its handle, then its desired
    /// state, so that a directory holding a desired state but no handle
    /// means a start an agent's death cut short ([`Self::without_handle`]).
    /// The directory and its logs stay.
    pub fn forget(&self, alloc_id: &str) -> Result<(), StoreError> {
        let dir = self.alloc_dir(alloc_id)?;
        for name in [HANDLE, DESIRED] {
            files::remove(&dir, name).map_err(|s| io_err(&dir.join(name), s))?;
        }
        Ok(())
    }

    /// Records that the allocation's workload is moving out under
    /// `migration_id` (see [`MOVING`]), durably, before it is stopped or
    /// paused for the move.
    pub fn mark_moving(&self, alloc_id: &str, migration_id: &str) -> Result<(), StoreError> {
        let dir = self.alloc_dir(alloc_id)?;
        fs::create_dir_all(&dir).map_err(|source| io_err(&dir, source))?;
        files::write_atomic(&dir, MOVING, &migration_id.to_string())
            .map_err(|s| io_err(&dir.join(MOVING), s))
    }

    /// The migration the allocation's workload is moving out under, if any.
    pub fn moving(&self, alloc_id: &str) -> Result<Option<String>, StoreError> {
        let dir = self.alloc_dir(alloc_id)?;
        files::read_json(&dir, MOVING).map_err(|s| io_err(&dir.join(MOVING), s))
    }

    /// Clears the moving mark: the migration ended.
    pub fn clear_moving(&self, alloc_id: &str) -> Result<(), StoreError> {
        let dir = self.alloc_dir(alloc_id)?;
        files::remove(&dir, MOVING).map_err(|s| io_err(&dir.join(MOVING), s))
    }

    /// Records that the allocation's directory holds a workload arriving
    /// under `migration_id` (see [`INCOMING`]), before it is started.
    pub fn mark_incoming(&self, alloc_id: &str, migration_id: &str) -> Result<(), StoreError> {
        let dir = self.alloc_dir(alloc_id)?;
        fs::create_dir_all(&dir).map_err(|source| io_err(&dir, source))?;
        files::write_atomic(&dir, INCOMING, &migration_id.to_string())
            .map_err(|s| io_err(&dir.join(INCOMING), s))
    }

    /// Clears the incoming mark: the workload is the allocation's now, or
    /// was dropped.
    pub fn clear_incoming(&self, alloc_id: &str) -> Result<(), StoreError> {
        let dir = self.alloc_dir(alloc_id)?;
        files::remove(&dir, INCOMING).map_err(|s| io_err(&dir.join(INCOMING), s))
    }

    /// The desired state persisted for `alloc_id`, whatever else is there.
    pub fn desired_of(&self, alloc_id: &str) -> Option<DesiredAlloc> {
        let dir = self.alloc_dir(alloc_id).ok()?;
        files::read_json::<DesiredAlloc>(&dir, DESIRED)
            .ok()
            .flatten()
    }

    /// Every allocation whose directory holds an arriving workload: its id,
    /// the migration's, and what is persisted (None when the agent died
    /// before the handle was written).
    pub fn incoming(&self) -> Result<Vec<(String, String, Option<Persisted>)>, StoreError> {
        let mut found = Vec::new();
        for dir in self.alloc_dirs()? {
            let Some(alloc_id) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string)
            else {
                continue;
            };
            let migration: Option<String> =
                files::read_json(&dir, INCOMING).map_err(|s| io_err(&dir.join(INCOMING), s))?;
            if let Some(migration) = migration {
                let persisted = self.load(&alloc_id)?;
                found.push((alloc_id, migration, persisted));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }

    /// What is persisted for one allocation: `None` when no handle is.
    pub fn load(&self, alloc_id: &str) -> Result<Option<Persisted>, StoreError> {
        let dir = self.alloc_dir(alloc_id)?;
        let handle: Option<WorkloadHandle> =
            files::read_json(&dir, HANDLE).map_err(|s| io_err(&dir.join(HANDLE), s))?;
        let Some(handle) = handle else {
            return Ok(None);
        };
        let desired = match files::read_json::<DesiredAlloc>(&dir, DESIRED) {
            Ok(desired) => desired,
            Err(e) => {
                tracing::warn!(alloc = alloc_id, error = %e, "cannot read {DESIRED}");
                None
            }
        };
        Ok(Some(Persisted {
            alloc_id: alloc_id.to_string(),
            handle,
            desired,
        }))
    }

    /// The allocation directories (none before the first allocation).
    fn alloc_dirs(&self) -> Result<Vec<PathBuf>, StoreError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io_err(&self.root, source)),
        };
        let mut dirs = Vec::new();
        for entry in entries {
            let dir = entry.map_err(|source| io_err(&self.root, source))?.path();
            if dir.is_dir() {
                dirs.push(dir);
            }
        }
        Ok(dirs)
    }

    /// Every allocation whose desired state was persisted but no handle:
    /// a start an agent's death cut short (between the workload starting
    /// and its handle being written), or one that failed. Stopped ones are
    /// forgotten whole ([`Self::forget`]), so this stays short. Each with
    /// its directory; an unreadable one is skipped with a warning.
    pub fn without_handle(&self) -> Result<Vec<(DesiredAlloc, PathBuf)>, StoreError> {
        let mut found = Vec::new();
        for dir in self.alloc_dirs()? {
            if dir.join(HANDLE).exists() || dir.join(INCOMING).exists() {
                continue;
            }
            match files::read_json::<DesiredAlloc>(&dir, DESIRED) {
                // Only a file its own directory names counts.
                Ok(Some(desired)) if dir.file_name() == Some(desired.alloc_id.as_ref()) => {
                    found.push((desired, dir))
                }
                Ok(Some(_)) => {}
                Ok(None) => {}
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot read {DESIRED}"),
            }
        }
        found.sort_by(|a, b| a.0.alloc_id.cmp(&b.0.alloc_id));
        Ok(found)
    }

    /// Every allocation with a persisted handle, each read on its own: one
    /// unreadable directory does not hide the others.
    pub fn scan(&self) -> Result<Vec<Result<Persisted, StoreError>>, StoreError> {
        let mut found = Vec::new();
        for dir in self.alloc_dirs()? {
            let Some(alloc_id) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string)
            else {
                continue;
            };
            if dir.join(INCOMING).exists() {
                // An arriving workload: the migration manager's until it runs.
                continue;
            }
            match self.load(&alloc_id) {
                Ok(Some(persisted)) => found.push(Ok(persisted)),
                Ok(None) => {}
                Err(e) => found.push(Err(e)),
            }
        }
        found.sort_by(|a, b| match (a, b) {
            (Ok(a), Ok(b)) => a.alloc_id.cmp(&b.alloc_id),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            (Err(_), Err(_)) => std::cmp::Ordering::Equal,
        });
        Ok(found)
    }
}

fn io_err(path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_api::job::{JobType, TaskSpec};

    fn desired(id: &str) -> DesiredAlloc {
        DesiredAlloc {
            alloc_id: id.into(),
            generation: 3,
            job: "web".into(),
            job_type: JobType::Service,
            task: TaskSpec {
                driver: "exec".into(),
                command: Some("/bin/true".into()),
                args: vec![],
                env: Default::default(),
                workdir: None,
                resources: Default::default(),
                config: Default::default(),
            },
            env: Default::default(),
            stop_after_disconnect: None,
            moving_out: None,
        }
    }

    fn handle(id: &str) -> WorkloadHandle {
        WorkloadHandle {
            driver: "exec".into(),
            alloc_id: id.into(),
            generation: 3,
            pid: Some(42),
            started_at_ms: 1,
            detail: serde_json::json!({"k": 1}),
        }
    }

    #[test]
    fn handles_and_desired_round_trip_and_removal_keeps_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = AllocStore::new(dir.path());
        assert!(store.scan().expect("scan of nothing").is_empty());
        let alloc_dir = store.save_desired(&desired("a1")).expect("desired");
        store.save_handle(&handle("a1")).expect("handle");
        store.save_desired(&desired("a2")).expect("desired only");
        let found: Vec<_> = store.scan().expect("scan").into_iter().collect();
        assert_eq!(found.len(), 1, "only a1 has a handle: {found:?}");
        let a1 = found[0].as_ref().expect("readable");
        assert_eq!(a1.handle, handle("a1"));
        assert_eq!(a1.desired, Some(desired("a1")));
        // a2's desired state without a handle: a start cut short.
        let cut_short: Vec<_> = store.without_handle().expect("scan");
        assert_eq!(cut_short.len(), 1, "{cut_short:?}");
        assert_eq!(cut_short[0].0, desired("a2"));
        store.forget("a1").expect("forget");
        store.forget("a1").expect("forget twice");
        assert_eq!(store.load("a1").expect("load"), None);
        assert!(alloc_dir.is_dir());
        // Forgotten whole: not taken for a start cut short either.
        let cut_short: Vec<_> = store.without_handle().expect("scan");
        assert_eq!(cut_short.len(), 1, "only a2: {cut_short:?}");
    }

    #[test]
    fn a_missing_desired_file_still_adopts_and_bad_ids_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = AllocStore::new(dir.path());
        store.save_handle(&handle("a1")).expect("handle");
        let found = store.load("a1").expect("load").expect("present");
        assert_eq!(found.desired, None);
        for bad in ["", "..", "a/b"] {
            assert!(matches!(store.alloc_dir(bad), Err(StoreError::BadId(_))));
        }
        fs::write(dir.path().join("allocs/a1").join(HANDLE), b"{").expect("corrupt");
        let scanned = store.scan().expect("scan");
        assert!(matches!(scanned.as_slice(), [Err(StoreError::Io { .. })]));
    }
}
