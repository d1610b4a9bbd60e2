//! Live migration between node agents on DIFFERENT addresses: each agent
//! listens and advertises on its own loopback address (Linux routes all of
//! 127.0.0.0/8 to loopback, so 127.0.0.2 and 127.0.0.3 stand for two
//! hosts), and an incoming VM must listen on its agent's migration host
//! (`--migration-host`, by default the host of `--advertise`), not on
//! 127.0.0.1, and publish it to the source. Each test checks where the
//! target listened from what the processes themselves say (the sim-vm's
//! command line in /proc and its log; QEMU's endpoints in the target
//! agent's log), so it fails with a hard-coded 127.0.0.1. Plus the node
//! setting's bad values: a clear error, exit 2.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::vms::sim_vm_pids_mentioning;
use common::*;
use herd_actors::driver::vm::guest::{find_busybox, write_initramfs, GuestLoad};
use herd_actors::driver::vm::qemu;

/// How long a VM may take to boot or move on a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(90);

/// A node agent run by this test on its own address (the chaos harness's
/// agent set listens on 127.0.0.1 only); killed when dropped, its
/// workloads reaped by [`Reaper`].
struct Agent {
    name: String,
    host: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Agent {
    fn start(root: &Path, name: &str, host: &str, coordinators: &str, extra: &[&str]) -> Self {
        let data_dir = root.join(format!("node-{name}"));
        let log = root.join(format!("node-{name}.log"));
        let out = File::create(&log).expect("agent log");
        let err = out.try_clone().expect("agent log");
        let child = herd_command()
            .args(["node", "--name", name, "--listen", &format!("{host}:0")])
            .args(["--coordinators", coordinators, "--data-dir"])
            .arg(&data_dir)
            .args(extra)
            .env("HERD_LOG", "info")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn an agent");
        Agent {
            name: name.to_string(),
            host: host.to_string(),
            data_dir,
            log,
            child,
        }
    }

    fn alloc_dir(&self, alloc: &str) -> PathBuf {
        self.data_dir.join("allocs").join(alloc)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills, when a test ends (passed or panicked), every sim-vm and QEMU
/// left under its directory: workloads outlive their agents by design.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let needle = self.0.display().to_string();
        for pid in sim_vm_pids_mentioning(&needle)
            .into_iter()
            .chain(qemu_pids(&needle))
        {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

/// The arguments of process `pid`, from /proc.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// PIDs of QEMU processes whose command line names `needle`, from /proc.
fn qemu_pids(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let args = cmdline(pid);
            (args.first()?.contains("qemu-system") && args.iter().any(|a| a.contains(needle)))
                .then_some(pid)
        })
        .collect()
}

/// Runs `herd alloc migrate ALLOC --to TARGET --wait`; it must succeed, and
/// its record end `completed`.
fn must_migrate(addr: &str, alloc: &str, target: &str) {
    let moved = common::qemu::spawn_vm_move(addr, alloc, target, must_run_cli)
        .join()
        .expect("the migrate command's thread");
    assert!(
        moved.status.success(),
        "migrate to {target}: {}\n{}",
        String::from_utf8_lossy(&moved.stdout),
        String::from_utf8_lossy(&moved.stderr)
    );
    let records = json(addr, &["migration", "list", "--alloc", alloc]);
    let last = records
        .as_array()
        .and_then(|all| all.iter().find(|m| m["target"] == target).cloned())
        .expect("a migration record to the target");
    assert_eq!(last["phase"], "completed", "{records:#}");
    let status = json(addr, &["alloc", "status", alloc]);
    assert_eq!(status["node"], target, "{status:#}");
}

/// The allocation of `job` once it runs, and its node.
async fn running(addr: &str, job: &str) -> (String, String) {
    until(&format!("{job} running"), PATIENCE, || {
        let allocs = running_allocs(addr, job);
        let [a] = allocs.as_slice() else { return None };
        Some((
            a["id"].as_str()?.to_string(),
            a["node"].as_str()?.to_string(),
        ))
    })
    .await
}

/// Moves a simulated VM between agents on 127.0.0.2 and 127.0.0.3, there
/// and back: m2 listens for it on its advertised host (the default), m1 on
/// the `--migration-host` it was given (127.0.0.4, not its advertised
/// 127.0.0.2). Each time the target's sim-vm was started `--incoming
/// HOST:0` with its agent's host, says it listened there, and the source
/// says it sent the memory there; the guest writes on, one copy left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_vm_moves_between_agents_on_different_addresses() {
    let (_cluster, addr, _unused) = cluster_with_agents(1, "3000").await;
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(root.path().to_path_buf());
    let m1 = Agent::start(
        root.path(),
        "m1",
        "127.0.0.2",
        &addr,
        &["--migration-host", "127.0.0.4"],
    );
    let m2 = Agent::start(root.path(), "m2", "127.0.0.3", &addr, &[]);
    must_have_ready_nodes(&addr, &["m1", "m2"]).await;
    let nodes = json(&addr, &["node", "list"]);
    for (agent, host) in [(&m1, "127.0.0.2"), (&m2, "127.0.0.3")] {
        let node = nodes
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == agent.name.as_str()))
            .expect("the node listed");
        assert!(
            node.to_string().contains(&format!("{host}:")),
            "{} advertises its own address: {node:#}",
            agent.name
        );
    }
    let spec = write_spec(
        root.path(),
        "vm",
        "name = \"vm\"\ntype = \"service\"\n[task]\ndriver = \"simvm\"\n[task.config]\ndirty_rate = \"4MiB\"\nseed = 5\n[task.resources]\ncpu = 100\nmemory = \"32MiB\"\n",
    );
    must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &spec]);
    let (alloc, first) = running(&addr, "vm").await;
    let agents = [&m1, &m2];
    let by_name = |name: &str| *agents.iter().find(|a| a.name == name).expect("agent");
    // Where each agent's incoming VMs must listen.
    let listens_on = |agent: &Agent| {
        if agent.name == "m1" {
            "127.0.0.4"
        } else {
            "127.0.0.3"
        }
    };

    let mut source = by_name(&first);
    for round in 1..=2 {
        let target = if source.name == "m1" { &m2 } else { &m1 };
        let host = listens_on(target);
        must_migrate(&addr, &alloc, &target.name);
        // Exactly one sim-vm, the target's, started to listen on its host.
        let pids = until("one sim-vm, the target's", PATIENCE, || {
            let all = sim_vm_pids_mentioning(&root.path().display().to_string());
            let target_dir = target.data_dir.display().to_string();
            let on_target = sim_vm_pids_mentioning(&target_dir);
            (all.len() == 1 && on_target.len() == 1).then_some(on_target)
        })
        .await;
        let args = cmdline(pids[0]);
        let incoming = args
            .iter()
            .position(|a| a == "--incoming")
            .and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| panic!("round {round}: no --incoming in {args:?}"));
        assert_eq!(
            incoming,
            &format!("{host}:0"),
            "round {round}: the target's listener is on its agent's migration host"
        );
        let target_log = target.alloc_dir(&alloc).join("stdout.log");
        let log = until("the moved guest writing on", PATIENCE, || {
            let log = std::fs::read_to_string(&target_log).ok()?;
            let resumed = log.rfind("migrated in")?;
            log[resumed..].contains("page writes").then_some(log)
        })
        .await;
        assert!(
            log.contains(&format!("listening on {host}:")),
            "round {round}: {log}"
        );
        assert!(!log.contains("listening on 127.0.0.1:"), "{log}");
        let source_log = std::fs::read_to_string(source.alloc_dir(&alloc).join("stdout.log"))
            .unwrap_or_default();
        assert!(
            source_log.contains(&format!("migrated to {host}:")),
            "round {round}: the source sent to the target's host: {source_log}"
        );
        source = target;
    }
    must_cli_ok(&["--addr", &addr, "job", "stop", "vm"]);
    until("no sim-vm left", Duration::from_secs(20), || {
        sim_vm_pids_mentioning(&root.path().display().to_string())
            .is_empty()
            .then_some(())
    })
    .await;
}

