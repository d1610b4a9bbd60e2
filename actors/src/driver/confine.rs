//! Driver confinement: what keeps a job inside what it was given.
//!
//! A node's operator decides, and the drivers enforce:
//! - [`RunAs`]: the unprivileged user `exec` tasks run as (`exec_user`),
//!   resolved once at agent start so that an unknown user stops the agent
//!   with a clear error instead of failing every job later;
//! - [`PathPolicy`]: every path a job spec names (a working directory, a
//!   relative command, a VM's kernel, initrd and disk) must resolve, symlinks
//!   followed, inside the allocation's directory or a directory the operator
//!   allowed (`allow_paths`); `..`, absolute paths and symlinks that lead
//!   elsewhere are refused with an error naming the field;
//! - host devices a VM may be given (`vm_devices`): a VM disk that is not a
//!   regular file (a block device) is refused unless listed there.
//!
//! The library default ([`Confinement::default`]) confines no path, so that
//! a driver built in a test or an embedding behaves as before; the node
//! agent always builds its drivers with the node's policy, whose default
//! confines paths to the allocation directory (see `docs/security.md`,
//! "Driver confinement").

use std::ffi::{CStr, CString};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a confinement setting of the node is not usable.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfineError {
    /// The user does not exist on this host.
    #[error("exec user {user:?} does not exist on this host (no passwd entry)")]
    UnknownUser {
        /// The name given.
        user: String,
    },
    /// The user is root, which would confine nothing.
    #[error("exec user {user:?} has uid 0: tasks would run as root; name an unprivileged user (e.g. nobody) or leave it unset")]
    Root {
        /// The name given.
        user: String,
    },
    /// The user database could not be read.
    #[error("cannot look up exec user {user:?}: {message}")]
    Lookup {
        /// The name given.
        user: String,
        /// The OS error.
        message: String,
    },
    /// An allowed path or VM device is not usable.
    #[error("{setting}: {path}: {message}")]
    Setting {
        /// The setting (`allow_paths`, `vm_devices`).
        setting: &'static str,
        /// The path given.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The unprivileged user tasks run as, resolved to its ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    /// The user's name, for messages.
    pub user: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid; supplementary groups are all dropped.
    pub gid: u32,
}

impl RunAs {
    /// Looks `user` up in the host's user database. Root is refused: it
    /// would confine nothing while looking as if it did.
    pub fn resolve(user: &str) -> Result<Self, ConfineError> {
        let lookup = |message: String| ConfineError::Lookup {
            user: user.to_string(),
            message,
        };
        let name = CString::new(user).map_err(|_| lookup("the name contains a NUL byte".into()))?;
        let mut buf = vec![0u8; 4096];
        loop {
            // SAFETY: `pwd` is zeroed storage getpwnam_r fills; `buf` is
            // valid for `buf.len()` bytes; `result` is a valid out pointer.
            let (rc, found, uid, gid) = unsafe {
                let mut pwd: libc::passwd = std::mem::zeroed();
                let mut result: *mut libc::passwd = std::ptr::null_mut();
                let rc = libc::getpwnam_r(
                    name.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                );
                (rc, !result.is_null(), pwd.pw_uid, pwd.pw_gid)
            };
            match rc {
                0 if found => {
                    if uid == 0 {
                        return Err(ConfineError::Root {
                            user: user.to_string(),
                        });
                    }
                    return Ok(Self {
                        user: user.to_string(),
                        uid,
                        gid,
                    });
                }
                // Not found is 0 with no result, or one of these on some libcs.
                0 | libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => {
                    return Err(ConfineError::UnknownUser {
                        user: user.to_string(),
                    })
                }
                libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
                e => return Err(lookup(io::Error::from_raw_os_error(e).to_string())),
            }
        }
    }

    /// Drops the calling process to this user: no supplementary groups,
    /// the user's gid and uid, and no privileges regained through exec
    /// (`PR_SET_NO_NEW_PRIVS`: setuid binaries do not raise it). Meant for
    /// a child between fork and exec: only async-signal-safe system calls.
    pub fn drop_privileges(&self) -> io::Result<()> {
        // SAFETY: plain system calls without pointers but setgroups' null
        // list of length 0.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(self.gid) != 0
                || libc::setuid(self.uid) != 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // setuid from root cannot half-succeed, but a task must never
            // run with root left in any of its ids.
            if libc::getuid() != self.uid
                || libc::geteuid() != self.uid
                || libc::getegid() != self.gid
            {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
        }
        Ok(())
    }
}

/// Where the paths a job spec names may lead.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PathPolicy {
    /// Anywhere (the library default; the node agent never uses it unless
    /// its operator allows `/`).
    #[default]
    Unconfined,
    /// Inside the allocation's directory or one of these directories
    /// (canonical: absolute, symlinks resolved).
    Within(Vec<PathBuf>),
}

