//! Backups end to end, on real coordinator processes: `herd operator
//! snapshot save` on one cluster and a new cluster started from the file
//! (`herd coordinator --recover-from`) read the same, byte for byte; a
//! cluster that lost its quorum is recovered from a backup and takes writes
//! again; damaged files and data dirs that hold state are refused, naming
//! what is wrong, with nothing changed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::members::{must_see_voters, Member};
use common::*;
use herd_api::client::HerdClient;
use herd_chaos::process_cluster::ProcessCluster;
use serde_json::Value;

/// Registrations without agents send no heartbeats: a TTL long enough that
/// no node is marked down during a test, on the old cluster and the new.
const NO_TTL: [&str; 2] = ["--node-ttl-ms", "3600000"];

fn spec(name: &str, count: u32, cpu: u32) -> String {
    format!(
        "name = \"{name}\"\ntype = \"service\"\ncount = {count}\npriority = 50\n[task]\ndriver = \"exec\"\ncommand = \"/bin/sleep\"\nargs = [\"600\"]\n[task.resources]\ncpu = {cpu}\nmemory = \"256MiB\"\n"
    )
}

/// Stdout of `herd --addr ADDR ARGS` (which must succeed), as bytes.
fn stdout_of(addr: &str, args: &[&str]) -> Vec<u8> {
    let mut full = vec!["--addr", addr];
    full.extend_from_slice(args);
    must_cli_ok(&full).into_bytes()
}

/// `herd operator snapshot save FILE -o json` against `addr`, parsed.
fn must_save(addr: &str, file: &Path) -> Value {
    let file = file.display().to_string();
    json(addr, &["operator", "snapshot", "save", &file])
}

/// Runs `herd ARGS`, which must fail with exit code 2; returns its stderr.
fn must_refuse(args: &[&str]) -> String {
    let out = must_run_cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "herd {args:?} was not refused as bad input: stdout {} stderr {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// What a cluster answers that a restore must keep: the job list, each
/// variable (plain and JSON, with its version) and the allocations.
fn observed(addr: &str, keys: &[String]) -> Vec<(String, Vec<u8>)> {
    let mut seen = vec![
        (
            "job list".to_string(),
            stdout_of(addr, &["job", "list", "-o", "json"]),
        ),
        (
            "alloc list".to_string(),
            stdout_of(addr, &["alloc", "list", "-o", "json"]),
        ),
    ];
    for key in keys {
        seen.push((
            format!("var get {key}"),
            stdout_of(addr, &["var", "get", key]),
        ));
        seen.push((
            format!("var get {key} -o json"),
            stdout_of(addr, &["var", "get", key, "-o", "json"]),
        ));
    }
    seen
}

/// Waits until what `addr` answers stops changing (the scheduler has placed
/// what it can), and returns it.
async fn must_settle(addr: &str, keys: &[String]) -> Vec<(String, Vec<u8>)> {
    let mut last = observed(addr, keys);
    let mut stable_for = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = observed(addr, keys);
        if now == last {
            stable_for += 1;
            if stable_for == 3 {
                return now;
            }
        } else {
            stable_for = 0;
            last = now;
        }
    }
    panic!("{addr} never settled");
}

