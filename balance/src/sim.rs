//! The balancing SIMULATION: a fleet of [`Agent`]s in one process, running
//! exactly the production protocol code over a simulated network.
//!
//! This is a SIMULATION, not a measurement of real nodes: there are no
//! processes, no gRPC and no real workloads. What is simulated:
//! - **time**: one virtual clock in ms; each agent ticks every
//!   `Config::tick_ms` at its own random phase;
//! - **network**: every packet is delivered after a latency drawn from
//!   `latency_ms`, lost with probability `loss`, and dropped between
//!   agents in different groups of a partition;
//! - **agents**: killed (they stop sending and receiving; their work stays
//!   frozen on their node and out of the statistics) and restarted (a new
//!   `Agent` with a higher generation and its remembered peers as seeds);
//! - **coordinators**: present (every agent is re-seeded with the full node
//!   list every `reseed_ms`) or absent (each agent starts from a few
//!   remembered peers and only gossip helps after that);
//! - **work**: items of random weight; a node's load score is the sum of
//!   its items' weights (plus optional measurement noise); an approved move
//!   takes `move_ms`, then the item belongs to the recipient and the sender
//!   reports `move_done` — the whole item, no partial moves.
//!
//! What it does not model: CPU time of the agents, bandwidth limits, the
//! cost or failure modes of real migrations, load that changes on its own
//! while balancing (besides the noise), or clock drift (only differences
//! of the one clock are used, as agents would with their own).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use serde::Serialize;

use crate::agent::{Agent, Event, Outgoing, Spread};
use crate::config::{Config, ConfigError};
use crate::item::{ItemKind, MovableItem};
use crate::load::LoadSummary;
use crate::peer::PeerInfo;

/// Cores of every simulated node: a score point is 1 % of it.
pub const SIM_CORES: u32 = 100;

/// How a SIMULATION run is set up.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Agents in the fleet.
    pub agents: usize,
    /// Seed of the start, the network and every agent.
    pub seed: u64,
    /// The agents' configuration.
    pub agent: Config,
    /// One-way latency, uniform in `min..=max` ms.
    pub latency_ms: (u64, u64),
    /// Probability a packet is lost.
    pub loss: f64,
    /// Coordinators present: re-seed every agent with the full node list
    /// every `reseed_ms`. Absent: `initial_seeds` random peers at start.
    pub coordinators: bool,
    /// Re-seeding period with coordinators present.
    pub reseed_ms: u64,
    /// Peers each agent starts with when coordinators are absent.
    pub initial_seeds: usize,
    /// The skewed start.
    pub start: StartSpec,
    /// An explicit start (item weights per node), overriding `start`.
    pub weights: Option<Vec<Vec<f64>>>,
    /// How long an approved move takes before the caller reports it.
    pub move_ms: u64,
    /// Measurement noise: each load report is scaled by a factor uniform
    /// in `1 ± noise`.
    pub noise: f64,
    /// The coefficient of variation the run's `time_to_cv_ms` waits for.
    pub cv_target: f64,
    /// How often the true spread is sampled.
    pub sample_ms: u64,
}

/// The skewed start: a `hot_fraction` of the nodes at `hot_score`, the
/// rest at `cold_score`, in items of weight uniform in `item_weight`.
#[derive(Debug, Clone, Copy)]
pub struct StartSpec {
    /// Share of nodes that start hot.
    pub hot_fraction: f64,
    /// Score of a hot node.
    pub hot_score: f64,
    /// Score of the others.
    pub cold_score: f64,
    /// Item weights, uniform in `min..max`.
    pub item_weight: (f64, f64),
}

impl Default for StartSpec {
    fn default() -> Self {
        StartSpec {
            hot_fraction: 0.2,
            hot_score: 90.0,
            cold_score: 20.0,
            item_weight: (0.5, 3.0),
        }
    }
}

impl SimConfig {
    /// `agents` agents with the default agent config, 1–5 ms latency, 1 %
    /// loss, coordinators present or not, the default skewed start.
    pub fn new(agents: usize, coordinators: bool, seed: u64) -> Self {
        SimConfig {
            agents,
            seed,
            agent: Config::default(),
            latency_ms: (1, 5),
            loss: 0.01,
            coordinators,
            reseed_ms: 10_000,
            initial_seeds: 3,
            start: StartSpec::default(),
            weights: None,
            move_ms: 200,
            noise: 0.0,
            cv_target: 0.1,
            sample_ms: 250,
        }
    }
}

