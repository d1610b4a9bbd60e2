//! Drivers do not let a job escape (issue 24): an `exec` task runs as the
//! node's unprivileged exec user and cannot write outside what it was
//! given; the paths a spec names stay inside the allocation directory or a
//! directory the node allows; a VM gets no host device it was not given.
//! Real processes under the real executor (this package's `herd` binary).

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use herd_actors::driver::confine::{Confinement, RunAs};
use herd_actors::driver::exec::ExecDriver;
use herd_actors::driver::vm::VmDriver;
use herd_actors::driver::{Driver, DriverError, WorkloadSpec};
use herd_api::job::TaskSpec;
use herd_api::resources::Resources;

use common::{must_run_cli, skip_or_fail};

/// Bound on a task that should end at once.
const PATIENCE: Duration = Duration::from_secs(20);

fn spec(alloc_dir: PathBuf, driver: &str, command: Option<&str>, args: &[&str]) -> WorkloadSpec {
    WorkloadSpec {
        alloc_id: format!(
            "confine-{}",
            alloc_dir
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .unwrap_or("x")
        ),
        generation: 1,
        job: "confine-test".to_string(),
        task: TaskSpec {
            driver: driver.to_string(),
            command: command.map(String::from),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: BTreeMap::new(),
            workdir: None,
            resources: Resources {
                cpu_millis: 500,
                memory_bytes: 128 << 20,
                gpus: 0,
                gpu_model: None,
            },
            config: Default::default(),
        },
        alloc_dir,
        env: BTreeMap::new(),
    }
}

/// A temporary directory every user may traverse (tempdirs are 0700), so
/// that a task running as another user reaches its allocation directory.
fn open_tempdir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = fs::canonicalize(tmp.path()).expect("canonical");
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");
    (tmp, root)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn refused(result: Result<(), DriverError>, needles: &[&str]) {
    match result {
        Err(e @ DriverError::Unsupported { .. }) => {
            let text = e.to_string();
            for needle in needles {
                assert!(text.contains(needle), "{needle:?} not in: {text}");
            }
        }
        other => panic!("expected a refusal naming {needles:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn an_exec_task_runs_as_the_exec_user_and_cannot_write_outside_its_directory() {
    if !is_root() {
        // Changing user needs root; CI runs these tests as root.
        eprintln!("skipping: running as another user than root needs root");
        return;
    }
    let nobody = match RunAs::resolve("nobody") {
        Ok(user) => user,
        Err(e) => return skip_or_fail(&format!("no user nobody here: {e}")),
    };
    let (_tmp, root) = open_tempdir();
    let secret = root.join("root-owned");
    fs::write(&secret, "precious\n").expect("write");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).expect("chmod");
    let alloc = root.join("alloc");
    let script = format!(
        "id -u; id -G; \
         if echo pwned >> {secret} 2>/dev/null; then echo WROTE-OUTSIDE; else echo REFUSED-OUTSIDE; fi; \
         if echo mine > \"$HERD_ALLOC_DIR/mine\"; then echo OWN-OK; fi; \
         if rm -f \"$HERD_ALLOC_DIR/launch.json\" 2>/dev/null; then echo REMOVED-LAUNCH; else echo KEPT-LAUNCH; fi",
        secret = secret.display()
    );
    let driver = ExecDriver::new(env!("CARGO_BIN_EXE_herd"))
        .with_confinement(Confinement::for_node(Some("nobody"), &[], &[]).expect("policy"));
    let spec = spec(alloc.clone(), "exec", Some("/bin/sh"), &["-c", &script]);
    let handle = driver.start(&spec).await.expect("start");
    let exit = tokio::time::timeout(PATIENCE, driver.wait(&handle))
        .await
        .expect("the task ends")
        .expect("wait");
    let stdout = fs::read_to_string(alloc.join("stdout.log")).expect("stdout");
    let stderr = fs::read_to_string(alloc.join("stderr.log")).unwrap_or_default();
    assert!(
        exit.success(),
        "{exit:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            nobody.uid.to_string().as_str(),
            // Its own group only: every supplementary group dropped.
            nobody.gid.to_string().as_str(),
            "REFUSED-OUTSIDE",
            "OWN-OK",
            "KEPT-LAUNCH",
        ],
        "stderr: {stderr}"
    );
    assert_eq!(fs::read_to_string(&secret).expect("read"), "precious\n");
    assert!(alloc.join("launch.json").is_file());
    // The directory: the agent's, shared with the user's group, sticky.
    let meta = fs::metadata(&alloc).expect("alloc dir");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o1770);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), nobody.gid);
}

