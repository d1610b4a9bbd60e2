//! Decentralised balancing among real node agents (`herd node`
//! processes gossiping over their `AgentPeer` service): they find each
//! other, keep a fresh view of each other's load with the coordinators
//! gone, notice a dead peer by themselves, and move `[balance] movable`
//! work off a crowded node, each item within its move budget.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::*;
use serde_json::Value;

/// `herd balance status -o json` asked of the agent at `agent` directly,
/// or None while it does not answer.
fn status_at(agent: &str) -> Option<Value> {
    let out = must_run_cli(&["-o", "json", "balance", "status", "--agent", agent]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Node name to (state, view age) in a status answer.
fn views(status: &Value) -> BTreeMap<String, (String, u64)> {
    status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            Some((
                n["name"].as_str()?.to_string(),
                (n["state"].as_str()?.to_string(), n["view_age_ms"].as_u64()?),
            ))
        })
        .collect()
}

/// Fresher than this counts as a live view (the gossip runs every 250 ms).
const FRESH_MS: u64 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_keep_a_fresh_view_and_notice_a_dead_peer_with_the_coordinators_gone() {
    let (mut cluster, addr, mut agents) = cluster_with_agents(1, "3000").await;
    let names = ["g1", "g2", "g3", "g4"];
    for name in names {
        agents.start(name, &[]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &names).await;
    let g1 = agents.agent("g1").expect("g1").addr.clone();
    let g2 = agents.agent("g2").expect("g2").addr.clone();
    until(
        "g1 to see all four agents alive and fresh",
        Duration::from_secs(30),
        || {
            let seen = views(&status_at(&g1)?);
            names
                .iter()
                .all(|n| {
                    seen.get(*n)
                        .is_some_and(|(s, age)| s == "alive" && *age < FRESH_MS)
                })
                .then_some(())
        },
    )
    .await;
    // Without --agent the coordinators name an agent to ask.
    let via_coordinators = json(&addr, &["balance", "status"]);
    assert!(
        via_coordinators["enabled"].as_bool().unwrap_or(false),
        "{via_coordinators}"
    );
    assert!(
        via_coordinators["cv"].as_f64().is_some(),
        "{via_coordinators}"
    );
    assert!(
        via_coordinators["max_over_mean"].as_f64().is_some(),
        "{via_coordinators}"
    );

    // Every coordinator gone, then an agent killed: the others notice by
    // themselves and keep exchanging fresh load figures.
    cluster.kill(1).expect("kill the coordinator");
    agents.kill_agent("g4").expect("kill g4");
    for asked in [&g1, &g2] {
        until(
            &format!("the agent at {asked} to declare g4 down and see g1-g3 fresh"),
            Duration::from_secs(30),
            || {
                let seen = views(&status_at(asked)?);
                let g4_gone = seen.get("g4").is_none_or(|(s, _)| s == "dead");
                let rest_fresh = names[..3].iter().all(|n| {
                    seen.get(*n)
                        .is_some_and(|(s, age)| s == "alive" && *age < FRESH_MS)
                });
                (g4_gone && rest_fresh).then_some(())
            },
        )
        .await;
    }
}

/// The node of every running allocation of `job`, by allocation id.
fn placement(addr: &str, job: &str) -> BTreeMap<String, String> {
    running_allocs(addr, job)
        .iter()
        .filter_map(|a| {
            Some((
                a["id"].as_str()?.to_string(),
                a["node"].as_str()?.to_string(),
            ))
        })
        .collect()
}

fn per_node(placed: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for node in placed.values() {
        *counts.entry(node.clone()).or_insert(0) += 1;
    }
    counts
}

const MOVE_BUDGET: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn movable_vms_leave_a_crowded_node_within_their_budget_and_pinned_work_stays() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "3000").await;
    agents.start("b1", &[]).expect("start b1");
    must_have_ready_nodes(&addr, &["b1"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let vms = write_spec(
        dir.path(),
        "vms",
        "name = \"vms\"\ntype = \"service\"\ncount = 4\n[balance]\nmovable = true\n[task]\ndriver = \"simvm\"\n[task.config]\ndirty_rate = \"1MiB\"\nseed = 5\n[task.resources]\ncpu = 300\nmemory = \"32MiB\"\n",
    );
    let pinned = write_spec(
        dir.path(),
        "pinned",
        "name = \"pinned\"\ntype = \"service\"\ncount = 2\n[task]\ndriver = \"simvm\"\n[task.config]\ndirty_rate = \"1MiB\"\nseed = 6\n[task.resources]\ncpu = 100\nmemory = \"32MiB\"\n",
    );
    must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &vms]);
    must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &pinned]);
    until("every VM running on b1", Duration::from_secs(30), || {
        (placement(&addr, "vms").len() == 4 && placement(&addr, "pinned").len() == 2).then_some(())
    })
    .await;
    let pinned_before = placement(&addr, "pinned");

    // Two empty nodes join: b1's agent sees itself far above the mean and
    // pushes movable VMs to them.
    agents.start("b2", &[]).expect("start b2");
    agents.start("b3", &[]).expect("start b3");
    must_have_ready_nodes(&addr, &["b1", "b2", "b3"]).await;
    let spread = until(
        "the movable VMs spread over b2 and b3",
        Duration::from_secs(120),
        || {
            let placed = placement(&addr, "vms");
            let counts = per_node(&placed);
            (placed.len() == 4
                && counts.get("b2").is_some_and(|n| *n >= 1)
                && counts.get("b3").is_some_and(|n| *n >= 1)
                && counts.get("b1").copied().unwrap_or(0) <= 2)
                .then_some(counts)
        },
    )
    .await;
    eprintln!("movable VMs per node: {spread:?}");

    // Let the balancing settle, then account for every move.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let migrations = json(&addr, &["migration", "list"]);
    let migrations = migrations.as_array().cloned().unwrap_or_default();
    let mut moves: BTreeMap<String, usize> = BTreeMap::new();
    for m in &migrations {
        let alloc = m["alloc"].as_str().unwrap_or_default().to_string();
        let phase = m["phase"].as_str().unwrap_or_default();
        if phase == "completed" {
            *moves.entry(alloc).or_insert(0) += 1;
        }
    }
    assert!(
        !moves.is_empty(),
        "no completed migration recorded: {migrations:?}"
    );
    for (alloc, count) in &moves {
        assert!(
            *count <= MOVE_BUDGET,
            "{alloc} moved {count} times, over its budget of {MOVE_BUDGET}"
        );
    }
    // Work without `[balance] movable` never moves.
    assert_eq!(placement(&addr, "pinned"), pinned_before);
    for id in pinned_before.keys() {
        assert!(!moves.contains_key(id), "pinned {id} was moved");
    }
    // One running copy of each VM: four allocations, each on one node, and
    // six sim-vm processes in all (a source's paused copy is gone).
    assert_eq!(placement(&addr, "vms").len(), 4);
    let root = agents.root().display().to_string();
    until(
        "exactly one sim-vm process per VM",
        Duration::from_secs(30),
        || (common::vms::sim_vm_pids_mentioning(&root).len() == 6).then_some(()),
    )
    .await;
}

