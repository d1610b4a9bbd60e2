//! Who is alive: SWIM membership among agents, by the `foca` crate.
//!
//! foca is sans-IO like the rest of this crate: it asks for packets to be
//! sent and timers to be set through a runtime it is handed. This module
//! keeps those timers in a queue keyed by the caller's clock and fires the
//! due ones on every [`Membership::tick`], encodes foca's messages with
//! bincode (bounded, like every other packet), and remembers every peer it
//! ever heard of so that an agent cut off from all of them (a partition)
//! can announce itself again when the network heals, without the
//! coordinators re-seeding it.
//!
//! Why foca: it is a maintained SWIM implementation (suspicion with
//! incarnations, indirect probes, piggybacked dissemination, automatic
//! rejoin under a renewed identity) that does no I/O and reads no clock,
//! so it runs unchanged in the node agent and in the [`crate::sim`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use bincode::Options;
use bytes::{Buf, BufMut};
use foca::{
    AccumulatingRuntime, Codec, Foca, Header, Identity, Member, NoCustomBroadcast,
    OwnedNotification, PeriodicParams, State, Timer,
};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::peer::{NodeId, PeerInfo};
use crate::rng::SeededRng;
use crate::wire::MAX_STRING;

/// Largest SWIM message, bytes (a UDP datagram's worth, as foca assumes).
pub const SWIM_PACKET_BYTES: usize = 1400;

/// Most peers remembered for rejoining (seeds and members once seen).
pub const MAX_REMEMBERED: usize = 4096;

/// An agent as SWIM knows it: its address book entry plus a generation,
/// so that an agent declared down (wrongly, across a partition) comes back
/// under a newer identity that wins over the old one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwimId {
    /// How to reach it.
    pub info: PeerInfo,
    /// Bumped by restarts and by foca's rejoin.
    pub generation: u64,
    /// The node id with its hash, derived from `info.id` (never sent):
    /// foca compares addresses in linear scans of its member list, so this
    /// must be cheap to clone and compare.
    #[serde(skip)]
    key: SwimAddr,
}

impl PartialEq for SwimId {
    fn eq(&self, other: &Self) -> bool {
        self.generation == other.generation && self.info == other.info
    }
}

impl Eq for SwimId {}

impl SwimId {
    /// The identity of `info` in `generation`.
    pub fn new(info: PeerInfo, generation: u64) -> Self {
        let key = SwimAddr::of(&info.id);
        SwimId {
            info,
            generation,
            key,
        }
    }

    /// Recomputes the derived key (after decoding, where it is skipped).
    fn rekeyed(self) -> Self {
        SwimId::new(self.info, self.generation)
    }
}

/// A node id as foca's address: FNV-1a hash first (cheap inequality),
/// then the shared string (exact equality; clones are a reference count).
#[derive(Debug, Clone, Default)]
pub struct SwimAddr {
    hash: u64,
    id: std::sync::Arc<str>,
}

impl SwimAddr {
    fn of(id: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        SwimAddr {
            hash: h,
            id: std::sync::Arc::from(id),
        }
    }
}

impl PartialEq for SwimAddr {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.id == other.id
    }
}

impl Identity for SwimId {
    type Addr = SwimAddr;

    fn renew(&self) -> Option<Self> {
        Some(SwimId::new(
            self.info.clone(),
            self.generation.wrapping_add(1),
        ))
    }

    fn addr(&self) -> SwimAddr {
        self.key.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, &self.info.peer_addr) > (adversary.generation, &adversary.info.peer_addr)
    }
}

/// Is a member alive, suspected, or declared down?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    /// Answers probes.
    Alive,
    /// Missed a probe; declared down unless it refutes in time.
    Suspect,
    /// Declared down by the fleet (or never heard from).
    Dead,
}

/// A change in who is alive, for the agent's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// A member joined or came back.
    Up(PeerInfo),
    /// A member was declared down.
    Down(PeerInfo),
}

/// bincode (v1, varint, bounded) for foca's headers and members.
#[derive(Debug, Clone, Copy, Default)]
pub struct SwimCodec;

/// Why a SWIM message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum SwimCodecError {
    /// bincode refused it.
    #[error("{0}")]
    Bincode(String),
    /// The buffer has no room for the item.
    #[error("no room in the packet")]
    Full,
    /// A name or address is longer than the wire allows.
    #[error("identity string longer than {MAX_STRING} bytes")]
    TooLong,
}

fn swim_options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(crate::wire::MAX_PACKET_BYTES as u64)
        .allow_trailing_bytes()
}

