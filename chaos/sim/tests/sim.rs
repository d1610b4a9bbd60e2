//! The simulation end to end: seeds pass the linearizability checkers with
//! faults injected, and a planted bug (stale reads) is caught.

use std::time::{Duration, Instant};

use herd_sim::{run, SimConfig};

#[test]
fn seeds_pass_the_checkers_under_partitions_and_crashes() {
    for seed in 1..=2 {
        let started = Instant::now();
        let outcome = run(&SimConfig {
            seed,
            ..SimConfig::default()
        })
        .expect("simulation");
        let ops = outcome.history.ops().count();
        eprintln!(
            "seed {seed}: {ops} ops, {} fault events, {:?} simulated in {:?}: {:?}\n{}",
            outcome.faults.len(),
            outcome.simulated,
            started.elapsed(),
            outcome.verdict,
            outcome.faults.join("\n")
        );
        assert!(
            outcome.verdict.is_pass(),
            "seed {seed}: {:?}",
            outcome.verdict
        );
        assert!(ops > 100, "seed {seed}: only {ops} operations");
        assert!(!outcome.faults.is_empty());
        assert!(outcome.simulated >= Duration::from_secs(20));
    }
}

#[test]
fn stale_reads_are_caught() {
    // Reads served from any member's local state (`stale: true`) are not
    // linearizable once a member is cut off: the checkers must say so, or
    // the simulation could not find the bugs it is for.
    let caught = (1..=3).any(|seed| {
        let outcome = run(&SimConfig {
            seed,
            stale_reads: true,
            ..SimConfig::default()
        })
        .expect("simulation");
        eprintln!("seed {seed} with stale reads: {:?}", outcome.verdict);
        outcome.verdict.is_fail()
    });
    assert!(
        caught,
        "stale reads passed the linearizability checkers on every seed"
    );
}

#[test]
fn a_seed_draws_the_same_schedule() {
    let config = SimConfig::default();
    let draw = |seed| {
        let mut rng = herd_chaos::nemesis::rng::Rng::new(seed);
        herd_sim::run::schedule(&mut rng, &config)
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
    assert!(!draw(7).is_empty());
}
