//! Real QEMU guests for the VM migration tests: what a guest with a disk
//! is built from, the QEMU processes a test started, and their reaping.

use std::path::{Path, PathBuf};
use std::process::Output;

use herd_actors::driver::vm::guest::{
    find_busybox, write_initramfs_with_modules, GuestLoad, DISK_PROBE_ARG, VIRTIO_BLK_MODULES,
};
use herd_actors::driver::vm::qemu;
use herd_chaos::agents::AgentSet;

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

/// The initramfs of the migration tests' guest, written to `dir/initrd`:
/// busybox and the virtio disk modules of `parts`, a 16 MiB working set
/// dirtied at 2 MiB/s, so that a move has memory and a disk to carry.
pub fn guest_initrd(dir: &Path, parts: &Parts) -> PathBuf {
    let initrd = dir.join("initrd");
    write_initramfs_with_modules(
        &initrd,
        &parts.busybox,
        GuestLoad {
            working_set_mib: 16,
            dirty_mib_per_sec: 2,
        },
        Some(&parts.modules),
    )
    .expect("initramfs");
    initrd
}

/// The spec file (`dir/vm.toml`) of job `vm`: one TCG VM of 128 MiB and a
/// core, booting [`guest_initrd`] (written to `dir`) with a fresh 64 MiB
/// disk, its guest told to write `pattern` to the disk and read it back on
/// every tick. Returns the spec's path.
pub fn vm_job_spec(dir: &Path, parts: &Parts, pattern: &str) -> String {
    let initrd = guest_initrd(dir, parts);
    super::write_spec(
        dir,
        "vm",
        &format!(
            "name = \"vm\"\ntype = \"service\"\n[task]\ndriver = \"vm\"\n[task.config]\nkernel = \"{}\"\ninitrd = \"{}\"\naccel = \"tcg\"\ndisk_size = \"64MiB\"\nappend = \"console=ttyS0 quiet panic=-1 {DISK_PROBE_ARG}={pattern}\"\n[task.resources]\ncpu = 1000\nmemory = \"128MiB\"\n",
            parts.kernel.display(),
            initrd.display()
        ),
    )
}

/// Starts an agent for each of `names` in `agents`, allowed the paths a VM
/// job of [`vm_job_spec`] names: the kernel's directory and `dir` (agents
/// confine spec paths; docs/security.md, "Driver confinement").
pub fn start_vm_agents(agents: &mut AgentSet, names: &[&str], parts: &Parts, dir: &Path) {
    let kernel_dir = std::fs::canonicalize(&parts.kernel)
        .expect("kernel")
        .parent()
        .map(|p| p.display().to_string())
        .expect("the kernel's directory");
    let dir_arg = dir.display().to_string();
    let allow = ["--allow-path", &kernel_dir, "--allow-path", &dir_arg];
    for name in names {
        agents.start(name, &allow).expect("start agent");
    }
}

/// The guest's console so far (the VM's stdout in its allocation
/// directory).
pub fn console(alloc_dir: &Path) -> String {
    std::fs::read_to_string(alloc_dir.join("stdout.log")).unwrap_or_default()
}

/// The uptimes of the tick lines in a guest's console (`herd-guest: tick
/// UPTIME[ disk …]`): a guest that runs on after a move goes on counting
/// from its source's, a rebooted one starts near 0.
pub fn tick_uptimes(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("herd-guest: tick ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Starts `herd --addr ADDR alloc migrate ALLOC --to TARGET --wait
/// --downtime-limit 300ms` in a thread, through `run` (the plain CLI or a
/// certified one), so that the test can act while the VM moves; join it
/// for the command's output.
pub fn spawn_vm_move(
    addr: &str,
    alloc: &str,
    target: &str,
    run: impl FnOnce(&[&str]) -> Output + Send + 'static,
) -> std::thread::JoinHandle<Output> {
    let args = [
        "--addr",
        addr,
        "alloc",
        "migrate",
        alloc,
        "--to",
        target,
        "--wait",
        "--downtime-limit",
        "300ms",
    ]
    .map(str::to_string);
    std::thread::spawn(move || run(&args.each_ref().map(String::as_str)))
}
