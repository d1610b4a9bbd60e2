//! The fleet view of one agent: every instance of every inference service
//! (an allocation of a job whose driver is `inference`) with its node's
//! agent address, learned from the coordinators every few seconds, and the
//! load of each, read from every other agent's `NodeAgent.EngineStats`
//! several times a second. Requests are dispatched from this view alone: no
//! coordinator is on the request path, and a coordinator that does not
//! answer leaves the last list in force.
//!
//! This node's own engines are read from [`Engines`] directly, so an agent
//! serves its local instances even before (or without) any coordinator
//! list.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herd_api::client::{HerdClient, Repeat};
use herd_api::proto::agent::node_agent_client::NodeAgentClient;
use herd_api::proto::agent::EngineStatsRequest;
use herd_api::proto::inference::EngineStats;
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::allocs_client::AllocsClient;
use herd_api::proto::v1::jobs_client::JobsClient;
use herd_api::proto::v1::nodes_client::NodesClient;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Status;

use super::dispatch::{self, DispatchError, InstanceLoad, Policy};
use crate::engines::Engines;

/// How often the instances are listed from the coordinators.
pub const LIST_EVERY: Duration = Duration::from_secs(2);
/// How often every other agent's engine stats are read.
pub const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long one agent or coordinator call may take.
const CALL_TIMEOUT: Duration = Duration::from_millis(750);
/// Agents read at once.
const POLL_CONCURRENCY: usize = 16;
/// Stats older than this are not trusted: their instance is not chosen.
const STALE_AFTER: Duration = Duration::from_secs(2);
/// A request sent to an instance counts as pending until a poll that
/// began this long after it was sent (time for it to reach the engine).
const PENDING_MARGIN: Duration = Duration::from_millis(100);
/// The driver whose jobs are inference services.
const DRIVER: &str = "inference";

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Its allocation.
    pub alloc_id: String,
    /// Its service (job).
    pub job: String,
    /// The node it runs on.
    pub node: String,
    /// That node's agent (`HOST:PORT` of its `NodeAgent` service).
    pub agent: String,
}

/// Stats of one remote engine, with when the poll that read them began.
struct Polled {
    stats: EngineStats,
    at: Instant,
}

#[derive(Default)]
struct View {
    /// Inference services the coordinators know (not stopped).
    services: BTreeSet<String>,
    /// Running instances on other nodes.
    remote: Vec<Instance>,
    /// Latest stats of remote engines, by allocation.
    polled: HashMap<String, Polled>,
    /// Requests sent to each allocation: when, and blocks.
    pending: HashMap<String, Vec<(Instant, u64)>>,
}

struct Shared {
    node: String,
    engines: Engines,
    policy: Policy,
    view: Mutex<View>,
    rng: Mutex<fastrand::Rng>,
    /// Channels to other agents, by (node, address): under TLS each
    /// checks that the agent at the address is that node's.
    channels: Mutex<HashMap<(String, String), Channel>>,
    /// The agent's own token, sent with its calls to other agents.
    token: std::sync::OnceLock<herd_api::client::BearerToken>,
}

/// The fleet view; cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    shared: Arc<Shared>,
}

/// Why no instance serves a request, as a gRPC status.
fn status(job: &str, prompt_tokens: u32, max_tokens: u32, e: DispatchError) -> Status {
    match e {
        DispatchError::NoInstance => Status::unavailable(format!(
            "service {job} has no running instance whose load this agent knows (yet); retry shortly"
        )),
        DispatchError::TooLarge {
            needed_blocks,
            largest_blocks,
        } => {
            let tokens = (prompt_tokens as u64 + max_tokens as u64).saturating_sub(1);
            let block = herd_actors::inference::blocks::BLOCK_TOKENS as u64;
            Status::invalid_argument(format!(
                "request needs {tokens} tokens of KV cache ({needed_blocks} blocks of {block}) but the largest instance of {job} holds {} tokens ({largest_blocks} blocks); lower prompt_tokens + max_tokens or give the engine more kv_blocks",
                largest_blocks as u64 * block
            ))
        }
    }
}

