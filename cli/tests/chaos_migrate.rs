//! `herd chaos run --scenario migrate` end to end: a training job and a
//! simulated VM kept moving between three real agents while agents and the
//! leader are killed; every checker passes, the migration checker
//! included, and at least one migration of each kind completed (so the
//! checker judged real moves, not an empty history).

mod common;

use common::*;
use herd_chaos::history::{GuestSeen, History, Outcome, Record};

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
    // Both kinds moved: a checkpoint move (the trainers) and a live one
    // (the simulated VM, whose paused copies the checkers told apart).
    for kind in ["dljob", "simvm"] {
        assert!(
            completed
                .iter()
                .any(|a| a.last.as_ref().is_some_and(|m| m.kind == kind)),
            "no {kind} migration completed:\n{stdout}"
        );
    }
    // The samples asked the VM's copies how their guests stood.
    let guests: Vec<_> = history
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Sample(s) => Some(s),
            _ => None,
        })
        .flat_map(|s| s.processes.iter().filter_map(|p| p.guest))
        .collect();
    assert!(
        guests.contains(&GuestSeen::Running),
        "no sample saw the VM's guest running: {guests:?}"
    );
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
