//! `herd chaos` end to end: short scenarios on real clusters must pass every
//! checker (exit 0) and leave a sane report, a history and a timeline.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;

/// Runs `herd chaos run` for `scenario` and checks the outcome and files.
fn must_pass(scenario: &str, duration: &str, seed: &str) {
    let _ = run_scenario(scenario, duration, seed, Mode::Local);
}

/// Where and how a scenario runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Local processes.
    Local,
    /// Local processes on tmpfs data dirs the harness mounts (root only).
    Mounts,
    /// Containers (`--docker`).
    Docker,
}

/// As [`must_pass`], but a run that could not mount its tmpfs data dirs
/// (no root) is skipped with a message, or fails in CI (`skip_or_fail`);
/// returns whether it ran.
fn must_pass_where_tmpfs_mounts(scenario: &str, duration: &str, seed: &str) -> bool {
    run_scenario(scenario, duration, seed, Mode::Mounts).is_some()
}

/// What a failed run's recorded history says of the jobs its failing
/// checkers name: every process sample's copies of those jobs (when, on
/// which node, which pid and allocation). The run's directory is a
/// temporary one, gone with the test, so a rare failure in CI leaves its
/// evidence in the test's output instead.
fn evidence(report: &str) -> String {
    let Some(history) = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("history: "))
    else {
        return String::new();
    };
    let jobs: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("FAIL"))
        .filter_map(|l| l.split(" of job ").nth(1)?.split_whitespace().next())
        .collect();
    if jobs.is_empty() {
        return String::new();
    }
    let text = std::fs::read_to_string(history.trim()).unwrap_or_default();
    let mut lines = vec![format!("samples of {jobs:?} in {history}:")];
    for line in text.lines().filter(|l| l.contains(r#""type":"sample""#)) {
        let Ok(sample) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let copies: Vec<String> = sample["processes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| jobs.iter().any(|j| p["job"] == *j))
            .map(|p| {
                format!(
                    "{}#{} {} pid {} on {}",
                    p["job"], p["instance"], p["alloc_id"], p["pid"], p["node"]
                )
            })
            .collect();
        lines.push(format!(
            "  at {} ms settled={}: {}",
            sample["at_ns"].as_u64().unwrap_or(0) / 1_000_000,
            sample["settled"],
            copies.join("; ")
        ));
    }
    lines.join("\n")
}

/// Runs the scenario; its report, or None when it was skipped.
fn run_scenario(scenario: &str, duration: &str, seed: &str, mode: Mode) -> Option<String> {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out = common::herd_command()
        .args([
            "chaos",
            "run",
            "--scenario",
            scenario,
            "--duration",
            duration,
        ])
        .args(["--seed", seed, "--out"])
        .arg(out_dir.path())
        .args((mode == Mode::Docker).then_some("--docker"))
        .env("HERD_LOG", "error")
        .output()
        .expect("run herd chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if mode == Mode::Mounts && out.status.code() == Some(2) && stdout.contains("CAP_SYS_ADMIN") {
        skip_or_fail(&format!(
            "{scenario}: this machine does not let the harness mount a tmpfs (needs root or CAP_SYS_ADMIN):\n{stdout}"
        ));
        return None;
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "herd chaos run --scenario {scenario} failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        evidence(&stdout)
    );
    assert!(stdout.contains("all checkers passed"), "{stdout}");
    let faults: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("faults injected: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a fault count");
    assert!(faults >= 1, "no fault was injected:\n{stdout}");
    for checker in [
        "linearizable registers",
        "no acknowledged job lost",
        "linearizable job versions",
        "drains respected",
        "no double run",
        "converged within bound",
        "no leaked processes",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(checker) && l.contains("pass")),
            "{checker} did not pass:\n{stdout}"
        );
    }
    let dir = out_dir.path().join(format!("{scenario}-{seed}"));
    let history = std::fs::read_to_string(dir.join("history.jsonl")).expect("history");
    assert!(
        history
            .lines()
            .filter(|l| l.contains("\"type\":\"op\""))
            .count()
            > 50
    );
    assert!(history.contains("\"type\":\"fault\""));
    let svg = std::fs::read_to_string(dir.join("timeline.svg")).expect("timeline");
    assert!(svg.starts_with("<svg"));
    Some(stdout.into_owned())
}

#[test]
fn list_names_the_scenarios_and_an_unknown_one_is_bad_input() {
    let listed = must_cli_ok(&["chaos", "list"]);
    for name in [
        "kill-leader",
        "kill-majority",
        "pause-member",
        "restart-all",
        "agent-loss",
        "partition-leader",
        "partition-halves",
        "partition-ring",
        "partition-bridge",
        "slow-network",
        "disk-full",
        "slow-fsync",
        "clock-skew",
        "node-loss",
        "agent-pause",
        "node-partition",
        "mixed-coordinators",
    ] {
        assert!(listed.contains(name), "{listed}");
    }
    let out = must_run_cli(&["chaos", "run", "--scenario", "no-such-thing"]);
    assert_eq!(out.status.code(), Some(2));
}

