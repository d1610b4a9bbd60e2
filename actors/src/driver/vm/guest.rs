//! A tiny guest for tests and first tries: a busybox initramfs whose init
//! prints a line a second and rewrites a working set in memory at a set
//! rate, so that a VM that really runs (and, later, migrates under a real
//! dirty rate) is a few megabytes, boots in a second or two, and needs no
//! disk image. The kernel comes from the host's distribution (see
//! `.ci/vm-guest.sh`). Public, not test code: `herd vm guest DIR` builds
//! the same guest for people as the tests build for themselves.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Where distributions put busybox (Debian's `busybox-static` installs it
/// at `/bin/busybox`), looked at in this order by [`find_busybox`].
pub const BUSYBOX_PATHS: [&str; 2] = ["/bin/busybox", "/usr/bin/busybox"];

/// Why a guest cannot be built, each naming the file and what to do, since
/// the person who reads it is setting up a machine for the first time.
#[derive(Debug, Error)]
pub enum GuestError {
    /// No busybox at any of [`BUSYBOX_PATHS`].
    #[error(
        "no busybox at {} (install a static one: apt-get install busybox-static)",
        BUSYBOX_PATHS.join(" or ")
    )]
    NoBusybox,
    /// The busybox found needs a dynamic loader and libraries, which the
    /// initramfs does not have: the guest's `/init` would not start.
    #[error(
        "{} is not a statically linked 64-bit executable, so it cannot run alone \
         in the guest (install a static one: apt-get install busybox-static)",
        path.display()
    )]
    NotStatic {
        /// The busybox looked at.
        path: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
}

/// The first busybox of [`BUSYBOX_PATHS`] that exists, so that callers
/// (the tests, `herd vm guest`) look in the same places.
pub fn find_busybox() -> Result<PathBuf, GuestError> {
    BUSYBOX_PATHS
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or(GuestError::NoBusybox)
}

/// Whether `bytes` are a 64-bit little-endian ELF executable with no
/// program interpreter (`PT_INTERP`), i.e. one that runs with nothing else
/// in the initramfs. `None` when they are not such an ELF file at all.
pub fn is_static_elf(bytes: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    };
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if bytes.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        if u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)? == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

/// What the guest does once up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLoad {
    /// Working set rewritten in guest memory, MiB.
    pub working_set_mib: u32,
    /// How much of it is rewritten per second, MiB.
    pub dirty_mib_per_sec: u32,
}

/// The kernel command-line word that turns on the guest's disk probe:
/// `herd.disk=WORD` (in the VM's `append`). With it, and a virtio disk
/// attached (`/dev/vda`), the guest writes `herd-disk:WORD` to the disk's
/// first sector at boot, rewrites its second sector with a counter every
/// tick, and adds to each tick line what the first sector reads back
/// straight from the disk (`disk herd-disk:WORD`, its page cache dropped
/// first): so a test sees that a disk moved with a VM holds what the guest
/// wrote, and that the guest keeps writing to it across the move.
pub const DISK_PROBE_ARG: &str = "herd.disk";

/// The kernel modules a virtio disk needs, in load order, for kernels that
/// build virtio as modules (Debian's cloud kernel does: `.ci/vm-guest.sh`
/// copies these from its package to `target/vm-guest/modules/`). Without
/// them the guest sees no `/dev/vda`.
pub const VIRTIO_BLK_MODULES: [&str; 6] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
];

