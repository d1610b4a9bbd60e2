//! The `Balancer` actor: one per node agent, supervised by it. It owns the
//! [`herd_balance::Agent`] state machine and does everything the state
//! machine leaves to its caller: the clock (a tick every
//! [`herd_balance::Config::tick_ms`]), the network (packets over
//! `AgentPeer.Gossip`), measuring this node's load, listing what may move,
//! finding seeds, and carrying out approved moves.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herd_actors::resources::{HostReport, ResourceMsg};
use herd_api::client::HerdClient;
use herd_api::proto::agent::agent_peer_client::AgentPeerClient;
use herd_api::proto::agent::{BalanceNodeView, BalanceStatusReply, GossipPacket};
use herd_balance::{Agent, Event, ItemKind, Liveness, Outgoing, PeerInfo};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::assigned::AssignedRx;
use super::journal::MoveJournal;
use super::load::{self, Capacity, MoveHistory};
use super::moves::{self, MoveOutcome};
use super::offline::OfflineMoves;
use super::peers;
use super::requests;
use crate::engines::Engines;

/// How often the coordinators' node list is read while they answer.
const LIST_EVERY: Duration = Duration::from_secs(3);
/// While the coordinators answered this recently an allocation moves as a
/// migration they record; otherwise agent to agent, journalled
/// ([`super::offline`]).
const COORDINATORS_FRESH: Duration = Duration::from_secs(10);
/// How often the known peers are written to disk.
const SAVE_EVERY: Duration = Duration::from_secs(10);
/// Longest one gossip call may take (the protocol tolerates a lost packet).
const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Packets in flight at once; beyond it new ones are dropped (as a lossy
/// network would) rather than queued behind a slow peer.
const MAX_IN_FLIGHT: usize = 64;
/// Connections kept to peers; beyond it the cache starts again.
const MAX_CHANNELS: usize = 256;
/// Longest the resource monitor may take to answer.
const MONITOR_TIMEOUT_MS: u64 = 500;

/// What the balancer is started with.
pub struct BalancerArgs {
    /// This node's name.
    pub node: String,
    /// Where peers reach this agent's `AgentPeer` service.
    pub peer_addr: String,
    /// This agent's HTTP endpoint, if any (shown to peers).
    pub http_addr: Option<String>,
    /// The agent's data dir (remembered peers live there).
    pub data_dir: PathBuf,
    /// The coordinators, for the node list and for recording moves.
    pub coordinators: Option<HerdClient>,
    /// Where the node's capacity is read.
    pub monitor: ActorRef<ResourceMsg>,
    /// This node's inference engines (their queues count in the load).
    pub engines: Engines,
    /// What the coordinators last assigned here.
    pub assigned: AssignedRx,
    /// CPU kept back for the system, millicores.
    pub reserved_cpu_millis: u64,
    /// Memory kept back for the system, bytes.
    pub reserved_memory_bytes: u64,
    /// The drivers here that can move a workload live.
    pub movable_drivers: BTreeSet<String>,
    /// The protocol's and the policy's settings.
    pub config: herd_balance::Config,
    /// Where moves and bytes sent are counted (the agent's metrics).
    pub stats: Arc<crate::metrics::AgentStats>,
    /// What runs inference requests here, when the agent serves any: its
    /// running requests are movable items, moved by request migration.
    pub inference: Option<crate::infer::Inference>,
}

/// The balancer's messages.
pub enum BalanceMsg {
    /// Advance the state machine (every tick).
    Tick,
    /// A packet from peer `from_node` (the gRPC service); the answer holds
    /// the packets that go straight back to it, or why the packet was
    /// refused.
    Gossip(String, Vec<u8>, RpcReplyPort<Result<Vec<Vec<u8>>, String>>),
    /// Packets a peer sent back in its answer to one of ours.
    Answers(Vec<Vec<u8>>),
    /// This agent's view, for `herd balance status`.
    Status(RpcReplyPort<BalanceStatusReply>),
    /// The coordinators' node list (`None`: they did not answer).
    Listed(Option<Vec<PeerInfo>>),
    /// A move this node began has ended.
    MoveFinished {
        /// The item.
        item: String,
        /// How.
        outcome: MoveOutcome,
    },
}

/// The balancer's state.
pub struct BalancerState {
    args: BalancerArgs,
    agent: Agent,
    started: Instant,
    ticker: Option<JoinHandle<()>>,
    /// Gossip channels by (node, address) dialed.
    channels: HashMap<(String, String), Channel>,
    in_flight: Arc<AtomicUsize>,
    capacity: Option<Capacity>,
    history: MoveHistory,
    moving: BTreeSet<String>,
    /// Requests moved here, awaited under their new engine ids.
    arrivals: requests::Arrivals,
    listing: bool,
    last_list: Option<Instant>,
    coordinators_seen: Option<Instant>,
    last_save: Instant,
    /// Moves made with the coordinators away (None: no journal, and then
    /// allocations move only while the coordinators answer).
    offline: Option<Arc<OfflineMoves>>,
}

impl BalancerState {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }
}

