//! The `vm` driver on real QEMU (TCG, so it runs wherever QEMU does) with a
//! guest the test builds itself: a Debian kernel (`.ci/vm-guest.sh` puts it
//! in target/vm-guest) and a busybox initramfs that dirties memory. Skipped,
//! with a message, where QEMU, busybox or the kernel are missing, except in
//! CI (`CI=true`), where that fails (see `skip_or_fail`).

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::*;
use herd_actors::driver::vm::guest::{find_busybox, write_initramfs, GuestLoad};
use herd_actors::driver::vm::VmDriver;
use herd_actors::driver::{Driver, DriverError, WorkloadSpec, WorkloadState};
use herd_api::job::TaskSpec;
use herd_api::resources::Resources;
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(60);

/// The kernel and busybox, or why the test cannot run here.
fn guest_parts() -> Result<(PathBuf, PathBuf), String> {
    let kernel = std::env::var_os("HERD_VM_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/vm-guest/vmlinuz")
        });
    if !kernel.is_file() {
        return Err(format!(
            "no guest kernel at {} (run .ci/vm-guest.sh or set HERD_VM_KERNEL)",
            kernel.display()
        ));
    }
    let busybox = find_busybox().map_err(|e| e.to_string())?;
    if herd_actors::driver::vm::qemu::find_in_path("qemu-system-x86_64").is_none() {
        return Err("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)".into());
    }
    Ok((kernel, busybox))
}

fn config(kernel: &Path, initrd: &Path) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kernel".to_string(), kernel.display().to_string()),
        ("initrd".to_string(), initrd.display().to_string()),
        ("accel".to_string(), "tcg".to_string()),
        (
            "append".to_string(),
            "console=ttyS0 quiet panic=-1".to_string(),
        ),
    ])
}

fn spec(dir: &Path, config: BTreeMap<String, String>) -> WorkloadSpec {
    WorkloadSpec {
        alloc_id: "vm-test".to_string(),
        generation: 1,
        job: "vm-test".to_string(),
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
        alloc_dir: dir.join("a"),
        env: BTreeMap::new(),
    }
}

fn console(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("a/stdout.log")).unwrap_or_default()
}

