//! [`Agent`]: one node agent's balancing state machine, tying membership,
//! load exchange, policy and negotiation together behind a sans-IO API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};
use crate::exchange::LoadView;
use crate::item::{ItemId, ItemKind, MovableItem};
use crate::load::LoadSummary;
pub use crate::membership::Liveness;
use crate::membership::{MemberChange, Membership};
use crate::negotiate::{
    insert_capped, Negotiations, OfferState, OpenOffer, Reservation, UnackedSettle, SETTLE_TRIES,
};
use crate::peer::{NodeId, PeerInfo};
use crate::policy;
use crate::wire::{
    self, Answer, Body, DecodeError, Exchange, Offer, Packet, RejectReason, Settle, Verdict,
    WireEntry,
};

/// A packet for the caller to deliver to `to.peer_addr` (fire and forget:
/// the protocol tolerates loss).
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The recipient.
    pub to: PeerInfo,
    /// The bytes to hand to the recipient's [`Agent::receive`].
    pub packet: Vec<u8>,
}

/// Something the caller must act on or may want to log.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A member joined or came back.
    PeerUp(PeerInfo),
    /// A member was declared down by the fleet (no coordinator involved).
    PeerDown(PeerInfo),
    /// Sender side: `to` reserved room for `item`. The caller moves it now
    /// and then calls [`Agent::move_done`] with the outcome.
    MoveApproved {
        /// The item, as the caller listed it.
        item: MovableItem,
        /// Where to move it.
        to: PeerInfo,
    },
    /// Sender side: the peer refused; nothing to do.
    MoveRejected {
        /// The item offered.
        item: ItemId,
        /// Who refused.
        by: NodeId,
        /// Why.
        reason: RejectReason,
    },
    /// Sender side: no answer in time; the offer is dropped.
    OfferExpired {
        /// The item offered.
        item: ItemId,
        /// To whom.
        to: NodeId,
    },
    /// Recipient side: room is reserved for an item `from` will move here.
    IncomingReserved {
        /// The item.
        item: ItemId,
        /// Its kind.
        kind: ItemKind,
        /// Its weight.
        weight: f64,
        /// The sender.
        from: PeerInfo,
    },
    /// Recipient side: the sender confirmed the item now runs here. The
    /// item carries its move count (this move included) and the local time
    /// of the move, to list it in later [`Agent::set_movable`] calls.
    MoveReceived {
        /// The item as it should now be listed here.
        item: MovableItem,
        /// The sender.
        from: PeerInfo,
    },
    /// Recipient side: the sender cancelled; the reservation is released.
    IncomingCancelled {
        /// The item.
        item: ItemId,
        /// The sender.
        from: NodeId,
    },
    /// Recipient side: a reservation was never settled and lapsed.
    ReservationExpired {
        /// The item.
        item: ItemId,
        /// The sender.
        from: NodeId,
    },
}

/// One node as this agent sees it, for `herd balance status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    /// The node.
    pub info: PeerInfo,
    /// Its load score (`LoadSummary::score`).
    pub score: f64,
    /// Its load figures.
    pub load: LoadSummary,
    /// Score points in flight there: incoming moves reserved or received
    /// (+), outgoing ones offered or sent (−), not yet in `load`.
    pub in_flight: f64,
    /// How old the figure is, by this agent's clock (0 for itself).
    pub view_age_ms: u64,
    /// What SWIM says about it.
    pub liveness: Liveness,
    /// Moves out it made in the last minute.
    pub moves_per_minute: u32,
    /// Whether this is the agent itself.
    pub is_self: bool,
}

/// How uneven the load is over this agent and its fresh neighbourhood.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Nodes counted (this agent included).
    pub nodes: usize,
    /// Mean score.
    pub mean: f64,
    /// Highest score over the mean (1 when even; 0 when all idle).
    pub max_over_mean: f64,
    /// Coefficient of variation: standard deviation over mean (0 when
    /// even or all idle).
    pub cv: f64,
}

impl Spread {
    /// The spread of `scores` (empty: zeroes).
    pub fn of(scores: &[f64]) -> Spread {
        let n = scores.len();
        if n == 0 {
            return Spread {
                nodes: 0,
                mean: 0.0,
                max_over_mean: 0.0,
                cv: 0.0,
            };
        }
        let mean = scores.iter().sum::<f64>() / n as f64;
        if mean <= 0.0 {
            return Spread {
                nodes: n,
                mean,
                max_over_mean: 0.0,
                cv: 0.0,
            };
        }
        let max = scores.iter().copied().fold(f64::MIN, f64::max);
        let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n as f64;
        Spread {
            nodes: n,
            mean,
            max_over_mean: max / mean,
            cv: var.sqrt() / mean,
        }
    }
}

