//! A partition of the node agents, on real processes: six agents whose
//! agent-to-agent connections all run through the chaos harness's
//! fault-injecting TCP proxies, one per directed link (`LinkProxy`, the
//! way `herd chaos` partitions coordinators), routed there by the agents'
//! FAULT-INJECTION dial map (`HERD_FAULT_PEER_DIAL`,
//! node/src/balance/dial.rs). The halves {p1,p2,p3} and {p4,p5,p6} are
//! kept apart while the VMs are placed, then joined once every node is
//! ineligible (so no move is recorded before the partition); then the
//! network between them is cut and the coordinator killed: each half balances
//! its `[balance] movable` simulated VMs within itself, agent to agent,
//! and no VM crosses the cut; healed, the halves see each other again and
//! the whole fleet balances (a VM crosses, from the layout where one is
//! due). With the coordinator back, it lists every VM where it runs:
//! none lost, none running twice, none moved more than its budget.
//!
//! Where a VM runs is read from /proc (its `herd sim-vm` process, whose
//! control socket lies in the allocation's directory under the agent's
//! data dir), never from what an agent or coordinator says.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::agents::{cluster_with_agents, must_have_ready_nodes};
use common::vms::{one_copy_each, sim_vms};
use common::*;
use herd_chaos::proxy::{LinkFault, LinkProxy};

const LEFT: [&str; 3] = ["p1", "p2", "p3"];
const RIGHT: [&str; 3] = ["p4", "p5", "p6"];

/// Each VM reserves 200 millicores: 10 load points on a 2-core node.
fn vms_spec(name: &str, count: usize) -> String {
    format!("name = \"{name}\"\ntype = \"service\"\ncount = {count}\n[balance]\nmovable = true\n[task]\ndriver = \"simvm\"\n[task.config]\ndirty_rate = \"1MiB\"\nseed = 5\n[task.resources]\ncpu = 200\nmemory = \"32MiB\"\n")
}

/// VMs of the left half's job (all placed on p1) and the right's (on p4).
const LEFT_VMS: usize = 8;
const RIGHT_VMS: usize = 2;
const ALL_VMS: usize = LEFT_VMS + RIGHT_VMS;

/// Allocation to (node, generation) of the running allocations of `job`,
/// as the coordinators list them (empty while they do not answer).
fn listed(addr: &str, job: &str) -> BTreeMap<String, (String, u64)> {
    allocs_of(addr, job, true)
}

/// `job`'s allocations meant to run, placed whether or not they run yet:
/// allocation id → node.
fn placed(addr: &str, job: &str) -> BTreeMap<String, String> {
    allocs_of(addr, job, false)
        .into_iter()
        .map(|(id, (node, _))| (id, node))
        .collect()
}

/// `job`'s allocations meant to run (only those running when `running`):
/// allocation id → (node, generation).
fn allocs_of(addr: &str, job: &str, running: bool) -> BTreeMap<String, (String, u64)> {
    let out = must_run_cli(&["--addr", addr, "alloc", "list", "--job", job, "-o", "json"]);
    let all: serde_json::Value = if out.status.success() {
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    } else {
        serde_json::Value::Null
    };
    all.as_array()
        .into_iter()
        .flatten()
        .filter(|a| (!running || a["status"] == "running") && a["desired"] == "run")
        .filter_map(|a| {
            Some((
                a["id"].as_str()?.to_string(),
                (a["node"].as_str()?.to_string(), a["generation"].as_u64()?),
            ))
        })
        .collect()
}

/// The names agent `agent` (its gRPC address) sees alive in its balancing view.
fn alive_seen_by(agent: &str) -> Option<BTreeSet<String>> {
    let out = must_run_cli(&["-o", "json", "balance", "status", "--agent", agent]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        status["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["state"] == "alive")
            .filter_map(|n| n["name"].as_str().map(str::to_string))
            .collect(),
    )
}

/// Open moves in the journal of agent `node`.
fn journal_moves(root: &Path, node: &str) -> usize {
    let path = root.join(format!("node-{node}")).join("balance-moves.json");
    std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["moves"].as_array().map(Vec::len))
        .unwrap_or(0)
}

