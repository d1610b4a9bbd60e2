//! A tiny guest for tests and first tries: a busybox initramfs whose init
//! prints a line a second and rewrites a working set in memory at a set
//! rate, so that a VM that really runs (and, later, migrates under a real
//! dirty rate) is a few megabytes, boots in a second or two, and needs no
//! disk image. The kernel comes from the host's distribution (see
//! `.ci/vm-kernel.sh`).

use std::io::{self, Write};
use std::path::Path;

/// What the guest does once up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLoad {
    /// Working set rewritten in guest memory, MiB.
    pub working_set_mib: u32,
    /// How much of it is rewritten per second, MiB.
    pub dirty_mib_per_sec: u32,
}

/// The guest's `/init`: mount what busybox needs, then loop forever.
fn init_script(load: GuestLoad) -> String {
    let GuestLoad {
        working_set_mib: ws,
        dirty_mib_per_sec: rate,
    } = load;
    format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t tmpfs -o size={tmpfs}m tmpfs /tmp\n\
         echo \"herd-guest: up, working set {ws} MiB, dirtying {rate} MiB/s\"\n\
         dd if=/dev/zero of=/tmp/ws bs=1M count={ws} 2>/dev/null\n\
         offset=0\n\
         while true; do\n\
           if [ {rate} -gt 0 ]; then\n\
             dd if=/dev/urandom of=/tmp/ws bs=1M count={rate} seek=$offset conv=notrunc 2>/dev/null\n\
             offset=$(( (offset + {rate}) % {ws} ))\n\
           fi\n\
           echo \"herd-guest: tick $(cut -d' ' -f1 /proc/uptime)\"\n\
           sleep 1\n\
         done\n",
        tmpfs = ws + 8,
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
    const DIR: u32 = 0o040_755;
    const EXE: u32 = 0o100_755;
    let mut out = Vec::with_capacity(busybox.len() + 4096);
    let mut ino = 1;
    for dir in ["bin", "proc", "sys", "dev", "tmp"] {
        ino += 1;
        newc_entry(&mut out, ino, dir, DIR, &[]);
    }
    newc_entry(&mut out, ino + 1, "bin/busybox", EXE, busybox);
    newc_entry(&mut out, ino + 2, "init", EXE, init_script(load).as_bytes());
    newc_entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

/// Writes the guest's initramfs to `dest`, with the static busybox at `busybox`.
pub fn write_initramfs(dest: &Path, busybox: &Path, load: GuestLoad) -> io::Result<()> {
    let binary = std::fs::read(busybox)?;
    let mut file = std::fs::File::create(dest)?;
    file.write_all(&initramfs(&binary, load))?;
    file.sync_all()
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
        assert!(text.contains("TRAILER!!!\0"));
        // Every header is 110 bytes of ASCII hex after the magic.
        let header = &bytes[..110];
        assert!(header[6..].iter().all(|b| b.is_ascii_hexdigit()));
    }
}