/// Counters of what an agent sent and did, for benchmarks and metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStats {
    /// Packets handed to the caller.
    pub packets_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Bytes of membership (SWIM) and load exchange: the gossip cost.
    pub gossip_bytes_sent: u64,
    /// Bytes of offers, answers and settles.
    pub negotiation_bytes_sent: u64,
    /// Packets received and decoded.
    pub packets_received: u64,
    /// Packets refused by [`Agent::receive`].
    pub packets_refused: u64,
    /// Offers sent.
    pub offers_sent: u64,
    /// Offers the peers accepted.
    pub offers_accepted: u64,
    /// Offers the peers rejected.
    pub offers_rejected: u64,
    /// Offers that got no answer in time.
    pub offers_expired: u64,
    /// Moves out confirmed by the caller.
    pub moves_out: u64,
    /// Moves in confirmed by senders.
    pub moves_in: u64,
}

/// One node agent's balancing: membership, its view of the neighbourhood's
/// load, and the negotiations in flight. See the crate docs for the calling
/// pattern.
pub struct Agent {
    me: PeerInfo,
    generation: u64,
    config: Config,
    rng: fastrand::Rng,
    membership: Membership,
    view: LoadView,
    load: LoadSummary,
    local_score: f64,
    load_version: u64,
    items: Vec<MovableItem>,
    nego: Negotiations,
    /// Nodes declared down, and until when second-hand figures about them
    /// are ignored (so gossip does not resurrect them).
    downed: BTreeMap<NodeId, u64>,
    events: Vec<Event>,
    stats: AgentStats,
    next_gossip_ms: Option<u64>,
    now_ms: u64,
}

impl Agent {
    /// A new agent for node `me`. `generation` must grow with every
    /// restart of the node (a counter kept on disk, or the wall clock in ms
    /// at start), so that peers prefer its new figures and its new SWIM
    /// identity. `seed` drives every random choice.
    pub fn new(
        me: PeerInfo,
        generation: u64,
        config: Config,
        seed: u64,
    ) -> Result<Agent, ConfigError> {
        config.validate()?;
        Ok(Agent {
            membership: Membership::new(me.clone(), generation, &config, seed),
            view: LoadView::new(me.id.clone(), config.max_view, config.view_ttl_ms),
            rng: fastrand::Rng::with_seed(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xB41A),
            me,
            generation,
            config,
            load: LoadSummary::default(),
            local_score: 0.0,
            load_version: 0,
            items: Vec::new(),
            nego: Negotiations::default(),
            downed: BTreeMap::new(),
            events: Vec::new(),
            stats: AgentStats::default(),
            next_gossip_ms: None,
            now_ms: 0,
        })
    }

    /// This agent's node.
    pub fn me(&self) -> &PeerInfo {
        &self.me
    }

    /// Its configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Peers to contact: the coordinators' node list, or peers remembered
    /// on disk. Each one not already a member is sent an announce; all are
    /// remembered for rejoining after partitions. Call again whenever the
    /// coordinators' list is at hand (re-seeding heals partitions faster).
    pub fn add_seeds(
        &mut self,
        seeds: impl IntoIterator<Item = PeerInfo>,
        now_ms: u64,
    ) -> Vec<Outgoing> {
        self.advance(now_ms);
        let sends = self.membership.add_seeds(seeds, now_ms);
        let mut out = Vec::new();
        self.wrap_swim(sends, &mut out);
        self.collect_member_changes(now_ms);
        out
    }

    /// The node's load as measured now. Call it every tick, after any move
    /// confirmed so far is reflected in the figures: the agent stops
    /// counting finished moves separately at this call.
    pub fn set_local_load(&mut self, load: LoadSummary) {
        self.local_score = load.score();
        self.load = load;
        self.nego.synced();
    }

    /// The items the policy may move, replacing the previous list. Work
    /// that must not move (a job with `[balance] movable = false`, a driver
    /// that cannot move live) is simply left out.
    pub fn set_movable(&mut self, items: Vec<MovableItem>) {
        self.items = items;
    }

