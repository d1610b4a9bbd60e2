//! Simulated VMs (`simvm`: real `herd sim-vm` processes that move live) on
//! node agents, placed where a test wants them through node eligibility:
//! the fragmented clusters of the rescheduler's tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::agents::running_allocs;
use serde_json::Value;

use super::{json, must_cli_ok, until, write_spec};

/// Submits simvm job `name` of `millis` millicores at `priority` and waits
/// until its one allocation runs; returns the node it runs on.
pub async fn run_vm(
    addr: &str,
    dir: &Path,
    name: &str,
    millis: u64,
    priority: u32,
    seed: usize,
) -> String {
    let spec = write_spec(
        dir,
        name,
        &format!(
            "name = \"{name}\"\ntype = \"service\"\npriority = {priority}\n[task]\ndriver = \"simvm\"\n[task.config]\ndirty_rate = \"1MiB\"\nseed = {seed}\n[task.resources]\ncpu = {millis}\nmemory = \"32MiB\"\n"
        ),
    );
    must_cli_ok(&["--addr", addr, "job", "run", "--detach", &spec]);
    until(
        &format!("job {name} running"),
        Duration::from_secs(30),
        || {
            let allocs = running_allocs(addr, name);
            let [a] = allocs.as_slice() else { return None };
            a["node"].as_str().map(str::to_string)
        },
    )
    .await
}

/// Only `node` of `nodes` takes new work.
pub fn only_eligible(addr: &str, nodes: &[&str], node: &str) {
    for n in nodes {
        let state = if *n == node { "on" } else { "off" };
        must_cli_ok(&["--addr", addr, "node", "eligibility", n, state]);
    }
}

/// Every node of `nodes` takes new work.
pub fn all_eligible(addr: &str, nodes: &[&str]) {
    for n in nodes {
        must_cli_ok(&["--addr", addr, "node", "eligibility", n, "on"]);
    }
}

/// The node allocation `id` is on.
pub fn alloc_node(addr: &str, id: &str) -> String {
    json(addr, &["alloc", "status", id])["node"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The smallest CPU capacity of the registered nodes, millicores.
pub fn min_cpu_capacity(addr: &str) -> u64 {
    json(addr, &["node", "list"])
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["capacity"]["cpu_millis"].as_u64())
        .min()
        .expect("a capacity")
}

/// Places `layout` (node, VMs of `millis` each), one VM job per VM named
/// `v1`, `v2`, ... in order, at `priority`; every node eligible after.
/// Returns the number of VMs placed.
pub async fn place_vms(
    addr: &str,
    dir: &Path,
    nodes: &[&str],
    layout: &[(&str, usize)],
    millis: u64,
    priority: u32,
) -> usize {
    let mut vm = 0;
    for &(node, count) in layout {
        only_eligible(addr, nodes, node);
        for _ in 0..count {
            vm += 1;
            let ran_on = run_vm(addr, dir, &format!("v{vm}"), millis, priority, vm).await;
            assert_eq!(ran_on, node);
        }
    }
    all_eligible(addr, nodes);
    vm
}

/// Live `herd sim-vm` processes (not zombies) whose command line mentions
/// `needle` (a test's or the agents' root directory), through /proc: what
/// tells "one running copy per VM" from "the records say so".
pub fn sim_vm_pids_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| Some(s[s.rfind(')')? + 2..].chars().next()? != 'Z'))
                .unwrap_or(false);
            alive && args.iter().any(|a| a == "sim-vm") && args.iter().any(|a| a.contains(needle))
        })
        .collect()
}

/// The live fragment rate for a target shape of `target` CPU (a plan of no
/// moves, so nothing is planned or changed).
pub fn live_fr(addr: &str, target: &str) -> f64 {
    json(
        addr,
        &[
            "reschedule",
            "plan",
            "--max-migrations",
            "0",
            "--deadline",
            "10ms",
            "--target-cpu",
            target,
        ],
    )["fr_before"]
        .as_f64()
        .expect("fr_before")
}