/// A one-VM movable simulated VM job named `name`.
fn movable_vm_spec(dir: &std::path::Path, name: &str, seed: u32) -> String {
    write_spec(
        dir,
        name,
        &format!(
            "name = \"{name}\"\ntype = \"service\"\n[balance]\nmovable = true\n[task]\ndriver = \"simvm\"\n[task.config]\ndirty_rate = \"1MiB\"\nseed = {seed}\n[task.resources]\ncpu = 300\nmemory = \"32MiB\"\n"
        ),
    )
}

/// Runs movable VM job `name` on `node` (only it eligible meanwhile) and
/// waits until it runs there.
async fn place_movable(
    addr: &str,
    nodes: &[&str],
    dir: &std::path::Path,
    name: &str,
    node: &str,
    seed: u32,
) {
    common::vms::only_eligible(addr, nodes, node);
    let spec = movable_vm_spec(dir, name, seed);
    must_cli_ok(&["--addr", addr, "job", "run", "--detach", &spec]);
    until(
        &format!("{name} running on {node}"),
        Duration::from_secs(30),
        || {
            placement(addr, name)
                .values()
                .any(|n| n == node)
                .then_some(())
        },
    )
    .await;
}

/// Completed migrations recorded by the coordinators.
fn completed_moves(addr: &str) -> usize {
    common::vms::migrations(addr)
        .iter()
        .filter(|m| m["phase"] == "completed")
        .count()
}

