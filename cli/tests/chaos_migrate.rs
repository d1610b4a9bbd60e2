//! `herd chaos run --scenario migrate` end to end: a training job kept
//! moving between three real agents while agents and the leader are
//! killed; every checker passes, the migration checker included, and at
//! least one migration completed (so the checker judged real moves, not an
//! empty history).

mod common;

use common::*;
use herd_chaos::history::{History, Outcome, Record};

#[test]
fn the_migrate_scenario_moves_training_jobs_and_passes_every_checker() {
    let (_out_dir, stdout, path) = must_pass_moving_scenario("migrate", "1901");
    assert!(
        stdout.lines().any(|l| l.starts_with("migrations: ")),
        "{stdout}"
    );

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
