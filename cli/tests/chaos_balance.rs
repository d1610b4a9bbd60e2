//! `herd chaos run --scenario balance` end to end: a `[balance] movable`
//! training job that the three real agents move among themselves (no
//! migration client) while agents and the leader are killed; every checker
//! passes, the migration checker included, and at least one move was
//! made by the agents (so the checker judged real balancing moves).

mod common;

use std::process::Command;

use common::*;
use herd_chaos::history::{History, Record};

#[test]
fn the_balance_scenario_moves_work_by_the_agents_alone_and_passes_every_checker() {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let seed = "2301";
    let out = Command::new(herd_bin())
        .args(["chaos", "run", "--scenario", "balance", "--duration", "12s"])
        .args(["--seed", seed, "--out"])
        .arg(out_dir.path())
        .env("HERD_LOG", "error")
        .output()
        .expect("run herd chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "herd chaos run --scenario balance failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all checkers passed"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("migrations end, one copy") && l.contains("pass")),
        "the migration checker did not run or pass:\n{stdout}"
    );

    let path = out_dir
        .path()
        .join(format!("balance-{seed}"))
        .join("history.jsonl");
    let history = History::read_jsonl(&path).expect("history");
    // No client started a migration: whatever moved, the agents moved.
    assert_eq!(history.migrations().count(), 0, "a migration client ran");
    let recorded = history
        .records
        .iter()
        .find_map(|r| match r {
            Record::FinalMigrations(f) => f.migrations.clone(),
            _ => None,
        })
        .expect("the final migrations were read");
    assert!(
        recorded.iter().any(|m| m.phase == "completed"),
        "the agents made no balancing move: {recorded:?}\n{stdout}"
    );
    assert!(history.faults().count() >= 1, "no fault was injected");
}
