//! Where a workload's output goes, whatever its driver: `stdout.log` and
//! `stderr.log` in its allocation directory, appended to across restarts.
//!
//! This is the contract between the drivers (the exec driver's executor
//! writes these files for every kind it runs) and `herd alloc logs`, which
//! the supervisor answers from the directory alone: it must work for an
//! allocation that has no handle any more, so it cannot ask a driver.

use std::path::{Path, PathBuf};

/// The workload's standard output, in its allocation directory.
pub const STDOUT: &str = "stdout.log";
/// The workload's standard error, in its allocation directory.
pub const STDERR: &str = "stderr.log";

/// The stdout and stderr files of the allocation whose directory is `alloc_dir`.
pub fn paths(alloc_dir: &Path) -> (PathBuf, PathBuf) {
    (alloc_dir.join(STDOUT), alloc_dir.join(STDERR))
}