fn assert_same(what: &str, before: &[(String, Vec<u8>)], after: &[(String, Vec<u8>)]) {
    assert_eq!(before.len(), after.len());
    for ((name, old), (_, new)) in before.iter().zip(after) {
        assert!(
            old == new,
            "{what}: `herd {name}` differs\n--- before ---\n{}\n--- after ---\n{}",
            String::from_utf8_lossy(old),
            String::from_utf8_lossy(new)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_restored_into_a_fresh_cluster_reads_the_same_byte_for_byte() {
    let source = ProcessCluster::start(herd_bin(), 3, &NO_TTL).expect("start");
    source
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let addr = source.addr_list();
    for node in ["n1", "n2"] {
        must_register_node(&source, node, 4000).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Placed in full, placed in part (one instance per node fits: blocked),
    // and stopped.
    for (name, count, cpu) in [("web", 2, 1000), ("big", 3, 3000), ("gone", 1, 500)] {
        let path = write_spec(dir.path(), name, &spec(name, count, cpu));
        must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &path]);
    }
    must_cli_ok(&["--addr", &addr, "job", "stop", "gone"]);
    let mut keys = Vec::new();
    for i in 0..20 {
        let key = format!("config/{i}");
        must_cli_ok(&["--addr", &addr, "var", "put", &key, &format!("first {i}")]);
        if i % 3 == 0 {
            must_cli_ok(&["--addr", &addr, "var", "put", &key, &format!("second {i}")]);
        }
        keys.push(key);
    }
    let before = must_settle(&addr, &keys).await;
    let source_id = json(&addr, &["cluster", "status"])["cluster_id"]
        .as_str()
        .expect("cluster id")
        .to_string();

    let file = dir.path().join("backup.snap");
    let saved = must_save(&addr, &file);
    let on_disk = std::fs::metadata(&file).expect("backup written").len();
    assert_eq!(saved["file"], file.display().to_string());
    assert_eq!(saved["bytes"].as_u64(), Some(on_disk), "{saved}");
    assert!(saved["index"].as_u64().expect("index") > 0, "{saved}");
    assert!(saved["term"].as_u64().expect("term") > 0, "{saved}");
    assert!(
        saved["checksum"]
            .as_str()
            .expect("checksum")
            .starts_with("crc32c:"),
        "{saved}"
    );
    // Nothing moved while it was taken.
    assert_same(
        "the source during the backup",
        &before,
        &observed(&addr, &keys),
    );

    let inspected = json(
        &addr,
        &[
            "operator",
            "snapshot",
            "inspect",
            &file.display().to_string(),
        ],
    );
    assert_eq!(inspected["index"], saved["index"], "{inspected}");
    assert_eq!(inspected["term"], saved["term"], "{inspected}");
    assert_eq!(inspected["checksum"], saved["checksum"], "{inspected}");
    assert_eq!(inspected["cluster_id"], source_id.as_str(), "{inspected}");
    assert_eq!(inspected["jobs"], 3, "{inspected}");
    assert_eq!(inspected["nodes"], 2, "{inspected}");
    // Ours, and any the cluster keeps for itself (the rescheduler's record).
    assert!(
        inspected["variables"].as_u64().expect("variables") >= 20,
        "{inspected}"
    );
    assert!(
        inspected["allocations"].as_u64().expect("allocs") >= 4,
        "{inspected}"
    );
    assert_eq!(
        inspected["file_bytes"].as_u64(),
        Some(on_disk),
        "{inspected}"
    );

    // A fresh cluster: its first member starts from the file, two join it.
    let addrs = ProcessCluster::pick_addrs(3).expect("addresses");
    let root = tempfile::tempdir().expect("tempdir");
    let file_arg = file.display().to_string();
    let first = Member::start(
        root.path(),
        1,
        &addrs[&1],
        &["--recover-from", &file_arg, NO_TTL[0], NO_TTL[1]],
    );
    must_see_voters(&first.addr, 1, &[&first]).await;
    let second = Member::start(
        root.path(),
        2,
        &addrs[&2],
        &["--join", &first.addr, NO_TTL[0], NO_TTL[1]],
    );
    let third = Member::start(
        root.path(),
        3,
        &addrs[&3],
        &["--join", &first.addr, NO_TTL[0], NO_TTL[1]],
    );
    let new_addr = format!("{},{},{}", addrs[&1], addrs[&2], addrs[&3]);
    let status = must_see_voters(&first.addr, 3, &[&first, &second, &third]).await;
    let new_id = status["cluster_id"].as_str().expect("new cluster id");
    assert_ne!(
        new_id, source_id,
        "a restore starts a new cluster, with its own id"
    );

    let after = must_settle(&new_addr, &keys).await;
    assert_same("the restored cluster", &before, &after);
    // Every member holds the same state, the joiners through Raft.
    for member in [&second, &third] {
        let stale = stdout_of(&member.addr, &["var", "get", "config/3", "--stale"]);
        assert_eq!(stale, b"second 3\n", "member {}", member.id);
    }

    // The new cluster takes writes, at indexes after every one the backup used.
    let client = HerdClient::from_list(&new_addr).expect("client");
    must_put(&client, "after/restore", "yes").await;
    let written = json(&new_addr, &["var", "put", "after/again", "yes"]);
    assert!(
        written["log_index"].as_u64() > saved["index"].as_u64(),
        "index {written} not past the backup's {saved}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_that_lost_its_quorum_is_recovered_from_a_snapshot() {
    let mut old = ProcessCluster::start(herd_bin(), 3, &NO_TTL).expect("start");
    old.wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let addr = old.addr_list();
    let client = old.client().expect("client");
    let acked = must_write_many(&old, &[1, 2, 3], "kept/", 50, 4).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("nightly.snap");
    let saved = must_save(&addr, &file);
    // Written after the backup: a recovery from it cannot have these.
    must_put(&client, "late/0", "after the backup").await;

    // Two of three members are lost: no quorum, no writes.
    old.kill(2).expect("kill 2");
    old.kill(3).expect("kill 3");
    let survivor = old.member(1).expect("member 1").addr.clone();
    let lost = put(
        &HerdClient::from_list(&survivor).expect("client"),
        "during/outage",
        "x",
    )
    .await;
    assert!(
        lost.is_err(),
        "a write succeeded without a quorum: {lost:?}"
    );

    // Recovery: a member on a new data dir starts from the backup alone.
    let addrs = ProcessCluster::pick_addrs(3).expect("addresses");
    let root = tempfile::tempdir().expect("tempdir");
    let file_arg = file.display().to_string();
    let mut first = Member::start(
        root.path(),
        1,
        &addrs[&1],
        &["--recover-from", &file_arg, NO_TTL[0], NO_TTL[1]],
    );
    must_see_voters(&first.addr, 1, &[&first]).await;
    let recovered = HerdClient::from_list(&first.addr).expect("client");
    must_read_all(&recovered, &acked, false).await;
    assert_eq!(
        get(&recovered, "late/0", false).await.expect("read"),
        None,
        "a write after the backup cannot be in it"
    );
    must_put(&recovered, "after/recovery", "1").await;

    // Restarted with the same command line (as a supervisor would), it
    // resumes from its data dir instead of restoring over it.
    first.kill();
    first.spawn();
    must_see_voters(&first.addr, 1, &[&first]).await;
    assert_eq!(
        get(&recovered, "after/recovery", false)
            .await
            .expect("read")
            .as_deref(),
        Some("1"),
        "the restart restored the backup again over newer writes\n{}",
        first.log_text()
    );

    // The others join it as usual and the cluster is whole again.
    let second = Member::start(
        root.path(),
        2,
        &addrs[&2],
        &["--join", &first.addr, NO_TTL[0], NO_TTL[1]],
    );
    let third = Member::start(
        root.path(),
        3,
        &addrs[&3],
        &["--join", &first.addr, NO_TTL[0], NO_TTL[1]],
    );
    must_see_voters(&first.addr, 3, &[&first, &second, &third]).await;
    let whole = HerdClient::from_list(&format!("{},{},{}", addrs[&2], addrs[&3], addrs[&1]))
        .expect("client");
    must_put(&whole, "after/join", "2").await;
    for member in [&first, &second, &third] {
        let one = HerdClient::from_list(&member.addr).expect("client");
        must_read_all(&one, &acked, false).await;
    }
    assert!(saved["index"].as_u64().expect("index") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_files_and_data_dirs_with_state_are_refused_and_nothing_changes() {
    let mut cluster = must_start_one_member(&NO_TTL).await;
    let addr = cluster.addr_list();
    let client = cluster.client().expect("client");
    must_put(&client, "k", "v").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.snap");
    must_save(&addr, &good);
    let bytes = std::fs::read(&good).expect("read backup");

    // One byte flipped in the state, and the file cut short.
    let flipped = dir.path().join("flipped.snap");
    let mut damaged = bytes.clone();
    let middle = damaged.len() - 10;
    damaged[middle] ^= 0x20;
    std::fs::write(&flipped, &damaged).expect("write");
    let truncated = dir.path().join("truncated.snap");
    std::fs::write(&truncated, &bytes[..bytes.len() - 7]).expect("write");
    let header_flipped = dir.path().join("header.snap");
    let mut damaged = bytes.clone();
    damaged[30] ^= 0x01;
    std::fs::write(&header_flipped, &damaged).expect("write");

    let fresh = dir.path().join("fresh-dir");
    let fresh_arg = fresh.display().to_string();
    for (file, problem) in [
        (&flipped, "payload checksum mismatch"),
        (&truncated, "truncated"),
        (&header_flipped, "header checksum mismatch"),
    ] {
        let name = file.display().to_string();
        let expected = format!("snapshot file {name}: ");
        let err = must_refuse(&["operator", "snapshot", "inspect", &name]);
        assert!(err.contains(&expected) && err.contains(problem), "{err}");
        let err = must_refuse(&[
            "operator",
            "snapshot",
            "restore",
            &name,
            "--data-dir",
            &fresh_arg,
            "--id",
            "1",
            "--advertise",
            "127.0.0.1:1",
        ]);
        assert!(err.contains(&expected) && err.contains(problem), "{err}");
        let port = ProcessCluster::pick_addrs(1).expect("address")[&1].clone();
        let err = must_refuse(&[
            "coordinator",
            "--id",
            "1",
            "--listen",
            &port,
            "--data-dir",
            &fresh_arg,
            "--recover-from",
            &name,
        ]);
        assert!(err.contains(&expected) && err.contains(problem), "{err}");
        assert!(!fresh.exists(), "a refused restore created {fresh_arg}");
    }

    // The member's own data dir holds state: refused, and it still holds it.
    let member_dir = cluster.member(1).expect("member").data_dir.clone();
    let member_arg = member_dir.display().to_string();
    let member_addr = cluster.member(1).expect("member").addr.clone();
    let cluster_id = json(&addr, &["cluster", "status"])["cluster_id"].clone();
    let good_arg = good.display().to_string();
    // While the member runs on it, its store is locked: refused too.
    let out = must_run_cli(&[
        "operator",
        "snapshot",
        "restore",
        &good_arg,
        "--data-dir",
        &member_arg,
        "--id",
        "1",
        "--advertise",
        &member_addr,
        "--force",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("stop it first"),
        "{err}"
    );
    cluster.kill(1).expect("kill");
    let restore = [
        "operator",
        "snapshot",
        "restore",
        good_arg.as_str(),
        "--data-dir",
        member_arg.as_str(),
        "--id",
        "1",
        "--advertise",
        member_addr.as_str(),
    ];
    let err = must_refuse(&restore);
    assert!(
        err.contains("already holds Raft state")
            && err.contains(&member_arg)
            && err.contains("--force"),
        "{err}"
    );
    let err = must_refuse(&[
        "coordinator",
        "--id",
        "1",
        "--listen",
        &member_addr,
        "--data-dir",
        &member_arg,
        "--recover-from",
        &good_arg,
    ]);
    assert!(err.contains("already holds Raft state"), "{err}");
    // Combined with --bootstrap the flag is refused before anything is read.
    let err = must_refuse(&[
        "coordinator",
        "--id",
        "1",
        "--listen",
        &member_addr,
        "--data-dir",
        &fresh_arg,
        "--bootstrap",
        "--peers",
        &format!("1={member_addr}"),
        "--recover-from",
        &good_arg,
    ]);
    assert!(err.contains("--recover-from"), "{err}");
    cluster.restart(1).expect("restart");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    assert_eq!(
        json(&addr, &["cluster", "status"])["cluster_id"],
        cluster_id,
        "the refused restore changed the data dir"
    );
    must_put(&client, "k", "changed after the backup").await;

    // --force replaces it: the member is then a new cluster holding the backup.
    cluster.kill(1).expect("kill");
    let mut forced = restore.to_vec();
    forced.push("--force");
    forced.extend(["-o", "json"]);
    let out: Value = serde_json::from_str(&must_cli_ok(&forced)).expect("json");
    assert_eq!(out["already_restored"], false, "{out}");
    cluster.restart(1).expect("restart");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    assert_eq!(
        get(&client, "k", false).await.expect("read").as_deref(),
        Some("v")
    );
    let status = json(&addr, &["cluster", "status"]);
    assert_eq!(status["cluster_id"], out["cluster_id"], "{status} {out}");
    assert_ne!(status["cluster_id"], cluster_id);
}