/// One simulated item and its history.
#[derive(Debug, Clone)]
struct SimItem {
    item: MovableItem,
}

/// One simulated node.
struct Node {
    info: PeerInfo,
    agent: Agent,
    alive: bool,
    generation: u64,
    items: BTreeMap<String, SimItem>,
    group: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Tick(usize),
    Deliver {
        to: usize,
        packet: Vec<u8>,
    },
    MoveDone {
        from: usize,
        to: usize,
        item: String,
    },
    Reseed,
    Sample,
}

/// What a SIMULATION run measured.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// Agents in the fleet.
    pub agents: usize,
    /// Whether coordinators re-seeded the agents.
    pub coordinators: bool,
    /// Virtual time simulated, ms.
    pub simulated_ms: u64,
    /// True coefficient of variation of live nodes' scores at start.
    pub initial_cv: f64,
    /// ... at the end.
    pub final_cv: f64,
    /// Highest score over the mean at the end.
    pub final_max_over_mean: f64,
    /// First sampled time the CV was under `cv_target`, ms after start.
    pub time_to_cv_ms: Option<u64>,
    /// The target.
    pub cv_target: f64,
    /// Moves completed.
    pub moves: u64,
    /// Weight moved, score points.
    pub moved_weight: f64,
    /// Moves after `time_to_cv_ms` (0 if never under the target).
    pub moves_after_target: u64,
    /// Most moves any item made.
    pub max_moves_per_item: u32,
    /// Offers sent, accepted, rejected, expired (all agents).
    pub offers: (u64, u64, u64, u64),
    /// Membership and load-exchange bytes sent per agent per second.
    pub gossip_bytes_per_agent_per_s: f64,
    /// Negotiation bytes sent per agent per second.
    pub negotiation_bytes_per_agent_per_s: f64,
    /// Packets lost (loss or partition).
    pub packets_dropped: u64,
    /// Packets an agent refused (0 unless the protocol has a bug, or a
    /// SWIM message reached an agent that restarted since).
    pub packets_refused: u64,
}

/// A fleet of agents over a simulated network (see the module docs).
pub struct Sim {
    cfg: SimConfig,
    nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<(u64, u64, Due)>>,
    seq: u64,
    now_ms: u64,
    rng: fastrand::Rng,
    initial_cv: f64,
    time_to_cv_ms: Option<u64>,
    moves: u64,
    moved_weight: f64,
    moves_at_target: u64,
    max_moves_per_item: u32,
    dropped: u64,
    refused: u64,
    /// Stats of agents replaced by restarts, so totals survive them.
    retired_stats: Vec<crate::agent::AgentStats>,
    /// Generations of items created by `set_weights`, for unique ids.
    batch: u32,
}

/// The id of simulated agent `i`.
pub fn agent_id(i: usize) -> String {
    format!("agent-{i:04}")
}

fn peer(i: usize) -> PeerInfo {
    PeerInfo::new(agent_id(i), format!("sim://{i}"))
}

fn index_of(addr: &str) -> Option<usize> {
    addr.strip_prefix("sim://")?.parse().ok()
}

fn make_items(node: &str, batch: u32, weights: &[f64]) -> BTreeMap<String, SimItem> {
    weights
        .iter()
        .enumerate()
        .map(|(k, &w)| {
            let id = format!("{node}-{batch}-item-{k:03}");
            let item = MovableItem {
                id: id.clone(),
                kind: ItemKind::BatchInstance,
                weight: w,
                moves_so_far: 0,
                last_moved_ms: None,
                service: None,
            };
            (id, SimItem { item })
        })
        .collect()
}

/// The skewed start: each node's item weights.
pub fn skewed_start(agents: usize, start: StartSpec, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x57A7);
    let hot = ((agents as f64) * start.hot_fraction).round() as usize;
    let mut order: Vec<usize> = (0..agents).collect();
    rng.shuffle(&mut order);
    let mut out = vec![Vec::new(); agents];
    for (rank, &i) in order.iter().enumerate() {
        let target = if rank < hot {
            start.hot_score
        } else {
            start.cold_score
        };
        let (lo, hi) = start.item_weight;
        let mut sum = 0.0;
        while sum < target {
            let w = lo + (hi - lo) * rng.f64();
            let w = w.min(target - sum).max(lo.min(target - sum));
            if w <= 0.0 {
                break;
            }
            out[i].push(w);
            sum += w;
        }
    }
    out
}