fn check_id(id: &SwimId) -> Result<(), SwimCodecError> {
    let long = |s: &str| s.len() > MAX_STRING;
    if long(&id.info.id)
        || id.info.id.is_empty()
        || long(&id.info.peer_addr)
        || id.info.http_addr.as_deref().is_some_and(long)
    {
        return Err(SwimCodecError::TooLong);
    }
    Ok(())
}

fn encode_into<T: Serialize>(value: &T, mut buf: impl BufMut) -> Result<(), SwimCodecError> {
    let bytes = swim_options()
        .serialize(value)
        .map_err(|e| SwimCodecError::Bincode(e.to_string()))?;
    if buf.remaining_mut() < bytes.len() {
        return Err(SwimCodecError::Full);
    }
    buf.put_slice(&bytes);
    Ok(())
}

fn decode_from<T: for<'de> Deserialize<'de>>(mut buf: impl Buf) -> Result<T, SwimCodecError> {
    let chunk = buf.chunk();
    let before = chunk.len();
    let mut reader: &[u8] = chunk;
    let value = swim_options()
        .deserialize_from(&mut reader)
        .map_err(|e| SwimCodecError::Bincode(e.to_string()))?;
    let used = before - reader.len();
    buf.advance(used);
    Ok(value)
}

impl Codec<SwimId> for SwimCodec {
    type Error = SwimCodecError;

