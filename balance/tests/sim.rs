//! Fleet behaviour in the SIMULATION (`herd_balance::sim`): the real
//! protocol code of every agent over a simulated lossy network, virtual
//! time, deterministic seeds.

use herd_balance::sim::{agent_id, Sim, SimConfig};
use herd_balance::{Config, Liveness};

/// Every item is somewhere exactly once, none moved over its budget, no
/// packet refused.
fn check_accounting(sim: &Sim, items: usize, cfg: &Config) {
    assert_eq!(sim.item_count(), items, "an item was lost or duplicated");
    assert!(
        sim.max_moves_per_item() <= cfg.move_budget,
        "an item moved {} times, budget {}",
        sim.max_moves_per_item(),
        cfg.move_budget
    );
    assert_eq!(sim.report().packets_refused, 0, "{:#?}", sim.report());
}

/// The bound stated in docs/balancing.md: 8 skewed agents with no
/// coordinator get the load's CV under 0.1 within 20 s of virtual time
/// (observed: about 3 s), and stay under it.
#[test]
fn eight_skewed_agents_converge_without_coordinators() {
    for seed in [1, 2, 3, 4, 5] {
        let cfg = SimConfig::new(8, false, seed);
        let agent_cfg = cfg.agent.clone();
        let mut sim = Sim::new(cfg).unwrap();
        let items = sim.item_count();
        let start = sim.report().initial_cv;
        assert!(start > 0.5, "seed {seed}: the start is skewed (cv {start})");
        assert!(
            sim.run_until_cv(20_000),
            "seed {seed}: cv still {:.3} after 20 s: {:#?}",
            sim.spread(None).cv,
            sim.report()
        );
        sim.run_until(60_000);
        let end = sim.spread(None);
        assert!(end.cv < 0.1, "seed {seed}: cv rose back to {:.3}", end.cv);
        check_accounting(&sim, items, &agent_cfg);
        // Balancing stopped once under the band: no moves in the last 20 s.
        let moves = sim.moves();
        sim.run_until(80_000);
        assert_eq!(
            sim.moves(),
            moves,
            "seed {seed}: still moving when balanced"
        );
    }
}

#[test]
fn a_dead_agent_is_noticed_by_its_peers_and_a_restarted_one_rejoins() {
    let mut sim = Sim::new(SimConfig::new(8, false, 11)).unwrap();
    sim.run_until(5_000);
    for i in 0..8 {
        if i != 3 {
            assert_eq!(sim.agent(i).members().len(), 7, "agent {i} knows everyone");
        }
    }
    sim.kill(3);
    // Round-robin probing reaches it within 7 probe periods (7 s), then
    // 3 s of suspicion, then dissemination: 15 s is ample.
    sim.run_until(20_000);
    let dead = agent_id(3);
    for i in (0..8).filter(|&i| i != 3) {
        let a = sim.agent(i);
        assert!(
            a.members().iter().all(|(p, _)| p.id != dead),
            "agent {i} still lists {dead} as a member"
        );
        assert_eq!(a.liveness_of(&dead), Liveness::Dead, "agent {i}");
        assert!(
            a.view(20_000).iter().all(|v| v.info.id != dead),
            "agent {i} still counts {dead}'s load"
        );
    }
    sim.restart(3).unwrap();
    sim.run_until(35_000);
    for i in (0..8).filter(|&i| i != 3) {
        assert_eq!(
            sim.agent(i).liveness_of(&dead),
            Liveness::Alive,
            "agent {i} did not see {dead} come back"
        );
    }
}

