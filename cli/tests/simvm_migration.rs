//! Live migration of SIMULATED VMs (`simvm`) on real `herd sim-vm`
//! processes: driver to driver (two driver instances, two allocation
//! directories, the same allocation at generation + 1, as two agents hold
//! it), then between two node agents with `herd alloc migrate`. The
//! processes move the memory over their own stream, as QEMU does; the
//! target ends with the source's memory (equal checksums over the control
//! sockets) and writes on from there, the source is left paused and then
//! stopped, and exactly one sim-vm process is left.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::*;
use herd_actors::driver::live::{IncomingEndpoints, MoveLimits, MoveProgress};
use herd_actors::driver::simvm::control::{self, OutPhase};
use herd_actors::driver::simvm::machine::THROTTLE_INITIAL;
use herd_actors::driver::simvm::migrate::control_socket;
use herd_actors::driver::simvm::SimVmDriver;
use herd_actors::driver::{Driver, WorkloadHandle, WorkloadSpec, WorkloadState};
use herd_api::job::TaskSpec;
use herd_api::resources::{Resources, MIB};

const GRACE: Duration = Duration::from_secs(5);

/// The spec of allocation `a1` of a simulated VM, in `node_dir`.
fn spec(node_dir: &Path, generation: u64, mib: u64, dirty_rate: &str) -> WorkloadSpec {
    WorkloadSpec {
        alloc_id: "a1".into(),
        generation,
        job: "vms".into(),
        task: TaskSpec {
            driver: "simvm".into(),
            command: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            workdir: None,
            resources: Resources {
                cpu_millis: 100,
                memory_bytes: mib * MIB,
                gpus: 0,
                gpu_model: None,
            },
            config: [("dirty_rate", dirty_rate), ("seed", "9")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
        alloc_dir: node_dir.join("allocs").join("a1"),
        env: BTreeMap::new(),
    }
}

/// The sim-vm processes whose command line names `under` (a test's
/// directory).
fn sim_vms_under(under: &Path) -> Vec<u32> {
    common::vms::sim_vm_pids_mentioning(&under.display().to_string())
}

async fn writes(handle: &WorkloadHandle) -> u64 {
    let socket = control_socket(handle).expect("socket");
    for _ in 0..200 {
        if let Ok(status) = control::status(&socket).await {
            return status.writes;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} never answered", socket.display());
}

/// Polls the VM's control socket until `probe` holds of its status (the
/// async counterpart of `until`, for probes that talk to the VM).
async fn until_status(
    what: &str,
    handle: &WorkloadHandle,
    probe: impl Fn(&control::Status) -> bool,
) -> control::Status {
    let socket = control_socket(handle).expect("socket");
    let started = std::time::Instant::now();
    loop {
        let status = control::status(&socket).await;
        if let Ok(status) = &status {
            if probe(status) {
                return status.clone();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn until_writes_pass(handle: &WorkloadHandle, floor: u64) -> u64 {
    until_status("the simulated guest writing", handle, |s| s.writes > floor)
        .await
        .writes
}

/// A source running `mib` MiB writing `rate`, and a target readied for it,
/// in two node directories under one test directory.
struct Pair {
    dir: tempfile::TempDir,
    source: SimVmDriver,
    target: SimVmDriver,
    from: WorkloadHandle,
    to: WorkloadHandle,
    endpoints: IncomingEndpoints,
}

async fn pair(mib: u64, rate: &str) -> Pair {
    let dir = tempfile::Builder::new()
        .prefix("smig")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let (src_dir, dst_dir) = (dir.path().join("n1"), dir.path().join("n2"));
    // Two driver instances, as two agents hold them.
    let source = SimVmDriver::new(herd_bin());
    let target = SimVmDriver::new(herd_bin());
    let from = source
        .start(&spec(&src_dir, 1, mib, rate))
        .await
        .expect("source starts");
    let first = writes(&from).await;
    until_writes_pass(&from, first).await;
    let (to, endpoints) = target
        .prepare_incoming(&spec(&dst_dir, 2, mib, rate))
        .await
        .expect("target readied");
    assert_eq!(to.generation, 2);
    assert!(endpoints.main.starts_with("127.0.0.1:"), "{endpoints:?}");
    assert_eq!(
        target.state(&to).await.expect("state"),
        WorkloadState::Paused,
        "an incoming VM waits, paused"
    );
    assert_eq!(sim_vms_under(dir.path()).len(), 2);
    Pair {
        dir,
        source,
        target,
        from,
        to,
        endpoints,
    }
}

fn limits(downtime_ms: u64, cap: Option<u64>, deadline: Duration) -> MoveLimits {
    MoveLimits {
        downtime_limit: Duration::from_millis(downtime_ms),
        bandwidth_bytes_per_sec: cap,
        deadline,
    }
}

fn log_of(handle: &WorkloadHandle) -> String {
    let socket: PathBuf = control_socket(handle).expect("socket");
    let dir = socket.parent().expect("alloc dir");
    std::fs::read_to_string(dir.join("stdout.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_vm_moves_driver_to_driver_and_writes_on_from_the_same_memory() {
    let p = pair(32, "4MiB").await;
    let seen: Arc<Mutex<Vec<MoveProgress>>> = Arc::default();
    let sink = seen.clone();
    let progress = move |m: MoveProgress| sink.lock().expect("lock").push(m);
    let stats = p
        .source
        .migrate_out(
            &p.from,
            &p.endpoints,
            &limits(300, None, Duration::from_secs(30)),
            &progress,
        )
        .await
        .expect("moved");
    assert!(stats.bytes > 0 && stats.rounds >= 1, "{stats:?}");
    assert!(stats.downtime_ms <= stats.total_ms, "{stats:?}");
    assert_eq!(
        p.source.state(&p.from).await.expect("state"),
        WorkloadState::Paused,
        "the source handed over"
    );
    // Both sides report the same memory, taken with both guests paused.
    let (src, src_paused) = control::checksum(&control_socket(&p.from).expect("socket"))
        .await
        .expect("source checksum");
    let (dst, dst_paused) = control::checksum(&control_socket(&p.to).expect("socket"))
        .await
        .expect("target checksum");
    assert!(src_paused && dst_paused);
    assert_eq!(src, dst, "the target holds the source's memory");
    let paused_at = writes(&p.from).await;

    p.target.finish_incoming(&p.to).await.expect("finished");
    assert_eq!(
        p.target.state(&p.to).await.expect("state"),
        WorkloadState::Running
    );
    // The target goes on from the source's write count, not from zero.
    until_writes_pass(&p.to, paused_at + 10).await;
    assert_eq!(writes(&p.from).await, paused_at, "the source stays paused");

    // The source, paused, stops; one process is left, the target's.
    let exit = p.source.stop(&p.from, GRACE).await.expect("source stops");
    assert!(exit.code == Some(0) || exit.signal.is_some(), "{exit:?}");
    let left = sim_vms_under(p.dir.path());
    assert_eq!(left, vec![p.to.pid.expect("pid")], "only the target runs");
    assert!(log_of(&p.from).contains("migrated to"));
    assert!(log_of(&p.to).contains("migrated in"));
    p.target.stop(&p.to, GRACE).await.expect("target stops");
    assert!(sim_vms_under(p.dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_dirtying_faster_than_a_capped_link_is_throttled_until_it_converges() {
    // 64 MiB/s of writes into 4 MiB over a 16 MiB/s link: without
    // auto-converge no round would ever fit 20 ms.
    let p = pair(4, "64MiB").await;
    let stats = p
        .source
        .migrate_out(
            &p.from,
            &p.endpoints,
            &limits(20, Some(16 << 20), Duration::from_secs(30)),
            &|_| {},
        )
        .await
        .expect("converged");
    assert!(stats.rounds >= 3, "{stats:?}");
    let status = control::status(&control_socket(&p.from).expect("socket"))
        .await
        .expect("status");
    let out = status.outgoing.expect("outgoing");
    assert_eq!(out.phase, OutPhase::Completed);
    assert!(out.throttle_pct >= THROTTLE_INITIAL, "{out:?}");
    assert!(
        log_of(&p.from).contains("auto-converge throttles it to"),
        "{}",
        log_of(&p.from)
    );
    let (src, _) = control::checksum(&control_socket(&p.from).expect("socket"))
        .await
        .expect("checksum");
    let (dst, _) = control::checksum(&control_socket(&p.to).expect("socket"))
        .await
        .expect("checksum");
    assert_eq!(src, dst);
    p.source.stop(&p.from, GRACE).await.expect("stop");
    p.target.stop(&p.to, GRACE).await.expect("stop");
    assert!(sim_vms_under(p.dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_or_late_move_leaves_the_source_running() {
    let p = pair(32, "1MiB").await;
    // 32 MiB (8,192 pages, most sent as 9-byte zero marks) at 16 KiB/s
    // cannot finish within 1 s: given up at the deadline.
    let err = p
        .source
        .migrate_out(
            &p.from,
            &p.endpoints,
            &limits(300, Some(16 << 10), Duration::from_secs(1)),
            &|_| {},
        )
        .await
        .expect_err("too slow");
    assert!(err.to_string().contains("deadline"), "{err}");
    assert_eq!(
        p.source.state(&p.from).await.expect("state"),
        WorkloadState::Running
    );
    let now = writes(&p.from).await;
    until_writes_pass(&p.from, now).await;

    // A move in flight, cancelled by the agent (an abort).
    let (source, from, endpoints) = (p.source.clone(), p.from.clone(), p.endpoints.clone());
    let moving = tokio::spawn(async move {
        source
            .migrate_out(
                &from,
                &endpoints,
                &limits(300, Some(16 << 10), Duration::from_secs(30)),
                &|_| {},
            )
            .await
    });
    until_status("the move under way", &p.from, |s| {
        s.outgoing
            .as_ref()
            .is_some_and(|o| o.phase == OutPhase::PreCopy && o.bytes > 0)
    })
    .await;
    p.source.cancel_out(&p.from).await.expect("cancelled");
    let err = moving.await.expect("joined").expect_err("cancelled");
    assert!(err.to_string().contains("cancelled"), "{err}");
    assert_eq!(
        p.source.state(&p.from).await.expect("state"),
        WorkloadState::Running
    );
    let now = writes(&p.from).await;
    until_writes_pass(&p.from, now).await;
    // The target was never finished: the agent stops it.
    p.target.stop(&p.to, GRACE).await.expect("stop target");
    assert_eq!(
        sim_vms_under(p.dir.path()),
        vec![p.from.pid.expect("pid")],
        "only the source runs"
    );
    p.source.stop(&p.from, GRACE).await.expect("stop source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_vm_moves_between_two_agents_with_alloc_migrate() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "3000").await;
    for name in ["m1", "m2"] {
        agents.start(name, &[]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &["m1", "m2"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = write_spec(
        dir.path(),
        "vm",
        "name = \"vm\"\ntype = \"service\"\n[task]\ndriver = \"simvm\"\n[task.config]\ndirty_rate = \"4MiB\"\nseed = 3\n[task.resources]\ncpu = 100\nmemory = \"32MiB\"\n",
    );
    must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &spec]);
    let (alloc, source) = until("the simulated VM running", Duration::from_secs(20), || {
        let allocs = running_allocs(&addr, "vm");
        let [a] = allocs.as_slice() else { return None };
        Some((
            a["id"].as_str()?.to_string(),
            a["node"].as_str()?.to_string(),
        ))
    })
    .await;
    let target = if source == "m1" { "m2" } else { "m1" };
    let copies = |agents: &herd_chaos::agents::AgentSet| {
        agents
            .workloads()
            .into_iter()
            .filter(|w| w.job == "vm")
            .count()
    };
    assert_eq!(copies(&agents), 1);

    let moved = must_run_cli(&[
        "--addr",
        &addr,
        "alloc",
        "migrate",
        &alloc,
        "--to",
        target,
        "--wait",
        "--downtime-limit",
        "300ms",
    ]);
    assert!(
        moved.status.success(),
        "migrate: {}\n{}",
        String::from_utf8_lossy(&moved.stdout),
        String::from_utf8_lossy(&moved.stderr)
    );
    let record = json(&addr, &["migration", "list", "--alloc", &alloc])
        .as_array()
        .and_then(|m| m.first().cloned())
        .expect("a migration");
    assert_eq!(record["phase"], "completed", "{record:#}");
    assert_eq!(record["kind"], "simvm", "{record:#}");
    assert!(record["bytes"].as_u64().unwrap_or(0) > 0, "{record:#}");
    assert!(record["rounds"].as_u64().unwrap_or(0) >= 1, "{record:#}");
    let downtime = record["downtime_ms"].as_u64().expect("downtime");
    assert!(downtime <= 300, "{record:#}");

    let status = json(&addr, &["alloc", "status", &alloc]);
    assert_eq!(status["node"], target, "{status:#}");
    assert_eq!(status["generation"], 2, "{status:#}");
    // Exactly one sim-vm afterwards, the target's, and it writes on.
    until(
        "one simulated VM, on the target",
        Duration::from_secs(20),
        || {
            let vms: Vec<_> = agents
                .workloads()
                .into_iter()
                .filter(|w| w.job == "vm")
                .collect();
            (vms.len() == 1 && vms[0].node == target).then_some(())
        },
    )
    .await;
    let target_dir = agents.agent(target).expect("target").data_dir.clone();
    let target_log = target_dir.join("allocs").join(&alloc).join("stdout.log");
    until(
        "the moved guest writing on",
        Duration::from_secs(20),
        || {
            let log = std::fs::read_to_string(&target_log).ok()?;
            let resumed = log.find("migrated in")?;
            log[resumed..].contains("page writes").then_some(())
        },
    )
    .await;
    assert_eq!(copies(&agents), 1);
    must_cli_ok(&["--addr", &addr, "job", "stop", "vm"]);
    until("no simulated VM left", Duration::from_secs(20), || {
        (copies(&agents) == 0).then_some(())
    })
    .await;
}
