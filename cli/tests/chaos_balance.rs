//! `herd chaos run --scenario balance` end to end: a `[balance] movable`
//! training job that the three real agents move among themselves (no
//! migration client) while agents and the leader are killed; every checker
//! passes, the migration checker included, and at least one move was
//! made by the agents (so the checker judged real balancing moves).

mod common;

use common::*;
use herd_chaos::history::{History, Record};

#[test]
fn the_balance_scenario_moves_work_by_the_agents_alone_and_passes_every_checker() {
    let (_out_dir, stdout, path) = must_pass_moving_scenario("balance", "2301");
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
