//! The QEMU command line of a VM, from its validated settings.

use std::path::{Path, PathBuf};

use herd_api::vm::{Accel, NumaPlacement, VmSettings};

use crate::driver::confine::qemu_value;

/// The QEMU binary herd runs.
pub const QEMU: &str = "qemu-system-x86_64";
/// The image tool that creates fresh disks.
pub const QEMU_IMG: &str = "qemu-img";
/// QMP socket, in the allocation directory.
pub const QMP_SOCKET: &str = "qmp.sock";
/// Fresh disk created for `disk_size`, in the allocation directory.
pub const FRESH_DISK: &str = "disk.qcow2";
/// Longest unix socket path the kernel accepts (sun_path, less the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// QEMU's seccomp sandbox, as libvirt sets it: no obsolete system calls,
/// no privilege changes, no new processes or exec, no scheduler or
/// resource-control calls. Added where [`sandbox_supported`].
pub const SANDBOX: [&str; 2] = [
    "-sandbox",
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
];

/// Whether the QEMU at `qemu` takes [`SANDBOX`] (built with seccomp):
/// asked once per process (`-sandbox ... -version` exits 0 only then).
pub fn sandbox_supported(qemu: &Path) -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let supported = std::process::Command::new(qemu)
            .args(SANDBOX)
            .arg("-version")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !supported {
            tracing::warn!(
                qemu = %qemu.display(),
                "QEMU has no seccomp sandbox (-sandbox); VMs run without it"
            );
        }
        supported
    })
}

/// Asks [`sandbox_supported`] now, on a thread of its own, when QEMU is
/// installed: the answer costs a start of QEMU (~30 ms), which the first
/// VM an agent starts would otherwise pay, often a move's target, while
/// the move waits for it (docs/benchmarks.md, `herd bench migrate`).
pub fn probe_sandbox_in_background() {
    if let Some(qemu) = find_in_path(QEMU) {
        let spawned = std::thread::Builder::new()
            .name("qemu-sandbox-probe".into())
            .spawn(move || sandbox_supported(&qemu));
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "no thread for the QEMU sandbox probe; the first VM asks");
        }
    }
}

/// Finds `program` in `PATH`, as a shell would.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Whether KVM can be used here: `/dev/kvm` opens for reading and writing.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The `-machine accel=` value for `accel` on this host.
pub fn accel_arg(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
        Accel::Auto if kvm_usable() => "kvm:tcg",
        Accel::Auto => "tcg",
    }
}

/// QEMU's arguments for a VM whose files live in `alloc_dir`; `disk` is the
/// image to attach (given, or freshly created).
pub fn args(settings: &VmSettings, alloc_dir: &Path, disk: Option<&Path>) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-name".into(),
        alloc_dir
            .file_name()
            .map_or_else(|| "herd-vm".into(), |n| qemu_value(&n.to_string_lossy())),
        "-machine".into(),
        format!("q35,accel={}", accel_arg(settings.accel)),
        "-m".into(),
        format!("{}M", settings.memory_mib),
        "-smp".into(),
        settings.vcpus.to_string(),
        // No default devices (VGA, NIC with its option ROM): a headless guest
        // boots faster and exposes nothing it was not given.
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        // The serial console is QEMU's stdout, captured to stdout.log by the
        // executor, so `herd alloc logs` shows it; signal=off keeps a stray
        // Ctrl-C byte from quitting QEMU.
        "-chardev".into(),
        "stdio,id=console,signal=off".into(),
        "-serial".into(),
        "chardev:console".into(),
        "-qmp".into(),
        format!(
            "unix:{},server=on,wait=off",
            qemu_value(&alloc_dir.join(QMP_SOCKET).display().to_string())
        ),
        "-no-reboot".into(),
    ];
    if let Some(kernel) = &settings.kernel {
        args.extend(["-kernel".into(), kernel.clone()]);
        if let Some(initrd) = &settings.initrd {
            args.extend(["-initrd".into(), initrd.clone()]);
        }
        let append = settings
            .append
            .clone()
            .unwrap_or_else(|| "console=ttyS0 panic=-1".to_string());
        args.extend(["-append".into(), append]);
    }
    if let Some(disk) = disk {
        args.extend([
            "-drive".into(),
            format!(
                "file={},if=virtio,cache=none,aio=threads",
                qemu_value(&disk.display().to_string())
            ),
        ]);
    }
    match settings.numa {
        None => {}
        Some(NumaPlacement::One(_)) => {
            args.extend(numa_node(0, settings.memory_mib, 0, settings.vcpus - 1));
        }
        Some(NumaPlacement::Split(..)) => {
            let half_mem = settings.memory_mib / 2;
            let half_cpus = settings.vcpus / 2;
            args.extend(numa_node(0, half_mem, 0, half_cpus - 1));
            args.extend(numa_node(
                1,
                settings.memory_mib - half_mem,
                half_cpus,
                settings.vcpus - 1,
            ));
        }
    }
    args
}