#[tokio::test]
async fn paths_a_spec_names_must_stay_inside_the_allocation_or_an_allowed_directory() {
    let (_tmp, root) = open_tempdir();
    let allowed = root.join("allowed");
    let elsewhere = root.join("elsewhere");
    let alloc = root.join("alloc");
    for dir in [&allowed, &elsewhere, &alloc] {
        fs::create_dir_all(dir).expect("mkdir");
    }
    let tool = elsewhere.join("tool");
    fs::write(&tool, "#!/bin/sh\n").expect("write");
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).expect("chmod");
    symlink(&tool, alloc.join("escape")).expect("symlink");
    let driver = ExecDriver::new(env!("CARGO_BIN_EXE_herd")).with_confinement(
        Confinement::for_node(None, std::slice::from_ref(&allowed), &[]).expect("policy"),
    );
    let exec = |command: &str, workdir: Option<&Path>| {
        let mut s = spec(alloc.clone(), "exec", Some(command), &[]);
        s.task.workdir = workdir.map(|w| w.display().to_string());
        driver.check(&s)
    };
    // A working directory outside, and escapes through .. or a symlink.
    refused(
        exec("/bin/true", Some(&elsewhere)),
        &[
            "task.workdir",
            "outside the allocation directory",
            "allow_paths",
        ],
    );
    refused(
        exec("../elsewhere/tool", None),
        &["task.command", "outside"],
    );
    refused(exec("./escape", None), &["task.command", "outside"]);
    // Inside: an allowed directory, a program of the node, the allocation's own.
    exec("/bin/true", Some(&allowed)).expect("an allowed workdir");
    exec("true", None).expect("a program found in PATH");
    fs::copy(&tool, alloc.join("own-tool")).expect("copy");
    exec("./own-tool", None).expect("the allocation's own program");
    // The library default (no node policy) keeps the old behaviour.
    let unconfined = ExecDriver::new(env!("CARGO_BIN_EXE_herd"));
    let mut s = spec(alloc.clone(), "exec", Some("/bin/true"), &[]);
    s.task.workdir = Some(elsewhere.display().to_string());
    unconfined.check(&s).expect("unconfined");
}

/// A block device of this host, if it has one we can see.
fn some_block_device() -> Option<PathBuf> {
    fs::read_dir("/dev")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| herd_actors::driver::confine::is_block_device(p))
}

#[tokio::test]
async fn a_vm_gets_no_host_path_or_device_it_was_not_given() {
    if herd_actors::driver::vm::qemu::find_in_path("qemu-system-x86_64").is_none() {
        return skip_or_fail("qemu-system-x86_64 not found (install qemu-system-x86)");
    }
    let (_tmp, root) = open_tempdir();
    let alloc = root.join("alloc");
    let images = root.join("images");
    fs::create_dir_all(&alloc).expect("mkdir");
    fs::create_dir_all(&images).expect("mkdir");
    fs::write(alloc.join("kernel"), "k").expect("write");
    fs::write(images.join("disk.img"), "d").expect("write");
    fs::write(root.join("host-secret"), "s").expect("write");
    symlink(root.join("host-secret"), alloc.join("initrd")).expect("symlink");
    let policy = Confinement::for_node(None, std::slice::from_ref(&images), &[]).expect("policy");
    let driver = VmDriver::new(env!("CARGO_BIN_EXE_herd")).with_confinement(&policy);
    let vm = |pairs: &[(&str, String)]| {
        let mut s = spec(alloc.clone(), "vm", None, &[]);
        s.task.config = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .chain([("accel".to_string(), "tcg".to_string())])
            .collect();
        driver.check(&s)
    };
    let kernel = ("kernel", alloc.join("kernel").display().to_string());
    vm(std::slice::from_ref(&kernel)).expect("a kernel of the allocation");
    vm(&[
        kernel.clone(),
        ("disk", images.join("disk.img").display().to_string()),
    ])
    .expect("a disk from an allowed directory");
    refused(
        vm(&[("kernel", root.join("host-secret").display().to_string())]),
        &["task.config.kernel", "outside the allocation directory"],
    );
    refused(
        vm(&[
            kernel.clone(),
            ("initrd", alloc.join("initrd").display().to_string()),
        ]),
        &["task.config.initrd", "outside"],
    );
    refused(
        vm(&[("disk", "/etc/passwd".to_string())]),
        &["task.config.disk", "outside"],
    );
    // A host device, named directly or through a symlink in the
    // allocation, only where the node lists it.
    match some_block_device() {
        None => eprintln!("no block device visible here: the device refusal is not exercised"),
        Some(device) => {
            symlink(&device, alloc.join("dev-link")).expect("symlink");
            for given in [device.clone(), alloc.join("dev-link")] {
                refused(
                    vm(&[("disk", given.display().to_string())]),
                    &["task.config.disk", "host device", "vm_devices"],
                );
            }
            let listed =
                Confinement::for_node(None, &[], std::slice::from_ref(&device)).expect("policy");
            let driver = VmDriver::new(env!("CARGO_BIN_EXE_herd")).with_confinement(&listed);
            let mut s = spec(alloc.clone(), "vm", None, &[]);
            s.task.config = [
                ("disk".to_string(), device.display().to_string()),
                ("accel".to_string(), "tcg".to_string()),
            ]
            .into();
            driver.check(&s).expect("a device the node lists");
        }
    }
}