fn ticks(text: &str) -> usize {
    text.matches("herd-guest: tick").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_boots_pauses_resumes_and_stops_through_qmp() {
    let (kernel, busybox) = match guest_parts() {
        Ok(parts) => parts,
        Err(why) => return skip_or_fail(&why),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = dir.path().join("initrd");
    write_initramfs(
        &initrd,
        &busybox,
        GuestLoad {
            working_set_mib: 16,
            dirty_mib_per_sec: 2,
        },
    )
    .expect("initramfs");
    // As the agent holds it: pause and resume are reached through the trait.
    let driver: std::sync::Arc<dyn Driver> = std::sync::Arc::new(VmDriver::new(herd_bin()));
    let spec = spec(dir.path(), config(&kernel, &initrd));
    let handle = driver.start(&spec).await.expect("start");
    until("the guest to boot", PATIENCE, || {
        console(dir.path()).contains("herd-guest: up").then_some(())
    })
    .await;
    until("the guest to tick", PATIENCE, || {
        (ticks(&console(dir.path())) >= 2).then_some(())
    })
    .await;
    assert_eq!(
        driver.state(&handle).await.expect("state"),
        WorkloadState::Running
    );

    driver.pause(&handle).await.expect("pause");
    assert_eq!(
        driver.state(&handle).await.expect("state"),
        WorkloadState::Paused
    );
    let frozen = ticks(&console(dir.path()));
    // No condition to wait for: this checks that nothing happens, over
    // more than the guest's tick interval.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        ticks(&console(dir.path())),
        frozen,
        "a paused guest does not run"
    );

    driver.resume(&handle).await.expect("resume");
    until("the guest to tick again", PATIENCE, || {
        (ticks(&console(dir.path())) > frozen).then_some(())
    })
    .await;

    // A second driver (an agent restarted) sees the same VM through the handle.
    let again = VmDriver::new(herd_bin());
    assert_eq!(
        again.state(&handle).await.expect("state"),
        WorkloadState::Running
    );
    let exit = again
        .stop(&handle, Duration::from_secs(4))
        .await
        .expect("stop");
    assert!(exit.code.is_some() || exit.signal.is_some(), "{exit:?}");
    assert!(matches!(
        driver.state(&handle).await.expect("state"),
        WorkloadState::Exited(_)
    ));
    assert!(
        !qemu_running(&dir.path().display().to_string()),
        "QEMU is gone after stop"
    );
}

#[tokio::test]
async fn bad_vm_specs_are_refused_before_anything_runs() {
    if let Err(why) = guest_parts() {
        return skip_or_fail(&why);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = VmDriver::new(herd_bin());
    let missing = BTreeMap::from([("disk".to_string(), "/nonexistent/disk.qcow2".to_string())]);
    match driver.start(&spec(dir.path(), missing)).await {
        Err(DriverError::Unsupported { message, .. }) => {
            assert!(message.contains("task.config.disk"), "{message}");
            assert!(message.contains("/nonexistent/disk.qcow2"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!qemu_running(&dir.path().display().to_string()));
}

fn qemu_running(needle: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline);
            text.contains("qemu-system") && text.contains(needle)
        })
}

fn qemu_pids(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline);
            (text.starts_with('/') && text.contains("qemu-system") && text.contains(needle))
                .then_some(pid)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_job_runs_through_the_cli_and_survives_an_agent_restart() {
    let (kernel, busybox) = match guest_parts() {
        Ok(parts) => parts,
        Err(why) => return skip_or_fail(&why),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // The agents confine spec paths: the kernel's and the initrd's
    // directories are allowed (docs/security.md, "Driver confinement").
    let allow = allow_paths(&kernel, dir.path());
    let allow: Vec<&str> = allow.iter().map(String::as_str).collect();
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "3000").await;
    agents.start("v1", &allow).expect("agent");
    agents.start("v2", &allow).expect("agent");
    // Registered first: a job is refused at submit only against the nodes
    // the cluster knows (with none yet, it is accepted and waits).
    must_have_ready_nodes(&addr, &["v1", "v2"]).await;
    let initrd = dir.path().join("initrd");
    write_initramfs(
        &initrd,
        &busybox,
        GuestLoad {
            working_set_mib: 8,
            dirty_mib_per_sec: 1,
        },
    )
    .expect("initramfs");

    // More memory than any node has: refused at submit, nothing stored.
    let huge = dir.path().join("huge.toml");
    std::fs::write(
        &huge,
        format!(
            "name = \"huge\"\ntype = \"service\"\n[task]\ndriver = \"vm\"\n[task.config]\nkernel = \"{}\"\n[task.resources]\ncpu = 1000\nmemory = \"64TiB\"\n",
            kernel.display()
        ),
    )
    .expect("spec");
    let out = must_run_cli(&["--addr", &addr, "job", "run", &huge.display().to_string()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("memory"), "{stderr}");

    let spec = dir.path().join("vm.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"vm\"\ntype = \"service\"\n[task]\ndriver = \"vm\"\n[task.config]\nkernel = \"{}\"\ninitrd = \"{}\"\naccel = \"tcg\"\nappend = \"console=ttyS0 quiet panic=-1\"\n[task.resources]\ncpu = 1000\nmemory = \"128MiB\"\n",
            kernel.display(),
            initrd.display()
        ),
    )
    .expect("spec");
    must_cli_ok(&["--addr", &addr, "job", "run", &spec.display().to_string()]);
    let (id, node) = until("the VM running", PATIENCE, || {
        let allocs = json(&addr, &["alloc", "list", "--job", "vm"]);
        let a = allocs
            .as_array()?
            .iter()
            .find(|a| a["status"] == "running")?;
        Some((
            a["id"].as_str().expect("id").to_string(),
            a["node"].as_str().expect("node").to_string(),
        ))
    })
    .await;
    // Its console is the allocation's log.
    until("the console through herd alloc logs", PATIENCE, || {
        let out = must_run_cli(&["--addr", &addr, "alloc", "logs", &id]);
        String::from_utf8_lossy(&out.stdout)
            .contains("herd-guest: up")
            .then_some(())
    })
    .await;
    let data_dir = agents
        .agent(&node)
        .expect("agent")
        .data_dir
        .display()
        .to_string();
    let pids = qemu_pids(&data_dir);
    assert_eq!(pids.len(), 1, "one QEMU: {pids:?}");

    // The agent dies and comes back: the same QEMU runs on, re-adopted.
    agents.kill_agent(&node).expect("kill agent");
    agents.restart(&node).expect("restart agent");
    // Judged once the new agent has reported what it found: the
    // allocation's "adopted" event (a restart would report "started").
    until("the new agent's adoption reported", PATIENCE, || {
        let status = json(&addr, &["alloc", "status", &id]);
        let events = status["events"].as_array()?.clone();
        events.iter().any(|e| e["kind"] == "adopted").then_some(())
    })
    .await;
    assert_eq!(
        qemu_pids(&data_dir),
        pids,
        "the VM was re-adopted, not restarted"
    );
    let allocs = json(&addr, &["alloc", "list", "--job", "vm"]);
    let running: Vec<&Value> = allocs
        .as_array()
        .expect("list")
        .iter()
        .filter(|a| a["status"] == "running")
        .collect();
    assert_eq!(running.len(), 1, "{allocs:#}");
    assert_eq!(running[0]["id"], id.as_str());

    must_cli_ok(&["--addr", &addr, "job", "stop", "vm"]);
    until("QEMU gone after job stop", PATIENCE, || {
        qemu_pids(&data_dir).is_empty().then_some(())
    })
    .await;
}

/// herd's source tree, where `herd vm guest` finds the kernel
/// `.ci/vm-guest.sh` fetched, as it does for someone who just cloned it.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `herd vm guest ARGS` run from the source tree.
fn vm_guest(args: &[&str]) -> Output {
    common::herd_command()
        .current_dir(workspace_root())
        .args(["vm", "guest"])
        .args(args)
        .env("HERD_LOG", "error")
        .output()
        .expect("run herd vm guest")
}

/// `--allow-path` flags for an agent whose VMs boot `kernel` with files
/// from `dir`: both directories, since agents confine spec paths.
fn allow_paths(kernel: &Path, dir: &Path) -> Vec<String> {
    let kernel_dir = std::fs::canonicalize(kernel)
        .ok()
        .and_then(|k| k.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/"));
    vec![
        "--allow-path".to_string(),
        kernel_dir.display().to_string(),
        "--allow-path".to_string(),
        dir.display().to_string(),
    ]
}

fn non_empty(path: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herd_vm_guest_prepares_a_guest_whose_printed_config_boots() {
    let (kernel, _) = match guest_parts() {
        Ok(parts) => parts,
        Err(why) => return skip_or_fail(&why),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let guest = dir.path().join("guest"); // created by the command
    let guest_arg = guest.display().to_string();

    let out = vm_guest(&[&guest_arg, "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paths: Value = serde_json::from_slice(&out.stdout).expect("json");
    let (vmlinuz, initrd) = (
        paths["kernel"].as_str().expect("kernel"),
        paths["initrd"].as_str().expect("initrd"),
    );
    assert!(non_empty(vmlinuz) && non_empty(initrd), "{paths:#}");
    assert_eq!(
        std::fs::metadata(vmlinuz).expect("kernel").len(),
        std::fs::metadata(&kernel).expect("kernel").len(),
        "the kernel .ci/vm-guest.sh fetched (or HERD_VM_KERNEL) was copied: {paths:#}"
    );
    // The virtio disk modules .ci/vm-guest.sh put beside that kernel are
    // packed, so a VM with a disk sees it.
    let beside = kernel.parent().map(|d| d.join("modules/virtio_blk.ko"));
    if beside.is_some_and(|m| m.is_file()) {
        assert_eq!(paths["disk_modules"], true, "{paths:#}");
    }

    // Again, for people: the `[task.config]` lines, which must boot as printed.
    let out = vm_guest(&[&guest_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let config: Vec<&str> = text
        .lines()
        .skip_while(|line| *line != "[task.config]")
        .skip(1)
        .take_while(|line| !line.is_empty())
        .collect();
    assert!(
        config.iter().any(|l| l.starts_with("kernel = "))
            && config.iter().any(|l| l.starts_with("initrd = ")),
        "{text}"
    );
    // examples/vm.toml holds the same lines for the command's default directory.
    let example =
        std::fs::read_to_string(workspace_root().join("examples/vm.toml")).expect("example");
    let canonical = std::fs::canonicalize(&guest)
        .expect("guest dir")
        .display()
        .to_string();
    for line in &config {
        let default = line.replace(&canonical, "/tmp/herd-vm-guest");
        assert!(
            example.lines().any(|l| l.starts_with(&default)),
            "examples/vm.toml lacks {default:?}"
        );
    }

    let allow = allow_paths(&kernel, dir.path());
    let allow: Vec<&str> = allow.iter().map(String::as_str).collect();
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "3000").await;
    agents.start("g1", &allow).expect("agent");
    let spec = write_spec(
        dir.path(),
        "guest",
        &format!(
            "name = \"guest\"\ntype = \"service\"\n[task]\ndriver = \"vm\"\n[task.config]\n{}\naccel = \"tcg\"\n[task.resources]\ncpu = 1000\nmemory = \"128MiB\"\n",
            config.join("\n")
        ),
    );
    must_cli_ok(&["--addr", &addr, "job", "run", &spec]);
    let id = until("the guest VM running", PATIENCE, || {
        let a = running_allocs(&addr, "guest").into_iter().next()?;
        Some(a["id"].as_str()?.to_string())
    })
    .await;
    until(
        "the guest's first tick in herd alloc logs",
        PATIENCE,
        || {
            let out = must_run_cli(&["--addr", &addr, "alloc", "logs", &id]);
            String::from_utf8_lossy(&out.stdout)
                .contains("herd-guest: tick")
                .then_some(())
        },
    )
    .await;
    must_cli_ok(&["--addr", &addr, "job", "stop", "guest"]);
    until("QEMU gone after job stop", PATIENCE, || {
        qemu_pids(&canonical).is_empty().then_some(())
    })
    .await;
}

#[test]
fn herd_vm_guest_without_a_kernel_says_what_to_do_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let guest = dir.path().join("guest");
    let out = vm_guest(&[
        &guest.display().to_string(),
        "--kernel",
        "/nonexistent/vmlinuz",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for hint in ["/nonexistent/vmlinuz", ".ci/vm-guest.sh", "--kernel"] {
        assert!(stderr.contains(hint), "no {hint:?} in: {stderr}");
    }
    assert!(!guest.exists(), "nothing written on refusal");
}
