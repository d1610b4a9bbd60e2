//! Live migration of a real QEMU VM (TCG) between two `vm` driver
//! instances on this host, as two agents on loopback drive it: the target
//! readied (`prepare_incoming`), the source moved (`migrate_out`, its local
//! disk mirrored over NBD), the source stopped, the target finished. The
//! guest writes a pattern to its disk at boot, rewrites a counter on it and
//! dirties memory every second, and reads the pattern back from the disk
//! (its page cache dropped) on each tick line: so the console shows that the
//! same guest, not a rebooted one, runs on with its disk on the target.
//! Skipped, with a message, where QEMU, qemu-img, busybox or the kernel are
//! missing, except in CI (`CI=true`), where that fails (see `skip_or_fail`).

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::qemu::{
    console, guest_initrd, guest_parts, qemu_pids, spawn_vm_move, start_vm_agents, tick_uptimes,
    vm_job_spec, Reaper,
};
use common::*;
use herd_actors::driver::live::{IncomingEndpoints, MoveLimits, MoveProgress};
use herd_actors::driver::vm::guest::DISK_PROBE_ARG;
use herd_actors::driver::vm::migrate::{NBD_ENDPOINT, NBD_EXPORT};
use herd_actors::driver::vm::{qemu, VmDriver};
use herd_actors::driver::{Driver, WorkloadHandle, WorkloadSpec, WorkloadState};
use herd_api::job::TaskSpec;
use herd_api::resources::Resources;

const PATIENCE: Duration = Duration::from_secs(60);
const GRACE: Duration = Duration::from_secs(4);
const PATTERN: &str = "moved-7f3a";

/// A 128 MiB VM with a fresh 64 MiB disk, its guest told to probe it.
fn spec(alloc_dir: PathBuf, generation: u64, kernel: &Path, initrd: &Path) -> WorkloadSpec {
    let config = BTreeMap::from([
        ("kernel".to_string(), kernel.display().to_string()),
        ("initrd".to_string(), initrd.display().to_string()),
        ("accel".to_string(), "tcg".to_string()),
        ("disk_size".to_string(), "64MiB".to_string()),
        (
            "append".to_string(),
            format!("console=ttyS0 quiet panic=-1 {DISK_PROBE_ARG}={PATTERN}"),
        ),
    ]);
    WorkloadSpec {
        alloc_id: "vm-move".to_string(),
        generation,
        job: "vm-move".to_string(),
        task: TaskSpec {
            driver: "vm".to_string(),
            command: None,
            args: vec![],
            env: BTreeMap::new(),
            workdir: None,
            resources: Resources {
                cpu_millis: 1000,
                memory_bytes: 128 << 20,
                gpus: 0,
                gpu_model: None,
            },
            config,
        },
        alloc_dir,
        env: BTreeMap::new(),
    }
}

/// Makes a VM spec: its allocation directory, generation, kernel, initrd.
type MakeSpec = fn(PathBuf, u64, &Path, &Path) -> WorkloadSpec;

/// Two agents' `vm` drivers on this host, each with its own directory,
/// and one allocation's specs on each (one generation further on the
/// target). The reaper kills what a failed test left running before the
/// directory goes.
struct DriverPair {
    _reaper: Reaper,
    dir: tempfile::TempDir,
    source: Arc<dyn Driver>,
    target: Arc<dyn Driver>,
    src_dir: PathBuf,
    dst_dir: PathBuf,
    src_spec: WorkloadSpec,
    dst_spec: WorkloadSpec,
}

impl DriverPair {
    /// None (skipped with a message, or failed in CI) where the guest's
    /// parts are missing.
    fn new(make: MakeSpec) -> Option<Self> {
        let parts = match guest_parts() {
            Ok(parts) => parts,
            Err(why) => {
                skip_or_fail(&why);
                return None;
            }
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let initrd = guest_initrd(dir.path(), &parts);
        let src_dir = dir.path().join("src/vm-move");
        let dst_dir = dir.path().join("dst/vm-move");
        Some(Self {
            _reaper: Reaper(dir.path().to_path_buf()),
            source: Arc::new(VmDriver::new(herd_bin())),
            target: Arc::new(VmDriver::new(herd_bin())),
            src_spec: make(src_dir.clone(), 1, &parts.kernel, &initrd),
            dst_spec: make(dst_dir.clone(), 2, &parts.kernel, &initrd),
            src_dir,
            dst_dir,
            dir,
        })
    }
}

fn reports_len(reports: &Mutex<Vec<MoveProgress>>) -> usize {
    reports.lock().map_or(0, |r| r.len())
}

/// One tick line: the guest's uptime and what its disk's first sector read.
#[derive(Debug, Clone, PartialEq)]
struct Tick {
    uptime: f64,
    disk: String,
}

fn ticks(text: &str) -> Vec<Tick> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("herd-guest: tick ")?;
            let (uptime, disk) = rest.split_once(" disk ")?;
            Some(Tick {
                uptime: uptime.trim().parse().ok()?,
                disk: disk.trim().to_string(),
            })
        })
        .collect()
}