/// Every migration record, as `herd migration list -o json` prints them.
pub fn migrations(addr: &str) -> Vec<Value> {
    json(addr, &["migration", "list"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Live `herd sim-vm` processes under `root` (the agents' directory), each
/// as (node, allocation) read from its control socket's path
/// `ROOT/node-NODE/allocs/ALLOC/...`.
pub fn sim_vms(root: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let root = root.display().to_string();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            if stat[stat.rfind(')')? + 2..].starts_with('Z') {
                return None;
            }
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args.iter().any(|a| a == "sim-vm") {
                return None;
            }
            let control = args
                .iter()
                .skip_while(|a| *a != "--control")
                .nth(1)?
                .strip_prefix(&root)?
                .trim_start_matches('/')
                .to_string();
            let mut parts = control.split('/');
            let node = parts.next()?.strip_prefix("node-")?.to_string();
            (parts.next()? == "allocs").then_some(())?;
            Some((node, parts.next()?.to_string()))
        })
        .collect()
}

/// Allocation to node, from /proc, if every VM runs exactly once.
pub fn one_copy_each(root: &Path) -> Option<BTreeMap<String, String>> {
    let found = sim_vms(root);
    let placed: BTreeMap<String, String> =
        found.iter().map(|(n, a)| (a.clone(), n.clone())).collect();
    (placed.len() == found.len()).then_some(placed)
}

/// The rescheduler's loop tests' start: coordinators, agents and the
/// fragmented layout of [`fragmented_for_the_loop`].
pub struct Fragmented {
    /// The coordinators, reading the config file the test rewrites.
    pub cluster: herd_chaos::process_cluster::ProcessCluster,
    /// Their address list.
    pub addr: String,
    /// The agents (dropping them stops the VMs).
    pub agents: herd_chaos::agents::AgentSet,
    /// The coordinators' config file, empty so far: the loop off.
    pub config: std::path::PathBuf,
    /// The target shape of the plans, half a node's CPU (`{N}m`).
    pub target: String,
    /// The fragment rate for that shape once the VMs are placed.
    pub fr: f64,
    /// How many VMs were placed.
    pub placed: usize,
}

/// `members` coordinators marking nodes down after `ttl_ms` and reading
/// `dir/coordinator.toml` (empty: the defragmenting loop off), a leader
/// within `leader_within`, an agent on each of `nodes` (three), and seven
/// VMs of a quarter node each placed 3/3/1 at priority 50: free CPU
/// fragmented (the rate checked above 0.5) for the loop to mend once a
/// test turns it on with [`restart_with_config`].
pub async fn fragmented_for_the_loop(
    dir: &Path,
    members: u64,
    ttl_ms: &str,
    leader_within: Duration,
    nodes: &[&str],
) -> Fragmented {
    let config = dir.join("coordinator.toml");
    std::fs::write(&config, "").expect("write config");
    let config_arg = config.to_str().expect("utf-8 path").to_string();
    let cluster = herd_chaos::process_cluster::ProcessCluster::start(
        super::herd_bin(),
        members,
        &["--node-ttl-ms", ttl_ms, "--config", &config_arg],
    )
    .expect("start cluster");
    cluster
        .wait_for_leader(leader_within)
        .await
        .expect("leader");
    let addr = cluster.addr_list();
    let mut agents = herd_chaos::agents::AgentSet::new(super::herd_bin(), &addr).expect("agents");
    for name in nodes {
        agents.start(name, &[]).expect("start agent");
    }
    super::agents::must_have_ready_nodes(&addr, nodes).await;
    let capacity = min_cpu_capacity(&addr);
    let q = capacity / 4;
    assert!(q >= 100, "nodes of {capacity} millicores are too small");
    let target = format!("{}m", 2 * q);
    let layout = [(nodes[0], 3), (nodes[1], 3), (nodes[2], 1)];
    let placed = place_vms(&addr, dir, nodes, &layout, q, 50).await;
    let fr = live_fr(&addr, &target);
    assert!(fr > 0.5, "the layout is fragmented: FR {fr}");
    Fragmented {
        cluster,
        addr,
        agents,
        config,
        target,
        fr,
        placed,
    }
}

/// Writes `text` to the coordinators' config file `config`, restarts every
/// member of `cluster` so that each reads it, and waits up to `within` for
/// a leader.
pub async fn restart_with_config(
    cluster: &mut herd_chaos::process_cluster::ProcessCluster,
    config: &Path,
    text: &str,
    within: Duration,
) {
    std::fs::write(config, text).expect("write config");
    for id in cluster.ids() {
        cluster.kill(id).expect("kill");
        cluster.restart(id).expect("restart");
    }
    cluster
        .wait_for_leader(within)
        .await
        .expect("leader after restart");
}