/// A node's confinement of its drivers; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Confinement {
    /// The user `exec` tasks run as; `None`: the agent's own user.
    pub exec_user: Option<RunAs>,
    /// Where spec paths may lead.
    pub paths: PathPolicy,
    /// Host block devices a VM may be given as its disk (canonical).
    pub vm_devices: Vec<PathBuf>,
}

impl Confinement {
    /// The node agent's policy: paths confined to the allocation directory
    /// and `allow_paths` (existing directories, made canonical here), VM
    /// disks that are devices only from `vm_devices` (existing block
    /// devices), and `exec_user` looked up. Errors name the setting.
    pub fn for_node(
        exec_user: Option<&str>,
        allow_paths: &[PathBuf],
        vm_devices: &[PathBuf],
    ) -> Result<Self, ConfineError> {
        let exec_user = exec_user.map(RunAs::resolve).transpose()?;
        let mut allowed = Vec::new();
        for path in allow_paths {
            let bad = |message: String| ConfineError::Setting {
                setting: "allow_paths",
                path: path.display().to_string(),
                message,
            };
            if !path.is_absolute() {
                return Err(bad("must be an absolute directory".into()));
            }
            let canonical = std::fs::canonicalize(path).map_err(|e| bad(e.to_string()))?;
            if !canonical.is_dir() {
                return Err(bad("is not a directory".into()));
            }
            allowed.push(canonical);
        }
        let mut devices = Vec::new();
        for path in vm_devices {
            let bad = |message: String| ConfineError::Setting {
                setting: "vm_devices",
                path: path.display().to_string(),
                message,
            };
            let canonical = std::fs::canonicalize(path).map_err(|e| bad(e.to_string()))?;
            if !is_block_device(&canonical) {
                return Err(bad("is not a block device".into()));
            }
            devices.push(canonical);
        }
        Ok(Self {
            exec_user,
            paths: PathPolicy::Within(allowed),
            vm_devices: devices,
        })
    }