/// A real VM (QEMU under TCG, a fresh local disk) moved between agents on
/// 127.0.0.2 and 127.0.0.3: the target agent's log gives the endpoints its
/// QEMU listened on (the migration stream and the NBD server of the disk),
/// which must be the target's address. Skipped where QEMU, qemu-img,
/// busybox or the guest kernel are missing, except in CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_vm_moves_between_agents_on_different_addresses() {
    let kernel = std::env::var_os("HERD_VM_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/vm-guest/vmlinuz")
        });
    let busybox = match find_busybox() {
        Ok(busybox) => busybox,
        Err(e) => return skip_or_fail(&e.to_string()),
    };
    if !kernel.is_file() {
        return skip_or_fail(&format!(
            "no guest kernel at {} (run .ci/vm-guest.sh or set HERD_VM_KERNEL)",
            kernel.display()
        ));
    }
    for tool in [qemu::QEMU, qemu::QEMU_IMG] {
        if qemu::find_in_path(tool).is_none() {
            return skip_or_fail(&format!("{tool} not installed"));
        }
    }
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(root.path().to_path_buf());
    let initrd = root.path().join("initrd");
    write_initramfs(
        &initrd,
        &busybox,
        GuestLoad {
            working_set_mib: 8,
            dirty_mib_per_sec: 1,
        },
    )
    .expect("initramfs");
    let kernel = std::fs::canonicalize(&kernel).expect("kernel");
    let kernel_dir = kernel.parent().expect("kernel dir").display().to_string();
    let root_arg = root.path().display().to_string();
    let allow = ["--allow-path", &kernel_dir, "--allow-path", &root_arg];
    let (_cluster, addr, _unused) = cluster_with_agents(1, "3000").await;
    let q1 = Agent::start(root.path(), "q1", "127.0.0.2", &addr, &allow);
    let q2 = Agent::start(root.path(), "q2", "127.0.0.3", &addr, &allow);
    must_have_ready_nodes(&addr, &["q1", "q2"]).await;
    let spec = write_spec(
        root.path(),
        "vm",
        &format!(
            "name = \"vm\"\ntype = \"service\"\n[task]\ndriver = \"vm\"\n[task.config]\nkernel = \"{}\"\ninitrd = \"{}\"\naccel = \"tcg\"\ndisk_size = \"16MiB\"\nappend = \"console=ttyS0 quiet panic=-1\"\n[task.resources]\ncpu = 1000\nmemory = \"128MiB\"\n",
            kernel.display(),
            initrd.display()
        ),
    );
    must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &spec]);
    let (alloc, source) = running(&addr, "vm").await;
    let (source, target) = if source == "q1" {
        (&q1, &q2)
    } else {
        (&q2, &q1)
    };
    until("the guest ticking", PATIENCE, || {
        let console = std::fs::read_to_string(source.alloc_dir(&alloc).join("stdout.log")).ok()?;
        console.contains("herd-guest: tick").then_some(())
    })
    .await;

    must_migrate(&addr, &alloc, &target.name);
    let log = target.log();
    let listening = log
        .lines()
        .find(|l| l.contains("mark=vm.in.listening") && l.contains(&alloc))
        .unwrap_or_else(|| panic!("no vm.in.listening mark in {}'s log:\n{log}", target.name));
    let host = &target.host;
    assert!(
        listening.contains(&format!("main={host}:")),
        "QEMU's migration listener is on the target's host: {listening}"
    );
    assert!(
        listening.contains(&format!("nbd={host}:")),
        "its NBD server too: {listening}"
    );
    until("one QEMU left, the target's", PATIENCE, || {
        let all = qemu_pids(&root.path().display().to_string());
        let on_target = qemu_pids(&target.data_dir.display().to_string());
        (all.len() == 1 && on_target.len() == 1).then_some(())
    })
    .await;
    until("the guest ticking on the target", PATIENCE, || {
        let console = std::fs::read_to_string(target.alloc_dir(&alloc).join("stdout.log")).ok()?;
        console.contains("herd-guest: tick").then_some(())
    })
    .await;
    must_cli_ok(&["--addr", &addr, "job", "stop", "vm"]);
}

