//! Real-VM rows of `herd bench migrate`: the test guest (a kernel and the
//! busybox initramfs of `herd vm guest`) moved by herd between the two
//! agents, then the same guest moved by QEMU alone (`qemu_alone`), with
//! the same QEMU command line, downtime limit and bandwidth. Neither side
//! has a disk: the guest needs none, and herd mirrors a local disk over
//! NBD where QEMU alone would not, so both move memory and device state
//! only.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herd_actors::driver::vm::guest::{find_busybox, write_initramfs, GuestLoad};
use herd_actors::driver::vm::qemu;
use herd_api::driver_settings;
use herd_api::resources::MIB;
use herd_api::spec_file::parse_job_spec;
use herd_api::vm::VmSettings;

use super::breakdown;
use super::herd_side::{HerdCluster, LogTail, Probes};
use super::qemu_alone;
use super::report::{HerdFigures, Row};
use super::Limits;
use crate::exit::CliError;

/// Where `.ci/vm-guest.sh` puts the guest kernel, relative to the source
/// tree (the bench is run from there, as docs/benchmarks.md says).
const CI_KERNEL: &str = "target/vm-guest/vmlinuz";
/// The guest's console line that shows it runs its load (one a second).
pub const TICK: &str = "herd-guest: tick";
/// Ticks to wait for before a move: the working set is in place and the
/// dirtying loop has begun.
const READY_TICKS: usize = 2;
/// How long a guest may take to boot and tick (TCG on a busy host).
const BOOT_WAIT: Duration = Duration::from_secs(120);

/// What a VM row moves: the guest's size and load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmCase {
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// What the guest does meanwhile.
    pub load: GuestLoad,
}

impl VmCase {
    /// A guest of `memory_mib` whose working set is a quarter of its
    /// memory, rewritten at `dirty_mib_per_sec` (0: idle).
    pub fn new(memory_mib: u64, dirty_mib_per_sec: u32) -> Self {
        let working_set_mib = u32::try_from(memory_mib / 4).unwrap_or(u32::MAX).max(1);
        Self {
            memory_mib,
            load: GuestLoad {
                working_set_mib,
                dirty_mib_per_sec: dirty_mib_per_sec.min(working_set_mib),
            },
        }
    }

    /// The load column: `idle` or `dirty N MiB/s`, with the working set.
    pub fn load_text(&self) -> String {
        let GuestLoad {
            working_set_mib: ws,
            dirty_mib_per_sec: rate,
        } = self.load;
        if rate == 0 {
            format!("idle (ws {ws} MiB)")
        } else {
            format!("dirty {rate} MiB/s (ws {ws} MiB)")
        }
    }
}

/// The kernel and busybox the guest is built from, found or refused with
/// the reason (then the `vm` rows are skipped).
#[derive(Debug, Clone)]
pub struct GuestParts {
    /// The guest kernel, whose directory the agents must allow.
    pub kernel: PathBuf,
    busybox: PathBuf,
}

impl GuestParts {
    /// The kernel (`--kernel`, `HERD_VM_KERNEL`, else `./target/vm-guest`),
    /// a static busybox and QEMU, or why the `vm` rows cannot run here.
    pub fn find(kernel: Option<&Path>) -> Result<Self, String> {
        if qemu::find_in_path(qemu::QEMU).is_none() {
            return Err(format!(
                "{} is not installed (apt-get install qemu-system-x86)",
                qemu::QEMU
            ));
        }
        let kernel = kernel.map_or_else(|| PathBuf::from(CI_KERNEL), Path::to_path_buf);
        if !kernel.is_file() {
            return Err(format!(
                "no guest kernel at {} (run .ci/vm-guest.sh in herd's source tree, or pass --kernel)",
                kernel.display()
            ));
        }
        // A job spec's kernel path must be absolute: the agent runs elsewhere.
        let kernel =
            std::fs::canonicalize(&kernel).map_err(|e| format!("{}: {e}", kernel.display()))?;
        let busybox = find_busybox().map_err(|e| e.to_string())?;
        Ok(Self { kernel, busybox })
    }
}

