//! A real VM's live migration under TLS: a cluster whose coordinator and
//! two agents hold certificates of one CA (`herd tls`) moves a QEMU VM
//! (TCG) with a fresh local disk between the agents, and QEMU's own
//! streams, the migration stream and the NBD copy of the disk, are mutual
//! TLS with the agents' node certificates (docs/vm.md).
//!
//! While the move runs, the target's NBD server is probed with `qemu-img`:
//! a plaintext client is refused (TLS required), and TLS clients holding a
//! *client* certificate of the same CA or another *node*'s certificate are
//! refused by the target's `tls-authz` (its QEMU says so in its log), while
//! the source node's own certificate gets through, checking the target's
//! exact node name as the source's QEMU does (`tls-hostname`
//! `<target>.node.herd`), and a probe expecting another node's name
//! refuses the target's certificate. Two earlier certificates of the
//! source node, each revoked with the CA's key before the move (`herd tls
//! cert revoke --ca-key`), are refused by the target's QEMU through the
//! cluster's revocation list its agent handed it, though they name the
//! same node. After it, the guest runs on at the target, not rebooted,
//! reading its disk
//! pattern from the target's disk; the target QEMU's migration parameters
//! name the TLS credentials and the authorization, which admits the source
//! node only; no copy of the node's key is left in either allocation
//! directory. Skipped where QEMU, qemu-img, busybox or the guest kernel are
//! missing, except in CI (`CI=true`), where that fails.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::qemu::{
    console, guest_parts, qemu_pids, spawn_vm_move, start_vm_agents, tick_uptimes, vm_job_spec,
    Reaper,
};
use common::tls::{
    must_have_ready_over_tls, must_tls_cli, running_over_tls, tls_cli, tls_cluster_with_agents,
    tls_json, TlsCluster,
};
use common::*;
use herd_actors::driver::vm::qemu;
use herd_actors::driver::vm::qmp::Qmp;
use herd_actors::driver::vm::tls::{AUTHZ_ID, CREDS_DIR, CREDS_ID};
use herd_chaos::tls::ClusterTls;
use serde_json::{json, Value};

/// How long a VM may take to boot or move on a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(90);
const PATTERN: &str = "tls-5c1e";

/// The uptime of each tick line whose disk read gave the pattern, and
/// whether every tick line did.
fn ticks(text: &str) -> (Vec<f64>, bool) {
    let expected = format!("herd-disk:{PATTERN}");
    let mut all_read_it = true;
    let uptimes = text
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("herd-guest: tick ")?;
            let (uptime, disk) = rest.split_once(" disk ")?;
            all_read_it &= disk.trim() == expected;
            uptime.trim().parse().ok()
        })
        .collect();
    (uptimes, all_read_it)
}

/// `qemu-img info` of the NBD server at `addr` (`HOST:PORT`): plaintext
/// when `identity` is None, else over TLS as the holder of that
/// certificate and key of the cluster's CA, checking that the server's
/// certificate carries the DNS name `hostname` as the source's QEMU does
/// (`scratch` gets the directory QEMU reads them from).
fn nbd_probe(
    addr: &str,
    tls: &ClusterTls,
    identity: Option<(&Path, &Path, &str)>,
    scratch: &Path,
) -> Output {
    let (host, port) = addr.rsplit_once(':').expect("HOST:PORT");
    let mut image = format!("driver=nbd,server.type=inet,server.host={host},server.port={port}");
    let mut command = std::process::Command::new(qemu::QEMU_IMG);
    command.arg("info");
    if let Some((cert, key, hostname)) = identity {
        std::fs::create_dir_all(scratch).expect("probe dir");
        std::fs::copy(tls.ca(), scratch.join("ca-cert.pem")).expect("ca");
        std::fs::copy(cert, scratch.join("client-cert.pem")).expect("cert");
        std::fs::copy(key, scratch.join("client-key.pem")).expect("key");
        command.args([
            "--object",
            &format!(
                "tls-creds-x509,id=probe,endpoint=client,dir={}",
                scratch.display()
            ),
        ]);
        image.push_str(&format!(",tls-creds=probe,tls-hostname={hostname}"));
    }
    command
        .args(["--image-opts", &image])
        .output()
        .expect("run qemu-img")
}