/// The guest's `/init`: mount what busybox needs, load `modules` (from
/// `/lib/modules`, in order), then loop forever.
///
/// `/dev` is a devtmpfs mounted by the init itself: an initramfs gets no
/// device nodes from the kernel (only `/dev/console`), and without
/// `/dev/urandom` the dirtying `dd` would fail silently.
fn init_script(load: GuestLoad, modules: &[&str]) -> String {
    let GuestLoad {
        working_set_mib: ws,
        dirty_mib_per_sec: rate,
    } = load;
    let insmod: String = modules
        .iter()
        .map(|m| format!("insmod /lib/modules/{m}.ko || echo \"herd-guest: cannot load {m}\"\n"))
        .collect();
    format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mount -t tmpfs -o size={tmpfs}m tmpfs /tmp\n\
         {insmod}\
         echo \"herd-guest: up, working set {ws} MiB, dirtying {rate} MiB/s\"\n\
         disk=\n\
         for word in $(cat /proc/cmdline); do\n\
           case \"$word\" in {probe}=*) disk=\"${{word#{probe}=}}\" ;; esac\n\
         done\n\
         i=0\n\
         while [ -n \"$disk\" ] && [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done\n\
         if [ -n \"$disk\" ] && [ ! -b /dev/vda ]; then\n\
           echo \"herd-guest: no disk at /dev/vda\"\n\
           disk=\n\
         fi\n\
         if [ -n \"$disk\" ]; then\n\
           echo \"herd-disk:$disk\" | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null\n\
           sync\n\
           echo \"herd-guest: disk wrote herd-disk:$disk\"\n\
         fi\n\
         dd if=/dev/zero of=/tmp/ws bs=1M count={ws} 2>/dev/null\n\
         offset=0\n\
         n=0\n\
         while true; do\n\
           if [ {rate} -gt 0 ]; then\n\
             dd if=/dev/urandom of=/tmp/ws bs=1M count={rate} seek=$offset conv=notrunc 2>/dev/null\n\
             offset=$(( (offset + {rate}) % {ws} ))\n\
           fi\n\
           n=$((n + 1))\n\
           line=\"herd-guest: tick $(cut -d' ' -f1 /proc/uptime)\"\n\
           if [ -n \"$disk\" ]; then\n\
             echo \"tick $n\" | dd of=/dev/vda bs=512 seek=1 count=1 conv=sync 2>/dev/null\n\
             sync\n\
             echo 3 > /proc/sys/vm/drop_caches\n\
             line=\"$line disk $(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n 1)\"\n\
           fi\n\
           echo \"$line\"\n\
           sleep 1\n\
         done\n",
        tmpfs = ws + 8,
        probe = DISK_PROBE_ARG,
    )
}