/// The actor.
pub struct Balancer;

impl Balancer {
    /// Hands every packet to the network, each on its own task.
    fn send(myself: &ActorRef<BalanceMsg>, state: &mut BalancerState, out: Vec<Outgoing>) {
        for packet in out {
            if state.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                tracing::debug!(to = %packet.to.id, "gossip packet dropped: too many in flight");
                continue;
            }
            let addr = super::dial::resolve(&packet.to.peer_addr);
            let Some(channel) = Self::channel(state, &packet.to.id, &addr) else {
                continue;
            };
            state.args.stats.gossip_sent(packet.packet.len() as u64);
            let request = GossipPacket {
                from_node: state.args.node.clone(),
                from_addr: state.args.peer_addr.clone(),
                payload: packet.packet,
            };
            let in_flight = state.in_flight.clone();
            in_flight.fetch_add(1, Ordering::Relaxed);
            let myself = myself.clone();
            tokio::spawn(async move {
                let mut client = AgentPeerClient::new(channel);
                let call = client.gossip(request);
                if let Ok(Ok(reply)) = tokio::time::timeout(SEND_TIMEOUT, call).await {
                    let payloads = reply.into_inner().payloads;
                    if !payloads.is_empty() {
                        let _ = myself.cast(BalanceMsg::Answers(payloads));
                    }
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    /// A channel to node `node`'s agent at `addr`: under TLS its
    /// certificate must name that node, so gossip meant for one node is
    /// not handed to whichever agent holds the address now.
    fn channel(state: &mut BalancerState, node: &str, addr: &str) -> Option<Channel> {
        let key = (node.to_string(), addr.to_string());
        if let Some(channel) = state.channels.get(&key) {
            return Some(channel.clone());
        }
        if state.channels.len() >= MAX_CHANNELS {
            state.channels.clear();
        }
        let endpoint = match herd_api::tls::node_endpoint(addr, node) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                tracing::debug!(%node, %addr, error = %e, "bad peer address in gossip");
                return None;
            }
        };
        let channel = endpoint.connect_timeout(SEND_TIMEOUT).connect_lazy();
        state.channels.insert(key, channel.clone());
        Some(channel)
    }

    /// Acts on what the state machine decided.
    fn handle_events(myself: &ActorRef<BalanceMsg>, state: &mut BalancerState) {
        for event in state.agent.take_events() {
            if let Some(offline) = &state.offline {
                offline.on_event(&event, state.args.config.reservation_ttl_ms);
            }
            match event {
                Event::MoveApproved { item, to } => Self::start_move(myself, state, item, to),
                Event::MoveReceived { item, from } => {
                    tracing::info!(item = %item.id, from = %from.id, moves = item.moves_so_far, "balancing: item moved here");
                    state.args.stats.balance_move("in", "moved");
                    if item.kind == ItemKind::InferenceRequest {
                        // Known here under a new engine id, once seen.
                        state.arrivals.expect(&item);
                    } else {
                        state
                            .history
                            .insert(item.id.clone(), (item.moves_so_far, item.last_moved_ms));
                    }
                }
                Event::IncomingReserved {
                    item,
                    kind: ItemKind::InferenceRequest,
                    weight,
                    ..
                } => state.arrivals.reserved(&item, weight),
                Event::IncomingCancelled { item, .. } | Event::ReservationExpired { item, .. } => {
                    state.arrivals.released(&item)
                }
                Event::PeerUp(peer) => tracing::info!(peer = %peer.id, "balancing: peer up"),
                Event::PeerDown(peer) => {
                    tracing::info!(peer = %peer.id, "balancing: peer declared down by the fleet")
                }
                other => tracing::debug!(event = ?other, "balancing"),
            }
        }
    }

    fn start_move(
        myself: &ActorRef<BalanceMsg>,
        state: &mut BalancerState,
        item: herd_balance::MovableItem,
        to: PeerInfo,
    ) {
        if item.kind == ItemKind::InferenceRequest {
            Self::start_request_move(myself, state, item, to);
            return;
        }
        // An agent just started counts its coordinators as answering
        // until it has tried them for as long as a silence takes.
        let fresh = state.args.coordinators.is_some()
            && state.coordinators_seen.unwrap_or(state.started).elapsed() < COORDINATORS_FRESH;
        let work = state.args.assigned.borrow().clone();
        // GPUs are bound by the leader: work holding some moves only with it.
        let offline_work = work
            .into_iter()
            .find(|w| w.alloc_id == item.id && w.resources.gpus == 0);
        if let (false, Some(offline), Some(work), ItemKind::Allocation) =
            (fresh, &state.offline, offline_work, item.kind)
        {
            state.moving.insert(item.id.clone());
            let (offline, myself) = (offline.clone(), myself.clone());
            tokio::spawn(async move {
                let outcome = offline.move_allocation(&work, &to).await;
                let _ = myself.cast(BalanceMsg::MoveFinished {
                    item: item.id,
                    outcome,
                });
            });
            return;
        }
        let client = match (&state.args.coordinators, item.kind, fresh) {
            (Some(client), ItemKind::Allocation, true) => client.clone(),
            _ => {
                // Only allocations are listed as movable here; anything
                // else is refused back to the state machine.
                let now = state.now_ms();
                let out = state.agent.move_done(&item.id, false, now);
                Self::send(myself, state, out);
                return;
            }
        };
        tracing::info!(item = %item.id, to = %to.id, weight = item.weight, "balancing: moving");
        state.moving.insert(item.id.clone());
        let mut assigned = state.args.assigned.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let outcome = moves::move_allocation(&client, &item.id, &to.id, &mut assigned).await;
            let _ = myself.cast(BalanceMsg::MoveFinished {
                item: item.id,
                outcome,
            });
        });
    }

