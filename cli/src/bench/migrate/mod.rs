//! `herd bench migrate`: migrations measured end to end through real herd
//! processes (one coordinator and two node agents on loopback, started
//! from this binary), per kind and size: real VMs (`vm`) beside the same
//! VM moved by QEMU alone, DL checkpoints (`dljob`), and simulated VMs
//! (`simvm`) where their live moves work. Prints a Markdown table for
//! docs/benchmarks.md, or the rows as JSON with `-o json`.

mod breakdown;
mod dljob;
mod herd_side;
mod qemu_alone;
mod report;
mod simvm;
mod vm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use herd_actors::driver::vm::qemu;
use herd_api::resources::{display_memory, parse_memory, MIB};

use crate::cmd::migration::parse_bandwidth;
use crate::cmd::Context;
use crate::exit::CliError;
use crate::output::print_json;
use herd_side::HerdCluster;
use report::Row;

/// What kind of workload a row moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Real QEMU VMs, beside QEMU alone.
    Vm,
    /// `herd toy-train` with a padded checkpoint directory.
    Dljob,
    /// Simulated VMs (`herd sim-vm`).
    Simvm,
}

impl Kind {
    /// The sizes measured when `--sizes` names none for this kind.
    fn default_sizes(self) -> Vec<u64> {
        match self {
            Kind::Vm => vec![128 * MIB, 256 * MIB, 512 * MIB],
            Kind::Dljob => vec![10 * MIB, 100 * MIB],
            Kind::Simvm => vec![1 << 30, 4 << 30, 16 << 30],
        }
    }
}

/// What a real VM's guest does while it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Load {
    /// Its working set written once, then nothing.
    Idle,
    /// Its working set rewritten at `--dirty-mib-per-sec`.
    Dirty,
}

/// Flags of `herd bench migrate`.
#[derive(Args, Debug)]
pub struct MigrateBenchArgs {
    /// Kinds to measure.
    #[arg(long, value_delimiter = ',', default_value = "vm,dljob,simvm")]
    kinds: Vec<Kind>,
    /// Sizes, each `SIZE` (every kind) or `KIND:SIZE` (that kind), e.g.
    /// `vm:128MiB,dljob:10MiB` [default: vm 128/256/512 MiB, dljob 10/100
    /// MiB, simvm 1/4/16 GiB].
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<String>,
    /// Real VMs' guest loads.
    #[arg(long, value_delimiter = ',', default_value = "idle,dirty")]
    loads: Vec<Load>,
    /// MiB/s a dirtying guest rewrites (of a working set of a quarter of
    /// its memory).
    #[arg(long, default_value_t = 16)]
    dirty_mib_per_sec: u32,
    /// Simulated VMs' dirty rates, bytes per second (`0`, `64MiB/s`...).
    #[arg(long, value_delimiter = ',', default_value = "0,64MiB/s")]
    simvm_dirty_rates: Vec<String>,
    /// The downtime limit every migration is given (herd and QEMU alone).
    #[arg(long, default_value = "300ms", value_parser = herd_api::duration::parse_duration)]
    downtime_limit: Duration,
    /// A bandwidth cap for every migration (e.g. 1GiB/s); none by default.
    #[arg(long, value_parser = parse_bandwidth)]
    bandwidth: Option<u64>,
    /// Measurements per kind, size and load (each its own row).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Guest kernel [default: ./target/vm-guest/vmlinuz, from .ci/vm-guest.sh].
    #[arg(long, env = "HERD_VM_KERNEL")]
    kernel: Option<PathBuf>,
    /// The VMs' `accel` setting: `tcg` (emulation, as CI runs them: the
    /// default, since a nested /dev/kvm may open and still not run a guest),
    /// `kvm`, or `auto` (KVM where /dev/kvm opens).
    #[arg(long, default_value = "tcg")]
    accel: String,
}

/// The settings every migration of a run shares.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `--downtime-limit`.
    pub downtime_limit: Duration,
    /// `--bandwidth`, bytes per second.
    pub bandwidth: Option<u64>,
    /// `--accel`.
    pub accel: String,
}

impl Limits {
    /// The downtime limit in whole milliseconds.
    pub fn downtime_limit_ms(&self) -> u64 {
        u64::try_from(self.downtime_limit.as_millis()).unwrap_or(u64::MAX)
    }

    #[cfg(test)]
    fn for_test() -> Self {
        Limits {
            downtime_limit: Duration::from_millis(300),
            bandwidth: None,
            accel: "tcg".into(),
        }
    }
}