/// Oscillation on real processes: two agents, movable VMs split 2/1. The
/// excess is exactly one VM, so any move would only mirror it (1/2); the
/// balancer must not ping-pong, and makes no move in the quiet window. A
/// fourth VM on the busy node (3/1) is a real imbalance: exactly one move
/// settles it (2/2), and nothing moves after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_odd_split_does_not_ping_pong_and_a_real_imbalance_settles_in_one_move() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "3000").await;
    let nodes = ["p1", "p2"];
    for name in nodes {
        agents.start(name, &[]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &nodes).await;
    let p1 = agents.agent("p1").expect("p1").addr.clone();
    until("p1 to see p2 alive", Duration::from_secs(30), || {
        let seen = views(&status_at(&p1)?);
        seen.get("p2")
            .is_some_and(|(state, age)| state == "alive" && *age < FRESH_MS)
            .then_some(())
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Placed so that no step of the way is itself an imbalance worth a
    // move (0/1, 1/1, 2/1): a 2/0 on the way would rightly move one.
    place_movable(&addr, &nodes, dir.path(), "m3", "p2", 3).await;
    place_movable(&addr, &nodes, dir.path(), "m1", "p1", 1).await;
    place_movable(&addr, &nodes, dir.path(), "m2", "p1", 2).await;
    let counts = |addr: &str| {
        let mut all = BTreeMap::new();
        for job in ["m1", "m2", "m3", "m4"] {
            all.extend(placement(addr, job));
        }
        per_node(&all)
    };
    until("2/1 running", Duration::from_secs(30), || {
        let c = counts(&addr);
        (c.get("p1") == Some(&2) && c.get("p2") == Some(&1)).then_some(())
    })
    .await;
    common::vms::all_eligible(&addr, &nodes);

    // The odd split: a quiet window of several cool-down-free rounds.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        completed_moves(&addr),
        0,
        "{:#?}",
        common::vms::migrations(&addr)
    );
    assert!(common::vms::migrations(&addr).is_empty());
    let c = counts(&addr);
    assert_eq!((c.get("p1"), c.get("p2")), (Some(&2), Some(&1)));
    let status = status_at(&p1).expect("p1 answers");
    assert_eq!(status["moves_per_minute"].as_f64(), Some(0.0), "{status:#}");

    // A real imbalance: 3/1 settles to 2/2 in one move, then stays.
    place_movable(&addr, &nodes, dir.path(), "m4", "p1", 4).await;
    common::vms::all_eligible(&addr, &nodes);
    until("3/1 settled to 2/2", Duration::from_secs(90), || {
        let c = counts(&addr);
        (c.get("p1") == Some(&2) && c.get("p2") == Some(&2)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        completed_moves(&addr),
        1,
        "{:#?}",
        common::vms::migrations(&addr)
    );
    let c = counts(&addr);
    assert_eq!((c.get("p1"), c.get("p2")), (Some(&2), Some(&2)));
    let root = agents.root().display().to_string();
    until("one sim-vm process per VM", Duration::from_secs(30), || {
        (common::vms::sim_vm_pids_mentioning(&root).len() == 4).then_some(())
    })
    .await;
}