    /// Resolves `given`, the value of spec field `field`, as the driver
    /// will use it: relative to `base` when relative. Under a confining
    /// policy the path must exist and resolve (symlinks followed) inside
    /// `alloc_dir` or an allowed directory, and the resolved path is
    /// returned so that what runs is what was checked; unconfined, the path
    /// is returned as given (joined to `base`). Errors name the field.
    pub fn resolve(
        &self,
        field: &str,
        given: &str,
        base: &Path,
        alloc_dir: &Path,
    ) -> Result<PathBuf, String> {
        if given.is_empty() {
            return Err(format!("{field}: must not be empty"));
        }
        let path = base.join(given);
        let PathPolicy::Within(allowed) = &self.paths else {
            return Ok(path);
        };
        let canonical = std::fs::canonicalize(&path)
            .map_err(|e| format!("{field}: {given}: {e} (looked for {})", path.display()))?;
        let alloc = std::fs::canonicalize(alloc_dir).unwrap_or_else(|_| alloc_dir.to_path_buf());
        if canonical.starts_with(&alloc) || allowed.iter().any(|a| canonical.starts_with(a)) {
            return Ok(canonical);
        }
        let allowed = if allowed.is_empty() {
            "none".to_string()
        } else {
            allowed
                .iter()
                .map(|a| a.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(format!(
            "{field}: {given} resolves to {}, outside the allocation directory {} and the \
             node's allowed paths ({allowed}); a job may only name its own files, or those \
             of a directory the node's operator allows with allow_paths (--allow-path)",
            canonical.display(),
            alloc.display()
        ))
    }

    /// Whether `canonical` (a resolved path that is not a regular file) is
    /// a host device the operator lets VMs have.
    pub fn vm_device_allowed(&self, canonical: &Path) -> bool {
        self.vm_devices.iter().any(|d| d == canonical)
    }

    /// The same policy without an exec user: for drivers that run herd's or
    /// QEMU's program rather than the job's own (see `docs/security.md`).
    pub fn without_exec_user(&self) -> Self {
        Self {
            exec_user: None,
            ..self.clone()
        }
    }
}

/// Whether `path` is a block device.
pub fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
}

/// `value` as one value of a QEMU option list (`-drive file=VALUE,...`):
/// commas doubled, so a path cannot add options of its own (`,if=none`,
/// `,file.driver=host_device`...).
pub fn qemu_value(value: &str) -> String {
    value.replace(',', ",,")
}

/// Makes `dir` (the allocation directory) writable by `user` while keeping
/// the driver's files in it out of the task's reach: owned by the agent's
/// user, group `user`'s gid, mode `1770`. The sticky bit keeps the task
/// from renaming or deleting files it does not own (`launch.json`,
/// `started.json`, the logs), and only the user's group (and root) can
/// enter it.
pub fn share_alloc_dir(dir: &Path, user: &RunAs) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: a valid NUL-terminated path; -1 keeps the owner.
    if unsafe { libc::lchown(path.as_ptr(), u32::MAX, user.gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1770))
}