/// One guest NUMA node with its own memory backend and vCPUs.
fn numa_node(id: u32, mib: u64, first_cpu: u32, last_cpu: u32) -> Vec<String> {
    vec![
        "-object".into(),
        format!("memory-backend-ram,id=numa-mem{id},size={mib}M"),
        "-numa".into(),
        format!("node,nodeid={id},cpus={first_cpu}-{last_cpu},memdev=numa-mem{id}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> VmSettings {
        VmSettings {
            memory_mib: 256,
            vcpus: 2,
            kernel: Some("/k".into()),
            initrd: Some("/i".into()),
            append: None,
            disk: None,
            disk_size: None,
            accel: Accel::Tcg,
            numa: Some(NumaPlacement::Split(0, 1)),
        }
    }

    #[test]
    fn the_command_line_carries_size_console_qmp_and_topology() {
        let args = args(
            &settings(),
            Path::new("/var/herd/allocs/vm-0-7"),
            Some(Path::new("/d.qcow2")),
        );
        let text = args.join(" ");
        assert!(text.contains("-machine q35,accel=tcg"), "{text}");
        assert!(text.contains("-m 256M -smp 2"), "{text}");
        assert!(
            text.contains("-qmp unix:/var/herd/allocs/vm-0-7/qmp.sock,server=on,wait=off"),
            "{text}"
        );
        assert!(
            text.contains("-kernel /k -initrd /i -append console=ttyS0 panic=-1"),
            "{text}"
        );
        assert!(text.contains("file=/d.qcow2,if=virtio"), "{text}");
        assert!(
            text.contains("memory-backend-ram,id=numa-mem0,size=128M"),
            "{text}"
        );
        assert!(
            text.contains("node,nodeid=1,cpus=1-1,memdev=numa-mem1"),
            "{text}"
        );
        assert!(text.contains("-name vm-0-7"), "{text}");
        assert!(text.contains("-nodefaults"), "{text}");
    }

    #[test]
    fn a_disk_path_with_commas_cannot_add_drive_options() {
        let args = args(
            &settings(),
            Path::new("/var/herd/allocs/vm,1"),
            Some(Path::new(
                "/a/d.img,file.driver=host_device,filename=/dev/sda",
            )),
        );
        let drive = args
            .iter()
            .skip_while(|a| *a != "-drive")
            .nth(1)
            .expect("a drive");
        assert_eq!(
            drive,
            "file=/a/d.img,,file.driver=host_device,,filename=/dev/sda,if=virtio,cache=none,aio=threads"
        );
        let text = args.join(" ");
        assert!(text.contains("-name vm,,1"), "{text}");
        assert!(
            text.contains("unix:/var/herd/allocs/vm,,1/qmp.sock,server=on"),
            "{text}"
        );
    }
}