fn expected_disk() -> String {
    format!("herd-disk:{PATTERN}")
}

/// The first two sectors of a qcow2 disk, read on the host (the VM stopped).
fn disk_head(disk: &Path, scratch: &Path) -> Vec<u8> {
    let raw = scratch.join("head.raw");
    let out = std::process::Command::new(qemu::QEMU_IMG)
        .args(["dd", "-f", "qcow2", "-O", "raw", "bs=512", "count=2"])
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", raw.display()))
        .output()
        .expect("run qemu-img dd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&raw).expect("raw head")
}

/// The text at the start of `sector` (up to its first newline).
fn sector_text(bytes: &[u8], sector: usize) -> String {
    let sector = bytes.get(sector * 512..(sector + 1) * 512).unwrap_or(&[]);
    let end = sector.iter().position(|b| *b == b'\n').unwrap_or(0);
    String::from_utf8_lossy(&sector[..end]).to_string()
}

/// Starts the source VM and waits until its guest wrote its disk and ticks.
async fn booted_source(driver: &dyn Driver, spec: &WorkloadSpec) -> WorkloadHandle {
    let handle = driver.start(spec).await.expect("start the source VM");
    let dir = spec.alloc_dir.clone();
    until("the guest to write its disk", PATIENCE, || {
        console(&dir)
            .contains(&format!("herd-guest: disk wrote {}", expected_disk()))
            .then_some(())
    })
    .await;
    until("the guest to tick, reading its disk", PATIENCE, || {
        let ticks = ticks(&console(&dir));
        (ticks.len() >= 2 && ticks.iter().all(|t| t.disk == expected_disk())).then_some(())
    })
    .await;
    handle
}

fn assert_endpoints(endpoints: &IncomingEndpoints) {
    assert!(endpoints.main.starts_with("127.0.0.1:"), "{endpoints:?}");
    assert!(
        endpoints
            .extra
            .get(NBD_ENDPOINT)
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "the disk is exported: {endpoints:?}"
    );
    assert!(endpoints.extra.contains_key(NBD_EXPORT), "{endpoints:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_moves_live_with_its_disk_and_its_guest_runs_on() {
    let Some(pair) = DriverPair::new(spec) else {
        return;
    };
    let DriverPair {
        dir,
        source,
        target,
        src_dir,
        dst_dir,
        src_spec,
        dst_spec,
        ..
    } = &pair;

    let src = booted_source(source.as_ref(), src_spec).await;
    let (dst, endpoints) = target
        .prepare_incoming(dst_spec)
        .await
        .expect("prepare the target");
    assert_endpoints(&endpoints);
    assert_eq!(
        target.state(&dst).await.expect("target state"),
        WorkloadState::Paused,
        "the target waits for the VM"
    );

    let reports: Mutex<Vec<MoveProgress>> = Mutex::new(Vec::new());
    let sink = |p: MoveProgress| reports.lock().expect("reports").push(p);
    let limits = MoveLimits {
        downtime_limit: Duration::from_millis(300),
        bandwidth_bytes_per_sec: None,
        deadline: Duration::from_secs(120),
    };
    let stats = source
        .migrate_out(&src, &endpoints, &limits, &sink)
        .await
        .expect("migrate out");
    eprintln!(
        "moved: {stats:?}, {} progress reports",
        reports_len(&reports)
    );
    // At least the guest's kernel, initramfs and working set went over.
    assert!(stats.bytes > 8 << 20, "{stats:?}");
    assert!(stats.rounds >= 1, "{stats:?}");
    assert!(stats.total_ms >= stats.downtime_ms, "{stats:?}");
    let reports = reports.lock().expect("reports").clone();
    assert!(
        reports.windows(2).all(|w| w[0].bytes <= w[1].bytes),
        "progress goes forward: {reports:?}"
    );
    assert_eq!(
        source.state(&src).await.expect("source state"),
        WorkloadState::Paused,
        "the source handed the VM over and waits"
    );
    let before = ticks(&console(src_dir));
    let last_on_source = before.last().expect("source ticks").uptime;

    // The switch-over: the source stopped, then the target let run.
    let exit = source.stop(&src, GRACE).await.expect("stop the source");
    assert!(exit.code.is_some() || exit.signal.is_some(), "{exit:?}");
    assert!(
        qemu_pids(&src_dir.display().to_string()).is_empty(),
        "no source QEMU after stop"
    );
    target
        .finish_incoming(&dst)
        .await
        .expect("finish on the target");
    assert_eq!(
        target.state(&dst).await.expect("target state"),
        WorkloadState::Running
    );

    // The same guest runs on: its uptime goes on from the source's, it did
    // not boot again, and it reads its pattern from the target's disk.
    let after = until("the guest to tick on the target", PATIENCE, || {
        let ticks = ticks(&console(dst_dir));
        (ticks.len() >= 3).then_some(ticks)
    })
    .await;
    let text = console(dst_dir);
    assert!(!text.contains("herd-guest: up"), "no reboot: {text}");
    assert!(
        after[0].uptime > last_on_source,
        "uptime goes on ({last_on_source} on the source): {after:?}"
    );
    assert!(
        after.iter().all(|t| t.disk == expected_disk()),
        "the disk moved: {after:?}"
    );

    let exit = target.stop(&dst, GRACE).await.expect("stop the target");
    assert!(exit.code.is_some() || exit.signal.is_some(), "{exit:?}");
    assert!(qemu_pids(&dir.path().display().to_string()).is_empty());
    // On the host, the target's disk holds the pattern, and the counter the
    // guest kept writing after the move: past every tick the source saw.
    let head = disk_head(&dst_dir.join(qemu::FRESH_DISK), dir.path());
    assert_eq!(sector_text(&head, 0), expected_disk());
    let counter: usize = sector_text(&head, 1)
        .strip_prefix("tick ")
        .and_then(|n| n.parse().ok())
        .expect("a tick counter on the disk");
    assert!(
        counter > before.len(),
        "written on the target: tick {counter}, {} ticks on the source",
        before.len()
    );
}

/// Waits until the source's guest ticks again after `seen` ticks, and
/// checks it runs here.
async fn runs_on(driver: &dyn Driver, handle: &WorkloadHandle, dir: &Path, seen: usize) {
    until("the source's guest to tick again", PATIENCE, || {
        (ticks(&console(dir)).len() > seen + 1).then_some(())
    })
    .await;
    assert_eq!(
        driver.state(handle).await.expect("source state"),
        WorkloadState::Running
    );
}

/// Stops a target that never took over, and checks no QEMU is left there.
async fn stop_target(driver: &dyn Driver, handle: &WorkloadHandle, dir: &Path) {
    driver.stop(handle, GRACE).await.expect("stop the target");
    assert!(matches!(
        driver.state(handle).await.expect("target state"),
        WorkloadState::Exited(_)
    ));
    assert!(
        qemu_pids(&dir.display().to_string()).is_empty(),
        "no target QEMU left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_move_leaves_the_vm_running_where_it_was() {
    let Some(pair) = DriverPair::new(spec) else {
        return;
    };
    let DriverPair {
        dir,
        source,
        target,
        src_dir,
        dst_dir,
        src_spec,
        dst_spec,
        ..
    } = &pair;
    let src = booted_source(source.as_ref(), src_spec).await;
    // 1 MiB/s: the guest's memory takes far longer than either attempt.
    let slow = MoveLimits {
        downtime_limit: Duration::from_millis(300),
        bandwidth_bytes_per_sec: Some(1 << 20),
        deadline: Duration::from_secs(3),
    };

    // A move past its deadline gives up by itself.
    let (dst, endpoints) = target
        .prepare_incoming(dst_spec)
        .await
        .expect("prepare the target");
    assert_endpoints(&endpoints);
    let err = source
        .migrate_out(&src, &endpoints, &slow, &|_| {})
        .await
        .expect_err("past its deadline");
    assert!(err.to_string().contains("deadline"), "{err}");
    runs_on(
        source.as_ref(),
        &src,
        src_dir,
        ticks(&console(src_dir)).len(),
    )
    .await;
    stop_target(target.as_ref(), &dst, dst_dir).await;

    // A move cancelled midway, the target readied again in the same place.
    let (dst, endpoints) = target
        .prepare_incoming(dst_spec)
        .await
        .expect("prepare the target again");
    let sent = Arc::new(AtomicU64::new(0));
    let moving = {
        let (source, src, sent) = (source.clone(), src.clone(), sent.clone());
        let limits = MoveLimits {
            deadline: Duration::from_secs(600),
            ..slow
        };
        tokio::spawn(async move {
            let sink = |p: MoveProgress| {
                sent.fetch_max(p.bytes, Ordering::Relaxed);
            };
            source.migrate_out(&src, &endpoints, &limits, &sink).await
        })
    };
    until("the move to send its first MiB", PATIENCE, || {
        (sent.load(Ordering::Relaxed) > 1 << 20).then_some(())
    })
    .await;
    let seen = ticks(&console(src_dir)).len();
    source.cancel_out(&src).await.expect("cancel the move");
    let result = moving.await.expect("the move's task");
    assert!(result.is_err(), "a cancelled move fails: {result:?}");
    runs_on(source.as_ref(), &src, src_dir, seen).await;
    stop_target(target.as_ref(), &dst, dst_dir).await;

    // The source's disk is its own still: the guest reads its pattern.
    assert!(ticks(&console(src_dir))
        .iter()
        .all(|t| t.disk == expected_disk()));
    source.stop(&src, GRACE).await.expect("stop the source");
    assert!(qemu_pids(&dir.path().display().to_string()).is_empty());
}

/// A VM job moved between two node agents with `herd alloc migrate`: the
/// agents orchestrate QEMU's own migration (the target agent readies an
/// incoming QEMU, the source agent drives `migrate` to it), the switch-over
/// hands the allocation over, and the guest runs on on the target with its
/// disk, never rebooted; one QEMU is left, the target's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_job_moves_between_two_agents_with_herd_alloc_migrate() {
    move_vm_job(Fault::None).await;
}

/// The same move with the target's agent killed and restarted while its
/// incoming QEMU waits (the source holds before sending): the QEMU, a
/// detached process, takes the move; the restarted agent takes the arrival
/// up from its directory and lets it run once the switch-over commits, and
/// its supervisor does not adopt (and stop) it before then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_move_survives_a_restart_of_the_target_agent() {
    std::env::set_var(
        herd_node::migrate::source::FAULT_HOLD_ENV,
        "transferring:5000",
    );
    move_vm_job(Fault::RestartTarget).await;
}

/// The source's agent killed and restarted while it holds before sending:
/// it gives the move up, the VM runs on at the source (never paused for
/// long, never rebooted) and the target's waiting QEMU is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_move_whose_source_agent_restarts_is_aborted_and_the_vm_stays() {
    std::env::set_var(
        herd_node::migrate::source::FAULT_HOLD_ENV,
        "transferring:5000",
    );
    move_vm_job(Fault::RestartSource).await;
}

