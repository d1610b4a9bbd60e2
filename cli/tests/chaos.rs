//! `herd chaos` end to end: short scenarios on real clusters must pass every
//! checker (exit 0) and leave a sane report, a history and a timeline.

mod common;

use std::process::Command;

use common::*;

/// Runs `herd chaos run` for `scenario` and checks the outcome and files.
fn must_pass(scenario: &str, duration: &str, seed: &str) {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(herd_bin())
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
        .env("HERD_LOG", "error")
        .output()
        .expect("run herd chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "herd chaos run --scenario {scenario} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
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
}