/// One entry of a `newc` cpio archive (what the kernel unpacks as initramfs).
fn newc_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        1, // nlink
        0, // mtime
        u32::try_from(data.len()).unwrap_or(u32::MAX),
        0,
        0,
        0,
        0, // dev and rdev
        u32::try_from(name.len() + 1).unwrap_or(u32::MAX),
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for field in fields {
        out.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The initramfs bytes: `busybox` (a static binary) as `/bin/busybox`, and
/// an `/init` that runs `load`.
pub fn initramfs(busybox: &[u8], load: GuestLoad) -> Vec<u8> {
    initramfs_with_modules(busybox, load, &[])
}

/// [`initramfs`] plus kernel `modules` (name, `.ko` bytes) in
/// `/lib/modules`, which the `/init` loads in the order given.
pub fn initramfs_with_modules(
    busybox: &[u8],
    load: GuestLoad,
    modules: &[(&str, Vec<u8>)],
) -> Vec<u8> {
    const DIR: u32 = 0o040_755;
    const EXE: u32 = 0o100_755;
    const FILE: u32 = 0o100_644;
    let mut out = Vec::with_capacity(busybox.len() + 4096);
    let mut ino = 1;
    for dir in ["bin", "proc", "sys", "dev", "tmp", "lib", "lib/modules"] {
        ino += 1;
        newc_entry(&mut out, ino, dir, DIR, &[]);
    }
    for (name, bytes) in modules {
        ino += 1;
        newc_entry(
            &mut out,
            ino,
            &format!("lib/modules/{name}.ko"),
            FILE,
            bytes,
        );
    }
    let names: Vec<&str> = modules.iter().map(|(name, _)| *name).collect();
    newc_entry(&mut out, ino + 1, "bin/busybox", EXE, busybox);
    newc_entry(
        &mut out,
        ino + 2,
        "init",
        EXE,
        init_script(load, &names).as_bytes(),
    );
    newc_entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

/// Writes the guest's initramfs to `dest`, with the static busybox at
/// `busybox`; refuses a busybox that could not run alone in the guest, which
/// would otherwise show only as a kernel panic on the VM's console.
pub fn write_initramfs(dest: &Path, busybox: &Path, load: GuestLoad) -> Result<(), GuestError> {
    write_initramfs_with_modules(dest, busybox, load, None)
}

/// [`write_initramfs`], plus, from `modules_dir`, the
/// [`VIRTIO_BLK_MODULES`] (`NAME.ko` each) that give the guest its virtio
/// disk; a module missing there is an error naming it.
pub fn write_initramfs_with_modules(
    dest: &Path,
    busybox: &Path,
    load: GuestLoad,
    modules_dir: Option<&Path>,
) -> Result<(), GuestError> {
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GuestError::Io { path, source }
    };
    let binary = std::fs::read(busybox).map_err(io_at(busybox))?;
    if is_static_elf(&binary) != Some(true) {
        return Err(GuestError::NotStatic {
            path: busybox.to_path_buf(),
        });
    }
    let mut modules = Vec::new();
    if let Some(dir) = modules_dir {
        for name in VIRTIO_BLK_MODULES {
            let path = dir.join(format!("{name}.ko"));
            modules.push((name, std::fs::read(&path).map_err(io_at(&path))?));
        }
    }
    let mut file = std::fs::File::create(dest).map_err(io_at(dest))?;
    file.write_all(&initramfs_with_modules(&binary, load, &modules))
        .map_err(io_at(dest))?;
    file.sync_all().map_err(io_at(dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_is_newc_with_init_and_busybox() {
        let bytes = initramfs(
            b"BUSYBOX",
            GuestLoad {
                working_set_mib: 16,
                dirty_mib_per_sec: 4,
            },
        );
        assert!(bytes.starts_with(b"070701"));
        assert!(bytes.len().is_multiple_of(4));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("bin/busybox\0"));
        assert!(text.contains("BUSYBOX"));
        assert!(text.contains("init\0"));
        assert!(text.contains("#!/bin/busybox sh\n"));
        assert!(text.contains("count=4 seek=$offset"));
        // Device nodes exist only once the init mounts them.
        assert!(text.contains("mount -t devtmpfs devtmpfs /dev\n"));
        assert!(text.contains("herd.disk=*) disk=\"${word#herd.disk=}\""));
        assert!(!text.contains("insmod"), "no modules, none loaded");
    }

    #[test]
    fn modules_go_in_lib_modules_and_load_in_order() {
        let load = GuestLoad {
            working_set_mib: 1,
            dirty_mib_per_sec: 0,
        };
        let modules = [
            ("virtio_ring", b"RING".to_vec()),
            ("virtio", b"VIRT".to_vec()),
        ];
        let bytes = initramfs_with_modules(b"BUSYBOX", load, &modules);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("lib/modules/virtio_ring.ko\0"));
        assert!(text.contains("RING") && text.contains("VIRT"));
        let ring = text
            .find("insmod /lib/modules/virtio_ring.ko")
            .expect("ring");
        let virtio = text.find("insmod /lib/modules/virtio.ko").expect("virtio");
        assert!(ring < virtio, "in the order given");

        // A module missing from the directory is named.
        let dir = tempfile::tempdir().expect("tempdir");
        let busybox = dir.path().join("busybox");
        std::fs::write(&busybox, elf_with_segment(1)).expect("write");
        let dest = dir.path().join("initrd");
        let err = write_initramfs_with_modules(&dest, &busybox, load, Some(dir.path()))
            .expect_err("no modules there");
        assert!(err.to_string().contains("virtio_ring.ko"), "{err}");
        assert!(text.contains("TRAILER!!!\0"));
        // Every header is 110 bytes of ASCII hex after the magic.
        let header = &bytes[..110];
        assert!(header[6..].iter().all(|b| b.is_ascii_hexdigit()));
    }

    /// A 64-bit little-endian ELF header with one program header of `kind`.
    fn elf_with_segment(kind: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 64 + 56];
        bytes[..6].copy_from_slice(b"\x7fELF\x02\x01");
        bytes[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        bytes[64..68].copy_from_slice(&kind.to_le_bytes());
        bytes
    }

    #[test]
    fn only_a_static_elf_is_taken_for_busybox() {
        assert_eq!(is_static_elf(&elf_with_segment(1)), Some(true), "PT_LOAD");
        assert_eq!(
            is_static_elf(&elf_with_segment(3)),
            Some(false),
            "PT_INTERP"
        );
        assert_eq!(is_static_elf(b"#!/bin/sh\n"), None);
        // Program headers past the end: not an ELF file we can judge.
        let mut cut = elf_with_segment(1);
        cut.truncate(66);
        assert_eq!(is_static_elf(&cut), None);
    }

    #[test]
    fn a_real_dynamic_binary_is_seen_as_dynamic() {
        // Every distribution links coreutils dynamically.
        if let Ok(ls) = std::fs::read("/bin/ls") {
            assert_eq!(is_static_elf(&ls), Some(false), "/bin/ls");
        }
    }

    #[test]
    fn a_dynamic_busybox_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let busybox = dir.path().join("busybox");
        std::fs::write(&busybox, elf_with_segment(3)).expect("write");
        let load = GuestLoad {
            working_set_mib: 1,
            dirty_mib_per_sec: 0,
        };
        let dest = dir.path().join("initrd");
        let err = write_initramfs(&dest, &busybox, load).expect_err("dynamic");
        assert!(
            err.to_string().contains(&busybox.display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("busybox-static"), "{err}");
        assert!(!dest.exists(), "nothing written");

        std::fs::write(&busybox, elf_with_segment(1)).expect("write");
        write_initramfs(&dest, &busybox, load).expect("static");
        assert!(std::fs::metadata(&dest).expect("initrd").len() > 110);
    }
}
