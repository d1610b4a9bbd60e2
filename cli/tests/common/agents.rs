//! Helpers for tests of node agents through the CLI: running allocations,
//! nodes ready, a cluster with an agent set.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use super::{json, until};

/// The allocations of `job` that run and should.
pub fn running_allocs(addr: &str, job: &str) -> Vec<Value> {
    json(addr, &["alloc", "list", "--job", job])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["status"] == "running" && a["desired"] == "run")
        .collect()
}

/// Waits until every node of `names` is listed as ready.
pub async fn must_have_ready_nodes(addr: &str, names: &[&str]) {
    until(
        &format!("nodes {names:?} ready"),
        Duration::from_secs(20),
        || {
            let nodes = json(addr, &["node", "list"]);
            let ready: BTreeSet<String> = nodes
                .as_array()?
                .iter()
                .filter(|n| n["status"] == "ready")
                .filter_map(|n| n["name"].as_str().map(str::to_string))
                .collect();
            names.iter().all(|n| ready.contains(*n)).then_some(())
        },
    )
    .await;
}

/// `members` coordinator processes marking nodes down after `ttl_ms`, once
/// they have a leader, with their address list and an agent set (empty)
/// pointed at them: the start of every test of agents.
pub async fn cluster_with_agents(
    members: u64,
    ttl_ms: &str,
) -> (
    herd_chaos::process_cluster::ProcessCluster,
    String,
    herd_chaos::agents::AgentSet,
) {
    cluster_with_agents_args(members, &["--node-ttl-ms", ttl_ms]).await
}

/// [`cluster_with_agents`] with `args` on every coordinator's command line.
pub async fn cluster_with_agents_args(
    members: u64,
    args: &[&str],
) -> (
    herd_chaos::process_cluster::ProcessCluster,
    String,
    herd_chaos::agents::AgentSet,
) {
    let cluster =
        herd_chaos::process_cluster::ProcessCluster::start(super::herd_bin(), members, args)
            .expect("start cluster");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let addr = cluster.addr_list();
    let agents = herd_chaos::agents::AgentSet::new(super::herd_bin(), &addr).expect("agents");
    (cluster, addr, agents)
}