/// The sizes `--sizes` gives `kind`, or its defaults when it names none.
fn sizes_for(kind: Kind, items: &[String]) -> Result<Vec<u64>, String> {
    let mut sizes = Vec::new();
    for item in items {
        let (applies, size) = match item.split_once(':') {
            Some((name, size)) => {
                let named = Kind::from_str(name.trim(), true).map_err(|_| {
                    format!("--sizes {item:?}: unknown kind {name:?} (vm, dljob or simvm)")
                })?;
                (named == kind, size)
            }
            None => (true, item.as_str()),
        };
        let bytes = parse_memory(size).map_err(|e| format!("--sizes {item:?}: {e}"))?;
        if bytes < MIB {
            return Err(format!("--sizes {item:?}: at least 1MiB"));
        }
        if applies {
            sizes.push(bytes);
        }
    }
    Ok(if sizes.is_empty() {
        kind.default_sizes()
    } else {
        sizes
    })
}

/// `--simvm-dirty-rates`: `0` or a rate.
fn dirty_rates(items: &[String]) -> Result<Vec<u64>, String> {
    items
        .iter()
        .map(|item| match item.trim() {
            "0" => Ok(0),
            rate => parse_bandwidth(rate).map_err(|e| format!("--simvm-dirty-rates: {e}")),
        })
        .collect()
}

/// Prints one row's figures as it is measured (the table comes at the end).
fn progress(row: &Row) {
    let herd = row.herd.as_ref().map_or("-".to_string(), |h| {
        format!(
            "total {} ms, downtime {} ms",
            h.total_ms,
            h.downtime_ms.map_or("-".to_string(), |d| d.to_string())
        )
    });
    let base = row.baseline.as_ref().map_or(String::new(), |b| {
        format!(
            "; QEMU alone: total {} ms, downtime {} ms",
            b.total_ms, b.downtime_ms
        )
    });
    eprintln!(
        "{} {} {} (run {}): herd {herd}{base}{}",
        row.kind,
        display_memory(row.size_bytes),
        row.load,
        row.run,
        row.note
            .as_ref()
            .map_or(String::new(), |n| format!(" [{n}]"))
    );
}

