//! `herd vm guest [DIR]`: prepares the small test guest the `vm` driver's
//! tests boot (a kernel and a busybox initramfs), so that a newcomer can run
//! `examples/vm.toml` on a fresh machine instead of hunting for images.

use std::fs::File;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use herd_actors::driver::vm::guest::{self, GuestLoad};
use serde_json::json;

use super::Context;
use crate::exit::CliError;
use crate::output::print_json;

/// Where `herd vm guest` writes when given no DIR, and what
/// `examples/vm.toml` points at. Absolute because a job spec's `kernel` and
/// `initrd` must be (the node agent that reads them runs in a directory of
/// its own), and under /tmp because anyone can write there without root and
/// a dev cluster's agents run on the same machine.
pub const DEFAULT_DIR: &str = "/tmp/herd-vm-guest";

/// Where `.ci/vm-guest.sh` unpacks a kernel, relative to herd's source tree.
const CI_KERNEL: &str = "target/vm-guest/vmlinuz";

/// The kernel command line printed with the paths (the example's): a serial
/// console for `herd alloc logs`, quiet so the guest's own lines stand out,
/// and a panic that ends QEMU instead of hanging it.
const APPEND: &str = "console=ttyS0 quiet panic=-1";

/// What to do when no kernel is found, said by every kernel error.
const KERNEL_HINT: &str = "run .ci/vm-guest.sh in herd's source tree (it fetches Debian's cloud \
     kernel to target/vm-guest/vmlinuz, found from there), or pass --kernel PATH to a kernel \
     image (bzImage) that exists";

/// Subcommands of `herd vm`.
#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// Prepare a small test guest in DIR (a kernel and a busybox initramfs)
    /// and print the `[task.config]` lines that boot it.
    Guest(GuestArgs),
}

/// Arguments of `herd vm guest`.
#[derive(Args, Debug)]
pub struct GuestArgs {
    /// Directory to write `vmlinuz` and `initrd` to, created if missing
    /// (examples/vm.toml uses the default).
    #[arg(default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    /// Kernel to copy [default: ./target/vm-guest/vmlinuz, where
    /// .ci/vm-guest.sh puts one, else the host's /boot/vmlinuz-* if readable].
    #[arg(long, env = "HERD_VM_KERNEL")]
    pub kernel: Option<PathBuf>,
    /// Static busybox for the initramfs [default: /bin/busybox, else /usr/bin/busybox].
    #[arg(long)]
    pub busybox: Option<PathBuf>,
    /// MiB of memory the guest fills and keeps rewriting.
    #[arg(long, default_value_t = 16)]
    pub working_set_mib: u32,
    /// MiB of it rewritten per second (0: an idle guest).
    #[arg(long, default_value_t = 1)]
    pub dirty_mib_per_sec: u32,
}

/// Runs a `herd vm` subcommand.
pub fn run(ctx: &Context, command: VmCommand) -> Result<(), CliError> {
    match command {
        VmCommand::Guest(args) => guest(ctx, args),
    }
}

