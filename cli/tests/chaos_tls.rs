//! `herd chaos run --tls`: the `migrate` scenario (agents and the leader
//! killed while a training job and a simulated VM keep moving) with every
//! coordinator and agent under mutual TLS, the harness's own clients
//! dialing with a client certificate of the run's CA. Every checker
//! passes and moves of both kinds complete, so the TLS paths (herd's own
//! acceptor, its dials, certificate checks on every call) held up under
//! kills and restarts, not only in a quiet cluster.

mod common;

use common::*;
use herd_chaos::history::{History, Outcome};

#[test]
fn the_migrate_scenario_passes_under_mutual_tls() {
    let seed = "2207";
    let (out_dir, stdout, history) = must_pass_scenario_with(
        "migrate",
        seed,
        "12s",
        "migrations end, one copy",
        &["--tls"],
    );

    // Every process served TLS (each says so as it starts).
    let run = out_dir.path().join(format!("migrate-{seed}"));
    let logs: Vec<_> = std::fs::read_dir(run.join("logs"))
        .expect("the run's logs")
        .map(|e| e.expect("log entry").path())
        .collect();
    assert!(logs.len() >= 6, "3 members and 3 agents: {logs:?}");
    for log in &logs {
        let text = std::fs::read_to_string(log).expect("log");
        assert!(
            text.contains("tls=true") && !text.contains("tls=false"),
            "{} did not serve TLS",
            log.display()
        );
    }

    // Moves completed under TLS.
    let history = History::read_jsonl(&history).expect("history");
    let completed = history
        .migrations()
        .filter(|a| a.outcome == Outcome::Ok)
        .filter(|a| a.last.as_ref().is_some_and(|m| m.phase == "completed"))
        .count();
    assert!(completed > 0, "no migration completed:\n{stdout}");

    // A bad combination is refused up front.
    let out = herd_command()
        .args(["chaos", "run", "--scenario", "power", "--tls", "--out"])
        .arg(out_dir.path())
        .output()
        .expect("run herd chaos");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without --tls"),
        "{out:?}"
    );
}