/// The job spec of one VM row, which herd runs and whose QEMU command line
/// QEMU alone reuses.
fn spec_toml(job: &str, case: &VmCase, kernel: &Path, initrd: &Path, accel: &str) -> String {
    format!(
        "name = {job:?}\ntype = \"service\"\n[task]\ndriver = \"vm\"\n[task.config]\n\
         kernel = {kernel:?}\ninitrd = {initrd:?}\naccel = {accel:?}\n\
         append = \"console=ttyS0 quiet panic=-1\"\n\
         [task.resources]\ncpu = 1000\nmemory = \"{mib}MiB\"\n",
        kernel = kernel.display().to_string(),
        initrd = initrd.display().to_string(),
        mib = case.memory_mib,
    )
}

/// The QEMU settings herd's driver derives from `toml`, for QEMU alone.
fn settings_of(toml: &str) -> Result<VmSettings, CliError> {
    let spec = parse_job_spec(toml, "bench job").map_err(CliError::runtime)?;
    driver_settings::vm(&spec.task).map_err(|e| CliError::runtime(e.to_string()))
}

/// Waits until the console at `stdout` shows the guest ticking
/// [`READY_TICKS`] times.
pub async fn guest_ready(stdout: &Path) -> Result<(), CliError> {
    let mut tail = LogTail::from_start(stdout);
    let mut ticks = 0;
    let started = Instant::now();
    loop {
        ticks += tail.new_lines().iter().filter(|l| l.contains(TICK)).count();
        if ticks >= READY_TICKS {
            return Ok(());
        }
        if started.elapsed() > BOOT_WAIT {
            return Err(CliError::runtime(format!(
                "the guest did not tick within {BOOT_WAIT:?} (console: {})",
                stdout.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One real-VM row: herd's move, then QEMU alone's, of the same guest.
pub async fn row(
    cluster: &HerdCluster,
    parts: &GuestParts,
    scratch: &Path,
    case: &VmCase,
    limits: &Limits,
    run: u32,
) -> Row {
    let mut row = Row {
        kind: "vm",
        size_bytes: case.memory_mib * MIB,
        load: case.load_text(),
        run,
        downtime_limit_ms: limits.downtime_limit_ms(),
        herd: None,
        baseline: None,
        note: None,
    };
    let dir = scratch.join(format!(
        "vm-{}-{}-{run}",
        case.memory_mib, case.load.dirty_mib_per_sec
    ));
    let prepared = prepare(parts, &dir, case, limits, run);
    let (toml, job) = match prepared {
        Ok(p) => p,
        Err(e) => {
            row.note = Some(format!("not measured: {}", e.message));
            return row;
        }
    };
    let mut notes = Vec::new();
    match herd_move(cluster, &toml, &job, limits).await {
        Ok(figures) => row.herd = Some(figures),
        Err(e) => notes.push(format!("herd: {}", e.message)),
    }
    match settings_of(&toml) {
        Ok(settings) => match qemu_alone::measure(&dir.join("qemu-alone"), &settings, limits).await
        {
            Ok(figures) => row.baseline = Some(figures),
            Err(e) => notes.push(format!("QEMU alone: {}", e.message)),
        },
        Err(e) => notes.push(format!("QEMU alone: {}", e.message)),
    }
    if !notes.is_empty() {
        row.note = Some(notes.join("; "));
    }
    row
}

/// Builds the row's guest and job spec; returns the spec and job name.
fn prepare(
    parts: &GuestParts,
    dir: &Path,
    case: &VmCase,
    limits: &Limits,
    run: u32,
) -> Result<(String, String), CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::runtime(format!("{}: {e}", dir.display())))?;
    let initrd = dir.join("initrd");
    write_initramfs(&initrd, &parts.busybox, case.load).map_err(CliError::runtime)?;
    let job = format!(
        "bench-vm-{}-{}-{run}",
        case.memory_mib, case.load.dirty_mib_per_sec
    );
    Ok((
        spec_toml(&job, case, &parts.kernel, &initrd, &limits.accel),
        job,
    ))
}

/// Runs the VM under herd, waits for its guest, moves it, and stops it.
async fn herd_move(
    cluster: &HerdCluster,
    toml: &str,
    job: &str,
    limits: &Limits,
) -> Result<HerdFigures, CliError> {
    cluster.submit(toml).await?;
    let placed = cluster.running(job).await?;
    let result: Result<HerdFigures, CliError> = async {
        guest_ready(
            &cluster
                .alloc_dir(&placed.node, &placed.alloc)
                .join("stdout.log"),
        )
        .await?;
        live_move(cluster, &placed, limits).await
    }
    .await;
    let finished = cluster.finish(job, &placed.alloc).await;
    let figures = result?;
    finished?;
    Ok(figures)
}

/// Milliseconds from `from` to `to`, when both happened.
pub fn gap_ms(from: Option<Instant>, to: Option<Instant>) -> Option<u64> {
    let (from, to) = (from?, to?);
    Some(u64::try_from(to.saturating_duration_since(from).as_millis()).unwrap_or(u64::MAX))
}

/// Moves a live-moving workload (a VM, real or simulated) of `placed` and
/// reads herd's figures: the record's, and when the target agent said the
/// workload runs there (it logs "live migration arrived" once it let the
/// moved workload run).
pub async fn live_move(
    cluster: &HerdCluster,
    placed: &super::herd_side::Placed,
    limits: &Limits,
) -> Result<HerdFigures, CliError> {
    let mut target_log = LogTail::from_end(&cluster.agent_log(placed.other_node()));
    let mut resumed = || target_log.saw("live migration arrived");
    let (m, timeline) = cluster
        .migrate(
            placed,
            limits.downtime_limit,
            limits.bandwidth,
            Probes {
                stopped: None,
                resumed: &mut resumed,
            },
        )
        .await?;
    let logs = [
        cluster.agent_log(&placed.node),
        cluster.agent_log(placed.other_node()),
    ];
    let breakdown = breakdown::read(
        &[logs[0].as_path(), logs[1].as_path()],
        &placed.alloc,
        timeline.requested_us,
        Some(m.started_at_ms),
        m.ended_at_ms,
    );
    Ok(HerdFigures {
        total_ms: m.total_ms,
        downtime_ms: m.downtime_ms,
        record_downtime_ms: m.downtime_ms,
        bytes: m.bytes,
        rounds: m.rounds,
        resumed_after_ms: gap_ms(timeline.switching, timeline.resumed),
        phases: timeline.phases,
        breakdown: Some(breakdown),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_dirties_a_quarter_of_its_memory_at_most_and_names_its_load() {
        let idle = VmCase::new(128, 0);
        assert_eq!(idle.load.working_set_mib, 32);
        assert_eq!(idle.load_text(), "idle (ws 32 MiB)");
        let dirty = VmCase::new(512, 16);
        assert_eq!(dirty.load_text(), "dirty 16 MiB/s (ws 128 MiB)");
        // A rate above the working set is capped to it.
        assert_eq!(VmCase::new(64, 100).load.dirty_mib_per_sec, 16);
    }

    #[test]
    fn the_spec_is_a_valid_vm_job_whose_settings_qemu_alone_reuses() {
        let toml = spec_toml(
            "bench-vm-256-0-1",
            &VmCase::new(256, 0),
            Path::new("/k/vmlinuz"),
            Path::new("/i/initrd"),
            "tcg",
        );
        let settings = settings_of(&toml).expect("valid spec");
        assert_eq!((settings.memory_mib, settings.vcpus), (256, 1));
        assert_eq!(settings.kernel.as_deref(), Some("/k/vmlinuz"));
        assert_eq!(settings.disk_size, None, "no disk on either side");
        let spec = parse_job_spec(&toml, "t").expect("valid spec");
        assert_eq!(spec.task.config["accel"], "tcg");
    }

    #[test]
    fn gaps_need_both_ends() {
        let now = Instant::now();
        let later = now + Duration::from_millis(25);
        assert_eq!(gap_ms(Some(now), Some(later)), Some(25));
        assert_eq!(gap_ms(None, Some(later)), None);
        assert_eq!(gap_ms(Some(later), Some(now)), Some(0));
    }
}