    /// Advances the agent to `now_ms`: fires membership timers, gossips
    /// load to a random member, expires stale figures, offers and
    /// reservations, and — when this node is above its neighbourhood's band
    /// — makes one offer. Call every [`Config::tick_ms`].
    pub fn tick(&mut self, now_ms: u64) -> Vec<Outgoing> {
        self.advance(now_ms);
        let mut out = Vec::new();
        let sends = self.membership.tick(now_ms);
        self.wrap_swim(sends, &mut out);
        self.collect_member_changes(now_ms);
        self.view.expire(now_ms);
        self.downed.retain(|_, until| *until > now_ms);
        self.expire_negotiations(now_ms, &mut out);
        self.resend_settles(now_ms, &mut out);
        self.nego.prune(now_ms, self.config.item_cooldown_ms);
        let due = *self.next_gossip_ms.get_or_insert(now_ms);
        if now_ms >= due {
            self.next_gossip_ms = Some(now_ms + self.config.tick_ms);
            self.gossip(now_ms, &mut out);
            // Offers up to the in-flight limit; each one counts in the
            // score the next one is decided on.
            while self.decide(now_ms, &mut out) {}
        }
        out
    }

    /// Handles a packet a peer sent. Returns the packets to send in reply,
    /// or why the packet was refused (it is then ignored; nothing changed).
    pub fn receive(&mut self, packet: &[u8], now_ms: u64) -> Result<Vec<Outgoing>, DecodeError> {
        self.advance(now_ms);
        let decoded = match wire::decode(packet) {
            Ok(p) if p.from.id == self.me.id => Err(DecodeError::FromSelf),
            other => other,
        };
        let packet = match decoded {
            Ok(p) => p,
            Err(e) => {
                self.stats.packets_refused += 1;
                return Err(e);
            }
        };
        self.stats.packets_received += 1;
        let mut out = Vec::new();
        let from = packet.from;
        match packet.body {
            Body::Swim(bytes) => {
                let sends = match self.membership.handle(&bytes, now_ms) {
                    Ok(s) => s,
                    Err(e) => {
                        self.stats.packets_refused += 1;
                        self.collect_member_changes(now_ms);
                        return Err(DecodeError::Membership(e));
                    }
                };
                self.wrap_swim(sends, &mut out);
                self.collect_member_changes(now_ms);
            }
            Body::Exchange(x) => self.on_exchange(from, x, now_ms, &mut out),
            Body::Offer(o) => self.on_offer(from, o, now_ms, &mut out),
            Body::Answer(a) => self.on_answer(from, a, now_ms, &mut out),
            Body::Settle(s) => self.on_settle(from, s, now_ms, &mut out),
            Body::SettleAck(offer_id) => {
                if self
                    .nego
                    .unacked
                    .get(&offer_id)
                    .is_some_and(|u| u.to.id == from.id)
                {
                    self.nego.unacked.remove(&offer_id);
                }
            }
        }
        Ok(out)
    }

    /// The caller's report on a move it was approved to make: `ok` when the
    /// item now runs on the recipient, `false` when it stayed here. Sends
    /// the confirm or cancel. An item with no approved move is ignored.
    pub fn move_done(&mut self, item: &str, ok: bool, now_ms: u64) -> Vec<Outgoing> {
        self.advance(now_ms);
        let mut out = Vec::new();
        let found = self
            .nego
            .offers
            .iter()
            .find(|(_, o)| o.item.id == item && o.state == OfferState::Approved)
            .map(|(id, _)| *id);
        let Some(offer_id) = found else {
            return out;
        };
        let Some(offer) = self.nego.offers.remove(&offer_id) else {
            return out;
        };
        if ok {
            self.nego.record_move(&offer.item, now_ms);
            self.stats.moves_out += 1;
        } else {
            self.nego.last_move_done_ms = Some(now_ms);
        }
        let settle = Settle {
            offer_id,
            item: offer.item.id.clone(),
            kind: offer.item.kind,
            weight: offer.item.weight,
            moves_so_far: offer.item.moves_so_far + u32::from(ok),
            moved: ok,
        };
        self.send_settle(offer.to, settle, now_ms, &mut out);
        out
    }

