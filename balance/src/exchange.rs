//! The neighbourhood: load figures learnt by push-pull gossip.
//!
//! Every tick an agent sends its own figure and a random sample of its
//! view to one random live member; the member merges them and answers with
//! its own figure and sample (push-pull). Each origin numbers its figures
//! (generation, version), so a newer figure replaces an older one whatever
//! path it took. The view keeps at most `max_view` figures, evicting the
//! stalest, and forgets any older than `view_ttl_ms`: it is a changing
//! random sample of the fleet (as in Newscast / Cyclon peer sampling),
//! which is what the policy calls the neighbourhood.
//!
//! Ages, not timestamps, travel: a figure carries how old it was when
//! sent, and the receiver adds its own time since receipt, so no two
//! clocks are ever compared.

use std::collections::BTreeMap;

use crate::load::LoadSummary;
use crate::peer::{NodeId, PeerInfo};
use crate::wire::WireEntry;

/// One peer's figure as this agent holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewEntry {
    /// Whose.
    pub info: PeerInfo,
    /// Its origin's generation.
    pub generation: u64,
    /// Its origin's version within the generation.
    pub version: u64,
    /// When it arrived, in this agent's clock.
    pub received_ms: u64,
    /// How old it was when it arrived.
    pub age_at_receipt_ms: u64,
    /// The load.
    pub load: LoadSummary,
    /// `load.score()`, computed once.
    pub score: f64,
    /// Score points in flight at its origin: reserved for or received by
    /// incoming moves (+), offered or sent away (−), not yet in `load`.
    pub in_flight: f64,
    /// Moves its origin made in the last minute.
    pub moves_per_minute: u32,
}

impl ViewEntry {
    /// How old the figure is now: its age at receipt plus local time since.
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms
            .saturating_sub(self.received_ms)
            .saturating_add(self.age_at_receipt_ms)
    }

    /// The figure to gossip on, aged by the time it spent here.
    pub fn to_wire(&self, now_ms: u64) -> WireEntry {
        WireEntry {
            info: self.info.clone(),
            generation: self.generation,
            version: self.version,
            age_ms: self.age_ms(now_ms),
            load: self.load.clone(),
            in_flight: self.in_flight,
            moves_per_minute: self.moves_per_minute,
        }
    }

    /// The score the policy compares: load plus what is in flight.
    pub fn effective_score(&self) -> f64 {
        self.score + self.in_flight
    }
}

/// The bounded set of peers' figures.
#[derive(Debug, Clone)]
pub struct LoadView {
    me: NodeId,
    entries: BTreeMap<NodeId, ViewEntry>,
    max: usize,
    ttl_ms: u64,
}

impl LoadView {
    /// An empty view for agent `me`, keeping at most `max` figures no
    /// older than `ttl_ms`.
    pub fn new(me: NodeId, max: usize, ttl_ms: u64) -> Self {
        LoadView {
            me,
            entries: BTreeMap::new(),
            max: max.max(1),
            ttl_ms,
        }
    }

    /// Merges one received figure; returns whether it changed the view.
    /// Figures about this agent, figures too old, and figures older than
    /// the one held are ignored.
    pub fn merge(&mut self, e: WireEntry, now_ms: u64) -> bool {
        if e.info.id == self.me || e.age_ms > self.ttl_ms {
            return false;
        }
        let incoming = ViewEntry {
            score: e.load.score(),
            info: e.info,
            generation: e.generation,
            version: e.version,
            received_ms: now_ms,
            age_at_receipt_ms: e.age_ms,
            load: e.load,
            in_flight: e.in_flight,
            moves_per_minute: e.moves_per_minute,
        };
        if let Some(held) = self.entries.get_mut(&incoming.info.id) {
            let newer = (incoming.generation, incoming.version) > (held.generation, held.version);
            let same_fresher = (incoming.generation, incoming.version)
                == (held.generation, held.version)
                && incoming.age_at_receipt_ms < held.age_ms(now_ms);
            if newer || same_fresher {
                *held = incoming;
                return true;
            }
            return false;
        }
        if self.entries.len() >= self.max {
            // Evict the stalest if the newcomer is fresher than it.
            let stalest = self
                .entries
                .iter()
                .max_by_key(|(_, v)| v.age_ms(now_ms))
                .map(|(k, v)| (k.clone(), v.age_ms(now_ms)));
            match stalest {
                Some((k, age)) if age > incoming.age_at_receipt_ms => {
                    self.entries.remove(&k);
                }
                _ => return false,
            }
        }
        self.entries.insert(incoming.info.id.clone(), incoming);
        true
    }