impl Sim {
    /// A fleet at time 0 with the skewed start, every agent seeded.
    pub fn new(cfg: SimConfig) -> Result<Sim, ConfigError> {
        cfg.agent.validate()?;
        let mut rng = fastrand::Rng::with_seed(cfg.seed);
        let start = match &cfg.weights {
            Some(w) => {
                let mut w = w.clone();
                w.resize(cfg.agents, Vec::new());
                w
            }
            None => skewed_start(cfg.agents, cfg.start, cfg.seed),
        };
        let mut nodes = Vec::with_capacity(cfg.agents);
        for (i, weights) in start.into_iter().enumerate() {
            let info = peer(i);
            let agent = Agent::new(info.clone(), 1, cfg.agent.clone(), rng.u64(..))?;
            let items = make_items(&info.id, 0, &weights);
            nodes.push(Node {
                info,
                agent,
                alive: true,
                generation: 1,
                items,
                group: 0,
            });
        }
        let mut sim = Sim {
            nodes,
            queue: BinaryHeap::new(),
            seq: 0,
            now_ms: 0,
            rng,
            initial_cv: 0.0,
            time_to_cv_ms: None,
            moves: 0,
            moved_weight: 0.0,
            moves_at_target: 0,
            max_moves_per_item: 0,
            dropped: 0,
            refused: 0,
            retired_stats: Vec::new(),
            batch: 0,
            cfg,
        };
        sim.initial_cv = sim.spread(None).cv;
        for i in 0..sim.nodes.len() {
            sim.seed_agent(i);
            let phase = sim.rng.u64(..sim.cfg.agent.tick_ms);
            sim.schedule(phase, Due::Tick(i));
        }
        if sim.cfg.coordinators {
            sim.schedule(sim.cfg.reseed_ms, Due::Reseed);
        }
        sim.schedule(0, Due::Sample);
        Ok(sim)
    }

    fn seed_agent(&mut self, i: usize) {
        let n = self.nodes.len();
        let seeds: Vec<PeerInfo> = if self.cfg.coordinators {
            (0..n).filter(|&j| j != i).map(peer).collect()
        } else {
            let mut s: Vec<PeerInfo> = self.nodes[i].agent.known_peers();
            for _ in 0..self.cfg.initial_seeds {
                let j = self.rng.usize(..n);
                if j != i {
                    s.push(peer(j));
                }
            }
            s
        };
        let now = self.now_ms;
        let out = self.nodes[i].agent.add_seeds(seeds, now);
        self.send_all(i, out);
    }

    fn schedule(&mut self, at_ms: u64, due: Due) {
        self.seq += 1;
        self.queue.push(Reverse((at_ms, self.seq, due)));
    }

    fn send_all(&mut self, from: usize, out: Vec<Outgoing>) {
        for o in out {
            let Some(to) = index_of(&o.to.peer_addr) else {
                self.dropped += 1;
                continue;
            };
            if to >= self.nodes.len()
                || self.rng.f64() < self.cfg.loss
                || self.nodes[to].group != self.nodes[from].group
            {
                self.dropped += 1;
                continue;
            }
            let (lo, hi) = self.cfg.latency_ms;
            let at = self.now_ms + self.rng.u64(lo..=hi.max(lo));
            self.schedule(
                at,
                Due::Deliver {
                    to,
                    packet: o.packet,
                },
            );
        }
    }