fn guest(ctx: &Context, args: GuestArgs) -> Result<(), CliError> {
    // Everything that can be wrong with the input is checked before a file
    // is written, so a refused run leaves DIR as it was.
    if args.working_set_mib == 0 {
        return Err(CliError::input("--working-set-mib must be at least 1"));
    }
    if args.dirty_mib_per_sec > args.working_set_mib {
        return Err(CliError::input(format!(
            "--dirty-mib-per-sec {} is more than --working-set-mib {}",
            args.dirty_mib_per_sec, args.working_set_mib
        )));
    }
    let load = GuestLoad {
        working_set_mib: args.working_set_mib,
        dirty_mib_per_sec: args.dirty_mib_per_sec,
    };
    let kernel_from = find_kernel(args.kernel.as_deref())?;
    let busybox = match args.busybox {
        Some(path) if path.is_file() => path,
        Some(path) => {
            return Err(CliError::input(format!(
                "no busybox at {} (--busybox)",
                path.display()
            )))
        }
        None => guest::find_busybox().map_err(CliError::input)?,
    };

    std::fs::create_dir_all(&args.dir)
        .map_err(|e| CliError::runtime(format!("cannot create {}: {e}", args.dir.display())))?;
    let dir = std::fs::canonicalize(&args.dir)
        .map_err(|e| CliError::runtime(format!("{}: {e}", args.dir.display())))?;
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initrd");
    let (dir_text, kernel_text, initrd_text) =
        match (dir.to_str(), kernel.to_str(), initrd.to_str()) {
            (Some(d), Some(k), Some(i)) => (d.to_string(), k.to_string(), i.to_string()),
            _ => {
                return Err(CliError::input(format!(
                    "{} is not UTF-8, so it cannot be written in a job spec: choose another DIR",
                    dir.display()
                )))
            }
        };

    // DIR may be where the kernel already is (`herd vm guest target/vm-guest`).
    let same = std::fs::canonicalize(&kernel_from).ok() == std::fs::canonicalize(&kernel).ok();
    if !same {
        std::fs::copy(&kernel_from, &kernel).map_err(|e| {
            CliError::runtime(format!(
                "cannot copy {} to {}: {e}",
                kernel_from.display(),
                kernel.display()
            ))
        })?;
    }
    // The virtio disk modules `.ci/vm-guest.sh` puts beside its kernel, so
    // that a VM with a `disk` sees it (the fetched kernel has no built-in
    // virtio); a host kernel's guest goes without.
    let modules = kernel_from.parent().map(|d| d.join("modules")).filter(|d| {
        guest::VIRTIO_BLK_MODULES
            .iter()
            .all(|m| d.join(format!("{m}.ko")).is_file())
    });
    guest::write_initramfs_with_modules(&initrd, &busybox, load, modules.as_deref()).map_err(
        |e| match e {
            guest::GuestError::Io { .. } => CliError::runtime(e),
            _ => CliError::input(e),
        },
    )?;

    if ctx.json() {
        print_json(&json!({
            "dir": dir_text,
            "kernel": kernel_text,
            "initrd": initrd_text,
            "append": APPEND,
            "kernel_from": kernel_from.display().to_string(),
            "disk_modules": modules.is_some(),
            "busybox": busybox.display().to_string(),
            "working_set_mib": load.working_set_mib,
            "dirty_mib_per_sec": load.dirty_mib_per_sec,
        }));
        return Ok(());
    }
    println!("a busybox test guest in {dir_text}:");
    println!("  kernel  {kernel_text}  (from {})", kernel_from.display());
    println!(
        "  initrd  {initrd_text}  (busybox from {}; its /init fills {} MiB and rewrites {} MiB/s, printing a tick a second)",
        busybox.display(),
        load.working_set_mib,
        load.dirty_mib_per_sec
    );
    println!();
    if dir_text == DEFAULT_DIR {
        println!(
            "examples/vm.toml boots it (herd job run examples/vm.toml); in a spec of your own:"
        );
    } else {
        println!("In a job spec (driver = \"vm\"), on a node that has these files:");
    }
    println!();
    println!("[task.config]");
    println!("kernel = {}", toml_string(&kernel_text));
    println!("initrd = {}", toml_string(&initrd_text));
    println!("append = {}", toml_string(APPEND));
    Ok(())
}

/// The kernel to copy: the one given, else the one `.ci/vm-guest.sh`
/// fetched (relative to the current directory), else a readable host kernel.
fn find_kernel(given: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(path) = given {
        return match File::open(path) {
            Ok(_) if path.is_file() => Ok(path.to_path_buf()),
            Ok(_) => Err(CliError::input(format!(
                "--kernel {} is not a file: {KERNEL_HINT}",
                path.display()
            ))),
            Err(e) => Err(CliError::input(format!(
                "no kernel at {} (--kernel or HERD_VM_KERNEL: {e}): {KERNEL_HINT}",
                path.display()
            ))),
        };
    }
    let ci = PathBuf::from(CI_KERNEL);
    if ci.is_file() {
        return Ok(ci);
    }
    let mut unreadable = Vec::new();
    for path in host_kernels() {
        match File::open(&path) {
            Ok(_) => return Ok(path),
            Err(_) => unreadable.push(path.display().to_string()),
        }
    }
    let host = if unreadable.is_empty() {
        "no /boot/vmlinuz-*".to_string()
    } else {
        format!("{} not readable by this user", unreadable.join(", "))
    };
    Err(CliError::input(format!(
        "no guest kernel found (no ./{CI_KERNEL}, {host}): {KERNEL_HINT}"
    )))
}

/// The host's kernels in `/boot`: the running one first (the one this
/// distribution keeps current), then the others, newest name first.
fn host_kernels() -> Vec<PathBuf> {
    let running = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|release| PathBuf::from(format!("/boot/vmlinuz-{}", release.trim())));
    let mut others: Vec<PathBuf> = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("vmlinuz-"))
                && path.is_file()
                && Some(path) != running.as_ref()
        })
        .collect();
    others.sort();
    others.reverse();
    running
        .filter(|path| path.is_file())
        .into_iter()
        .chain(others)
        .collect()
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_as_toml_strings() {
        assert_eq!(toml_string("/tmp/a b"), "\"/tmp/a b\"");
        assert_eq!(toml_string("/tmp/a\"b\\c"), "\"/tmp/a\\\"b\\\\c\"");
    }

    #[test]
    fn a_kernel_given_that_is_not_there_is_bad_input_with_the_hint() {
        let err = find_kernel(Some(Path::new("/nonexistent/vmlinuz"))).expect_err("missing");
        assert_eq!(err.code, 2);
        assert!(
            err.message.contains("/nonexistent/vmlinuz"),
            "{}",
            err.message
        );
        assert!(err.message.contains(".ci/vm-guest.sh"), "{}", err.message);
        assert!(err.message.contains("--kernel"), "{}", err.message);
    }
}