impl Fleet {
    /// The view of the agent of node `node`, whose own engines are `engines`.
    pub fn new(node: &str, engines: Engines, policy: Policy) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            shared: Arc::new(Shared {
                node: node.to_string(),
                engines,
                policy,
                view: Mutex::default(),
                rng: Mutex::new(fastrand::Rng::with_seed(seed)),
                channels: Mutex::default(),
                token: std::sync::OnceLock::new(),
            }),
        }
    }

    /// This agent's node.
    pub fn node(&self) -> &str {
        &self.shared.node
    }

    /// This node's engines.
    pub fn engines(&self) -> &Engines {
        &self.shared.engines
    }

    /// The inference services known here: those the coordinators listed
    /// and those of this node's engines.
    pub fn services(&self) -> BTreeSet<String> {
        let mut services = self
            .shared
            .view
            .lock()
            .map(|v| v.services.clone())
            .unwrap_or_default();
        services.extend(self.shared.engines.local().into_iter().map(|(e, _)| e.job));
        services
    }

    /// Whether `job` is an inference service known here.
    pub fn knows(&self, job: &str) -> bool {
        self.services().contains(job)
    }

    /// The instance a new request of `job` goes to: the lowest virtual
    /// usage among the instances with fresh stats ([`dispatch::pick`]).
    /// The request then counts as pending there until a poll shows it.
    pub fn choose(
        &self,
        job: &str,
        prompt_tokens: u32,
        max_tokens: u32,
    ) -> Result<Instance, Status> {
        let now = Instant::now();
        let local: Vec<_> = self
            .shared
            .engines
            .local()
            .into_iter()
            .filter(|(e, _)| e.job == job)
            .collect();
        let runs_here = !local.is_empty();
        let mut candidates: Vec<(Instance, EngineStats, Instant)> = local
            .into_iter()
            .filter_map(|(e, stats)| {
                let (stats, at) = stats?;
                let instance = Instance {
                    alloc_id: e.alloc_id,
                    job: e.job,
                    node: self.shared.node.clone(),
                    agent: String::new(),
                };
                Some((instance, stats, at))
            })
            .collect();
        let mut view = self
            .shared
            .view
            .lock()
            .map_err(|_| Status::internal("the fleet view is poisoned"))?;
        for instance in view.remote.iter().filter(|i| i.job == job) {
            if let Some(p) = view.polled.get(&instance.alloc_id) {
                candidates.push((instance.clone(), p.stats.clone(), p.at));
            }
        }
        // Fresh stats only; a draining instance (its engine stopping) takes
        // no new request.
        candidates.retain(|(_, stats, at)| {
            now.saturating_duration_since(*at) < STALE_AFTER && !stats.draining
        });
        if candidates.is_empty() && !runs_here && !view.services.contains(job) {
            return Err(Status::not_found(format!(
                "unknown inference service {job:?} (no job of driver \"inference\" by that name)"
            )));
        }
        let loads: Vec<InstanceLoad> = candidates
            .iter()
            .map(|(instance, stats, at)| {
                let mut load = InstanceLoad::from_stats(stats);
                // Pending requests add their blocks but not to the request
                // count: a short request sent since the last poll has often
                // finished already, and counting it would make a busy
                // instance look freer than an idle one that just served a
                // few (`pending_requests` is for moves known to be in
                // flight, as the simulation's migrations are).
                load.pending_blocks = view
                    .pending
                    .get(&instance.alloc_id)
                    .into_iter()
                    .flatten()
                    .filter(|(sent, _)| *sent + PENDING_MARGIN > *at)
                    .map(|(_, blocks)| blocks)
                    .sum();
                load
            })
            .collect();
        let needed = dispatch::peak_blocks(prompt_tokens, max_tokens);
        let index = {
            let mut rng = self
                .shared
                .rng
                .lock()
                .map_err(|_| Status::internal("the fleet view is poisoned"))?;
            dispatch::pick(&loads, needed, &self.shared.policy, &mut rng)
        }
        .map_err(|e| status(job, prompt_tokens, max_tokens, e))?;
        let (instance, _, at) = candidates.swap_remove(index);
        let pending = view.pending.entry(instance.alloc_id.clone()).or_default();
        pending.retain(|(sent, _)| *sent + PENDING_MARGIN > at);
        pending.push((now, dispatch::prompt_blocks(prompt_tokens)));
        Ok(instance)
    }

    /// The instances on other nodes whose stats are fresh, with them (the
    /// rescheduler's targets).
    pub fn fresh_remote(&self) -> Vec<(Instance, EngineStats)> {
        let now = Instant::now();
        let Ok(view) = self.shared.view.lock() else {
            return Vec::new();
        };
        view.remote
            .iter()
            .filter_map(|i| {
                let p = view.polled.get(&i.alloc_id)?;
                (now.saturating_duration_since(p.at) < STALE_AFTER)
                    .then(|| (i.clone(), p.stats.clone()))
            })
            .collect()
    }

    /// The agent of another node's instance `alloc_id`, if known (the
    /// target of a request migration).
    pub fn agent_of(&self, alloc_id: &str) -> Option<String> {
        let view = self.shared.view.lock().ok()?;
        view.remote
            .iter()
            .find(|i| i.alloc_id == alloc_id)
            .map(|i| i.agent.clone())
    }

    /// The node of another node's instance `alloc_id`, if known.
    pub fn node_of(&self, alloc_id: &str) -> Option<String> {
        let view = self.shared.view.lock().ok()?;
        view.remote
            .iter()
            .find(|i| i.alloc_id == alloc_id)
            .map(|i| i.node.clone())
    }

    /// Sends `token` (the agent's node token) with this view's calls to
    /// other agents, which check tokens once the cluster is bootstrapped;
    /// set once, before the view polls.
    pub fn set_token(&self, token: herd_api::client::BearerToken) {
        let _ = self.shared.token.set(token);
    }

    /// A channel to node `node`'s agent at `addr`, kept for later calls;
    /// under TLS the agent must hold `node`'s certificate, not merely a
    /// node certificate (`herd_api::tls::node_endpoint`).
    pub fn channel(&self, node: &str, addr: &str) -> Result<Channel, Status> {
        let mut channels = self
            .shared
            .channels
            .lock()
            .map_err(|_| Status::internal("the fleet view is poisoned"))?;
        let key = (node.to_string(), addr.to_string());
        if let Some(channel) = channels.get(&key) {
            return Ok(channel.clone());
        }
        let channel = herd_api::tls::node_endpoint(addr, node)
            .map_err(|e| {
                Status::internal(format!("bad agent address {addr:?} of node {node}: {e}"))
            })?
            .connect_timeout(CALL_TIMEOUT)
            .connect_lazy();
        channels.insert(key, channel.clone());
        Ok(channel)
    }

    /// Starts listing the instances from `coordinators` every
    /// [`LIST_EVERY`] and reading the other agents' stats every
    /// [`POLL_EVERY`]; the task runs until aborted.
    pub fn spawn(&self, coordinators: HerdClient) -> JoinHandle<()> {
        let fleet = self.clone();
        tokio::spawn(async move {
            let mut poll = tokio::time::interval(POLL_EVERY);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut listed: Option<Instant> = None;
            loop {
                poll.tick().await;
                if listed.is_none_or(|at| at.elapsed() >= LIST_EVERY) {
                    listed = Some(Instant::now());
                    match tokio::time::timeout(CALL_TIMEOUT * 4, list(&coordinators, fleet.node()))
                        .await
                    {
                        Ok(Ok((services, remote))) => fleet.set_instances(services, remote),
                        Ok(Err(e)) => tracing::debug!(error = %e, "listing inference instances"),
                        Err(_) => tracing::debug!("listing inference instances timed out"),
                    }
                }
                fleet.poll_once().await;
            }
        })
    }

    fn set_instances(&self, services: BTreeSet<String>, remote: Vec<Instance>) {
        if let Ok(mut view) = self.shared.view.lock() {
            let live: BTreeSet<&str> = remote.iter().map(|i| i.alloc_id.as_str()).collect();
            view.polled.retain(|id, _| live.contains(id.as_str()));
            view.pending.retain(|id, _| live.contains(id.as_str()));
            view.services = services;
            view.remote = remote;
        }
        if let (Ok(view), Ok(mut channels)) = (self.shared.view.lock(), self.shared.channels.lock())
        {
            channels.retain(|(node, addr), _| {
                view.remote
                    .iter()
                    .any(|i| &i.agent == addr && &i.node == node)
            });
        }
    }

    /// Reads the stats of every agent that runs a remote instance.
    async fn poll_once(&self) {
        let agents: BTreeSet<(String, String)> = match self.shared.view.lock() {
            Ok(view) => view
                .remote
                .iter()
                .map(|i| (i.node.clone(), i.agent.clone()))
                .collect(),
            Err(_) => return,
        };
        let started = Instant::now();
        let calls = agents.into_iter().filter_map(|(node, addr)| {
            let channel = self.channel(&node, &addr).ok()?;
            Some(async move {
                let token = self.shared.token.get().cloned().unwrap_or_default();
                let mut client = NodeAgentClient::with_interceptor(channel, token);
                let call = client.engine_stats(EngineStatsRequest {});
                match tokio::time::timeout(CALL_TIMEOUT, call).await {
                    Ok(Ok(reply)) => Some(reply.into_inner().engines),
                    Ok(Err(e)) => {
                        tracing::debug!(agent = %addr, error = %e.message(), "engine stats");
                        None
                    }
                    Err(_) => None,
                }
            })
        });
        let replies: Vec<_> = futures::stream::iter(calls)
            .buffer_unordered(POLL_CONCURRENCY)
            .collect()
            .await;
        let Ok(mut view) = self.shared.view.lock() else {
            return;
        };
        let known: BTreeMap<String, String> = view
            .remote
            .iter()
            .map(|i| (i.alloc_id.clone(), i.job.clone()))
            .collect();
        // What another agent answers is its own poller's latest read, up to
        // one of its poll periods old: counted as read then, so that a
        // request sent meanwhile stays pending until stats show it.
        let read_at = started
            .checked_sub(crate::engines::POLL_EVERY)
            .unwrap_or(started);
        for engine in replies.into_iter().flatten().flatten() {
            // Only the instances the coordinators listed, under their job.
            let listed = known.get(&engine.alloc_id) == Some(&engine.job);
            if let (true, Some(stats)) = (listed, engine.stats) {
                view.polled
                    .insert(engine.alloc_id, Polled { stats, at: read_at });
            }
        }
        view.polled
            .retain(|_, p| started.saturating_duration_since(p.at) < STALE_AFTER);
    }
}