/// A migration host the agent cannot use stops it at once, naming the
/// setting: exit 2, before it registers anywhere.
#[test]
fn a_bad_migration_host_is_refused_with_exit_2() {
    let root = tempfile::tempdir().expect("tempdir");
    let data_dir = root.path().join("node");
    let data_dir = data_dir.display().to_string();
    for (args, needle) in [
        (
            vec!["--listen", "127.0.0.2:0", "--migration-host", "0.0.0.0"],
            "cannot be published",
        ),
        (
            vec![
                "--listen",
                "127.0.0.2:0",
                "--migration-host",
                "127.0.0.2:7300",
            ],
            "without a port",
        ),
        (
            vec!["--listen", "127.0.0.2:0", "--migration-host", "not a host"],
            "neither an IP address nor a DNS name",
        ),
        (
            // Documentation space: an address of no machine.
            vec!["--listen", "127.0.0.2:0", "--migration-host", "192.0.2.1"],
            "cannot be listened on here",
        ),
        (
            vec!["--listen", "0.0.0.0:0", "--advertise", "192.0.2.1:7200"],
            "unset, it is the host of advertise \"192.0.2.1:7200\"",
        ),
    ] {
        let out = herd_command()
            .args(["node", "--name", "bad", "--coordinators", "127.0.0.1:1"])
            .args(["--data-dir", &data_dir])
            .args(&args)
            .env("HERD_LOG", "error")
            .output()
            .expect("run herd node");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("migration-host"), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
