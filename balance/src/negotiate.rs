//! The state of move negotiations on one agent: offers it made (sender
//! side) and reservations it holds (recipient side).
//!
//! ```text
//! sender                               recipient
//!   Offer(item, weight, scores)  ──▶   judge: reserve or reject
//!                                ◀──   Answer(Accepted | Rejected)
//!   Event::MoveApproved                (reservation, expires)
//!   … the caller moves the item …
//!   move_done(ok) → Settle(moved) ──▶  reservation released;
//!                                      Event::MoveReceived when moved
//! ```
//!
//! An offer unanswered within `offer_timeout_ms` is dropped (a late
//! accept is answered with a cancelling settle); a reservation not settled
//! within `reservation_ttl_ms` lapses. Both sides count what is in flight
//! in their scores, so neither over-commits while figures catch up.

use std::collections::{BTreeMap, VecDeque};

use crate::item::{ItemId, ItemKind, MovableItem};
use crate::peer::{NodeId, PeerInfo};
use crate::wire::Settle;

/// Where an offer the agent made stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferState {
    /// Sent, no answer yet.
    Offered,
    /// Accepted; the caller is moving the item.
    Approved,
}

/// An offer this agent made.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenOffer {
    /// The item as the caller listed it.
    pub item: MovableItem,
    /// To whom.
    pub to: PeerInfo,
    /// When it was sent (local clock).
    pub sent_ms: u64,
    /// Where it stands.
    pub state: OfferState,
}

/// A promise this agent made to take an item.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// From whom.
    pub from: PeerInfo,
    /// The sender's offer id.
    pub offer_id: u64,
    /// The item.
    pub item: ItemId,
    /// Its kind.
    pub kind: ItemKind,
    /// Its weight, counted in this agent's score until settled.
    pub weight: f64,
    /// Moves it made before this one.
    pub moves_so_far: u32,
    /// The service whose instance takes it, if any.
    pub service: Option<String>,
    /// When it lapses (local clock).
    pub expires_ms: u64,
}

/// A settle sent and not yet acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct UnackedSettle {
    /// The recipient.
    pub to: PeerInfo,
    /// What was sent.
    pub settle: Settle,
    /// When to send it again.
    pub resend_ms: u64,
    /// Sends so far.
    pub tries: u32,
}

/// Most entries of each per-peer record (`settled`, `received_from`,
/// `backoff`, `moved_items`): they are keyed by what packets say, so a
/// flood of forged packets must not grow them without bound.
pub const MAX_TRACKED: usize = 4096;

/// Inserts into a time-stamped record, evicting the oldest entry when it
/// is full.
pub fn insert_capped<K: Ord + Clone>(map: &mut BTreeMap<K, u64>, key: K, at_ms: u64) {
    if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
        let oldest = map.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            map.remove(&k);
        }
    }
    map.insert(key, at_ms);
}

/// Most sends of one settle.
pub const SETTLE_TRIES: u32 = 5;

/// Both sides' negotiation state, and the bookkeeping that keeps moves in
/// flight counted.
#[derive(Debug, Clone, Default)]
pub struct Negotiations {
    /// Offers made, by offer id.
    pub offers: BTreeMap<u64, OpenOffer>,
    /// Reservations held, by (sender, offer id).
    pub reservations: BTreeMap<(NodeId, u64), Reservation>,
    /// Settles sent and not acknowledged, by offer id.
    pub unacked: BTreeMap<u64, UnackedSettle>,
    /// Settles received, by (sender, offer id), with when: a repeated
    /// settle is acknowledged again but not acted on twice.
    pub settled: BTreeMap<(NodeId, u64), u64>,
    /// Next offer id.
    pub next_offer_id: u64,
    /// Peers not to offer to until the given time (they rejected).
    pub backoff: BTreeMap<NodeId, u64>,
    /// Weight moved out and not yet reflected in the caller's load.
    pub moved_out_unsynced: f64,
    /// Weight received and not yet reflected in the caller's load.
    pub moved_in_unsynced: f64,
    /// When this agent's last move (out) finished, for its cool-down.
    pub last_move_done_ms: Option<u64>,
    /// Completion times of moves out in the last minute.
    pub recent_moves: VecDeque<u64>,
    /// When a move from each peer last arrived here: this agent does not
    /// offer back to that peer within the item cool-down, so two agents
    /// whose figures jitter around each other cannot swap work back and
    /// forth.
    pub received_from: BTreeMap<NodeId, u64>,
    /// Moves out made per item by this agent: (count, last time), so the
    /// budget and cool-down hold even if the caller does not carry them.
    pub moved_items: BTreeMap<ItemId, (u32, u64)>,
}

impl Negotiations {
    /// Weight of offers open (offered or approved).
    pub fn pending_out(&self) -> f64 {
        self.offers.values().map(|o| o.item.weight).sum()
    }

    /// Weight reserved for incoming moves.
    pub fn reserved_in(&self) -> f64 {
        self.reservations.values().map(|r| r.weight).sum()
    }

    /// Whether `item` is in an open offer.
    pub fn is_offered(&self, item: &str) -> bool {
        self.offers.values().any(|o| o.item.id == item)
    }

    /// The caller's load now includes every finished move.
    pub fn synced(&mut self) {
        self.moved_out_unsynced = 0.0;
        self.moved_in_unsynced = 0.0;
    }

    /// Records a finished move out at `now_ms`.
    pub fn record_move(&mut self, item: &MovableItem, now_ms: u64) {
        self.moved_out_unsynced += item.weight;
        self.last_move_done_ms = Some(now_ms);
        self.recent_moves.push_back(now_ms);
        let e = self
            .moved_items
            .entry(item.id.clone())
            .or_insert((0, now_ms));
        e.0 =
            e.0.saturating_add(1)
                .max(item.moves_so_far.saturating_add(1));
        e.1 = now_ms;
    }

    /// Drops bookkeeping older than `keep_ms` (moves per minute, per-item
    /// records past their cool-down, lapsed back-offs).
    pub fn prune(&mut self, now_ms: u64, item_cooldown_ms: u64) {
        // Senders give up after SETTLE_TRIES sends a second or so apart:
        // a minute covers any repeat.
        self.settled
            .retain(|_, t| now_ms.saturating_sub(*t) < 60_000);
        while self
            .recent_moves
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) >= 60_000)
        {
            self.recent_moves.pop_front();
        }
        self.moved_items
            .retain(|_, (_, t)| now_ms.saturating_sub(*t) < item_cooldown_ms);
        self.backoff.retain(|_, until| *until > now_ms);
        self.received_from
            .retain(|_, t| now_ms.saturating_sub(*t) < item_cooldown_ms);
    }

    /// Moves out finished in the last minute.
    pub fn moves_last_minute(&self, now_ms: u64) -> usize {
        self.recent_moves
            .iter()
            .filter(|&&t| now_ms.saturating_sub(t) < 60_000)
            .count()
    }
}
