//! `herd chaos run --scenario balance-away` end to end: two movable
//! trainers crowded on one of three real agents, then every coordinator
//! killed for 22-26 s while agents are killed and restarted; the agents
//! move a trainer among themselves agent to agent, and once the
//! coordinators return every checker passes, the offline-move checker
//! included (every journal closed: each move reported and settled; one
//! copy of each trainer, where the coordinators list it; none lost). At
//! least one trainer moved while the coordinators were away, so the
//! checker judged a real offline move.

mod common;

use common::*;
use herd_chaos::check::offline_moves;
use herd_chaos::history::{History, Record};

#[test]
fn the_balance_away_scenario_moves_work_without_coordinators_and_reconciles() {
    let (_out_dir, stdout, path) = must_pass_scenario(
        "balance-away",
        "2302",
        "30s",
        "offline moves reported, one copy",
    );
    let history = History::read_jsonl(&path).expect("history");
    let away = history
        .faults()
        .find(|f| f.what.contains("every coordinator"))
        .expect("the coordinators were taken away");
    assert!(
        away.what.contains("kill -9 agent") && away.what.contains("restart agent"),
        "no agent was killed and restarted while they were away: {}",
        away.what
    );
    let moves = offline_moves::moves_seen(&history, herd_chaos::away::JOB);
    assert!(
        moves >= 1,
        "no trainer moved while the coordinators were away:\n{stdout}"
    );
    // The coordinators accepted the move: a trainer one generation up.
    let state = history
        .records
        .iter()
        .find_map(|r| match r {
            Record::Offline(s) => Some(s.clone()),
            _ => None,
        })
        .expect("the final offline state was recorded");
    let trainers = state.trainers.expect("the trainers were listed");
    assert!(
        trainers.iter().any(|t| t.generation >= 2),
        "no move was accepted by the coordinators: {trainers:?}\n{stdout}"
    );
}