/// One command on the QMP socket of the VM in `alloc_dir`.
async fn qmp(alloc_dir: &Path, command: &str, arguments: Option<Value>) -> Value {
    let mut qmp = Qmp::connect(&alloc_dir.join(qemu::QMP_SOCKET))
        .await
        .expect("QMP");
    qmp.execute(command, arguments).await.expect(command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_with_a_disk_moves_under_tls_and_the_target_admits_the_source_node_only() {
    let parts = match guest_parts() {
        Ok(parts) => parts,
        Err(why) => return skip_or_fail(&why),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let TlsCluster {
        tls,
        cluster,
        addr,
        agents,
        ..
    } = tls_cluster_with_agents(dir.path(), 1);
    // The source holds each move for a while once the target is ready
    // (FAULT-INJECTION hook, `transferring`): the target's NBD server
    // stays up that long for the probes below. Not a bandwidth cap: a
    // rate-limited move of a guest doing disk I/O breaks the guest under
    // QEMU 7.2's TCG (docs/vm.md, "Known problems").
    let mut agents = agents.with_env(
        herd_node::migrate::source::FAULT_HOLD_ENV,
        "transferring:8000",
    );
    let _reaper = Reaper(agents.root().to_path_buf());
    start_vm_agents(&mut agents, &["q1", "q2"], &parts, dir.path());
    must_have_ready_over_tls(&tls, &addr, 2, PATIENCE).await;

    let spec = vm_job_spec(dir.path(), &parts, PATTERN);
    must_tls_cli(&tls, &["--addr", &addr, "job", "run", "--detach", &spec]);
    let (alloc, source) = running_over_tls(&tls, &addr, "vm", PATIENCE).await;
    let target = if source == "q1" { "q2" } else { "q1" };
    let alloc_dir = |node: &str| {
        agents
            .agent(node)
            .expect("agent")
            .data_dir
            .join("allocs")
            .join(&alloc)
    };
    let (source_dir, target_dir) = (alloc_dir(&source), alloc_dir(target));
    let target_log = agents.agent(target).expect("target").log_path.clone();
    until("the guest ticking with its disk", PATIENCE, || {
        let (uptimes, read_it) = ticks(&console(&source_dir));
        (uptimes.len() >= 2 && read_it).then_some(())
    })
    .await;
    let last_before = ticks(&console(&source_dir))
        .0
        .last()
        .copied()
        .unwrap_or(0.0);

    // The probes' certificates, made before the move so that its window
    // is spent probing.
    let (client_cert, client_key) = tls.issue("client", "admin").expect("client cert");
    let (other_cert, other_key) = tls.issue("node", "q3").expect("q3's cert");
    let (source_cert, source_key) = tls.issue("node", &source).expect("source's cert");
    // Two earlier certificates of the source node (the same name, other
    // serials), each revoked with the CA's key: the cluster's list names
    // both, both agents hand it to their QEMUs as `ca-crl.pem`, and the
    // target refuses each where the same node's current certificate gets
    // through. (With one CRL per revocation, GnuTLS kept only one of them
    // and the other certificate passed: this test caught it.)
    let mut stale = Vec::new();
    for n in 1..=2 {
        let (cert, key) = tls
            .issue_another("node", &source, &dir.path().join(format!("stale{n}")))
            .expect("an earlier certificate of the source");
        let revoke = [
            "--addr".to_string(),
            addr.clone(),
            "tls".into(),
            "cert".into(),
            "revoke".into(),
            cert.display().to_string(),
            "--ca-key".into(),
            tls.ca_key().display().to_string(),
            "--ca".into(),
            tls.ca().display().to_string(),
        ];
        let revoke: Vec<&str> = revoke.iter().map(String::as_str).collect();
        must_tls_cli(&tls, &revoke);
        stale.push((cert, key));
    }
    for node in [source.as_str(), target] {
        let log = agents.agent(node).expect("agent").log_path.clone();
        until("the agent holding the list naming both", PATIENCE, || {
            std::fs::read_to_string(&log)
                .ok()?
                .lines()
                .any(|l| l.contains("token table updated") && l.contains("listed_serials=2"))
                .then_some(())
        })
        .await;
    }
    // The move, held 8 s before it sends anything (above): four probes,
    // each a `qemu-img` with its own TLS handshake, run inside that window.
    let migrate = {
        let tls = tls.clone();
        spawn_vm_move(&addr, &alloc, target, move |args| {
            tls_cli(&tls, "admin", args)
        })
    };
    let listening = until("the target listening", PATIENCE, || {
        std::fs::read_to_string(&target_log)
            .ok()?
            .lines()
            .find(|l| l.contains("mark=vm.in.listening") && l.contains(&alloc))
            .map(str::to_string)
    })
    .await;
    assert!(listening.contains("tls=x509"), "{listening}");
    let nbd = listening
        .split_whitespace()
        .find_map(|word| word.strip_prefix("nbd="))
        .map(|a| a.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no NBD endpoint in {listening}"));

    // Plaintext: refused before any export is named.
    let plain = nbd_probe(&nbd, &tls, None, dir.path());
    let plain_err = String::from_utf8_lossy(&plain.stderr);
    assert!(!plain.status.success(), "a plaintext NBD client was served");
    assert!(
        plain_err.contains("TLS"),
        "refused for want of TLS: {plain_err}"
    );
    // The CA's certificates, but not the source node's: the handshake
    // passes, the target's authorization refuses.
    for (cert, key, subject) in [
        (&client_cert, &client_key, "CN=client admin"),
        (&other_cert, &other_key, "CN=node q3"),
    ] {
        let scratch = dir
            .path()
            .join(format!("probe-{}", subject.replace([' ', '='], "-")));
        let probe = nbd_probe(&nbd, &tls, Some((cert, key, "node.herd")), &scratch);
        assert!(
            !probe.status.success(),
            "{subject} was served: {}",
            String::from_utf8_lossy(&probe.stdout)
        );
    }
    // The same probe with the source node's certificate gets past TLS and
    // the authorization (it names no export, so it stops there): the
    // refusals above are the target's doing, not the probe's.
    // It checks the target's exact node name, as the source's QEMU does
    // (`tls-hostname` `<target>.node.herd`): the target's certificate
    // carries it.
    let target_name = format!("{target}.node.herd");
    let admitted = nbd_probe(
        &nbd,
        &tls,
        Some((&source_cert, &source_key, &target_name)),
        &dir.path().join("probe-source"),
    );
    let admitted_err = String::from_utf8_lossy(&admitted.stderr);
    assert!(
        admitted_err.contains("export") && !admitted_err.contains("TLS channel"),
        "the source node is admitted: {admitted_err}"
    );
    // The source node's revoked certificates: the same subject, so only
    // the revocation lists can refuse them.
    for (n, (stale_cert, stale_key)) in stale.iter().enumerate() {
        let revoked = nbd_probe(
            &nbd,
            &tls,
            Some((stale_cert, stale_key, &target_name)),
            &dir.path().join(format!("probe-revoked{n}")),
        );
        let revoked_err = String::from_utf8_lossy(&revoked.stderr);
        assert!(
            !revoked.status.success() && !revoked_err.contains("export"),
            "revoked certificate {n} of the source node got through: {revoked_err}"
        );
    }
    // A client expecting another node (q3) refuses the target's
    // certificate, valid as it is: QEMU checks the exact node name.
    let mistaken = nbd_probe(
        &nbd,
        &tls,
        Some((&source_cert, &source_key, "q3.node.herd")),
        &dir.path().join("probe-mistaken"),
    );
    let mistaken_err = String::from_utf8_lossy(&mistaken.stderr);
    assert!(!mistaken.status.success(), "q3's name matched the target");
    assert!(
        mistaken_err.contains("does not match the hostname q3.node.herd"),
        "refused for the name: {mistaken_err}"
    );

    let moved = migrate.join().expect("migrate thread");
    let qemu_log = |dir: &Path| std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    assert!(
        moved.status.success(),
        "migrate under TLS: {}{}\nsource QEMU: {}\ntarget QEMU: {}\nsource agent: {}",
        String::from_utf8_lossy(&moved.stdout),
        String::from_utf8_lossy(&moved.stderr),
        qemu_log(&source_dir),
        qemu_log(&target_dir),
        std::fs::read_to_string(&agents.agent(&source).expect("source").log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("vm.out") || l.contains("WARN") || l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let status = tls_json(&tls, &addr, &["alloc", "status", &alloc]).expect("alloc status");
    assert_eq!(status["node"], target, "{status:#}");
    // The target's QEMU logged both refusals of its authorization.
    let target_stderr = std::fs::read_to_string(target_dir.join("stderr.log")).unwrap_or_default();
    for subject in ["CN=client admin", "CN=node q3"] {
        assert!(
            target_stderr.contains(&format!("authz check for {subject} is denied")),
            "{subject} refused by tls-authz: {target_stderr}"
        );
    }
    assert_eq!(
        target_stderr
            .matches("The certificate has been revoked")
            .count(),
        2,
        "both revoked certificates refused as revoked: {target_stderr}"
    );

    // The same guest runs on at the target, its disk moved.
    let after = until("the guest ticking on the target", PATIENCE, || {
        let (uptimes, read_it) = ticks(&console(&target_dir));
        (uptimes.len() >= 2).then_some((uptimes, read_it))
    })
    .await;
    assert!(after.1, "the disk moved: {}", console(&target_dir));
    // At or after: a line the serial port held at the switch-over can be
    // printed again by the target; a rebooted guest would start near 0.
    assert!(
        after.0[0] >= last_before,
        "not rebooted: {:?} after {last_before} at the source:\n{}",
        after.0,
        console(&target_dir)
    );
    assert!(
        !console(&target_dir).contains("herd-guest: disk wrote"),
        "the target's guest did not boot again"
    );

    // The target QEMU took the migration stream under TLS, from the
    // source node only.
    let parameters = qmp(&target_dir, "query-migrate-parameters", None).await;
    assert_eq!(parameters["tls-creds"], CREDS_ID, "{parameters:#}");
    assert_eq!(parameters["tls-authz"], AUTHZ_ID, "{parameters:#}");
    let endpoint = qmp(
        &target_dir,
        "qom-get",
        Some(json!({"path": format!("/objects/{CREDS_ID}"), "property": "endpoint"})),
    )
    .await;
    assert_eq!(endpoint, "server");
    let admitted = qmp(
        &target_dir,
        "qom-get",
        Some(json!({"path": format!("/objects/{AUTHZ_ID}"), "property": "identity"})),
    )
    .await;
    assert_eq!(admitted, format!("CN=node {source}"));
    for alloc_dir in [&source_dir, &target_dir] {
        assert!(
            !alloc_dir.join(CREDS_DIR).exists(),
            "no copy of the node's key left in {}",
            alloc_dir.display()
        );
    }
    until("one QEMU left, the target's", PATIENCE, || {
        let on_source = qemu_pids(&source_dir.display().to_string());
        let on_target = qemu_pids(&target_dir.display().to_string());
        (on_source.is_empty() && on_target.len() == 1).then_some(())
    })
    .await;
    must_tls_cli(&tls, &["--addr", &addr, "job", "stop", "vm"]);
    drop(cluster);
}

/// A VM without a disk moves under TLS (memory and devices only, no NBD
/// copy): the target's QEMU takes the stream under TLS from the source
/// node only, the target confirms the whole VM arrived before the
/// switch-over, and the same guest runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_without_a_disk_moves_under_tls_and_is_confirmed_before_the_switch_over() {
    let parts = match guest_parts() {
        Ok(parts) => parts,
        Err(why) => return skip_or_fail(&why),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let TlsCluster {
        tls,
        cluster,
        addr,
        agents,
        ..
    } = tls_cluster_with_agents(dir.path(), 1);
    let mut agents = agents;
    let _reaper = Reaper(agents.root().to_path_buf());
    start_vm_agents(&mut agents, &["q1", "q2"], &parts, dir.path());
    must_have_ready_over_tls(&tls, &addr, 2, PATIENCE).await;
    let initrd = common::qemu::guest_initrd(dir.path(), &parts);
    let spec = write_spec(
        dir.path(),
        "vm",
        &format!(
            "name = \"vm\"\ntype = \"service\"\n[task]\ndriver = \"vm\"\n[task.config]\nkernel = \"{}\"\ninitrd = \"{}\"\naccel = \"tcg\"\nappend = \"console=ttyS0 quiet panic=-1\"\n[task.resources]\ncpu = 1000\nmemory = \"128MiB\"\n",
            parts.kernel.display(),
            initrd.display()
        ),
    );
    must_tls_cli(&tls, &["--addr", &addr, "job", "run", "--detach", &spec]);
    let (alloc, source) = running_over_tls(&tls, &addr, "vm", PATIENCE).await;
    let target = if source == "q1" { "q2" } else { "q1" };
    let alloc_dir = |node: &str| {
        agents
            .agent(node)
            .expect("agent")
            .data_dir
            .join("allocs")
            .join(&alloc)
    };
    let (source_dir, target_dir) = (alloc_dir(&source), alloc_dir(target));
    let uptimes = |dir: &Path| tick_uptimes(&console(dir));
    until("the guest ticking", PATIENCE, || {
        (uptimes(&source_dir).len() >= 2).then_some(())
    })
    .await;

    let migrate = {
        let tls = tls.clone();
        spawn_vm_move(&addr, &alloc, target, move |args| {
            tls_cli(&tls, "admin", args)
        })
    };
    let moved = migrate.join().expect("migrate thread");
    let last_before = uptimes(&source_dir).last().copied().unwrap_or(0.0);
    assert!(
        moved.status.success(),
        "migrate under TLS: {}{}\ntarget QEMU: {}",
        String::from_utf8_lossy(&moved.stdout),
        String::from_utf8_lossy(&moved.stderr),
        std::fs::read_to_string(target_dir.join("stderr.log")).unwrap_or_default(),
    );
    let status = tls_json(&tls, &addr, &["alloc", "status", &alloc]).expect("alloc status");
    assert_eq!(status["node"], target, "{status:#}");
    // The source asked the target to confirm before the switch-over.
    let log = |node: &str| {
        std::fs::read_to_string(&agents.agent(node).expect("agent").log_path).unwrap_or_default()
    };
    let target_log = log(target);
    for mark in ["vm.in.listening", "vm.in.confirmed"] {
        assert!(
            target_log
                .lines()
                .any(|l| l.contains(&format!("mark={mark}")) && l.contains(&alloc)),
            "the target logged {mark}"
        );
    }
    assert!(
        log(&source)
            .lines()
            .any(|l| l.contains("mark=source.target_confirmed") && l.contains(&alloc)),
        "the source was told the target holds the VM"
    );
    // The target's QEMU took the stream under TLS, from the source only.
    let parameters = qmp(&target_dir, "query-migrate-parameters", None).await;
    assert_eq!(parameters["tls-creds"], CREDS_ID, "{parameters:#}");
    assert_eq!(parameters["tls-authz"], AUTHZ_ID, "{parameters:#}");
    let admitted = qmp(
        &target_dir,
        "qom-get",
        Some(json!({"path": format!("/objects/{AUTHZ_ID}"), "property": "identity"})),
    )
    .await;
    assert_eq!(admitted, format!("CN=node {source}"));

    let after = until("the guest ticking on the target", PATIENCE, || {
        let ticks = uptimes(&target_dir);
        (ticks.len() >= 2).then_some(ticks)
    })
    .await;
    assert!(
        after[0] >= last_before,
        "not rebooted: {after:?} after {last_before} at the source"
    );
    until("one QEMU left, the target's", PATIENCE, || {
        let on_source = qemu_pids(&source_dir.display().to_string());
        let on_target = qemu_pids(&target_dir.display().to_string());
        (on_source.is_empty() && on_target.len() == 1).then_some(())
    })
    .await;
    must_tls_cli(&tls, &["--addr", &addr, "job", "stop", "vm"]);
    drop(cluster);
}