fn print_logs(root: &Path) {
    for node in LEFT.iter().chain(RIGHT.iter()) {
        let log =
            std::fs::read_to_string(root.join(format!("node-{node}.log"))).unwrap_or_default();
        eprintln!("==== {node}");
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("balanc") || l.contains("offline") || l.contains("migrat"))
            .collect();
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("{}", line.chars().take(300).collect::<String>());
        }
    }
    eprintln!("sim-vm processes: {:?}", sim_vms(root));
}

/// Where each VM was seen, in order (a VM seen alone on a node other than
/// its last one has moved), from /proc samples.
#[derive(Default)]
struct Trail {
    nodes: BTreeMap<String, Vec<String>>,
}

impl Trail {
    fn observe(&mut self, root: &Path) {
        let found = sim_vms(root);
        let mut seen: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (node, alloc) in &found {
            seen.entry(alloc).or_default().insert(node);
        }
        for (alloc, nodes) in seen {
            // Two copies (a live move under way, the source paused): not
            // settled, nothing to record yet.
            if let [node] = nodes.into_iter().collect::<Vec<_>>().as_slice() {
                let trail = self.nodes.entry(alloc.to_string()).or_default();
                if trail.last().map(String::as_str) != Some(*node) {
                    trail.push(node.to_string());
                }
            }
        }
    }

    fn moves(&self, alloc: &str) -> usize {
        self.nodes
            .get(alloc)
            .map_or(0, |t| t.len().saturating_sub(1))
    }
}

