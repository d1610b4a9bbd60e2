//! Real QEMU guests for the VM migration tests: what a guest with a disk
//! is built from, the QEMU processes a test started, and their reaping.

use std::path::{Path, PathBuf};

use herd_actors::driver::vm::guest::{find_busybox, VIRTIO_BLK_MODULES};
use herd_actors::driver::vm::qemu;

/// What a guest with a disk is built from.
pub struct Parts {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// A static busybox for the initramfs.
    pub busybox: PathBuf,
    /// The kernel's virtio disk modules.
    pub modules: PathBuf,
}

/// The kernel, its virtio modules and busybox, or why the test cannot run
/// here.
pub fn guest_parts() -> Result<Parts, String> {
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/vm-guest");
    let kernel = std::env::var_os("HERD_VM_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| guest.join("vmlinuz"));
    if !kernel.is_file() {
        return Err(format!(
            "no guest kernel at {} (run .ci/vm-guest.sh or set HERD_VM_KERNEL)",
            kernel.display()
        ));
    }
    // Beside the kernel, as .ci/vm-guest.sh puts them.
    let modules = kernel
        .parent()
        .map_or_else(|| guest.join("modules"), |dir| dir.join("modules"));
    if let Some(missing) = VIRTIO_BLK_MODULES
        .iter()
        .map(|m| modules.join(format!("{m}.ko")))
        .find(|path| !path.is_file())
    {
        return Err(format!(
            "no virtio disk module {} (run .ci/vm-guest.sh)",
            missing.display()
        ));
    }
    let busybox = find_busybox().map_err(|e| e.to_string())?;
    for (tool, package) in [
        (qemu::QEMU, "qemu-system-x86"),
        (qemu::QEMU_IMG, "qemu-utils"),
    ] {
        if qemu::find_in_path(tool).is_none() {
            return Err(format!("{tool} not installed (apt-get install {package})"));
        }
    }
    Ok(Parts {
        kernel,
        busybox,
        modules,
    })
}

/// PIDs of QEMU processes whose command line names `needle`, from /proc.
pub fn qemu_pids(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline);
            (text.contains("qemu-system") && text.contains(needle)).then_some(pid)
        })
        .collect()
}

/// Kills, when a test ends (passed or panicked), every QEMU left under its
/// directory, so that a failing test leaks no VM (VMs outlive their agents
/// by design).
pub struct Reaper(pub PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in qemu_pids(&self.0.display().to_string()) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}
