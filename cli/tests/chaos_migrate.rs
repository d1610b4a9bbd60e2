//! `herd chaos run --scenario migrate` end to end: a training job kept
//! moving between three real agents while agents and the leader are
//! killed; every checker passes, the migration checker included, and at
//! least one migration completed (so the checker judged real moves, not an
//! empty history).

mod common;

use std::process::Command;

use common::*;
use herd_chaos::history::{History, Outcome, Record};

#[test]
fn the_migrate_scenario_moves_training_jobs_and_passes_every_checker() {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let seed = "1901";
    let out = Command::new(herd_bin())
        .args(["chaos", "run", "--scenario", "migrate", "--duration", "12s"])
        .args(["--seed", seed, "--out"])
        .arg(out_dir.path())
        .env("HERD_LOG", "error")
        .output()
        .expect("run herd chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "herd chaos run --scenario migrate failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all checkers passed"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("migrations end, one copy") && l.contains("pass")),
        "the migration checker did not run or pass:\n{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("migrations: ")),
        "{stdout}"
    );

    let path = out_dir
        .path()
        .join(format!("migrate-{seed}"))
        .join("history.jsonl");
    let history = History::read_jsonl(&path).expect("history");
    let completed: Vec<_> = history
        .migrations()
        .filter(|a| a.outcome == Outcome::Ok)
        .filter(|a| a.last.as_ref().is_some_and(|m| m.phase == "completed"))
        .collect();
    assert!(!completed.is_empty(), "no migration completed:\n{stdout}");
    // Each completed move was followed through its phases to the end, and
    // the final state was read.
    for attempt in &completed {
        assert!(attempt.ended_ns.is_some(), "{attempt:?}");
        assert!(attempt.phases.len() >= 2, "{attempt:?}");
    }
    assert!(history
        .records
        .iter()
        .any(|r| matches!(r, Record::FinalMigrations(f) if f.migrations.is_some())));
    assert!(history.faults().count() >= 1, "no fault was injected");
}