/// The inference services and their running instances on nodes other than
/// `me`, from the coordinators (any member may answer).
async fn list(client: &HerdClient, me: &str) -> Result<(BTreeSet<String>, Vec<Instance>), String> {
    let jobs = client
        .call_as(Repeat::Safe, |ch| async move {
            JobsClient::new(ch)
                .list(pb::ListJobsRequest { stale: true })
                .await
                .map(|r| r.into_inner().jobs)
        })
        .await
        .map_err(|e| e.to_string())?;
    let services: BTreeSet<String> = jobs
        .into_iter()
        .filter(|j| j.status != "stopped")
        .filter_map(|j| j.spec)
        .filter(|s| s.task.as_ref().is_some_and(|t| t.driver == DRIVER))
        .map(|s| s.name)
        .collect();
    if services.is_empty() {
        return Ok((services, Vec::new()));
    }
    let nodes = client
        .call_as(Repeat::Safe, |ch| async move {
            NodesClient::new(ch)
                .list(pb::ListNodesRequest { stale: true })
                .await
                .map(|r| r.into_inner().nodes)
        })
        .await
        .map_err(|e| e.to_string())?;
    let agents: HashMap<String, String> = nodes
        .into_iter()
        .filter(|n| n.status == "ready" && n.name != me)
        .map(|n| (n.name, n.addr))
        .collect();
    let mut remote = Vec::new();
    for job in &services {
        let allocs = client
            .call_as(Repeat::Safe, |ch| async move {
                AllocsClient::new(ch)
                    .list(pb::ListAllocsRequest {
                        job: job.clone(),
                        stale: true,
                    })
                    .await
                    .map(|r| r.into_inner().allocs)
            })
            .await
            .map_err(|e| e.to_string())?;
        remote.extend(
            allocs
                .into_iter()
                .filter(|a| a.status == "running" && a.desired == "run")
                .filter_map(|a| {
                    let agent = agents.get(&a.node)?.clone();
                    Some(Instance {
                        alloc_id: a.id,
                        job: a.job,
                        node: a.node,
                        agent,
                    })
                }),
        );
    }
    Ok((services, remote))
}
