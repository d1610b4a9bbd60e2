//! Starting what a run acts on, as its scenario says: addresses (loopback
//! or the Docker network), the proxies between coordinators and between
//! agents and coordinators, the coordinators themselves (with tmpfs data
//! dirs or the fault shim where the faults need them) and the node agents.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::agents::AgentSet;
use crate::nemesis::rng::Rng;
use crate::ports::free_loopback_port;
use crate::power::{self, PowerNodes};
use crate::process_cluster::{ClusterSetup, ProcessCluster};
use crate::proxy::{AgentLinks, ProxyNet};
use crate::runner::{RunConfig, RunError};

/// Size of each coordinator's own file system in scenarios that fill disks.
const DISK_MIB: u64 = 128;

/// What a run acts on.
pub struct Started {
    /// The coordinators, with a leader elected.
    pub cluster: ProcessCluster,
    /// The links between coordinators, when faults act on them.
    pub net: Option<ProxyNet>,
    /// The node agents, when the scenario has any.
    pub agents: Option<AgentSet>,
    /// The links from agents to coordinators, when faults cut nodes off.
    pub agent_net: Option<AgentLinks>,
    /// Where the agents serve their power figures (power scenarios only).
    pub power: Option<PowerNodes>,
}

/// Coordinator addresses, and the host the harness's proxies listen on.
fn addresses(config: &RunConfig) -> Result<(BTreeMap<u64, String>, String), RunError> {
    let scenario = &config.scenario;
    match &config.docker {
        Some(docker) => {
            let addrs = (1..=scenario.members)
                .map(|id| (id, docker.member_addr(id)))
                .collect();
            Ok((addrs, docker.gateway()))
        }
        None => Ok((
            ProcessCluster::pick_addrs(scenario.members)?,
            "127.0.0.1".to_string(),
        )),
    }
}

/// Starts the scenario's cluster and agents and waits for a leader.
pub async fn start(config: &RunConfig, rng: &mut Rng) -> Result<Started, RunError> {
    let scenario = &config.scenario;
    let (member_addrs, proxy_host) = addresses(config)?;
    // Coordinators dial each other through fault-injecting proxies when the
    // scenario cuts or slows their links.
    let net = if scenario.faults.iter().any(|f| f.needs_proxies()) {
        let net = ProxyNet::start(&proxy_host, &member_addrs, rng.next_u64())
            .await
            .map_err(|e| RunError::Setup(format!("start the proxies: {e}")))?;
        Some(net)
    } else {
        None
    };
    let dial_args: BTreeMap<u64, Vec<String>> = match &net {
        Some(net) => member_addrs
            .keys()
            .map(|id| (*id, vec!["--dial".to_string(), net.dial_arg(*id)]))
            .collect(),
        None => BTreeMap::new(),
    };
    let shim = if scenario.faults.iter().any(|f| f.needs_shim()) {
        let shim = config.shim.clone().ok_or_else(|| {
            RunError::Setup(format!(
                "scenario {} needs the fault shim {}: build it with `cargo build [--release] -p herd-chaos-shim` (cargo puts it beside the herd binary) or name it with --shim",
                scenario.name,
                crate::shim::SHIM_FILE
            ))
        })?;
        Some(shim)
    } else {
        None
    };
    let setup = ClusterSetup {
        extra_args: vec!["--node-ttl-ms".into(), "2000".into()],
        own_args: dial_args,
        disk_mib: scenario
            .faults
            .iter()
            .any(|f| f.needs_disks())
            .then_some(DISK_MIB),
        shim,
        docker: config.docker.clone(),
        tls: config.tls.clone(),
    };
    let mut cluster = ProcessCluster::start_at(&config.binary, &member_addrs, setup)
        .map_err(|e| RunError::Setup(e.to_string()))?;
    cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .map_err(|e| RunError::Setup(e.to_string()))?;
    cluster
        .wait_members(Duration::from_secs(30))
        .await
        .map_err(|e| RunError::Setup(e.to_string()))?;
    let (agents, agent_net, power) = if scenario.agents > 0 {
        let (set, links, power) =
            start_agents(config, &cluster, &proxy_host, &member_addrs, rng).await?;
        (Some(set), links, power)
    } else {
        (None, None, None)
    };
    Ok(Started {
        cluster,
        net,
        agents,
        agent_net,
        power,
    })
}

/// Starts the scenario's agents `n1..`, through proxies of their own when
/// its faults cut nodes off, with SIMULATED GPUs and metrics endpoints in
/// power scenarios.
async fn start_agents(
    config: &RunConfig,
    cluster: &ProcessCluster,
    proxy_host: &str,
    member_addrs: &BTreeMap<u64, String>,
    rng: &mut Rng,
) -> Result<(AgentSet, Option<AgentLinks>, Option<PowerNodes>), RunError> {
    let scenario = &config.scenario;
    let mut set = AgentSet::new(&config.binary, &cluster.addr_list())?;
    if let Some(tls) = &config.tls {
        set = set.with_tls(tls.clone());
    }
    if let Some(docker) = &config.docker {
        if scenario.power {
            return Err(RunError::Setup(format!(
                "scenario {} runs on this host only, not in Docker mode (its agents' SIMULATED GPUs read a spike file of the harness)",
                scenario.name
            )));
        }
        set = set.in_docker(docker.clone());
    }
    let names: Vec<String> = (1..=scenario.agents).map(|i| format!("n{i}")).collect();
    let power = if scenario.power {
        let spike_file = power::spike_file(set.root());
        power::set_spike(&spike_file, 0.0)
            .map_err(|e| RunError::Setup(format!("write {}: {e}", spike_file.display())))?;
        set = set.with_env(power::SPIKE_FILE_ENV, &spike_file.display().to_string());
        let mut metrics = BTreeMap::new();
        for name in &names {
            let port = free_loopback_port()
                .map_err(|e| RunError::Setup(format!("pick a metrics port: {e}")))?;
            metrics.insert(name.clone(), format!("127.0.0.1:{port}"));
        }
        Some(PowerNodes {
            metrics,
            spike_file,
        })
    } else {
        None
    };
    let args_of = |name: &str| -> Vec<String> {
        power
            .as_ref()
            .and_then(|p| p.metrics.get(name))
            .map(|addr| power::agent_args(addr))
            .unwrap_or_default()
    };
    if !scenario.faults.iter().any(|f| f.needs_agent_proxies()) {
        for name in &names {
            let args = args_of(name);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            set.start(name, &args)?;
        }
        return Ok((set, None, power));
    }
    let links = AgentLinks::start(proxy_host, &names, member_addrs, rng.next_u64())
        .await
        .map_err(|e| RunError::Setup(format!("start the agent proxies: {e}")))?;
    for name in &names {
        let args = args_of(name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        set.start_via(name, &links.coordinators_arg(name), &args)?;
    }
    Ok((set, Some(links), power))
}