/// Runs the benchmark.
pub async fn run(ctx: &Context, args: MigrateBenchArgs) -> Result<(), CliError> {
    if args.repeat == 0 {
        return Err(CliError::input("--repeat must be at least 1"));
    }
    if args.downtime_limit.is_zero() {
        return Err(CliError::input("--downtime-limit must be at least 1ms"));
    }
    let mut sizes = Vec::new();
    for kind in &args.kinds {
        sizes.push((
            *kind,
            sizes_for(*kind, &args.sizes).map_err(CliError::input)?,
        ));
    }
    let simvm_rates = dirty_rates(&args.simvm_dirty_rates).map_err(CliError::input)?;
    let limits = Limits {
        downtime_limit: args.downtime_limit,
        bandwidth: args.bandwidth,
        accel: args.accel.clone(),
    };
    let exe = std::env::current_exe()
        .map_err(|e| CliError::runtime(format!("cannot find the herd binary: {e}")))?;
    let scratch = tempfile::Builder::new()
        .prefix("herd-bench-migrate-")
        .tempdir()
        .map_err(|e| CliError::runtime(format!("cannot create a scratch directory: {e}")))?;
    let vm_parts = sizes
        .iter()
        .any(|(kind, _)| *kind == Kind::Vm)
        .then(|| vm::GuestParts::find(args.kernel.as_deref()));
    // The agents confine the paths a job names (docs/security.md, "Driver
    // confinement"): the bench's jobs name files of its scratch directory
    // and the guest kernel.
    let mut allowed = vec![scratch.path().to_path_buf()];
    if let Some(Ok(parts)) = &vm_parts {
        allowed.extend(parts.kernel.parent().map(Path::to_path_buf));
    }
    let cluster = HerdCluster::start(&exe, &allowed).await?;

    let mut rows = Vec::new();
    let mut push = |row: Row| {
        progress(&row);
        rows.push(row);
    };
    for (kind, sizes) in &sizes {
        match kind {
            Kind::Vm => {
                let parts = match &vm_parts {
                    Some(parts) => parts.clone(),
                    None => vm::GuestParts::find(args.kernel.as_deref()),
                };
                if let Err(why) = &parts {
                    eprintln!("skipping the vm rows: {why}");
                }
                for &size in sizes {
                    for load in &args.loads {
                        let rate = match load {
                            Load::Idle => 0,
                            Load::Dirty => args.dirty_mib_per_sec,
                        };
                        let case = vm::VmCase::new(size / MIB, rate);
                        for run in 1..=args.repeat {
                            let row = match &parts {
                                Ok(parts) => {
                                    vm::row(&cluster, parts, scratch.path(), &case, &limits, run)
                                        .await
                                }
                                Err(why) => Row {
                                    kind: "vm",
                                    size_bytes: size,
                                    load: case.load_text(),
                                    run,
                                    downtime_limit_ms: limits.downtime_limit_ms(),
                                    herd: None,
                                    baseline: None,
                                    note: Some(format!("skipped: {why}")),
                                },
                            };
                            push(row);
                        }
                    }
                }
            }
            Kind::Dljob => {
                for &size in sizes {
                    for run in 1..=args.repeat {
                        push(dljob::row(&cluster, size, &limits, run).await);
                    }
                }
            }
            Kind::Simvm => {
                eprintln!("checking that simulated VMs move live here (a trial move)");
                let available = simvm::available(&cluster, &limits).await;
                if let Err(why) = &available {
                    eprintln!("simvm rows not available: {why}");
                }
                for &size in sizes {
                    for &rate in &simvm_rates {
                        let case = simvm::SimVmCase {
                            size_bytes: size,
                            dirty_bytes_per_sec: rate,
                        };
                        for run in 1..=args.repeat {
                            push(match &available {
                                Ok(()) => simvm::row(&cluster, &case, &limits, run).await,
                                Err(why) => simvm::unavailable(&case, &limits, run, why),
                            });
                        }
                    }
                }
            }
        }
    }
    drop(cluster);

    if ctx.json() {
        print_json(&report::json_rows(&rows));
        return Ok(());
    }
    let accel = match args.accel.as_str() {
        "auto" if qemu::kvm_usable() => "auto (KVM)".to_string(),
        "auto" => "auto (TCG: /dev/kvm does not open)".to_string(),
        other => other.to_string(),
    };
    println!(
        "1 coordinator and 2 node agents on loopback; downtime limit {} ms; bandwidth {}; VMs: accel {accel}, 1 vCPU, no disk on either side (nothing mirrored), query-migrate every 5 ms on both sides; herd figures from the migration record (total: start request to switch-over), QEMU alone's from query-migrate (total-time, downtime; setup: starting the target QEMU until it listens; start+move: setup plus migrate until completed seen); \"guest paused\": the source VM's stop to the target's cont, from the agents' timing marks; \"resumed +ms\": from the record seen in switching to the workload seen running on the target; ratio: herd total / QEMU total; dljob downtime: trainer stopped to its first step on the target",
        limits.downtime_limit_ms(),
        limits
            .bandwidth
            .map_or("uncapped".to_string(), |b| format!("{}/s", display_memory(b))),
    );
    println!();
    print!("{}", report::markdown(&rows));
    let lines = report::breakdown_lines(&rows);
    if !lines.is_empty() {
        println!();
        println!("Where herd's time went (ms after the start request):");
        println!();
        print!("{lines}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sizes_apply_to_their_kind_or_to_all_and_default_otherwise() {
        let given = items(&["vm:256MiB", "dljob:10MiB", "vm:1GiB"]);
        assert_eq!(sizes_for(Kind::Vm, &given), Ok(vec![256 * MIB, 1 << 30]));
        assert_eq!(sizes_for(Kind::Dljob, &given), Ok(vec![10 * MIB]));
        assert_eq!(
            sizes_for(Kind::Simvm, &given),
            Ok(Kind::Simvm.default_sizes())
        );
        assert_eq!(
            sizes_for(Kind::Dljob, &items(&["64MiB"])),
            Ok(vec![64 * MIB])
        );
        let bad = sizes_for(Kind::Vm, &items(&["disk:1GiB"])).expect_err("unknown kind");
        assert!(bad.contains("\"disk\""), "{bad}");
        let bad = sizes_for(Kind::Vm, &items(&["vm:lots"])).expect_err("bad size");
        assert!(bad.contains("vm:lots"), "{bad}");
        assert!(sizes_for(Kind::Vm, &items(&["12"])).is_err(), "under 1 MiB");
    }

    #[test]
    fn dirty_rates_take_zero_or_a_rate() {
        assert_eq!(
            dirty_rates(&items(&["0", "64MiB/s"])),
            Ok(vec![0, 64 * MIB])
        );
        assert!(dirty_rates(&items(&["fast"])).is_err());
    }
}