/// What happens to a VM's move between two agents.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// The target's agent is killed and restarted mid-move.
    RestartTarget,
    /// The source's agent is killed and restarted mid-move.
    RestartSource,
}

async fn move_vm_job(fault: Fault) {
    let parts = match guest_parts() {
        Ok(parts) => parts,
        Err(why) => return skip_or_fail(&why),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_cluster, addr, mut agents) = common::agents::cluster_with_agents(1, "3000").await;
    // The agents confine spec paths: the kernel's directory and the
    // initrd's are allowed (docs/security.md, "Driver confinement").
    start_vm_agents(&mut agents, &["q1", "q2"], &parts, dir.path());
    let _reapers: Vec<Reaper> = ["q1", "q2"]
        .iter()
        .map(|n| Reaper(agents.agent(n).expect("agent").data_dir.clone()))
        .collect();
    common::agents::must_have_ready_nodes(&addr, &["q1", "q2"]).await;
    let spec = vm_job_spec(dir.path(), &parts, PATTERN);
    must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &spec]);
    let (alloc, source) = until("the VM running", PATIENCE, || {
        let allocs = common::agents::running_allocs(&addr, "vm");
        let [a] = allocs.as_slice() else { return None };
        Some((
            a["id"].as_str()?.to_string(),
            a["node"].as_str()?.to_string(),
        ))
    })
    .await;
    let target = if source == "q1" { "q2" } else { "q1" };
    let source_dir = agents
        .agent(&source)
        .expect("source")
        .data_dir
        .join("allocs")
        .join(&alloc);
    let target_dir = agents
        .agent(target)
        .expect("target")
        .data_dir
        .join("allocs")
        .join(&alloc);
    until("the guest ticking with its disk", PATIENCE, || {
        let ticks = ticks(&console(&source_dir));
        (ticks.len() >= 2 && ticks.iter().all(|t| t.disk == expected_disk())).then_some(())
    })
    .await;
    let before = ticks(&console(&source_dir));

    let migrate = spawn_vm_move(&addr, &alloc, target, must_run_cli);
    if fault != Fault::None {
        until("the move holding at transferring", PATIENCE, || {
            let list = json(&addr, &["migration", "list", "--alloc", &alloc]);
            (list[0]["phase"] == "transferring").then_some(())
        })
        .await;
        let node = if fault == Fault::RestartTarget {
            target
        } else {
            source.as_str()
        };
        agents.kill_agent(node).expect("kill an agent");
        agents.restart(node).expect("restart it");
    }
    let out = migrate.join().expect("migrate thread");
    if fault == Fault::RestartSource {
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let record = json(&addr, &["migration", "list", "--alloc", &alloc])[0].clone();
        assert_eq!(record["phase"], "aborted", "{record:#}");
        assert!(
            record["error"]
                .as_str()
                .is_some_and(|e| e.contains("restarted")),
            "{record:#}"
        );
        let status = json(&addr, &["alloc", "status", &alloc]);
        assert_eq!(status["node"], source.as_str(), "{status:#}");
        assert_eq!(status["generation"], 1, "{status:#}");
        // The guest ticks on at the source, the same one, and the target's
        // QEMU is gone.
        let seen = before.len();
        until("the guest ticking on at the source", PATIENCE, || {
            let now = ticks(&console(&source_dir));
            (now.len() >= seen + 2).then_some(())
        })
        .await;
        let booted = console(&source_dir)
            .matches("herd-guest: disk wrote")
            .count();
        assert_eq!(booted, 1, "the source's guest booted once");
        until("only the source's QEMU", Duration::from_secs(20), || {
            let source_qemu = qemu_pids(&source_dir.display().to_string());
            let target_qemu = qemu_pids(&target_dir.display().to_string());
            (source_qemu.len() == 1 && target_qemu.is_empty()).then_some(())
        })
        .await;
        return;
    }
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let record = json(&addr, &["migration", "list", "--alloc", &alloc])[0].clone();
    assert_eq!(record["phase"], "completed", "{record:#}");
    assert_eq!(record["kind"], "vm", "{record:#}");
    assert!(
        record["bytes"].as_u64().unwrap_or(0) > 64 << 20,
        "memory and disk moved: {record:#}"
    );
    assert!(record["rounds"].as_u64().unwrap_or(0) >= 1, "{record:#}");
    let status = json(&addr, &["alloc", "status", &alloc]);
    assert_eq!(status["node"], target, "{status:#}");
    assert_eq!(status["generation"], 2, "{status:#}");

    // The same guest ticks on the target (its uptime goes on from the
    // source's, no boot), reading its pattern from the target's disk.
    let last_before = before.last().map_or(0.0, |t| t.uptime);
    let after = until("the guest ticking on the target", PATIENCE, || {
        let after = ticks(&console(&target_dir));
        (after.len() >= 2).then_some(after)
    })
    .await;
    assert!(
        after.iter().all(|t| t.disk == expected_disk()),
        "the disk moved: {after:?}"
    );
    assert!(
        after[0].uptime > last_before,
        "not rebooted: {after:?} after {before:?}"
    );
    assert!(
        !console(&target_dir).contains("herd-guest: disk wrote"),
        "the target's guest did not boot again"
    );
    // The source's QEMU is gone; exactly one runs, the target's.
    until("one QEMU left", Duration::from_secs(20), || {
        let source_qemu = qemu_pids(&source_dir.display().to_string());
        let target_qemu = qemu_pids(&target_dir.display().to_string());
        (source_qemu.is_empty() && target_qemu.len() == 1).then_some(())
    })
    .await;
    let running = common::agents::running_allocs(&addr, "vm");
    assert_eq!(running.len(), 1, "{running:#?}");
    assert_eq!(running[0]["node"], target);
}

