//! Bad input gets a clear error and changes nothing: malformed job specs,
//! a data dir of another cluster or member, requests to a non-member.

mod common;

use std::time::Duration;

use common::*;
use herd_chaos::process_cluster::{Launch, ProcessCluster};

const GOOD: &str = "name = \"hello\"\ntype = \"batch\"\npriority = 50\n[task]\ndriver = \"exec\"\ncommand = \"/bin/sleep\"\nargs = [\"30\"]\n[task.resources]\ncpu = 100\nmemory = \"64MiB\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_specs_exit_2_with_location_and_store_nothing() {
    let cluster = must_start_one_member(&[]).await;
    let addr = cluster.addr_list();
    let dir = tempfile::tempdir().expect("tempdir");

    let cases = [
        (
            "unknown-field",
            GOOD.replace("command =", "comand ="),
            6,
            "comand",
        ),
        (
            "missing-name",
            GOOD.replace("name = \"hello\"\n", ""),
            1,
            "name",
        ),
        (
            "priority",
            GOOD.replace("priority = 50", "priority = 150"),
            3,
            "priority",
        ),
        (
            "memory",
            GOOD.replace("\"64MiB\"", "\"64 potatoes\""),
            10,
            "memory",
        ),
        ("syntax", GOOD.replace("cpu = 100", "cpu = = 100"), 9, ""),
        ("negative", GOOD.replace("cpu = 100", "cpu = -5"), 9, "cpu"),
        (
            "driver",
            GOOD.replace("\"exec\"", "\"teleport\""),
            5,
            "driver",
        ),
    ];
    for (file, text, line, field) in cases {
        let path = write_spec(dir.path(), file, &text);
        let out = must_run_cli(&["--addr", &addr, "job", "run", &path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
        assert!(
            stderr.contains(&format!("{path}:{line}:")),
            "{file}: expected line {line} in {stderr}"
        );
        assert!(
            stderr.contains(field),
            "{file}: expected field {field:?} in {stderr}"
        );
    }
    let list = must_cli_ok(&["--addr", &addr, "job", "list", "--output", "json"]);
    let jobs: serde_json::Value = serde_json::from_str(&list).expect("json");
    assert_eq!(
        jobs.as_array().map(|a| a.len()),
        Some(0),
        "nothing stored: {list}"
    );

    // The good spec is stored, and a resubmission with a change is version 2.
    // No node is registered: `--detach` returns once the job is stored,
    // without waiting for a placement that cannot happen here.
    let good = write_spec(dir.path(), "good", GOOD);
    // A wait that cannot be read is bad input too, refused before submitting.
    let out = must_run_cli(&["--addr", &addr, "job", "run", "--timeout", "soon", &good]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid duration \"soon\""), "{stderr}");
    must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &good]);
    let changed = write_spec(dir.path(), "good2", &GOOD.replace("\"30\"", "\"60\""));
    must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &changed]);
    let list: serde_json::Value = serde_json::from_str(&must_cli_ok(&[
        "--addr", &addr, "job", "list", "--output", "json",
    ]))
    .expect("json");
    assert_eq!(list[0]["name"], "hello");
    assert_eq!(list[0]["status"], "pending");
    assert_eq!(list[0]["version"], 2);
    must_cli_ok(&["--addr", &addr, "job", "stop", "hello"]);
    let status: serde_json::Value = serde_json::from_str(&must_cli_ok(&[
        "--addr", &addr, "job", "status", "hello", "-o", "json",
    ]))
    .expect("json");
    assert_eq!(status["status"], "stopped");
    let missing = must_run_cli(&["--addr", &addr, "job", "stop", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_dirs_of_another_cluster_or_member_are_refused() {
    let mut a = ProcessCluster::start(herd_bin(), 3, &[]).expect("cluster a");
    let mut b = ProcessCluster::start(herd_bin(), 3, &[]).expect("cluster b");
    a.wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader a");
    b.wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader b");
    must_put(&a.client().expect("client"), "x", "from-a").await;
    a.kill(1).expect("kill a1");
    b.kill(1).expect("kill b1");
    let a1_dir = a.member(1).expect("a1").data_dir.clone();
    let b1_addr = b.member(1).expect("b1").addr.clone();
    let b_peers = b
        .ids()
        .iter()
        .map(|id| format!("{id}={}", b.member(*id).expect("member").addr))
        .collect::<Vec<_>>()
        .join(",");

    // A's member 1 directory, started as B's member 1: refused, B untouched.
    let mut out = common::herd_command()
        .args([
            "coordinator",
            "--id",
            "1",
            "--listen",
            &b1_addr,
            "--bootstrap",
            "--peers",
            &b_peers,
        ])
        .arg("--data-dir")
        .arg(&a1_dir)
        .env("HERD_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    // A coordinator that failed to refuse would run forever: give it 20 s.
    let started = std::time::Instant::now();
    while out.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            let _ = out.kill();
            panic!("the coordinator started on another cluster's data dir instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = out.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("from another cluster"), "{stderr}");
    assert_eq!(
        get(&b.client().expect("client"), "x", false)
            .await
            .expect("read b"),
        None
    );

    // Member 2 started on member 1's directory: refused.
    let out = common::herd_command()
        .args(["coordinator", "--id", "2", "--listen", "127.0.0.1:1"])
        .arg("--data-dir")
        .arg(&a1_dir)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("belongs to member 1, not member 2"),
        "{stderr}"
    );

    // A's member 1 restarted on its own directory rejoins A with its data.
    a.restart(1).expect("restart a1");
    a.wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader a");
    a.wait_applied(1, 1, Duration::from_secs(20))
        .await
        .expect("a1 answers");
    assert_eq!(
        get(&a.client_for(&[1]).expect("client"), "x", false)
            .await
            .expect("read"),
        Some("from-a".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_to_a_non_member_and_bad_flags_are_refused() {
    let mut cluster = must_start_one_member(&[]).await;
    let lonely = cluster
        .spawn_member(9, Launch::Wait)
        .expect("spawn non-member");
    let started = std::time::Instant::now();
    let out = loop {
        let out = must_run_cli(&["--addr", &lonely, "job", "list"]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        // Until the process listens the error is a connection failure.
        if stderr.contains("not a member") || started.elapsed() > Duration::from_secs(15) {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("coordinator 9 is not a member"), "{stderr}");
    // Listed after a member, the non-member is skipped without noise.
    let both = format!("{lonely},{}", cluster.member(1).expect("member").addr);
    must_cli_ok(&["--addr", &both, "job", "list"]);

    let bad_addr = must_run_cli(&[
        "--addr",
        &cluster.addr_list(),
        "cluster",
        "add",
        "7",
        "no-port",
    ]);
    assert_eq!(bad_addr.status.code(), Some(2));
    let no_id = must_run_cli(&[
        "coordinator",
        "--listen",
        "127.0.0.1:1",
        "--data-dir",
        "/tmp/x",
    ]);
    assert_eq!(no_id.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_id.stderr).contains("`id`"));

    // herd's own records (under `herd/`) are read-only to clients.
    let addr = cluster.addr_list();
    let reserved = must_run_cli(&[
        "--addr",
        &addr,
        "var",
        "put",
        "herd/reschedule/last-run",
        "{}",
    ]);
    let stderr = String::from_utf8_lossy(&reserved.stderr);
    assert_eq!(reserved.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("herd's own records"), "{stderr}");
    let get = must_run_cli(&["--addr", &addr, "var", "get", "herd/reschedule/last-run"]);
    assert_ne!(get.status.code(), Some(0), "nothing was written");
    must_cli_ok(&["--addr", &addr, "var", "put", "herdsman/key", "x"]);
}

/// `herd job list | head -1`: a reader that goes away ends the client the
/// way it ends `ls`, by SIGPIPE, not with a panic about a broken pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_a_client_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    let cluster = must_start_one_member(&[]).await;
    let mut child = common::herd_command()
        .args(["--addr", &cluster.addr_list(), "cluster", "status"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herd");
    // Closed before the command has asked the cluster anything, so its
    // first line meets a pipe without a reader.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{stderr}");
}