    fn encode_header(
        &mut self,
        header: &Header<SwimId>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        encode_into(header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<SwimId>, Self::Error> {
        let header: Header<SwimId> = decode_from(buf)?;
        check_id(&header.src)?;
        check_id(&header.dst)?;
        Ok(Header {
            src: header.src.rekeyed(),
            src_incarnation: header.src_incarnation,
            dst: header.dst.rekeyed(),
            message: header.message,
        })
    }

    fn encode_member(
        &mut self,
        member: &Member<SwimId>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        encode_into(member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<SwimId>, Self::Error> {
        let member: Member<SwimId> = decode_from(buf)?;
        check_id(member.id())?;
        Ok(Member::new(
            member.id().clone().rekeyed(),
            member.incarnation(),
            member.state(),
        ))
    }
}

type SwimFoca = Foca<SwimId, SwimCodec, SeededRng, NoCustomBroadcast>;

/// A SWIM message to carry: to whom, and foca's bytes.
pub type SwimSend = (PeerInfo, Vec<u8>);

/// One agent's membership: foca, its timers, and the peers remembered.
pub struct Membership {
    foca: SwimFoca,
    runtime: AccumulatingRuntime<SwimId>,
    /// (due ms, sequence) → timer; the sequence keeps equal deadlines in
    /// submission order, so runs are deterministic.
    due: BinaryHeap<Reverse<(u64, u64)>>,
    timers: BTreeMap<u64, Timer<SwimId>>,
    next_seq: u64,
    remembered: BTreeMap<NodeId, PeerInfo>,
    rejoin_every_ms: u64,
    announce_to: usize,
    next_rejoin_ms: Option<u64>,
    rng: fastrand::Rng,
    changes: Vec<MemberChange>,
    up: UpSet,
    now_ms: u64,
}

/// The active members, kept from foca's up/down notifications so the
/// policy can test membership and draw a random member in O(log n) rather
/// than scanning foca's list.
#[derive(Debug, Default)]
struct UpSet {
    list: Vec<PeerInfo>,
    index: BTreeMap<NodeId, usize>,
}

impl UpSet {
    fn insert(&mut self, p: PeerInfo) {
        match self.index.get(&p.id) {
            Some(&i) => self.list[i] = p,
            None => {
                self.index.insert(p.id.clone(), self.list.len());
                self.list.push(p);
            }
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(i) = self.index.remove(id) {
            self.list.swap_remove(i);
            if let Some(moved) = self.list.get(i) {
                self.index.insert(moved.id.clone(), i);
            }
        }
    }
}

fn foca_config(config: &Config) -> foca::Config {
    let mut c = foca::Config::simple();
    c.probe_period = Duration::from_millis(config.probe_period_ms);
    c.probe_rtt = Duration::from_millis(config.probe_rtt_ms);
    c.num_indirect_probes = NonZeroUsize::new(config.indirect_probes).unwrap_or(NonZeroUsize::MIN);
    c.suspect_to_down_after = Duration::from_millis(config.suspect_to_down_ms);
    c.max_transmissions = NonZeroU8::new(8).unwrap_or(NonZeroU8::MIN);
    // Forget down members after ten minutes; the remembered list keeps
    // their address for rejoining.
    c.remove_down_after = Some(Duration::from_secs(600));
    // Room for the packet envelope (sender, generation, framing), and no
    // more than a datagram's worth: foca fills packets with piggybacked
    // updates, each applied by a scan of the member list, so bigger
    // packets cost quadratic time and bandwidth for no faster spread.
    let room = config
        .max_packet_bytes
        .saturating_sub(1024)
        .clamp(512, SWIM_PACKET_BYTES);
    c.max_packet_size = NonZeroUsize::new(room).unwrap_or(NonZeroUsize::MIN);
    c.notify_down_members = true;
    c.periodic_gossip = Some(PeriodicParams {
        frequency: Duration::from_millis(config.probe_period_ms.max(1) / 2 + 1),
        num_members: NonZeroUsize::MIN,
    });
    c.periodic_announce_to_down_members = Some(PeriodicParams {
        frequency: Duration::from_millis(config.rejoin_interval_ms),
        num_members: NonZeroUsize::MIN,
    });
    c
}

impl Membership {
    /// Membership for agent `me` in its `generation`, with foca seeded by
    /// `seed`.
    pub fn new(me: PeerInfo, generation: u64, config: &Config, seed: u64) -> Self {
        let id = SwimId::new(me, generation);
        Membership {
            foca: Foca::new(id, foca_config(config), SeededRng::new(seed), SwimCodec),
            runtime: AccumulatingRuntime::new(),
            due: BinaryHeap::new(),
            timers: BTreeMap::new(),
            next_seq: 0,
            remembered: BTreeMap::new(),
            rejoin_every_ms: config.rejoin_interval_ms,
            announce_to: config.seed_announces,
            next_rejoin_ms: None,
            rng: fastrand::Rng::with_seed(seed ^ 0x5EED_0FAB_CDEF),
            changes: Vec::new(),
            up: UpSet::default(),
            now_ms: 0,
        }
    }

    /// This agent's current SWIM identity (its generation moves on when
    /// foca rejoins after being declared down).
    pub fn identity(&self) -> &SwimId {
        self.foca.identity()
    }

    /// Remembers `seeds` and announces this agent to `seed_announces` random
    /// ones among those not already active members.
    pub fn add_seeds(
        &mut self,
        seeds: impl IntoIterator<Item = PeerInfo>,
        now_ms: u64,
    ) -> Vec<SwimSend> {
        self.now_ms = self.now_ms.max(now_ms);
        let active: std::collections::BTreeSet<NodeId> = self
            .foca
            .iter_members()
            .map(|m| m.id().info.id.clone())
            .collect();
        let mut fresh = Vec::new();
        for seed in seeds {
            if seed.id == self.identity().info.id || seed.id.is_empty() {
                continue;
            }
            if !active.contains(&seed.id) {
                fresh.push(seed.clone());
            }
            self.remember(seed);
        }
        // Announce to a few random seeds not yet members: their answers
        // (and SWIM's dissemination) bring in the rest.
        for _ in 0..self.announce_to.min(fresh.len()) {
            let pick = fresh.swap_remove(self.rng.usize(..fresh.len()));
            let dst = SwimId::new(pick, 0);
            // An announce is refused only when it cannot be encoded
            // (an over-long name): that seed is skipped.
            let _ = self.foca.announce(dst, &mut self.runtime);
        }
        self.drain()
    }

    fn remember(&mut self, info: PeerInfo) {
        if info.id == self.identity().info.id {
            return;
        }
        if self.remembered.len() >= MAX_REMEMBERED && !self.remembered.contains_key(&info.id) {
            return;
        }
        self.remembered.insert(info.id.clone(), info);
    }

    /// Fires due timers and, every `rejoin_interval_ms`, announces this
    /// agent to one remembered peer that is not an active member.
    pub fn tick(&mut self, now_ms: u64) -> Vec<SwimSend> {
        self.now_ms = self.now_ms.max(now_ms);
        self.fire_due();
        let next = *self
            .next_rejoin_ms
            .get_or_insert(now_ms + self.rejoin_every_ms);
        if now_ms >= next {
            self.next_rejoin_ms = Some(now_ms + self.rejoin_every_ms);
            let active: std::collections::BTreeSet<&str> = self
                .foca
                .iter_members()
                .map(|m| m.id().info.id.as_str())
                .collect();
            let inactive: Vec<&PeerInfo> = self
                .remembered
                .values()
                .filter(|p| !active.contains(p.id.as_str()))
                .collect();
            if !inactive.is_empty() {
                let pick = inactive[self.rng.usize(..inactive.len())].clone();
                let dst = SwimId::new(pick, 0);
                let _ = self.foca.announce(dst, &mut self.runtime);
            }
        }
        self.drain()
    }

    fn fire_due(&mut self) {
        while let Some(Reverse((due, seq))) = self.due.peek().copied() {
            if due > self.now_ms {
                break;
            }
            self.due.pop();
            if let Some(timer) = self.timers.remove(&seq) {
                // A timer foca no longer wants is ignored by foca itself;
                // errors here are about encoding its reaction and leave
                // the membership as it was.
                let _ = self.foca.handle_timer(timer, &mut self.runtime);
                self.collect();
            }
        }
    }

    /// Hands a received SWIM message to foca.
    pub fn handle(&mut self, data: &[u8], now_ms: u64) -> Result<Vec<SwimSend>, String> {
        self.now_ms = self.now_ms.max(now_ms);
        self.fire_due();
        let result = self.foca.handle_data(data, &mut self.runtime);
        let sends = self.drain();
        result.map_err(|e| e.to_string())?;
        Ok(sends)
    }

    /// Announces that this agent leaves (a clean shutdown), so peers need
    /// not wait for the suspicion timeout.
    pub fn leave(&mut self) -> Vec<SwimSend> {
        let _ = self.foca.leave_cluster(&mut self.runtime);
        self.drain()
    }

    /// Moves foca's outputs out of its runtime: timers into the queue,
    /// notifications into changes.
    fn collect(&mut self) {
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let due = self.now_ms + after.as_millis() as u64;
            let seq = self.next_seq;
            self.next_seq += 1;
            self.due.push(Reverse((due, seq)));
            self.timers.insert(seq, timer);
        }
        while let Some(n) = self.runtime.to_notify() {
            match n {
                OwnedNotification::MemberUp(id) => {
                    self.remember(id.info.clone());
                    self.up.insert(id.info.clone());
                    self.changes.push(MemberChange::Up(id.info));
                }
                OwnedNotification::MemberDown(id) => {
                    self.up.remove(&id.info.id);
                    self.changes.push(MemberChange::Down(id.info));
                }
                OwnedNotification::Rename(_, id) => {
                    if self.up.index.contains_key(&id.info.id) {
                        self.up.insert(id.info.clone());
                    }
                    self.remember(id.info);
                }
                _ => {}
            }
        }
    }

    fn drain(&mut self) -> Vec<SwimSend> {
        self.collect();
        let mut out = Vec::new();
        while let Some((to, bytes)) = self.runtime.to_send() {
            out.push((to.info, bytes.to_vec()));
        }
        out
    }

    /// Changes in who is alive since the last call.
    pub fn take_changes(&mut self) -> Vec<MemberChange> {
        std::mem::take(&mut self.changes)
    }

    /// Active members (alive or suspect), in foca's order.
    pub fn active(&self) -> impl Iterator<Item = (&PeerInfo, Liveness)> {
        self.foca.iter_members().map(|m| {
            let l = match m.state() {
                State::Alive => Liveness::Alive,
                State::Suspect => Liveness::Suspect,
                State::Down => Liveness::Dead,
            };
            (&m.id().info, l)
        })
    }

    /// How `id` stands: alive, suspect, or dead (declared down or unknown).
    /// Scans foca's member list: for status displays, not hot paths.
    pub fn liveness(&self, id: &str) -> Liveness {
        self.active()
            .find(|(p, _)| p.id == id)
            .map(|(_, l)| l)
            .unwrap_or(Liveness::Dead)
    }

    /// What SWIM knows of `id`, down members included; `None` if it never
    /// met it (or forgot it). Scans foca's list: for displays.
    pub fn state_of(&self, id: &str) -> Option<Liveness> {
        self.foca
            .iter_membership_state()
            .find(|m| m.id().info.id == id)
            .map(|m| match m.state() {
                State::Alive => Liveness::Alive,
                State::Suspect => Liveness::Suspect,
                State::Down => Liveness::Dead,
            })
    }

    /// Whether `id` is an active member (alive or suspect), in O(log n).
    pub fn is_up(&self, id: &str) -> bool {
        self.up.index.contains_key(id)
    }

    /// A random active member, if any.
    pub fn random_up(&mut self) -> Option<PeerInfo> {
        if self.up.list.is_empty() {
            return None;
        }
        let i = self.rng.usize(..self.up.list.len());
        self.up.list.get(i).cloned()
    }

    /// Number of active members (besides this agent).
    pub fn active_count(&self) -> usize {
        self.foca.num_members()
    }

    /// Every peer remembered (seeds and members once seen): what a caller
    /// persists to disk to re-seed after a restart with no coordinators.
    pub fn remembered(&self) -> impl Iterator<Item = &PeerInfo> {
        self.remembered.values()
    }
}