    /// Events since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// This agent and every node in its fresh neighbourhood, by node id.
    pub fn view(&self, now_ms: u64) -> Vec<PeerView> {
        let mut v: Vec<PeerView> = self
            .view
            .fresh(now_ms)
            .map(|e| PeerView {
                info: e.info.clone(),
                score: e.score,
                load: e.load.clone(),
                in_flight: e.in_flight,
                view_age_ms: e.age_ms(now_ms),
                liveness: self.liveness_of(&e.info.id),
                moves_per_minute: e.moves_per_minute,
                is_self: false,
            })
            .collect();
        v.push(PeerView {
            info: self.me.clone(),
            score: self.local_score,
            load: self.load.clone(),
            in_flight: self.effective_score() - self.local_score,
            view_age_ms: 0,
            liveness: Liveness::Alive,
            moves_per_minute: self.moves_per_minute(now_ms) as u32,
            is_self: true,
        });
        v.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        v
    }

    /// The spread of load scores over this agent and its fresh, live
    /// neighbourhood.
    pub fn spread(&self, now_ms: u64) -> Spread {
        let mut scores = vec![self.local_score];
        scores.extend(
            self.view
                .fresh(now_ms)
                .filter(|e| self.counts(&e.info.id))
                .map(|e| e.score),
        );
        Spread::of(&scores)
    }

    /// Moves out this agent finished in the last minute.
    pub fn moves_per_minute(&self, now_ms: u64) -> usize {
        self.nego.moves_last_minute(now_ms)
    }

    /// Active members (alive or suspect) as SWIM sees them, by node id.
    pub fn members(&self) -> Vec<(PeerInfo, Liveness)> {
        let mut m: Vec<(PeerInfo, Liveness)> = self
            .membership
            .active()
            .map(|(p, l)| (p.clone(), l))
            .collect();
        m.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        m
    }

    /// Every peer ever seeded or seen: what the caller persists to re-seed
    /// after a restart when no coordinator answers.
    pub fn known_peers(&self) -> Vec<PeerInfo> {
        self.membership.remembered().cloned().collect()
    }

    /// What SWIM says of `id`: an active member's state; dead if declared
    /// down; suspect if SWIM has not met it yet (known from load gossip
    /// only).
    pub fn liveness_of(&self, id: &str) -> Liveness {
        self.membership.state_of(id).unwrap_or(Liveness::Suspect)
    }

    /// Whether a figure about `id` counts in the neighbourhood: its node
    /// is an active member, or known only from gossip and not declared
    /// down.
    fn counts(&self, id: &str) -> bool {
        self.membership.is_up(id) || !self.downed.contains_key(id)
    }

    /// Counters since start.
    pub fn stats(&self) -> &AgentStats {
        &self.stats
    }

    /// The score the policy uses for this node: measured load, minus moves
    /// out in flight or not yet reflected, plus reservations and moves in
    /// not yet reflected.
    pub fn effective_score(&self) -> f64 {
        self.local_score - self.nego.pending_out() - self.nego.moved_out_unsynced
            + self.nego.reserved_in()
            + self.nego.moved_in_unsynced
    }

    /// Leaves the fleet cleanly (shutdown): peers mark this agent down at
    /// once instead of after the suspicion timeout.
    pub fn leave(&mut self, now_ms: u64) -> Vec<Outgoing> {
        self.advance(now_ms);
        let sends = self.membership.leave();
        let mut out = Vec::new();
        self.wrap_swim(sends, &mut out);
        out
    }

    // ---- internals ----

