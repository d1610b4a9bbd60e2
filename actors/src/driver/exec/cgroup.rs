//! CPU and memory limits through cgroup v2, where the host allows it.
//!
//! Each run gets `/sys/fs/cgroup/herd/<alloc_id>` with `memory.max` and
//! `cpu.max` set; the task joins it between fork and exec, so even its first
//! child is inside. Hosts with cgroup v1 (or hybrid), a read-only cgroupfs
//! (most containers) or without the controllers run the task unconfined, and
//! say so in `started.json` and the executor's log: never silently.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::files::Limits;

/// Where the unified hierarchy must be mounted for limits to apply.
pub const ROOT: &str = "/sys/fs/cgroup";

/// `statfs` magic of a cgroup2 filesystem.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The `memory.max` value for a limit in bytes (0: unlimited).
pub fn memory_max(memory_bytes: u64) -> String {
    if memory_bytes == 0 {
        "max".to_string()
    } else {
        memory_bytes.to_string()
    }
}

/// The `cpu.max` value for a limit in millicores (0: unlimited): a quota per
/// 100 ms period, 1000 millicores being one full period.
pub fn cpu_max(cpu_millis: u64) -> String {
    if cpu_millis == 0 {
        "max 100000".to_string()
    } else {
        format!("{} 100000", cpu_millis.saturating_mul(100))
    }
}

/// A cgroup created for one run.
#[derive(Debug, Clone)]
pub struct Cgroup {
    /// Its directory.
    pub dir: PathBuf,
    /// `cgroup.procs`, as the C string the pre-exec hook opens.
    procs: CString,
}

impl Cgroup {
    /// Moves the calling process into this cgroup. Meant for the child between
    /// fork and exec: only async-signal-safe calls (open, write, close).
    pub fn join_self(&self) -> io::Result<()> {
        // SAFETY: `procs` is a valid NUL-terminated path; the buffer is static.
        unsafe {
            let fd = libc::open(self.procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // Writing "0" moves the writer itself.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if written == 1 {
                Ok(())
            } else {
                Err(err)
            }
        }
    }

    /// Removes the cgroup once the run's processes are gone.
    pub fn remove(&self) -> io::Result<()> {
        fs::remove_dir(&self.dir)
    }
}

/// Sets up limits for `alloc_id`: the cgroup to join, and what to record.
pub fn setup(alloc_id: &str, cpu_millis: u64, memory_bytes: u64) -> (Option<Cgroup>, Limits) {
    match try_setup(Path::new(ROOT), alloc_id, cpu_millis, memory_bytes) {
        Ok(cgroup) => {
            let limits = Limits {
                enforced: true,
                cgroup: Some(cgroup.dir.clone()),
                reason: None,
            };
            (Some(cgroup), limits)
        }
        Err(reason) => (
            None,
            Limits {
                enforced: false,
                cgroup: None,
                reason: Some(reason),
            },
        ),
    }
}

fn try_setup(
    root: &Path,
    alloc_id: &str,
    cpu_millis: u64,
    memory_bytes: u64,
) -> Result<Cgroup, String> {
    if !is_cgroup2(root)? {
        return Err(format!(
            "{} is not a cgroup2 mount (cgroup v1 or hybrid host): CPU and memory limits are not enforced",
            root.display()
        ));
    }
    create(root, alloc_id, cpu_millis, memory_bytes)
}

/// Creates `root/herd/<alloc_id>` with the limits, enabling the controllers
/// on the way down.
fn create(
    root: &Path,
    alloc_id: &str,
    cpu_millis: u64,
    memory_bytes: u64,
) -> Result<Cgroup, String> {
    if alloc_id.is_empty()
        || !alloc_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || alloc_id.starts_with('.')
    {
        return Err(format!(
            "allocation id {alloc_id:?} is not usable as a cgroup name: limits are not enforced"
        ));
    }
    let fail = |what: &str, path: &Path, e: io::Error| {
        format!(
            "cannot {what} {}: {e}: CPU and memory limits are not enforced",
            path.display()
        )
    };
    let parent = root.join("herd");
    // Controllers must be enabled for the children of the root and of herd/.
    for dir in [root, parent.as_path()] {
        if dir != root {
            match fs::create_dir(dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(fail("create", dir, e))
                }
                _ => {}
            }
        }
        let control = dir.join("cgroup.subtree_control");
        fs::write(&control, "+cpu +memory").map_err(|e| fail("write", &control, e))?;
    }
    let dir = parent.join(alloc_id);
    match fs::create_dir(&dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(fail("create", &dir, e)),
        _ => {}
    }
    for (file, value) in [
        ("memory.max", memory_max(memory_bytes)),
        ("cpu.max", cpu_max(cpu_millis)),
    ] {
        let path = dir.join(file);
        if let Err(e) = fs::write(&path, &value) {
            let _ = fs::remove_dir(&dir);
            return Err(fail("write", &path, e));
        }
    }
    let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
        .map_err(|e| format!("cgroup path: {e}"))?;
    Ok(Cgroup { dir, procs })
}

fn is_cgroup2(root: &Path) -> Result<bool, String> {
    let path = CString::new(root.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut fs_stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut fs_stat) } != 0 {
        return Err(format!(
            "cannot statfs {}: {}: CPU and memory limits are not enforced",
            root.display(),
            io::Error::last_os_error()
        ));
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between libcs.
    Ok(fs_stat.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_written_in_cgroup_v2_units() {
        assert_eq!(memory_max(512 << 20), "536870912");
        assert_eq!(memory_max(0), "max");
        assert_eq!(cpu_max(1500), "150000 100000");
        assert_eq!(cpu_max(250), "25000 100000");
        assert_eq!(cpu_max(0), "max 100000");
    }

    #[test]
    fn the_allocation_cgroup_gets_its_limits_and_the_controllers_enabled_above_it() {
        // A plain directory stands in for the cgroup2 mount.
        let root = tempfile::tempdir().expect("tempdir");
        let cgroup = create(root.path(), "a-1.x", 1500, 256 << 20).expect("created");
        let dir = root.path().join("herd/a-1.x");
        assert_eq!(cgroup.dir, dir);
        let read = |p: PathBuf| fs::read_to_string(&p).expect("written");
        assert_eq!(read(dir.join("memory.max")), "268435456");
        assert_eq!(read(dir.join("cpu.max")), "150000 100000");
        for control in [
            root.path().join("cgroup.subtree_control"),
            root.path().join("herd/cgroup.subtree_control"),
        ] {
            assert_eq!(read(control), "+cpu +memory");
        }
        assert_eq!(
            cgroup.procs.to_bytes(),
            dir.join("cgroup.procs").as_os_str().as_bytes()
        );
        // A second run of the allocation reuses the directory.
        create(root.path(), "a-1.x", 0, 0).expect("again");
        assert_eq!(read(dir.join("memory.max")), "max");
        for bad in ["", "../escape", ".hidden", "a/b"] {
            let err = create(root.path(), bad, 1, 1).expect_err("refused");
            assert!(err.contains("not usable as a cgroup name"), "{err}");
        }
    }

    #[test]
    fn a_directory_that_is_not_cgroup2_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = try_setup(dir.path(), "a1", 1000, 1 << 30).expect_err("tmp is not cgroup2");
        assert!(err.contains("not a cgroup2 mount"), "{err}");
        assert!(err.contains("not enforced"), "{err}");
    }
}