    /// Moves a request by request migration, agent to agent: no
    /// coordinator is involved, so this works with them away.
    fn start_request_move(
        myself: &ActorRef<BalanceMsg>,
        state: &mut BalancerState,
        item: herd_balance::MovableItem,
        to: PeerInfo,
    ) {
        let now = state.now_ms();
        let target = item
            .service
            .as_deref()
            .and_then(|service| requests::target_instance(&state.agent.view(now), &to.id, service));
        let (Some(inference), Some(target)) = (state.args.inference.clone(), target) else {
            tracing::debug!(item = %item.id, to = %to.id, "balancing: no instance to move the request to");
            let out = state.agent.move_done(&item.id, false, now);
            Self::send(myself, state, out);
            return;
        };
        tracing::info!(item = %item.id, to = %to.id, %target, weight = item.weight, "balancing: migrating a request");
        state.moving.insert(item.id.clone());
        let engines = state.args.engines.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let outcome =
                requests::move_request(&inference, &engines, &item.id, &to, &target).await;
            let _ = myself.cast(BalanceMsg::MoveFinished {
                item: item.id,
                outcome,
            });
        });
    }

    /// Reads the node's capacity; the last one known if the monitor is slow.
    async fn refresh_capacity(state: &mut BalancerState) {
        let report: Result<HostReport, _> = ractor::call_t!(
            state.args.monitor,
            ResourceMsg::Snapshot,
            MONITOR_TIMEOUT_MS
        );
        if let Ok(report) = report {
            if report.sampled_at_ms > 0 {
                state.capacity = Some(Capacity::of(
                    &report,
                    state.args.reserved_cpu_millis,
                    state.args.reserved_memory_bytes,
                ));
            }
        }
    }

    async fn tick(myself: &ActorRef<BalanceMsg>, state: &mut BalancerState) {
        Self::refresh_capacity(state).await;
        let now = state.now_ms();
        if let Some(capacity) = state.capacity {
            let mut work = state.args.assigned.borrow().clone();
            if let Some(offline) = &state.offline {
                work = offline.effective_work(work);
            }
            let engines = state.args.engines.snapshot();
            let mut summary = load::summary(&work, capacity, &engines);
            if state.args.inference.is_some() {
                // Requests moved here count before the engines' stats
                // show them (the state machine stops counting a finished
                // move at this call).
                state.arrivals.recognise(&engines, &mut state.history);
                state.arrivals.count_in(&mut summary);
            }
            state.agent.set_local_load(summary.clone());
            let coordinators_fresh = state
                .coordinators_seen
                .is_some_and(|at| at.elapsed() < COORDINATORS_FRESH);
            let items = if coordinators_fresh || state.offline.is_some() {
                load::movable_items(&work, capacity, &state.args.movable_drivers, &state.history)
                    .into_iter()
                    .filter(|item| !state.moving.contains(&item.id))
                    .filter(|item| {
                        state
                            .offline
                            .as_ref()
                            .is_none_or(|o| !o.in_journal(&item.id))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let mut items: Vec<herd_balance::MovableItem> = items;
            if state.args.inference.is_some() {
                // Requests move agent to agent: listed whether or not the
                // coordinators answer.
                requests::prune_history(&mut state.history, &engines);
                items.extend(
                    requests::movable_requests(&engines, &summary, &state.history)
                        .into_iter()
                        .filter(|item| !state.moving.contains(&item.id))
                        .filter(|item| {
                            // Maybe one arriving, its move count not known yet.
                            state.history.contains_key(&item.id) || !state.arrivals.covers(&item.id)
                        }),
                );
            }
            tracing::debug!(
                score = state.agent.effective_score(),
                movable = items.len(),
                coordinators_fresh,
                "balancing tick"
            );
            state.agent.set_movable(items);
        }
        let out = state.agent.tick(now);
        Self::send(myself, state, out);
        Self::handle_events(myself, state);
        Self::list_if_due(myself, state);
        if state.last_save.elapsed() >= SAVE_EVERY {
            state.last_save = Instant::now();
            let file = peers::peers_file(&state.args.data_dir);
            if let Err(e) = peers::save(&file, &state.agent.known_peers()) {
                tracing::debug!(file = %file.display(), error = %e, "cannot remember peers");
            }
        }
    }

    fn list_if_due(myself: &ActorRef<BalanceMsg>, state: &mut BalancerState) {
        let Some(client) = state.args.coordinators.clone() else {
            return;
        };
        if state.listing || state.last_list.is_some_and(|at| at.elapsed() < LIST_EVERY) {
            return;
        }
        state.listing = true;
        state.last_list = Some(Instant::now());
        let me = state.args.node.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let listed = tokio::time::timeout(LIST_EVERY, peers::from_coordinators(&client, &me))
                .await
                .ok()
                .and_then(Result::ok);
            let _ = myself.cast(BalanceMsg::Listed(listed));
        });
    }

    fn status(state: &BalancerState) -> BalanceStatusReply {
        let now = state.now_ms();
        let nodes = state
            .agent
            .view(now)
            .into_iter()
            .map(|v| BalanceNodeView {
                name: v.info.id,
                load: v.score,
                view_age_ms: v.view_age_ms,
                state: match v.liveness {
                    Liveness::Alive => "alive",
                    Liveness::Suspect => "suspect",
                    Liveness::Dead => "dead",
                }
                .to_string(),
                addr: v.info.peer_addr,
            })
            .collect();
        let spread = state.agent.spread(now);
        BalanceStatusReply {
            node: state.args.node.clone(),
            nodes,
            max_over_mean: spread.max_over_mean,
            cv: spread.cv,
            moves_per_minute: state.agent.moves_per_minute(now) as f64,
            enabled: true,
        }
    }
}