    fn advance(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    fn send(&mut self, to: PeerInfo, body: Body, out: &mut Vec<Outgoing>) {
        let gossip = matches!(body, Body::Swim(_) | Body::Exchange(_));
        let packet = Packet {
            from: self.me.clone(),
            generation: self.generation,
            body,
        };
        // Every packet the agent builds is far below the size limit; one
        // that is not (a caller's item id over the string limit) is
        // dropped rather than sent.
        let Ok(bytes) = wire::encode(&packet) else {
            return;
        };
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        if gossip {
            self.stats.gossip_bytes_sent += bytes.len() as u64;
        } else {
            self.stats.negotiation_bytes_sent += bytes.len() as u64;
        }
        out.push(Outgoing { to, packet: bytes });
    }

    fn wrap_swim(&mut self, sends: Vec<(PeerInfo, Vec<u8>)>, out: &mut Vec<Outgoing>) {
        for (to, bytes) in sends {
            self.send(to, Body::Swim(bytes), out);
        }
    }

    fn collect_member_changes(&mut self, now_ms: u64) {
        for change in self.membership.take_changes() {
            match change {
                MemberChange::Up(p) => {
                    self.downed.remove(&p.id);
                    self.events.push(Event::PeerUp(p));
                }
                MemberChange::Down(p) => {
                    self.view.remove(&p.id);
                    self.downed
                        .insert(p.id.clone(), now_ms + self.config.view_ttl_ms);
                    self.events.push(Event::PeerDown(p));
                }
            }
        }
    }

    fn own_entry(&self, now_ms: u64) -> WireEntry {
        WireEntry {
            info: self.me.clone(),
            generation: self.generation,
            version: self.load_version,
            age_ms: 0,
            load: self.load.clone(),
            in_flight: self.effective_score() - self.local_score,
            moves_per_minute: self.moves_per_minute(now_ms) as u32,
        }
    }

    fn exchange_body(&mut self, reply: bool, to: &str, now_ms: u64) -> Body {
        let mut entries = vec![self.own_entry(now_ms)];
        entries.extend(
            self.view
                .sample(now_ms, self.config.gossip_sample, to, &mut self.rng),
        );
        Body::Exchange(Exchange { reply, entries })
    }

    fn gossip(&mut self, now_ms: u64, out: &mut Vec<Outgoing>) {
        self.load_version += 1;
        for _ in 0..self.config.gossip_fanout {
            let Some(to) = self.membership.random_up() else {
                return;
            };
            let body = self.exchange_body(true, &to.id, now_ms);
            self.send(to, body, out);
        }
    }

    fn on_exchange(&mut self, from: PeerInfo, x: Exchange, now_ms: u64, out: &mut Vec<Outgoing>) {
        for e in x.entries {
            let direct = e.info.id == from.id;
            if !direct && self.downed.contains_key(&e.info.id) {
                continue;
            }
            if direct {
                self.downed.remove(&e.info.id);
            }
            self.view.merge(e, now_ms);
        }
        if x.reply {
            let body = self.exchange_body(false, &from.id, now_ms);
            self.send(from, body, out);
        }
    }

    fn neighbourhood_mean(&self, now_ms: u64, own: f64) -> f64 {
        policy::mean_of(
            own,
            self.view
                .fresh(now_ms)
                .filter(|e| self.counts(&e.info.id))
                .map(|e| e.effective_score()),
        )
    }

    /// The lowest effective score of a fresh peer other than `sender`
    /// that could take an item needing `service`: where a coarse item
    /// offered to this agent would rather go.
    fn lightest_other(&self, now_ms: u64, sender: &str, service: Option<&str>) -> Option<f64> {
        self.view
            .fresh(now_ms)
            .filter(|e| e.info.id != sender && self.counts(&e.info.id))
            .filter(|e| service.is_none_or(|s| e.load.instance_of(s).is_some()))
            .map(|e| e.effective_score())
            .reduce(f64::min)
    }

    /// One policy step: maybe make one offer; returns whether it did.
    fn decide(&mut self, now_ms: u64, out: &mut Vec<Outgoing>) -> bool {
        let c = &self.config;
        if self.nego.offers.len() >= self.config.max_offers_in_flight {
            return false;
        }
        if self
            .nego
            .last_move_done_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < c.agent_cooldown_ms)
        {
            return false;
        }
        let own = self.effective_score();
        let mean = self.neighbourhood_mean(now_ms, own);
        let Some(excess) = policy::excess(c, own, mean) else {
            return false;
        };
        let c = &self.config;
        let eligible: Vec<&MovableItem> = self
            .items
            .iter()
            .filter(|i| {
                policy::eligible(c, i, now_ms)
                    && !self.nego.is_offered(&i.id)
                    && self.nego.moved_items.get(&i.id).is_none_or(|(n, t)| {
                        *n < c.move_budget && now_ms.saturating_sub(*t) >= c.item_cooldown_ms
                    })
            })
            .collect();
        if eligible.is_empty() {
            return false;
        }
        // Power of d choices among lighter, live, not backed-off peers that
        // can take at least one eligible item (a request needs a peer
        // running its service).
        let pool: Vec<(PeerInfo, f64, &LoadSummary)> = self
            .view
            .fresh(now_ms)
            .filter(|e| e.effective_score() < mean)
            .filter(|e| !self.nego.backoff.contains_key(&e.info.id))
            .filter(|e| !self.nego.received_from.contains_key(&e.info.id))
            .filter(|e| self.membership.is_up(&e.info.id))
            .filter(|e| eligible.iter().any(|i| policy::compatible(i, &e.load)))
            .map(|e| (e.info.clone(), e.effective_score(), &e.load))
            .collect();
        if pool.is_empty() {
            return false;
        }
        let mut best: Option<usize> = None;
        for _ in 0..c.choices {
            let cand = self.rng.usize(..pool.len());
            if best.is_none_or(|b| pool[cand].1 < pool[b].1) {
                best = Some(cand);
            }
        }
        let Some(best) = best else {
            return false;
        };
        let (to, their, their_load) = &pool[best];
        let compatible = eligible
            .iter()
            .copied()
            .filter(|i| policy::compatible(i, their_load));
        let Some(item) = policy::choose_item(c, compatible, own, excess, *their).cloned() else {
            return false;
        };
        let to = to.clone();
        let offer_id = self.nego.next_offer_id;
        self.nego.next_offer_id += 1;
        let offer = Offer {
            offer_id,
            item: item.id.clone(),
            kind: item.kind,
            weight: item.weight,
            moves_so_far: item.moves_so_far,
            sender_score: own,
            sender_mean: mean,
            service: item.service.clone(),
        };
        self.nego.offers.insert(
            offer_id,
            OpenOffer {
                item,
                to: to.clone(),
                sent_ms: now_ms,
                state: OfferState::Offered,
            },
        );
        self.stats.offers_sent += 1;
        self.send(to, Body::Offer(offer), out);
        true
    }