    /// The virtual clock, ms.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Runs the fleet until virtual time `until_ms`.
    pub fn run_until(&mut self, until_ms: u64) {
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > until_ms {
                break;
            }
            let Some(Reverse((at, _, due))) = self.queue.pop() else {
                break;
            };
            self.now_ms = at;
            self.handle(due);
        }
        self.now_ms = self.now_ms.max(until_ms);
    }

    /// Runs until the true CV is under the target or `max_ms` passes;
    /// returns whether it got under.
    pub fn run_until_cv(&mut self, max_ms: u64) -> bool {
        while self.now_ms < max_ms {
            let next = (self.now_ms + self.cfg.sample_ms).min(max_ms);
            self.run_until(next);
            if self.time_to_cv_ms.is_some() {
                return true;
            }
        }
        self.time_to_cv_ms.is_some()
    }

    fn load_of(&mut self, i: usize) -> LoadSummary {
        let sum: f64 = self.nodes[i].items.values().map(|s| s.item.weight).sum();
        let noise = self.cfg.noise;
        let factor = if noise > 0.0 {
            1.0 + noise * (2.0 * self.rng.f64() - 1.0)
        } else {
            1.0
        };
        LoadSummary::from_score(sum * factor, SIM_CORES)
    }

    fn handle(&mut self, due: Due) {
        let now = self.now_ms;
        match due {
            Due::Tick(i) => {
                if !self.nodes[i].alive {
                    return;
                }
                let load = self.load_of(i);
                let items: Vec<MovableItem> = self.nodes[i]
                    .items
                    .values()
                    .map(|s| s.item.clone())
                    .collect();
                let node = &mut self.nodes[i];
                node.agent.set_local_load(load);
                node.agent.set_movable(items);
                let out = node.agent.tick(now);
                self.send_all(i, out);
                self.take_events(i);
                let next = now + self.cfg.agent.tick_ms;
                self.schedule(next, Due::Tick(i));
            }
            Due::Deliver { to, packet } => {
                if !self.nodes[to].alive {
                    self.dropped += 1;
                    return;
                }
                match self.nodes[to].agent.receive(&packet, now) {
                    Ok(out) => self.send_all(to, out),
                    Err(_) => self.refused += 1,
                }
                self.take_events(to);
            }
            Due::MoveDone { from, to, item } => {
                if !self.nodes[from].alive {
                    return;
                }
                let ok = self.nodes[to].alive
                    && self.nodes[to].group == self.nodes[from].group
                    && self.nodes[from].items.contains_key(&item);
                if ok {
                    if let Some(mut moved) = self.nodes[from].items.remove(&item) {
                        moved.item.moves_so_far += 1;
                        moved.item.last_moved_ms = Some(now);
                        self.moves += 1;
                        self.moved_weight += moved.item.weight;
                        self.max_moves_per_item =
                            self.max_moves_per_item.max(moved.item.moves_so_far);
                        self.nodes[to].items.insert(item.clone(), moved);
                    }
                }
                let out = self.nodes[from].agent.move_done(&item, ok, now);
                self.send_all(from, out);
                self.take_events(from);
            }
            Due::Reseed => {
                for i in 0..self.nodes.len() {
                    if self.nodes[i].alive {
                        self.seed_agent(i);
                    }
                }
                let next = now + self.cfg.reseed_ms;
                self.schedule(next, Due::Reseed);
            }
            Due::Sample => {
                let s = self.spread(None);
                if self.time_to_cv_ms.is_none() && s.cv < self.cfg.cv_target {
                    self.time_to_cv_ms = Some(now);
                    self.moves_at_target = self.moves;
                }
                let next = now + self.cfg.sample_ms;
                self.schedule(next, Due::Sample);
            }
        }
    }

    fn take_events(&mut self, i: usize) {
        for e in self.nodes[i].agent.take_events() {
            if let Event::MoveApproved { item, to } = e {
                let Some(j) = index_of(&to.peer_addr) else {
                    continue;
                };
                let at = self.now_ms + self.cfg.move_ms;
                self.schedule(
                    at,
                    Due::MoveDone {
                        from: i,
                        to: j,
                        item: item.id,
                    },
                );
            }
        }
    }

    /// Kills agent `i`: it stops sending and receiving; its items stay.
    pub fn kill(&mut self, i: usize) {
        if let Some(n) = self.nodes.get_mut(i) {
            n.alive = false;
        }
    }

    /// Restarts agent `i` as a new `Agent` of the next generation, seeded
    /// with the peers the old one remembered (what a node keeps on disk),
    /// or the full list when coordinators are present.
    pub fn restart(&mut self, i: usize) -> Result<(), ConfigError> {
        let Some(n) = self.nodes.get_mut(i) else {
            return Ok(());
        };
        let remembered = n.agent.known_peers();
        n.generation += 1;
        let seed = self.rng.u64(..);
        let fresh = Agent::new(n.info.clone(), n.generation, self.cfg.agent.clone(), seed)?;
        let old = std::mem::replace(&mut n.agent, fresh);
        self.retired_stats.push(old.stats().clone());
        n.alive = true;
        let now = self.now_ms;
        let out = self.nodes[i].agent.add_seeds(remembered, now);
        self.send_all(i, out);
        self.seed_agent(i);
        let phase = self.rng.u64(..self.cfg.agent.tick_ms);
        self.schedule(now + phase, Due::Tick(i));
        Ok(())
    }

    /// Replaces node `i`'s items by new ones of `weights` (load that
    /// arrives or finishes on its own, outside balancing).
    pub fn set_weights(&mut self, i: usize, weights: &[f64]) {
        self.batch += 1;
        let batch = self.batch;
        if let Some(n) = self.nodes.get_mut(i) {
            n.items = make_items(&n.info.id, batch, weights);
        }
    }

    /// Partitions the network: `group[i]` is agent i's side; packets
    /// between sides are dropped.
    pub fn partition(&mut self, group: &[u32]) {
        for (n, g) in self.nodes.iter_mut().zip(group) {
            n.group = *g;
        }
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        for n in &mut self.nodes {
            n.group = 0;
        }
    }

    /// True scores (sum of item weights) of every node.
    pub fn scores(&self) -> Vec<f64> {
        self.nodes
            .iter()
            .map(|n| n.items.values().map(|s| s.item.weight).sum())
            .collect()
    }

    /// True spread over the live nodes among `which` (all when `None`).
    pub fn spread(&self, which: Option<&[usize]>) -> Spread {
        let scores = self.scores();
        let pick: Vec<f64> = match which {
            Some(ix) => ix
                .iter()
                .filter(|&&i| self.nodes.get(i).is_some_and(|n| n.alive))
                .map(|&i| scores[i])
                .collect(),
            None => scores
                .iter()
                .zip(&self.nodes)
                .filter(|(_, n)| n.alive)
                .map(|(s, _)| *s)
                .collect(),
        };
        Spread::of(&pick)
    }

    /// Agent `i`.
    pub fn agent(&self, i: usize) -> &Agent {
        &self.nodes[i].agent
    }

    /// Moves completed so far.
    pub fn moves(&self) -> u64 {
        self.moves
    }

    /// Items of every node, for checking that none was lost or duplicated.
    pub fn item_count(&self) -> usize {
        self.nodes.iter().map(|n| n.items.len()).sum()
    }

    /// The most moves any item made.
    pub fn max_moves_per_item(&self) -> u32 {
        self.max_moves_per_item
    }

    /// What the run measured so far.
    pub fn report(&self) -> SimReport {
        let mut totals = crate::agent::AgentStats::default();
        let all = self
            .nodes
            .iter()
            .map(|n| n.agent.stats())
            .chain(self.retired_stats.iter());
        for s in all {
            totals.gossip_bytes_sent += s.gossip_bytes_sent;
            totals.negotiation_bytes_sent += s.negotiation_bytes_sent;
            totals.offers_sent += s.offers_sent;
            totals.offers_accepted += s.offers_accepted;
            totals.offers_rejected += s.offers_rejected;
            totals.offers_expired += s.offers_expired;
        }
        let secs = (self.now_ms as f64 / 1000.0).max(1e-3);
        let per = |b: u64| b as f64 / self.nodes.len().max(1) as f64 / secs;
        let s = self.spread(None);
        SimReport {
            agents: self.nodes.len(),
            coordinators: self.cfg.coordinators,
            simulated_ms: self.now_ms,
            initial_cv: self.initial_cv,
            final_cv: s.cv,
            final_max_over_mean: s.max_over_mean,
            time_to_cv_ms: self.time_to_cv_ms,
            cv_target: self.cfg.cv_target,
            moves: self.moves,
            moved_weight: self.moved_weight,
            moves_after_target: if self.time_to_cv_ms.is_some() {
                self.moves - self.moves_at_target
            } else {
                0
            },
            max_moves_per_item: self.max_moves_per_item,
            offers: (
                totals.offers_sent,
                totals.offers_accepted,
                totals.offers_rejected,
                totals.offers_expired,
            ),
            gossip_bytes_per_agent_per_s: per(totals.gossip_bytes_sent),
            negotiation_bytes_per_agent_per_s: per(totals.negotiation_bytes_sent),
            packets_dropped: self.dropped,
            packets_refused: self.refused,
        }
    }
}