/// One test running the scenarios in turn: three real clusters at once on a
/// 2-core CI machine would measure the machine, not herd.
#[test]
fn short_scenarios_pass_every_checker() {
    must_pass("kill-leader", "10s", "11");
    must_pass("pause-member", "10s", "12");
    must_pass("agent-loss", "12s", "13");
    // An agent frozen long enough for its node to be declared down: once it
    // resumes it must stop the copies that were placed elsewhere (the run
    // converges only with each instance running once).
    must_pass("agent-pause", "12s", "20");
    // A node cut off from every coordinator (its agent dials them through
    // proxies of its own, the leader included): the same, while the agent
    // keeps running and retrying.
    let report = run_scenario("node-partition", "12s", "23", Mode::Local).unwrap_or_default();
    assert!(
        report.contains("service rescheduled"),
        "the cut-off node's work was not placed elsewhere:\n{report}"
    );
    // A node down long enough to be declared down: its service instances
    // must run again on the other nodes while it is away.
    let report = run_scenario("node-loss", "12s", "19", Mode::Local).unwrap_or_default();
    assert!(
        report.contains("service rescheduled"),
        "the lost node's work was not placed elsewhere:\n{report}"
    );
    // Through the fault-injecting proxies: a cut leader, then slow and
    // lossy links with node agents and drains.
    must_pass("partition-leader", "10s", "14");
    must_pass("slow-network", "10s", "15");
    // A real full disk (each member on its own small tmpfs): the member
    // stops, is restarted once space is freed, and loses nothing.
    must_pass_where_tmpfs_mounts("disk-full", "10s", "16");
    // Through the LD_PRELOAD shim, which herd finds beside its binary:
    // slow fsyncs on one member, then skewed wall clocks on all.
    chaos_shim();
    must_pass("slow-fsync", "10s", "17");
    must_pass("clock-skew", "10s", "18");
}

/// The same harness with the cluster in containers on a private network,
/// from an image built out of this binary: kills, pauses, partitions through
/// the proxies on the network's gateway, the shim's faults, and agents.
#[test]
fn docker_mode_runs_the_same_scenarios() {
    let reachable = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !reachable {
        return skip_or_fail("Docker mode: no reachable Docker daemon on this machine");
    }
    chaos_shim();
    let report = run_scenario("mixed-coordinators", "14s", "21", Mode::Docker)
        .expect("a Docker run is never skipped once the daemon answers");
    assert!(report.contains("faults injected"), "{report}");
    // Node agents in containers too: a frozen agent's work is placed
    // elsewhere and its stale copies stopped once it resumes.
    let report = run_scenario("agent-pause", "12s", "22", Mode::Docker)
        .expect("a Docker run is never skipped once the daemon answers");
    assert!(report.contains("service rescheduled"), "{report}");
    // An agent killed alone while its workloads run on in its container
    // (seed 22 draws that fault second, after a whole node's loss).
    let report = run_scenario("agent-loss", "14s", "22", Mode::Docker)
        .expect("a Docker run is never skipped once the daemon answers");
    assert!(report.contains("kill -9 agent n"), "{report}");
}

/// `herd chaos sim`: seeds of the simulated cluster pass, with a line each
/// and a summary, and exit 0.
#[test]
fn simulated_seeds_pass() {
    let out = must_run_cli(&[
        "chaos",
        "sim",
        "--seeds",
        "2",
        "--seed",
        "31",
        "--duration",
        "12s",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.ends_with(": pass")).count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("2 seeds: 2 passed, 0 violated"), "{stdout}");
    let bad = must_run_cli(&["chaos", "sim", "--seeds", "0"]);
    assert_eq!(bad.status.code(), Some(2));
    let unknown = must_run_cli(&["chaos", "sim", "--fault", "meteor"]);
    assert_eq!(unknown.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("node-loss"), "{stderr}");
}

/// A failed run's report is followed by the samples of the jobs its
/// failing checkers name, read from its history (nothing without one).
#[test]
fn a_failed_run_shows_the_samples_of_the_jobs_it_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let history = dir.path().join("history.jsonl");
    let sample = |at_ns: u64, pids: &[(u32, &str, &str)]| {
        let processes: Vec<serde_json::Value> = pids
            .iter()
            .map(|(pid, node, job)| {
                serde_json::json!({"pid": pid, "node": node, "alloc_id": format!("{job}-0-1"), "job": job, "instance": 0})
            })
            .collect();
        serde_json::json!({"type": "sample", "at_ns": at_ns, "settled": true, "processes": processes})
            .to_string()
    };
    let text = [
        r#"{"type":"op","id":1,"kind":"submit","key":"j1"}"#.to_string(),
        sample(9_000_000_000, &[(11, "n1", "j1"), (12, "n2", "other")]),
        sample(9_544_000_000, &[(11, "n1", "j1"), (13, "n3", "j1")]),
    ]
    .join("\n");
    std::fs::write(&history, text).expect("history");
    let report = format!(
        "  no double run              FAIL: instance 0 of job j1 ran twice (pids [11, 13]) at 9544 ms\n  history: {}\n",
        history.display()
    );
    let shown = evidence(&report);
    assert!(shown.contains("at 9544 ms settled=true"), "{shown}");
    assert!(shown.contains("pid 13 on \"n3\""), "{shown}");
    assert!(!shown.contains("other"), "only the named job: {shown}");
    assert_eq!(evidence("all checkers passed\n"), "");
}