    fn on_offer(&mut self, from: PeerInfo, o: Offer, now_ms: u64, out: &mut Vec<Outgoing>) {
        let key = (from.id.clone(), o.offer_id);
        let verdict = if self.nego.reservations.contains_key(&key) {
            // A repeated offer (its answer was lost): same answer.
            Verdict::Accepted
        } else {
            let own = self.effective_score();
            let view = policy::RecipientView {
                own,
                mean: self.neighbourhood_mean(now_ms, own),
                reservations: self.nego.reservations.len(),
                lightest_other: self.lightest_other(now_ms, &from.id, o.service.as_deref()),
            };
            let v = policy::judge_offer_on(&self.config, &o, &self.load, &view);
            if v == Verdict::Accepted {
                self.nego.reservations.insert(
                    key,
                    Reservation {
                        from: from.clone(),
                        offer_id: o.offer_id,
                        item: o.item.clone(),
                        kind: o.kind,
                        weight: o.weight,
                        moves_so_far: o.moves_so_far,
                        service: o.service.clone(),
                        expires_ms: now_ms + self.config.reservation_ttl_ms,
                    },
                );
                self.events.push(Event::IncomingReserved {
                    item: o.item.clone(),
                    kind: o.kind,
                    weight: o.weight,
                    from: from.clone(),
                });
            }
            v
        };
        let answer = Answer {
            offer_id: o.offer_id,
            item: o.item,
            verdict,
            recipient_score: self.effective_score(),
        };
        self.send(from, Body::Answer(answer), out);
    }

    fn on_answer(&mut self, from: PeerInfo, a: Answer, now_ms: u64, out: &mut Vec<Outgoing>) {
        // The answer carries a fresh figure of the recipient.
        if let Some(e) = self.view.get_mut(&from.id) {
            e.in_flight = a.recipient_score - e.score;
        }
        let open = self
            .nego
            .offers
            .get(&a.offer_id)
            .filter(|o| o.to.id == from.id && o.item.id == a.item)
            .map(|o| o.state);
        match (open, a.verdict) {
            (Some(OfferState::Offered), Verdict::Accepted) => {
                self.stats.offers_accepted += 1;
                if let Some(o) = self.nego.offers.get_mut(&a.offer_id) {
                    o.state = OfferState::Approved;
                    self.events.push(Event::MoveApproved {
                        item: o.item.clone(),
                        to: o.to.clone(),
                    });
                }
            }
            (Some(OfferState::Offered), Verdict::Rejected(reason)) => {
                self.stats.offers_rejected += 1;
                self.nego.offers.remove(&a.offer_id);
                self.nego
                    .backoff
                    .insert(from.id.clone(), now_ms + self.config.reject_backoff_ms);
                self.events.push(Event::MoveRejected {
                    item: a.item,
                    by: from.id,
                    reason,
                });
            }
            (Some(OfferState::Approved), _) => {}
            (None, Verdict::Accepted) => {
                // Accepted after we gave up: release the reservation.
                if !self.nego.unacked.contains_key(&a.offer_id) {
                    let settle = Settle {
                        offer_id: a.offer_id,
                        item: a.item,
                        kind: ItemKind::BatchInstance,
                        weight: 0.0,
                        moves_so_far: 0,
                        moved: false,
                    };
                    self.send_settle(from, settle, now_ms, out);
                }
            }
            (None, Verdict::Rejected(_)) => {}
        }
    }