/// The name of the user with `uid`, for messages; `None` if it has none.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: as in `RunAs::resolve`.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() {
            return None;
        }
        Some(CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Layout {
        _tmp: tempfile::TempDir,
        alloc: PathBuf,
        shared: PathBuf,
        outside: PathBuf,
    }

    fn layout() -> Layout {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(tmp.path()).expect("canonical");
        let alloc = root.join("alloc");
        let shared = root.join("shared");
        std::fs::create_dir_all(alloc.join("sub")).expect("mkdir");
        std::fs::create_dir_all(&shared).expect("mkdir");
        std::fs::write(alloc.join("kernel"), "k").expect("write");
        std::fs::write(shared.join("image"), "i").expect("write");
        let outside = root.join("secret");
        std::fs::write(&outside, "s").expect("write");
        symlink(&outside, alloc.join("link")).expect("symlink");
        symlink(alloc.join("kernel"), alloc.join("inner-link")).expect("symlink");
        Layout {
            _tmp: tmp,
            alloc,
            shared,
            outside,
        }
    }

    fn confined(allowed: &[&Path]) -> Confinement {
        let allowed: Vec<PathBuf> = allowed.iter().map(|p| p.to_path_buf()).collect();
        Confinement::for_node(None, &allowed, &[]).expect("policy")
    }

    #[test]
    fn paths_inside_the_alloc_dir_or_an_allowed_dir_resolve() {
        let l = layout();
        let policy = confined(&[&l.shared]);
        let resolve = |given: &str| policy.resolve("task.config.kernel", given, &l.alloc, &l.alloc);
        assert_eq!(resolve("kernel"), Ok(l.alloc.join("kernel")));
        assert_eq!(resolve("sub/../kernel"), Ok(l.alloc.join("kernel")));
        assert_eq!(resolve("inner-link"), Ok(l.alloc.join("kernel")));
        let image = l.shared.join("image");
        assert_eq!(resolve(&image.display().to_string()), Ok(image));
    }

    #[test]
    fn escapes_by_dotdot_absolute_path_or_symlink_are_refused_naming_the_field() {
        let l = layout();
        let policy = confined(&[&l.shared]);
        let outside = l.outside.display().to_string();
        for given in ["../secret", outside.as_str(), "link", "/etc/passwd"] {
            let err = policy
                .resolve("task.config.disk", given, &l.alloc, &l.alloc)
                .expect_err(given);
            assert!(err.starts_with("task.config.disk: "), "{err}");
            assert!(err.contains("outside the allocation directory"), "{err}");
            assert!(err.contains("allow_paths"), "{err}");
        }
        let err = policy
            .resolve("task.workdir", "missing", &l.alloc, &l.alloc)
            .expect_err("missing");
        assert!(err.starts_with("task.workdir: missing: "), "{err}");
        let err = policy
            .resolve("task.workdir", "", &l.alloc, &l.alloc)
            .expect_err("empty");
        assert!(err.contains("must not be empty"), "{err}");
        // With nothing allowed, the shared directory is outside too.
        let err = confined(&[])
            .resolve("task.config.kernel", "../shared/image", &l.alloc, &l.alloc)
            .expect_err("not allowed");
        assert!(err.contains("allowed paths (none)"), "{err}");
    }

    #[test]
    fn the_library_default_confines_nothing() {
        let l = layout();
        let policy = Confinement::default();
        assert_eq!(
            policy.resolve("task.workdir", "/etc", &l.alloc, &l.alloc),
            Ok(PathBuf::from("/etc"))
        );
        assert_eq!(
            policy.resolve("task.command", "x/y", &l.alloc, &l.alloc),
            Ok(l.alloc.join("x/y"))
        );
    }

    #[test]
    fn node_settings_that_cannot_work_are_refused_naming_the_setting() {
        let l = layout();
        let err = Confinement::for_node(None, &[PathBuf::from("relative")], &[]).expect_err("rel");
        assert!(
            err.to_string().starts_with("allow_paths: relative"),
            "{err}"
        );
        let err =
            Confinement::for_node(None, std::slice::from_ref(&l.outside), &[]).expect_err("file");
        assert!(err.to_string().contains("not a directory"), "{err}");
        let err =
            Confinement::for_node(None, &[], std::slice::from_ref(&l.outside)).expect_err("file");
        assert!(err.to_string().contains("vm_devices"), "{err}");
        assert!(err.to_string().contains("not a block device"), "{err}");
        let err = Confinement::for_node(Some("no-such-user-herd"), &[], &[]).expect_err("user");
        assert_eq!(
            err,
            ConfineError::UnknownUser {
                user: "no-such-user-herd".into()
            }
        );
        let err = Confinement::for_node(Some("root"), &[], &[]).expect_err("root");
        assert!(matches!(err, ConfineError::Root { .. }), "{err}");
        let err = RunAs::resolve("a\0b").expect_err("nul");
        assert!(err.to_string().contains("NUL"), "{err}");
    }

    #[test]
    fn a_known_user_resolves_to_its_ids() {
        // nobody exists on every Debian-like system; skip quietly elsewhere.
        let Ok(nobody) = RunAs::resolve("nobody") else {
            eprintln!("skipping: no user nobody here");
            return;
        };
        assert_ne!(nobody.uid, 0);
        assert_eq!(user_name(nobody.uid).as_deref(), Some("nobody"));
    }

    #[test]
    fn qemu_values_cannot_add_options() {
        assert_eq!(qemu_value("/a/disk.qcow2"), "/a/disk.qcow2");
        assert_eq!(
            qemu_value("/a/x,file.driver=host_device,if=none"),
            "/a/x,,file.driver=host_device,,if=none"
        );
    }
}