fn side_of(node: &str) -> usize {
    usize::from(RIGHT.contains(&node))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_balances_each_half_then_the_whole_once_healed() {
    let started = Instant::now();
    let (mut cluster, addr, agents) = cluster_with_agents(1, "3000").await;
    let mut agents = agents.with_env("HERD_FAULT_PEER_DIAL", "1");
    let all: Vec<&str> = LEFT.iter().chain(RIGHT.iter()).copied().collect();
    for name in &all {
        agents.start(name, &[]).expect("start agent");
    }
    let root = agents.root().to_path_buf();
    let addrs: BTreeMap<&str, String> = all
        .iter()
        .map(|n| (*n, agents.agent(n).expect("agent").addr.clone()))
        .collect();
    // One proxy per directed link between agents; each agent's dial map
    // sends what it opens to a peer through the proxy of that link.
    let avoid = BTreeSet::new();
    let mut links: BTreeMap<(&str, &str), LinkProxy> = BTreeMap::new();
    for (seed, (from, to)) in all
        .iter()
        .flat_map(|f| all.iter().map(move |t| (*f, *t)))
        .filter(|(f, t)| f != t)
        .enumerate()
    {
        let proxy = LinkProxy::start("127.0.0.1", addrs[to].clone(), seed as u64, &avoid)
            .await
            .expect("proxy");
        links.insert((from, to), proxy);
    }
    for from in &all {
        let map: String = links
            .iter()
            .filter(|((f, _), _)| f == from)
            .map(|((_, to), proxy)| format!("{} {}\n", addrs[to], proxy.addr()))
            .collect();
        let dir = root.join(format!("node-{from}"));
        std::fs::create_dir_all(&dir).expect("data dir");
        std::fs::write(dir.join("fault-peer-dial"), map).expect("dial map");
    }
    // The halves stay apart while the jobs are placed: while p4 is the one
    // eligible node (the right job's placement), crowded p1 could otherwise
    // have a left VM moved there through the coordinators, and a move cut
    // off mid-way by the partition keeps its paused copy on the target
    // until the coordinators answer again (seen in CI: two copies of one
    // VM, so neither half ever looked settled).
    let cut_halves = |fault: LinkFault| {
        for ((from, to), link) in &links {
            if side_of(from) != side_of(to) {
                link.set(fault);
            }
        }
    };
    cut_halves(LinkFault::CUT);
    must_have_ready_nodes(&addr, &all).await;

    // Eight VMs on p1, two on p4: only the node named is eligible while
    // each job is placed.
    let dir = tempfile::tempdir().expect("tempdir");
    for (job, count, node) in [("left", LEFT_VMS, "p1"), ("right", RIGHT_VMS, "p4")] {
        for other in &all {
            let on = if *other == node { "on" } else { "off" };
            must_cli_ok(&["--addr", &addr, "node", "eligibility", other, on]);
        }
        let spec = write_spec(dir.path(), job, &vms_spec(job, count));
        must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &spec]);
        // Ineligible as soon as the job is placed: while `node` is the one
        // eligible node, the other half's crowded node may balance a VM
        // onto it through the coordinators (seen under load: a left VM on
        // p4 before the cut).
        until(
            &format!("{job}: {count} VMs placed on {node}"),
            Duration::from_secs(60),
            || {
                let placed = placed(&addr, job);
                (placed.len() == count && placed.values().all(|n| n == node)).then_some(())
            },
        )
        .await;
        must_cli_ok(&["--addr", &addr, "node", "eligibility", node, "off"]);
        until(
            &format!("{job}: {count} VMs running on {node}"),
            Duration::from_secs(60),
            || {
                let placed = listed(&addr, job);
                let real = one_copy_each(&root)?;
                let ok = placed.len() == count
                    && placed.iter().all(|(id, (n, _))| {
                        n == node && real.get(id).map(String::as_str) == Some(node)
                    });
                ok.then_some(())
            },
        )
        .await;
    }
    // Every node ineligible (each was made so once its job was placed):
    // the coordinators refuse every move (a balancing move they record
    // needs an eligible target), so what moves from now on moves agent to
    // agent.
    let left: BTreeSet<String> = listed(&addr, "left").into_keys().collect();
    let right: BTreeSet<String> = listed(&addr, "right").into_keys().collect();
    let before: BTreeMap<String, u64> = listed(&addr, "left")
        .into_iter()
        .chain(listed(&addr, "right"))
        .map(|(id, (_, g))| (id, g))
        .collect();
    let job_side = |alloc: &str| usize::from(right.contains(alloc));
    // Placed, and no move recorded: no node was eligible for one but the
    // node each job was placed on, and the halves could not reach each other.
    let migrations = must_run_cli(&["--addr", &addr, "migration", "list", "-o", "json"]);
    assert!(migrations.status.success(), "herd migration list failed");
    let migrations: serde_json::Value =
        serde_json::from_slice(&migrations.stdout).expect("migration list json");
    assert_eq!(
        migrations.as_array().map(Vec::len),
        Some(0),
        "a move was recorded while the jobs were placed: {migrations}"
    );

    // Every node is ineligible now, so the coordinators record no move:
    // join the halves, and every agent knows every other (through the
    // proxies) before the cut.
    cut_halves(LinkFault::HEALTHY);
    let p1 = addrs["p1"].clone();
    if until_or_none(Duration::from_secs(90), || {
        let alive = alive_seen_by(&p1)?;
        all.iter().all(|n| alive.contains(*n)).then_some(())
    })
    .await
    .is_none()
    {
        print_logs(&root);
        panic!("p1 never saw all six agents alive");
    }

    // The cut: both directions of every link between the halves.
    cut_halves(LinkFault::CUT);
    cluster.kill(1).expect("kill the only coordinator");
    eprintln!("cut and coordinator killed at {:?}", started.elapsed());

    let mut trail = Trail::default();
    let crossed = |trail: &Trail| -> Vec<String> {
        trail
            .nodes
            .iter()
            .filter(|(alloc, nodes)| nodes.iter().any(|n| side_of(n) != job_side(alloc)))
            .map(|(alloc, nodes)| format!("{alloc} via {nodes:?}"))
            .collect()
    };
    let halves_balanced = until_or_none(Duration::from_secs(90), || {
        trail.observe(&root);
        if !crossed(&trail).is_empty() {
            return Some(None);
        }
        let placed = one_copy_each(&root)?;
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for node in placed.values() {
            *per_node.entry(node.as_str()).or_insert(0) += 1;
        }
        // Left: 80/0/0 load points (mean 26.7) settle with p1 at 30
        // (three VMs: a sender stops when its excess over the mean is
        // less than an item); right: 20/0/0 settles at 10/10/0.
        let settled = placed.len() == ALL_VMS
            && per_node.get("p1").is_some_and(|n| *n <= 3)
            && per_node.get("p4") == Some(&1);
        let unseen = alive_seen_by(&p1)?;
        let cut_seen = RIGHT.iter().all(|n| !unseen.contains(*n));
        (settled && cut_seen && (0..3).all(|_| sim_vms(&root).len() == ALL_VMS))
            .then_some(Some(placed))
    })
    .await;
    let crossed_now = crossed(&trail);
    assert!(
        crossed_now.is_empty(),
        "VMs crossed the cut: {crossed_now:?}"
    );
    let Some(Some(halves)) = halves_balanced else {
        print_logs(&root);
        panic!(
            "each half did not balance within itself within 90 s of the cut: {:?}",
            one_copy_each(&root)
        );
    };
    eprintln!("each half balanced at {:?}: {halves:?}", started.elapsed());

    // Where the left half settled: usually 3/3/2 (p1 first), but p1
    // offers several VMs at once and, on stale views, one node may take
    // more than its share (seen: 2/2/4 once p1's last move landed).
    let per_node_at_heal: BTreeMap<String, usize> =
        halves.values().fold(BTreeMap::new(), |mut counts, node| {
            *counts.entry(node.clone()).or_insert(0) += 1;
            counts
        });
    let count_at_heal = |node: &str| per_node_at_heal.get(node).copied().unwrap_or(0);
    // Healed, the mean is 16.7. From 3/3/2, p1 at three VMs (30) is more
    // than an item above it and its only lighter peers are across the
    // healed cut: it sheds one there. (A VM that moved while the
    // coordinators are away stays in its journals and is not offered
    // again until they settle the move, so only p1's never-moved VMs can
    // go on moving now.) From another layout no crossing is due, and the
    // healed phase checks that the halves see each other again.
    let crossing_due =
        count_at_heal("p1") == 3 && count_at_heal("p2") >= 2 && count_at_heal("p3") >= 2;
    eprintln!("healing from {per_node_at_heal:?}: a crossing is due: {crossing_due}");
    for link in links.values() {
        link.set(LinkFault::HEALTHY);
    }
    // Healing takes a few gossip rounds for each side to take the other
    // back (about 10 s on a quiet machine); the bound leaves room for a
    // loaded one (the whole suite on 2 cores took 45 s and more).
    let whole = until_or_none(Duration::from_secs(90), || {
        trail.observe(&root);
        let placed = one_copy_each(&root)?;
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for node in placed.values() {
            *per_node.entry(node.as_str()).or_insert(0) += 1;
        }
        let a_left_vm_crossed = placed
            .iter()
            .any(|(alloc, node)| left.contains(alloc) && side_of(node) == 1);
        let alive = alive_seen_by(&p1)?;
        let healed = all.iter().all(|n| alive.contains(*n));
        (placed.len() == ALL_VMS
            && healed
            && per_node.get("p1").is_some_and(|n| *n <= 2)
            && (a_left_vm_crossed || !crossing_due))
            .then_some(placed)
    })
    .await;
    let Some(whole) = whole else {
        print_logs(&root);
        panic!(
            "the fleet did not balance across the healed cut within 90 s: {:?}",
            one_copy_each(&root)
        );
    };
    eprintln!("whole fleet balanced at {:?}: {whole:?}", started.elapsed());

    cluster.restart(1).expect("restart the coordinator");
    let agreed = until(
        "the coordinator to list every VM where it runs",
        Duration::from_secs(60),
        || {
            trail.observe(&root);
            let real = one_copy_each(&root)?;
            let placed: BTreeMap<_, _> = listed(&addr, "left")
                .into_iter()
                .chain(listed(&addr, "right"))
                .collect();
            let same = placed.len() == ALL_VMS
                && real.len() == ALL_VMS
                && placed
                    .iter()
                    .all(|(id, (node, _))| real.get(id) == Some(node));
            same.then_some(placed)
        },
    )
    .await;
    // Nothing lost or replaced: the very allocations placed at the start.
    assert_eq!(
        agreed.keys().collect::<BTreeSet<_>>(),
        before.keys().collect::<BTreeSet<_>>()
    );
    for (id, (node, generation)) in &agreed {
        let moves = trail.moves(id);
        assert!(moves <= 3, "{id} moved {moves} times, over its budget of 3");
        assert!(
            *generation >= before[id] + u64::from(moves > 0),
            "{id} moved to {node} without a generation bump"
        );
    }
    until("every journal closed", Duration::from_secs(30), || {
        all.iter()
            .all(|n| journal_moves(&root, n) == 0)
            .then_some(())
    })
    .await;
    assert_eq!(one_copy_each(&root).map(|p| p.len()), Some(ALL_VMS));
    eprintln!("done in {:?}", started.elapsed());
}