/// Two halves cut apart: each balances within itself (their means differ,
/// so the fleet as a whole stays uneven); healed, with no coordinator to
/// re-seed them, the halves find each other again and the fleet converges.
#[test]
fn a_partition_balances_each_half_then_the_fleet_once_healed() {
    let mut cfg = SimConfig::new(16, false, 21);
    cfg.weights = Some(vec![vec![1.0; 30]; 16]);
    let agent_cfg = cfg.agent.clone();
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(5_000);
    let halves: Vec<u32> = (0..16).map(|i| u32::from(i >= 8)).collect();
    sim.partition(&halves);
    // New load arrives on both sides, more on side A.
    for i in 0..3 {
        sim.set_weights(i, &[1.5; 60]);
    }
    sim.set_weights(8, &[1.0; 60]);
    let items = sim.item_count();
    let a: Vec<usize> = (0..8).collect();
    let b: Vec<usize> = (8..16).collect();
    sim.run_until(45_000);
    let (sa, sb, all) = (sim.spread(Some(&a)), sim.spread(Some(&b)), sim.spread(None));
    assert!(sa.cv < 0.1, "side A cv {:.3}", sa.cv);
    assert!(sb.cv < 0.1, "side B cv {:.3}", sb.cv);
    assert!(
        all.cv > 0.15,
        "sides should differ while cut (A mean {:.1}, B mean {:.1})",
        sa.mean,
        sb.mean
    );
    // Nobody across the cut is a member any more.
    assert!(sim.agent(0).members().iter().all(|(p, _)| {
        let i: usize = p.id.trim_start_matches("agent-").parse().unwrap();
        i < 8
    }));
    sim.heal();
    sim.run_until(105_000);
    let all = sim.spread(None);
    assert!(
        all.cv < 0.1,
        "healed fleet cv {:.3}: {:#?}",
        all.cv,
        sim.report()
    );
    assert_eq!(sim.agent(0).members().len(), 15, "the halves rejoined");
    check_accounting(&sim, items, &agent_cfg);
}

/// Two agents with equal load, measured with ±6 % noise against a 5 %
/// threshold: noise alone can trigger moves, but a pair cannot swap back
/// within the item cool-down (30 s) and a run in one direction stops once
/// the true gap exceeds the noise, so each minute sees at most
/// 4 × (εL/w + 1) = 4 × (0.06 × 50 / 1 + 1) = 16 moves.
#[test]
fn equal_agents_with_noise_near_the_threshold_move_a_bounded_amount() {
    let mut cfg = SimConfig::new(2, false, 3);
    cfg.weights = Some(vec![vec![1.0; 50], vec![1.0; 50]]);
    cfg.noise = 0.06;
    cfg.agent.threshold = 0.05;
    cfg.agent.min_excess = 0.0;
    let agent_cfg = cfg.agent.clone();
    let mut sim = Sim::new(cfg).unwrap();
    let mut last = 0;
    for minute in 1..=10 {
        sim.run_until(minute * 60_000);
        let moves = sim.moves() - last;
        last = sim.moves();
        assert!(moves <= 16, "minute {minute}: {moves} moves");
    }
    let s = sim.scores();
    assert!(
        (s[0] - s[1]).abs() <= 2.0 * 0.06 * 50.0 + 2.0,
        "drifted apart: {s:?}"
    );
    check_accounting(&sim, 100, &agent_cfg);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = || {
        let mut sim = Sim::new(SimConfig::new(20, false, 99)).unwrap();
        sim.run_until(15_000);
        let r = sim.report();
        (r.moves, r.offers, r.time_to_cv_ms, sim.scores())
    };
    assert_eq!(run(), run());
}

/// 100 agents with coordinators re-seeding them, two agents killed and
/// one restarted while balancing: the live fleet still converges and no
/// item is lost or moved over budget.
#[test]
fn a_hundred_agents_converge_through_kills_and_restarts() {
    let cfg = SimConfig::new(100, true, 7);
    let agent_cfg = cfg.agent.clone();
    let mut sim = Sim::new(cfg).unwrap();
    let items = sim.item_count();
    sim.run_until(1_000);
    sim.kill(10);
    sim.kill(20);
    sim.run_until(5_000);
    sim.restart(10).unwrap();
    sim.run_until(40_000);
    let s = sim.spread(None);
    assert!(s.cv < 0.1, "cv {:.3}: {:#?}", s.cv, sim.report());
    assert_eq!(sim.item_count(), items);
    assert!(sim.max_moves_per_item() <= agent_cfg.move_budget);
}