#[test]
fn an_agent_with_an_unknown_exec_user_does_not_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = must_run_cli(&[
        "node",
        "--name",
        "n1",
        "--coordinators",
        "127.0.0.1:1",
        "--data-dir",
        &dir.path().display().to_string(),
        "--exec-user",
        "no-such-user-herd",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exec-user"), "{stderr}");
    assert!(stderr.contains("no-such-user-herd"), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_with_exec_user_runs_exec_jobs_as_that_user_and_confines_paths() {
    if !is_root() {
        eprintln!("skipping: running as another user than root needs root");
        return;
    }
    let nobody = match RunAs::resolve("nobody") {
        Ok(user) => user,
        Err(e) => return skip_or_fail(&format!("no user nobody here: {e}")),
    };
    let (_cluster, addr, mut agents) = common::agents::cluster_with_agents(1, "3000").await;
    agents
        .start("c1", &["--exec-user", "nobody"])
        .expect("agent");
    common::agents::must_have_ready_nodes(&addr, &["c1"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = common::write_spec(
        dir.path(),
        "whoami",
        "name = \"whoami\"\ntype = \"batch\"\n[task]\ndriver = \"exec\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"echo uid=$(id -u)\"]\n[task.resources]\ncpu = 100\nmemory = \"32MiB\"\n",
    );
    common::must_cli_ok(&["--addr", &addr, "job", "run", &spec]);
    let expected = format!("uid={}", nobody.uid);
    let id = common::until("the job's allocation", PATIENCE, || {
        let allocs = common::json(&addr, &["alloc", "list", "--job", "whoami"]);
        Some(allocs.as_array()?.first()?["id"].as_str()?.to_string())
    })
    .await;
    common::until("the task's uid in herd alloc logs", PATIENCE, || {
        let out = must_run_cli(&["--addr", &addr, "alloc", "logs", &id]);
        String::from_utf8_lossy(&out.stdout)
            .contains(&expected)
            .then_some(())
    })
    .await;

    // The same node refuses a working directory outside the allocation.
    let outside = common::write_spec(
        dir.path(),
        "outside",
        &format!(
            "name = \"outside\"\ntype = \"batch\"\n[task]\ndriver = \"exec\"\ncommand = \"/bin/true\"\nworkdir = \"{}\"\n[task.resources]\ncpu = 100\nmemory = \"32MiB\"\n",
            dir.path().display()
        ),
    );
    // Detached: the refusal may fail the job before `job run` would have
    // seen it placed, which is not what this checks.
    common::must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &outside]);
    common::until("the refusal naming task.workdir", PATIENCE, || {
        let allocs = common::json(&addr, &["alloc", "list", "--job", "outside"]);
        let id = allocs.as_array()?.first()?["id"].as_str()?.to_string();
        let status = common::json(&addr, &["alloc", "status", &id]);
        status.to_string().contains("task.workdir").then_some(())
    })
    .await;
}