    /// Forgets figures older than the TTL.
    pub fn expire(&mut self, now_ms: u64) {
        let ttl = self.ttl_ms;
        self.entries.retain(|_, v| v.age_ms(now_ms) <= ttl);
    }

    /// Forgets `id` (declared down).
    pub fn remove(&mut self, id: &str) {
        self.entries.remove(id);
    }

    /// The figure held for `id`.
    pub fn get(&self, id: &str) -> Option<&ViewEntry> {
        self.entries.get(id)
    }

    /// Mutable access to the figure held for `id` (to note a fresher
    /// score learnt from an answer).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut ViewEntry> {
        self.entries.get_mut(id)
    }

    /// Figures no older than the TTL, by node id.
    pub fn fresh(&self, now_ms: u64) -> impl Iterator<Item = &ViewEntry> {
        let ttl = self.ttl_ms;
        self.entries
            .values()
            .filter(move |v| v.age_ms(now_ms) <= ttl)
    }

    /// Up to `n` random fresh figures, not about `exclude`, aged for
    /// sending.
    pub fn sample(
        &self,
        now_ms: u64,
        n: usize,
        exclude: &str,
        rng: &mut fastrand::Rng,
    ) -> Vec<WireEntry> {
        let mut pool: Vec<&ViewEntry> = self
            .fresh(now_ms)
            .filter(|v| v.info.id != exclude)
            .collect();
        let take = n.min(pool.len());
        for i in 0..take {
            let j = rng.usize(i..pool.len());
            pool.swap(i, j);
        }
        pool.truncate(take);
        pool.into_iter().map(|v| v.to_wire(now_ms)).collect()
    }

    /// Number of figures held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no figure is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, version: u64, age: u64, score: f64) -> WireEntry {
        WireEntry {
            info: PeerInfo::new(id, format!("{id}:1")),
            generation: 1,
            version,
            age_ms: age,
            load: LoadSummary::from_score(score, 100),
            in_flight: 0.0,
            moves_per_minute: 0,
        }
    }

    #[test]
    fn newer_versions_replace_older_and_ages_add_local_time() {
        let mut v = LoadView::new("me".into(), 4, 4_000);
        assert!(v.merge(entry("a", 2, 100, 10.0), 1_000));
        assert!(
            !v.merge(entry("a", 1, 0, 99.0), 1_100),
            "older version ignored"
        );
        assert!(v.merge(entry("a", 3, 50, 20.0), 1_200));
        let a = v.get("a").unwrap();
        assert_eq!(a.age_ms(1_500), 350);
        assert!((a.score - 20.0).abs() < 1e-9);
        assert!(
            !v.merge(entry("me", 9, 0, 1.0), 1_200),
            "own figure ignored"
        );
    }

    #[test]
    fn full_view_evicts_the_stalest_and_expires_by_ttl() {
        let mut v = LoadView::new("me".into(), 2, 4_000);
        v.merge(entry("a", 1, 3_000, 1.0), 0);
        v.merge(entry("b", 1, 10, 1.0), 0);
        assert!(v.merge(entry("c", 1, 0, 1.0), 0));
        assert!(v.get("a").is_none() && v.get("c").is_some());
        v.expire(5_000);
        assert!(v.is_empty());
    }
}