/// A seed that differs per node and per start.
fn seed_for(node: &str, generation: u64) -> u64 {
    node.bytes()
        .fold(generation ^ 0x9E37_79B9_7F4A_7C15, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
        })
}

impl Actor for Balancer {
    type Msg = BalanceMsg;
    type State = BalancerState;
    type Arguments = BalancerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<BalanceMsg>,
        args: BalancerArgs,
    ) -> Result<BalancerState, ActorProcessingErr> {
        super::dial::init(&args.data_dir);
        // Grows with every start: peers prefer a restarted agent's news.
        let generation = herd_api::clock::now_ms();
        let me = PeerInfo {
            id: args.node.clone(),
            peer_addr: args.peer_addr.clone(),
            http_addr: args.http_addr.clone(),
        };
        let agent = Agent::new(
            me,
            generation,
            args.config.clone(),
            seed_for(&args.node, generation),
        )
        .map_err(|e| format!("balancing settings: {e}"))?;
        let mut state = BalancerState {
            agent,
            started: Instant::now(),
            ticker: None,
            channels: HashMap::new(),
            in_flight: Arc::new(AtomicUsize::new(0)),
            capacity: None,
            history: MoveHistory::new(),
            moving: BTreeSet::new(),
            arrivals: requests::Arrivals::default(),
            listing: false,
            last_list: None,
            coordinators_seen: None,
            last_save: Instant::now(),
            offline: match MoveJournal::open(&args.data_dir) {
                Ok(journal) => Some(Arc::new(OfflineMoves::new(&args.node, journal))),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the balancing move journal; allocations move only while the coordinators answer");
                    None
                }
            },
            args,
        };
        let remembered = peers::load(&peers::peers_file(&state.args.data_dir));
        if !remembered.is_empty() {
            let now = state.now_ms();
            let out = state.agent.add_seeds(remembered, now);
            Self::send(&myself, &mut state, out);
        }
        let every = Duration::from_millis(state.args.config.tick_ms);
        state.ticker = Some(myself.send_interval(every, || BalanceMsg::Tick));
        tracing::info!(node = %state.args.node, tick_ms = state.args.config.tick_ms, "balancer running");
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<BalanceMsg>,
        state: &mut BalancerState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(ticker) = state.ticker.take() {
            ticker.abort();
        }
        let now = state.now_ms();
        let out = state.agent.leave(now);
        Self::send(&myself, state, out);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<BalanceMsg>,
        message: BalanceMsg,
        state: &mut BalancerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            BalanceMsg::Tick => Self::tick(&myself, state).await,
            BalanceMsg::Gossip(from, payload, reply) => {
                let now = state.now_ms();
                match state.agent.receive(&payload, now) {
                    Ok(out) => {
                        let (back, onward): (Vec<_>, Vec<_>) =
                            out.into_iter().partition(|o| o.to.id == from);
                        let _ = reply.send(Ok(back.into_iter().map(|o| o.packet).collect()));
                        Self::send(&myself, state, onward);
                    }
                    Err(e) => {
                        tracing::debug!(peer = %from, error = %e, "gossip packet refused");
                        let _ = reply.send(Err(format!("gossip packet refused: {e}")));
                    }
                }
                Self::handle_events(&myself, state);
            }
            BalanceMsg::Answers(payloads) => {
                for payload in payloads {
                    let now = state.now_ms();
                    match state.agent.receive(&payload, now) {
                        Ok(out) => Self::send(&myself, state, out),
                        Err(e) => tracing::debug!(error = %e, "gossip answer refused"),
                    }
                }
                Self::handle_events(&myself, state);
            }
            BalanceMsg::Status(reply) => {
                let _ = reply.send(Self::status(state));
            }
            BalanceMsg::Listed(listed) => {
                state.listing = false;
                if let Some(seeds) = listed {
                    state.coordinators_seen = Some(Instant::now());
                    if let (Some(offline), Some(client)) =
                        (&state.offline, &state.args.coordinators)
                    {
                        offline.coordinators_answered(client);
                    }
                    let now = state.now_ms();
                    let out = state.agent.add_seeds(seeds, now);
                    Self::send(&myself, state, out);
                    Self::handle_events(&myself, state);
                }
            }
            BalanceMsg::MoveFinished { item, outcome } => {
                state.moving.remove(&item);
                state
                    .args
                    .stats
                    .balance_move("out", if outcome.moved { "moved" } else { "failed" });
                if outcome.moved {
                    tracing::info!(%item, migration = ?outcome.migration, detail = %outcome.detail, "balancing: move done");
                    state.history.remove(&item);
                } else {
                    tracing::warn!(%item, migration = ?outcome.migration, detail = %outcome.detail, "balancing: move failed");
                }
                let now = state.now_ms();
                let out = state.agent.move_done(&item, outcome.moved, now);
                Self::send(&myself, state, out);
                Self::handle_events(&myself, state);
            }
        }
        Ok(())
    }
}
