//! The harness's side of `libherd_chaos_shim.so` (crate `chaos/shim`): where
//! the library is, and the control file through which a member's fsyncs are
//! slowed and its wall clock skewed while it runs.

use std::path::{Path, PathBuf};

/// The library's file name; cargo puts it next to the `herd` binary.
pub const SHIM_FILE: &str = "libherd_chaos_shim.so";

/// The environment variable that names a process's control file.
pub const CONTROL_ENV: &str = "HERD_SHIM_CONTROL";

/// The shim beside `binary` (`target/<profile>/`), if it has been built.
pub fn beside(binary: &Path) -> Option<PathBuf> {
    let path = binary.parent()?.join(SHIM_FILE);
    path.is_file().then_some(path)
}

/// What the shim does to one process now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShimFaults {
    /// Sleep before every fsync, fdatasync and sync_file_range, ms.
    pub fsync_delay_ms: u64,
    /// Added to every wall-clock reading, ms (monotonic clocks untouched).
    pub clock_offset_ms: i64,
}

impl ShimFaults {
    /// The control file's text.
    pub fn render(&self) -> String {
        format!(
            "fsync_delay_ms={}\nclock_offset_ms={}\n",
            self.fsync_delay_ms, self.clock_offset_ms
        )
    }

    /// Writes the control file at `path` atomically (write aside, rename),
    /// so the library never reads half of it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let aside = path.with_extension("tmp");
        std::fs::write(&aside, self.render())?;
        std::fs::rename(&aside, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_control_file_the_library_reads() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("member-1.shim");
        let faults = ShimFaults {
            fsync_delay_ms: 120,
            clock_offset_ms: -60_000,
        };
        faults.write(&path).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "fsync_delay_ms=120\nclock_offset_ms=-60000\n");
        assert!(!path.with_extension("tmp").exists());
        assert_eq!(beside(&dir.path().join("herd")), None);
        std::fs::write(dir.path().join(SHIM_FILE), b"").expect("touch");
        assert_eq!(
            beside(&dir.path().join("herd")),
            Some(dir.path().join(SHIM_FILE))
        );
    }
}
