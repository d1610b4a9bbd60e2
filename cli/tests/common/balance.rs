//! Balancing among node agents (`[balance] movable` jobs) with the
//! coordinators away, read from outside: the crowded start every such test
//! needs, what the coordinators list, each agent's move journal and
//! balancing view, and its log when a test fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use herd_chaos::agents::AgentSet;
use herd_chaos::process_cluster::ProcessCluster;
use serde_json::Value;

use super::agents::{cluster_with_agents, must_have_ready_nodes};
use super::{must_cli_ok, must_run_cli, until_or_none, write_spec};

/// One coordinator marking nodes down after `ttl_ms`, an agent on each of
/// `nodes` (started with `env` in its environment), every node but the
/// first made ineligible, and `spec` (a job of `[balance] movable` VMs)
/// run: so the coordinators put everything on the first node and leave it
/// there, and only the agents' own balancing can move it. Returns the
/// cluster, its address and the agents.
pub async fn crowded_on_first(
    ttl_ms: &str,
    nodes: &[&str],
    env: &[(&str, &str)],
    spec: &str,
) -> (ProcessCluster, String, AgentSet) {
    let (cluster, addr, agents) = cluster_with_agents(1, ttl_ms).await;
    let mut agents = env
        .iter()
        .fold(agents, |agents, (k, v)| agents.with_env(k, v));
    for name in nodes {
        agents.start(name, &[]).expect("start agent");
    }
    must_have_ready_nodes(&addr, nodes).await;
    for name in &nodes[1..] {
        must_cli_ok(&["--addr", &addr, "node", "eligibility", name, "off"]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = write_spec(dir.path(), "vms", spec);
    must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &spec]);
    (cluster, addr, agents)
}

/// Allocation to (node, generation) of the running `job`, as the
/// coordinators list them (empty while they do not answer).
pub fn listed(addr: &str, job: &str) -> BTreeMap<String, (String, u64)> {
    let out = must_run_cli(&["--addr", addr, "alloc", "list", "--job", job, "-o", "json"]);
    let all: Value = if out.status.success() {
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    } else {
        Value::Null
    };
    all.as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["status"] == "running" && a["desired"] == "run")
        .filter_map(|a| {
            Some((
                a["id"].as_str()?.to_string(),
                (a["node"].as_str()?.to_string(), a["generation"].as_u64()?),
            ))
        })
        .collect()
}

/// The open moves in the journal of agent `node` (under the agents' `root`),
/// as JSON: what an agent still has to settle with the coordinators.
pub fn journal(root: &Path, node: &str) -> Vec<Value> {
    let path = root.join(format!("node-{node}")).join("balance-moves.json");
    std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["moves"].as_array().cloned())
        .unwrap_or_default()
}

/// Whether agent `from` of `agents` sees every node of `nodes` alive in its
/// balancing view within 60 s: the agents must know each other (gossip
/// seeded by the coordinators) before the coordinators go, as without them
/// nobody could introduce them.
pub async fn sees_alive(agents: &AgentSet, from: &str, nodes: &[&str]) -> bool {
    let agent = agents.agent(from).expect("agent").addr.clone();
    until_or_none(Duration::from_secs(60), || {
        let out = must_run_cli(&["-o", "json", "balance", "status", "--agent", &agent]);
        let status: Value = serde_json::from_slice(&out.stdout).ok()?;
        let alive: BTreeSet<&str> = status["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["state"] == "alive")
            .filter_map(|n| n["name"].as_str())
            .collect();
        nodes.iter().all(|n| alive.contains(n)).then_some(())
    })
    .await
    .is_some()
}

/// Prints the last `lines` lines of agent `node`'s log (under the agents'
/// `root`; connection errors and cgroup notes left out), to see why a test
/// failed before its directory goes.
pub fn print_log_tail(root: &Path, node: &str, lines: usize) {
    let log = std::fs::read_to_string(root.join(format!("node-{node}.log"))).unwrap_or_default();
    eprintln!("==== {node}");
    let kept: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("tcp connect error") && !l.contains("cgroup"))
        .collect();
    for line in &kept[kept.len().saturating_sub(lines)..] {
        eprintln!("{}", line.chars().take(400).collect::<String>());
    }
}
