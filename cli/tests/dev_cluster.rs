//! `herd dev`, the README's first command: it starts, tells the user what to
//! run next, serves those commands, and cleans up on Ctrl-C.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use herd_chaos::ports::free_loopback_port;

#[test]
fn dev_cluster_serves_the_commands_it_suggests_and_cleans_up() {
    let port = free_loopback_port().expect("port");
    let addr = format!("127.0.0.1:{port}");
    let mut child = common::herd_command()
        .args(["dev", "--listen", &addr])
        .env("HERD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start herd dev");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    let started = Instant::now();
    while let Some(Ok(line)) = lines.next() {
        printed.push(line.clone());
        if line.contains("Ctrl-C") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "herd dev printed {printed:?}"
        );
    }
    let text = printed.join("\n");
    assert!(text.contains(&addr), "{text}");
    assert!(text.contains("herd job run examples/web.toml"), "{text}");
    let data_dir = printed
        .iter()
        .find_map(|l| l.split("(data in ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .map(std::path::PathBuf::from)
        .expect("data dir in output");
    assert!(data_dir.exists());

    // The suggested commands work against it.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/web.toml");
    let out = must_cli_ok(&["--addr", &addr, "job", "run", example]);
    assert!(out.contains("job web submitted: version 1"), "{out}");
    // `herd job run` returned once every instance was placed: the README's
    // next command, `herd alloc list`, needs no sleep before it.
    assert!(out.contains("job web: all 3 instances placed"), "{out}");
    let allocs = json(&addr, &["alloc", "list", "--job", "web"]);
    let live = allocs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["desired"] == "run" && (a["status"] == "pending" || a["status"] == "running"))
        .count();
    assert_eq!(live, 3, "{allocs:#}");
    let list = must_cli_ok(&["--addr", &addr, "job", "list", "-o", "json"]);
    assert!(list.contains("\"web\""), "{list}");
    let status = must_cli_ok(&["--addr", &addr, "cluster", "status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status["leader"], 1);
    assert_eq!(status["members"][0]["healthy"], true);

    // Two node agents run the job as a real process under the data dir.
    let nodes = must_cli_ok(&["--addr", &addr, "node", "list", "-o", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(&nodes).expect("json");
    assert_eq!(nodes.as_array().map(Vec::len), Some(2), "{nodes:#}");
    let needle = data_dir.display().to_string();
    let started = Instant::now();
    while processes_mentioning(&needle).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the hello job never ran under {needle}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Ctrl-C: a clean exit that removes the temporary data dir.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill")
        .success());
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "{exit:?}");
    assert!(
        !data_dir.exists(),
        "temporary data dir {} left behind",
        data_dir.display()
    );
    let left = processes_mentioning(&needle);
    assert!(left.is_empty(), "workloads left running: {left:?}");
}

/// Pids whose command line or environment mentions `needle` (the exec
/// driver's executor names its allocation dir; tasks carry HERD_ALLOC_DIR).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        if !zombie
            && (String::from_utf8_lossy(&cmdline).contains(needle)
                || String::from_utf8_lossy(&environ).contains(needle))
        {
            found.push(pid);
        }
    }
    found
}