/// The VM of [`spec`] without a disk: memory and devices only.
fn diskless_spec(
    alloc_dir: PathBuf,
    generation: u64,
    kernel: &Path,
    initrd: &Path,
) -> WorkloadSpec {
    let mut spec = spec(alloc_dir, generation, kernel, initrd);
    spec.task.config.remove("disk_size");
    spec.task
        .config
        .insert("append".into(), "console=ttyS0 quiet panic=-1".into());
    spec
}

/// Waits until the guest in `dir` ticked more than `seen` times, and
/// checks its VM runs.
async fn ticks_on(driver: &dyn Driver, handle: &WorkloadHandle, dir: &Path, seen: usize) {
    until("the guest to tick on", PATIENCE, || {
        (tick_uptimes(&console(dir)).len() > seen + 1).then_some(())
    })
    .await;
    assert_eq!(
        driver.state(handle).await.expect("state"),
        WorkloadState::Running
    );
}

/// The confirmation before the switch-over (`confirm_incoming`): refused
/// by a target that cannot say it loaded the VM, after which the source,
/// its move complete, resumes; given by a target that loaded it, after
/// which the same guest runs on at the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_is_switched_over_only_once_its_target_confirms_it_loaded_it() {
    let Some(pair) = DriverPair::new(diskless_spec) else {
        return;
    };
    let DriverPair {
        dir,
        source,
        target,
        src_dir,
        dst_dir,
        src_spec,
        dst_spec,
        ..
    } = &pair;
    let src = source.start(src_spec).await.expect("start the source VM");
    until("the guest to tick", PATIENCE, || {
        (tick_uptimes(&console(src_dir)).len() >= 2).then_some(())
    })
    .await;
    let limits = MoveLimits {
        downtime_limit: Duration::from_millis(300),
        bandwidth_bytes_per_sec: None,
        deadline: Duration::from_secs(60),
    };

    // The source's QEMU completes its move; the target is gone before it
    // confirmed: no confirmation, and the source, cancelled, runs on.
    let (dst, endpoints) = target
        .prepare_incoming(dst_spec)
        .await
        .expect("prepare the target");
    assert!(
        endpoints.extra.is_empty(),
        "no disk to export: {endpoints:?}"
    );
    source
        .migrate_out(&src, &endpoints, &limits, &|_| {})
        .await
        .expect("the source's side of the move");
    assert_eq!(
        source.state(&src).await.expect("source state"),
        WorkloadState::Paused,
        "handed over, waiting for the switch-over"
    );
    stop_target(target.as_ref(), &dst, dst_dir).await;
    let err = target
        .confirm_incoming(&dst, Duration::from_secs(5))
        .await
        .expect_err("a stopped target confirms nothing");
    assert!(!err.to_string().is_empty());
    let seen = tick_uptimes(&console(src_dir)).len();
    source.cancel_out(&src).await.expect("cancel the move");
    ticks_on(source.as_ref(), &src, src_dir, seen).await;

    // Confirmed: the target's QEMU loaded the VM (still paused, `-S`).
    let (dst, endpoints) = target
        .prepare_incoming(dst_spec)
        .await
        .expect("prepare the target again");
    let stats = source
        .migrate_out(&src, &endpoints, &limits, &|_| {})
        .await
        .expect("migrate out");
    assert!(stats.bytes > 8 << 20, "{stats:?}");
    target
        .confirm_incoming(&dst, Duration::from_secs(30))
        .await
        .expect("the target loaded the whole VM");
    assert_eq!(
        target.state(&dst).await.expect("target state"),
        WorkloadState::Paused,
        "confirmed, not resumed: that waits for the switch-over"
    );
    let last_on_source = *tick_uptimes(&console(src_dir)).last().expect("ticks");
    source.stop(&src, GRACE).await.expect("stop the source");
    target
        .finish_incoming(&dst)
        .await
        .expect("finish on the target");
    let after = until("the guest to tick on the target", PATIENCE, || {
        let ticks = tick_uptimes(&console(dst_dir));
        (ticks.len() >= 2).then_some(ticks)
    })
    .await;
    assert!(
        after[0] > last_on_source,
        "the same guest's uptime goes on ({last_on_source} on the source): {after:?}"
    );
    assert!(
        !console(dst_dir).contains("herd-guest: up"),
        "no reboot on the target"
    );
    target.stop(&dst, GRACE).await.expect("stop the target");
    assert!(qemu_pids(&dir.path().display().to_string()).is_empty());
}