    /// Sends a settle and keeps it for resending until acknowledged.
    fn send_settle(&mut self, to: PeerInfo, settle: Settle, now_ms: u64, out: &mut Vec<Outgoing>) {
        self.nego.unacked.insert(
            settle.offer_id,
            UnackedSettle {
                to: to.clone(),
                settle: settle.clone(),
                resend_ms: now_ms + self.config.offer_timeout_ms,
                tries: 1,
            },
        );
        self.send(to, Body::Settle(settle), out);
    }

    fn resend_settles(&mut self, now_ms: u64, out: &mut Vec<Outgoing>) {
        let due: Vec<u64> = self
            .nego
            .unacked
            .iter()
            .filter(|(_, u)| u.resend_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(u) = self.nego.unacked.get_mut(&id) else {
                continue;
            };
            if u.tries >= SETTLE_TRIES {
                self.nego.unacked.remove(&id);
                continue;
            }
            u.tries += 1;
            u.resend_ms = now_ms + self.config.offer_timeout_ms;
            let (to, settle) = (u.to.clone(), u.settle.clone());
            self.send(to, Body::Settle(settle), out);
        }
    }

    fn on_settle(&mut self, from: PeerInfo, s: Settle, now_ms: u64, out: &mut Vec<Outgoing>) {
        let key = (from.id.clone(), s.offer_id);
        let offer_id = s.offer_id;
        if !self.nego.settled.contains_key(&key) {
            insert_capped(&mut self.nego.settled, key.clone(), now_ms);
            let held = self.nego.reservations.remove(&key);
            if s.moved {
                self.nego.moved_in_unsynced += s.weight;
                insert_capped(&mut self.nego.received_from, from.id.clone(), now_ms);
                self.stats.moves_in += 1;
                let item = MovableItem {
                    id: s.item,
                    kind: held.as_ref().map(|r| r.kind).unwrap_or(s.kind),
                    weight: s.weight,
                    moves_so_far: s.moves_so_far,
                    last_moved_ms: Some(now_ms),
                    service: held.as_ref().and_then(|r| r.service.clone()),
                };
                self.events.push(Event::MoveReceived {
                    item,
                    from: from.clone(),
                });
            } else if held.is_some() {
                self.events.push(Event::IncomingCancelled {
                    item: s.item,
                    from: from.id.clone(),
                });
            }
        }
        self.send(from, Body::SettleAck(offer_id), out);
    }

    fn expire_negotiations(&mut self, now_ms: u64, out: &mut Vec<Outgoing>) {
        let timeout = self.config.offer_timeout_ms;
        let expired: Vec<u64> = self
            .nego
            .offers
            .iter()
            .filter(|(_, o)| {
                o.state == OfferState::Offered && now_ms.saturating_sub(o.sent_ms) >= timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(o) = self.nego.offers.remove(&id) {
                self.stats.offers_expired += 1;
                // The answer may have been lost after the peer reserved:
                // cancel so the reservation does not stand until it lapses.
                let cancel = Settle {
                    offer_id: id,
                    item: o.item.id.clone(),
                    kind: o.item.kind,
                    weight: o.item.weight,
                    moves_so_far: o.item.moves_so_far,
                    moved: false,
                };
                self.send_settle(o.to.clone(), cancel, now_ms, out);
                self.nego
                    .backoff
                    .insert(o.to.id.clone(), now_ms + self.config.reject_backoff_ms);
                self.events.push(Event::OfferExpired {
                    item: o.item.id,
                    to: o.to.id,
                });
            }
        }
        let lapsed: Vec<(NodeId, u64)> = self
            .nego
            .reservations
            .iter()
            .filter(|(_, r)| r.expires_ms <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in lapsed {
            if let Some(r) = self.nego.reservations.remove(&k) {
                self.events.push(Event::ReservationExpired {
                    item: r.item,
                    from: r.from.id,
                });
            }
        }
    }
}
