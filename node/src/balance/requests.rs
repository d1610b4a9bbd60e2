//! Inference requests as balancing items: which running requests this
//! node may move, what each weighs, how one moves (request live migration,
//! agent to agent, no coordinator involved), and how a request that
//! arrived keeps its move count under its new engine id.
//!
//! A request is identified by its engine's id, which changes when it
//! moves (the target engine numbers it anew). So that its move budget
//! holds across nodes, an item's id carries what the recipient can
//! recognise it by: `req:{alloc}:{request id}:{prompt tokens}+{max tokens}`.
//! On `MoveReceived` the recipient waits (up to [`ARRIVAL_WAIT`]) for a
//! running request of that service with the same prompt and max tokens to
//! show in its engines' stats, not already known, and gives the most
//! advanced such request the moved item's count and time. Two moved
//! requests of identical shape arriving together may swap counts; neither
//! count is lost, so the budget still bounds every request's moves.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use herd_api::proto::agent::AllocEngineStats;
use herd_api::proto::inference::RequestProgress;
use herd_balance::{ItemKind, LoadSummary, MovableItem, PeerInfo};
use tokio::time::Instant;

use super::load::MoveHistory;
use super::moves::MoveOutcome;
use crate::engines::Engines;
use crate::infer::Inference;
use crate::serve::request_migration::{migrate_request, Target};

/// A request with fewer tokens than this left to generate is not offered:
/// it ends before a move pays off (a migration takes a few hundred ms).
pub const MIN_TOKENS_LEFT: u32 = 64;
/// How long a recipient looks for a request it was told arrived.
pub const ARRIVAL_WAIT: Duration = Duration::from_secs(10);
/// Longest a reserved request is awaited before its sender confirms
/// (`herd_balance::Config::reservation_ttl_ms`, the default).
pub const RESERVED_WAIT: Duration = Duration::from_secs(60);
/// How long the source waits, after the switch-over, for its engine's
/// stats to stop listing the request (so the next load it measures
/// reflects the move).
const RELEASE_WAIT: Duration = Duration::from_secs(3);
/// Requests awaited at once at most (each `MoveReceived` adds one).
const MAX_AWAITED: usize = 256;

/// What identifies a request across a move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    /// The allocation whose engine runs it.
    pub alloc_id: String,
    /// Its id in that engine.
    pub request_id: u64,
    /// Its prompt length, tokens.
    pub prompt_tokens: u32,
    /// Its max tokens.
    pub max_tokens: u32,
}

impl RequestKey {
    /// The item id of this request.
    pub fn item_id(&self) -> String {
        format!(
            "req:{}:{}:{}+{}",
            self.alloc_id, self.request_id, self.prompt_tokens, self.max_tokens
        )
    }

    /// Reads an item id written by [`RequestKey::item_id`]; `None` for
    /// anything else (ids come from the network).
    pub fn parse(id: &str) -> Option<RequestKey> {
        let rest = id.strip_prefix("req:")?;
        let (rest, shape) = rest.rsplit_once(':')?;
        let (alloc_id, request_id) = rest.rsplit_once(':')?;
        let (prompt, max) = shape.split_once('+')?;
        if alloc_id.is_empty() {
            return None;
        }
        Some(RequestKey {
            alloc_id: alloc_id.to_string(),
            request_id: request_id.parse().ok()?,
            prompt_tokens: prompt.parse().ok()?,
            max_tokens: max.parse().ok()?,
        })
    }

    fn of(alloc_id: &str, r: &RequestProgress) -> RequestKey {
        RequestKey {
            alloc_id: alloc_id.to_string(),
            request_id: r.id,
            prompt_tokens: r.prompt_tokens,
            max_tokens: r.max_tokens,
        }
    }
}

/// What `load`'s score drops by without `blocks` KV blocks of `service`:
/// the weight of a request holding them (`100 × blocks` over the node's
/// KV blocks, see `LoadSummary::score`).
fn weight_of(load: &LoadSummary, service: &str, blocks: u32) -> f64 {
    let mut without = load.clone();
    if let Some(s) = without.services.iter_mut().find(|s| s.service == service) {
        s.kv_blocks_used = s.kv_blocks_used.saturating_sub(blocks);
        s.running = s.running.saturating_sub(1);
    }
    (load.score() - without.score()).max(0.0)
}

/// The running requests of this node's engines (`engines`, their latest
/// stats) that may move, each weighing what it adds to `load`'s score, with
/// the move count and time `history` holds for it. Waiting and swapped-out
/// requests are left out: request migration moves running requests only.
pub fn movable_requests(
    engines: &[AllocEngineStats],
    load: &LoadSummary,
    history: &MoveHistory,
) -> Vec<MovableItem> {
    let mut items = Vec::new();
    for engine in engines {
        let Some(stats) = &engine.stats else { continue };
        for r in &stats.requests {
            if r.phase != "running"
                || r.blocks == 0
                || r.max_tokens.saturating_sub(r.generated) < MIN_TOKENS_LEFT
            {
                continue;
            }
            let id = RequestKey::of(&engine.alloc_id, r).item_id();
            let (moves_so_far, last_moved_ms) = history.get(&id).copied().unwrap_or((0, None));
            items.push(MovableItem {
                id,
                kind: ItemKind::InferenceRequest,
                weight: weight_of(load, &engine.job, r.blocks),
                moves_so_far,
                last_moved_ms,
                service: Some(engine.job.clone()),
            });
        }
    }
    items
}

/// The item ids of every request in `engines`' stats.
pub fn present(engines: &[AllocEngineStats]) -> BTreeSet<String> {
    engines
        .iter()
        .filter_map(|e| e.stats.as_ref().map(|s| (e, s)))
        .flat_map(|(e, s)| {
            s.requests
                .iter()
                .map(|r| RequestKey::of(&e.alloc_id, r).item_id())
        })
        .collect()
}

/// One request a recipient reserved room for or was told arrived, and
/// waits to see in its engines.
#[derive(Debug, Clone)]
struct Awaited {
    /// The item id the sender used.
    item: String,
    /// Whether the sender confirmed the move (`MoveReceived`): only then
    /// are its move count and time known.
    confirmed: bool,
    service: String,
    prompt_tokens: u32,
    max_tokens: u32,
    moves_so_far: u32,
    moved_ms: Option<u64>,
    /// Its weight in score points, as the sender measured it.
    weight: f64,
    until: Instant,
}

/// Requests moved here, not yet recognised under their new engine ids.
#[derive(Debug, Default)]
pub struct Arrivals {
    awaited: Vec<Awaited>,
}

impl Arrivals {
    /// Notes that room was reserved here for request `item` (its id as
    /// the sender named it): a request of its shape that shows in the
    /// engines before the sender confirms is not offered on (its move
    /// count is not known yet). Ids that are not a request's are ignored.
    pub fn reserved(&mut self, item: &str, weight: f64) {
        let Some(key) = RequestKey::parse(item) else {
            return;
        };
        if self.awaited.iter().any(|a| a.item == item) {
            return;
        }
        if self.awaited.len() >= MAX_AWAITED {
            self.awaited.remove(0);
        }
        self.awaited.push(Awaited {
            item: item.to_string(),
            confirmed: false,
            service: String::new(),
            prompt_tokens: key.prompt_tokens,
            max_tokens: key.max_tokens,
            moves_so_far: 0,
            moved_ms: None,
            weight,
            // Until the sender settles (a cancel or a lapse releases it).
            until: Instant::now() + RESERVED_WAIT,
        });
    }

    /// Forgets a reservation the sender cancelled or that lapsed.
    pub fn released(&mut self, item: &str) {
        self.awaited.retain(|a| a.confirmed || a.item != item);
    }

    /// Whether a request listed as `id` (not known in the history) may be
    /// one moved here whose count is not known yet: one of the shape of a
    /// request awaited here. Such a request is not offered on.
    pub fn covers(&self, id: &str) -> bool {
        RequestKey::parse(id).is_some_and(|key| {
            self.awaited
                .iter()
                .any(|a| a.prompt_tokens == key.prompt_tokens && a.max_tokens == key.max_tokens)
        })
    }

    /// Notes that `item` (a request of its `service`) was moved here.
    /// Items that are not requests, or whose id is not a request's, are
    /// ignored.
    pub fn expect(&mut self, item: &MovableItem) {
        let (Some(service), Some(key)) = (&item.service, RequestKey::parse(&item.id)) else {
            return;
        };
        self.awaited.retain(|a| a.item != item.id);
        if self.awaited.len() >= MAX_AWAITED {
            self.awaited.remove(0);
        }
        self.awaited.push(Awaited {
            item: item.id.clone(),
            confirmed: true,
            service: service.clone(),
            prompt_tokens: key.prompt_tokens,
            max_tokens: key.max_tokens,
            moves_so_far: item.moves_so_far,
            moved_ms: item.last_moved_ms,
            weight: item.weight,
            until: Instant::now() + ARRIVAL_WAIT,
        });
    }

    /// Adds the requests moved here and not yet seen in the engines' stats
    /// to `load` (as KV blocks of their service, by their weight), so that
    /// the node does not look lighter than it is between the move and the
    /// next poll of its engines, and take more than its share.
    pub fn count_in(&self, load: &mut LoadSummary) {
        for a in self.awaited.iter().filter(|a| a.confirmed) {
            if let Some(s) = load.services.iter_mut().find(|s| s.service == a.service) {
                let blocks = (a.weight / 100.0 * f64::from(s.kv_blocks_total)).round() as u32;
                s.kv_blocks_used = s
                    .kv_blocks_used
                    .saturating_add(blocks)
                    .min(s.kv_blocks_total);
                s.running = s.running.saturating_add(1);
            }
        }
    }

    /// Gives each awaited request found in `engines` its move count in
    /// `history`; forgets those awaited too long. Returns how many were
    /// recognised.
    pub fn recognise(&mut self, engines: &[AllocEngineStats], history: &mut MoveHistory) -> usize {
        let now = Instant::now();
        let mut found = 0;
        self.awaited.retain(|a| {
            if !a.confirmed {
                return a.until > now;
            }
            let best = engines
                .iter()
                .filter(|e| e.job == a.service)
                .filter_map(|e| e.stats.as_ref().map(|s| (e, s)))
                .flat_map(|(e, s)| s.requests.iter().map(move |r| (e, r)))
                .filter(|(_, r)| r.prompt_tokens == a.prompt_tokens && r.max_tokens == a.max_tokens)
                .map(|(e, r)| (RequestKey::of(&e.alloc_id, r).item_id(), r.generated))
                .filter(|(id, _)| !history.contains_key(id))
                .max_by_key(|(_, generated)| *generated);
            match best {
                Some((id, _)) => {
                    history.insert(id, (a.moves_so_far, a.moved_ms));
                    found += 1;
                    false
                }
                None => a.until > now,
            }
        });
        found
    }
}

/// Forgets the history of requests that an engine here answered for and
/// no longer lists (they finished or moved away). Requests of an engine
/// that missed its last poll keep theirs, as does every other item.
pub fn prune_history(history: &mut MoveHistory, engines: &[AllocEngineStats]) {
    let present = present(engines);
    let polled: BTreeSet<&str> = engines
        .iter()
        .filter(|e| e.stats.is_some())
        .map(|e| e.alloc_id.as_str())
        .collect();
    history.retain(|id, _| {
        let Some(key) = RequestKey::parse(id) else {
            return true;
        };
        present.contains(id) || !polled.contains(key.alloc_id.as_str())
    });
}

/// The instance of `service` that `to` named in the load figure this
/// agent holds of it (`view`: the agent's neighbourhood).
pub fn target_instance(view: &[herd_balance::PeerView], to: &str, service: &str) -> Option<String> {
    view.iter()
        .find(|v| v.info.id == to)
        .and_then(|v| v.load.instance_of(service))
        .map(str::to_string)
}

/// Moves request `item_id` of this node to instance `target_alloc` on
/// node `to` by request live migration, then waits (up to a few seconds)
/// for this node's engine stats to stop listing it.
pub async fn move_request(
    inference: &Inference,
    engines: &Engines,
    item_id: &str,
    to: &PeerInfo,
    target_alloc: &str,
) -> MoveOutcome {
    let Some(key) = RequestKey::parse(item_id) else {
        return MoveOutcome {
            moved: false,
            migration: None,
            detail: format!("{item_id} is not a request's item id"),
        };
    };
    let target = Target {
        alloc_id: target_alloc.to_string(),
        agent: to.peer_addr.clone(),
        node: Some(to.id.clone()),
    };
    match migrate_request(inference, &key.alloc_id, key.request_id, &target).await {
        Ok(outcome) => {
            let deadline = Instant::now() + RELEASE_WAIT;
            while Instant::now() < deadline && present(&engines.snapshot()).contains(item_id) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            MoveOutcome {
                moved: true,
                migration: None,
                detail: format!(
                    "request migrated to {} on {} at token {} ({} stages, {} blocks, downtime {} ms)",
                    target_alloc,
                    outcome.target_node,
                    outcome.switched_at,
                    outcome.stages,
                    outcome.blocks,
                    outcome.downtime.as_millis()
                ),
            }
        }
        Err(e) => MoveOutcome {
            moved: false,
            migration: None,
            detail: format!("request migration failed: {e}"),
        },
    }
}

/// Per-service figures for a node's load summary: KV blocks used and held,
/// and the instance taking moved requests (the one with most free blocks).
pub fn instances_by_service(engines: &[AllocEngineStats]) -> BTreeMap<String, (u32, String)> {
    let mut best: BTreeMap<String, (u32, String)> = BTreeMap::new();
    for engine in engines {
        let Some(stats) = &engine.stats else { continue };
        let entry = best.entry(engine.job.clone()).or_insert((0, String::new()));
        if entry.1.is_empty() || stats.free_blocks > entry.0 {
            *entry = (stats.free_blocks, engine.alloc_id.clone());
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use herd_api::proto::inference::EngineStats;
    use herd_balance::ServiceLoad;

    use super::*;

    fn engine(alloc: &str, job: &str, requests: Vec<RequestProgress>) -> AllocEngineStats {
        let used: u32 = requests.iter().map(|r| r.blocks).sum();
        AllocEngineStats {
            alloc_id: alloc.into(),
            job: job.into(),
            at_ms: 1,
            stats: Some(EngineStats {
                batch_size: requests.len() as u32,
                free_blocks: 100 - used,
                total_blocks: 100,
                requests,
                ..Default::default()
            }),
        }
    }

    fn req(id: u64, phase: &str, blocks: u32, generated: u32) -> RequestProgress {
        RequestProgress {
            id,
            phase: phase.into(),
            blocks,
            generated,
            max_tokens: 500,
            prompt_tokens: 64,
            ..Default::default()
        }
    }

    #[test]
    fn item_ids_round_trip_and_garbage_is_refused() {
        let key = RequestKey {
            alloc_id: "ab-12".into(),
            request_id: 7,
            prompt_tokens: 64,
            max_tokens: 500,
        };
        assert_eq!(RequestKey::parse(&key.item_id()), Some(key));
        for bad in [
            "",
            "req:",
            "req::1:2+3",
            "req:a:x:2+3",
            "alloc-1",
            "req:a:1:2",
        ] {
            assert_eq!(RequestKey::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn running_requests_weigh_their_share_of_the_kv_cache() {
        let engines = vec![engine(
            "a1",
            "llm",
            vec![
                req(1, "running", 20, 10),
                req(2, "waiting", 0, 0),
                req(3, "running", 10, 480), // about to finish
                req(4, "swapped", 5, 10),
            ],
        )];
        let load = LoadSummary {
            cpu_used_milli: 100,
            cpu_total_milli: 2000,
            services: vec![ServiceLoad {
                service: "llm".into(),
                kv_blocks_used: 35,
                kv_blocks_total: 100,
                instance: "a1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut history = MoveHistory::new();
        let id = RequestKey {
            alloc_id: "a1".into(),
            request_id: 1,
            prompt_tokens: 64,
            max_tokens: 500,
        }
        .item_id();
        history.insert(id.clone(), (2, Some(5)));
        let items = movable_requests(&engines, &load, &history);
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(items[0].id, id);
        assert_eq!(items[0].service.as_deref(), Some("llm"));
        assert_eq!(
            (items[0].moves_so_far, items[0].last_moved_ms),
            (2, Some(5))
        );
        // 35 % → 15 %: 20 points.
        assert!((items[0].weight - 20.0).abs() < 1e-9, "{}", items[0].weight);
    }

    #[test]
    fn a_moved_request_is_recognised_under_its_new_id_with_its_count() {
        let mut arrivals = Arrivals::default();
        let moved = MovableItem {
            id: RequestKey {
                alloc_id: "src".into(),
                request_id: 3,
                prompt_tokens: 64,
                max_tokens: 500,
            }
            .item_id(),
            kind: ItemKind::InferenceRequest,
            weight: 4.0,
            moves_so_far: 2,
            last_moved_ms: Some(900),
            service: Some("llm".into()),
        };
        // Reserved first: a request of its shape is not offered on, and
        // nothing is counted or recognised before the sender confirms.
        arrivals.reserved(&moved.id, 4.0);
        let shaped = RequestKey {
            alloc_id: "dst".into(),
            request_id: 9,
            prompt_tokens: 64,
            max_tokens: 500,
        }
        .item_id();
        assert!(arrivals.covers(&shaped));
        let mut early = MoveHistory::new();
        assert_eq!(
            arrivals.recognise(
                &[engine("dst", "llm", vec![req(9, "running", 9, 120)])],
                &mut early
            ),
            0
        );
        assert!(early.is_empty());
        arrivals.expect(&moved);
        let mut history = MoveHistory::new();
        // Not there yet: still awaited, and counted in the load.
        assert_eq!(arrivals.recognise(&[], &mut history), 0);
        let mut load = LoadSummary {
            services: vec![ServiceLoad {
                service: "llm".into(),
                kv_blocks_total: 100,
                instance: "dst".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        arrivals.count_in(&mut load);
        assert!((load.score() - 4.0).abs() < 1e-9, "{}", load.score());
        let engines = vec![
            engine("other", "chat", vec![req(1, "running", 5, 200)]),
            engine(
                "dst",
                "llm",
                vec![req(8, "running", 5, 3), req(9, "running", 9, 120)],
            ),
        ];
        assert_eq!(arrivals.recognise(&engines, &mut history), 1);
        let got = RequestKey {
            alloc_id: "dst".into(),
            request_id: 9,
            prompt_tokens: 64,
            max_tokens: 500,
        }
        .item_id();
        assert_eq!(history.get(&got), Some(&(2, Some(900))));
        assert_eq!(history.len(), 1);
        // A request gone from a polled engine loses its history; one of an
        // engine not polled this time, and any other item, keep theirs.
        let elsewhere = RequestKey {
            alloc_id: "unpolled".into(),
            request_id: 1,
            prompt_tokens: 64,
            max_tokens: 500,
        }
        .item_id();
        history.insert(elsewhere.clone(), (1, None));
        history.insert("alloc-x".into(), (1, None));
        prune_history(&mut history, &engines);
        assert_eq!(history.len(), 3, "{history:?}");
        prune_history(&mut history, &[engine("dst", "llm", vec![])]);
        assert!(!history.contains_key(&got));
        assert!(history.contains_key(&elsewhere) && history.contains_key("alloc-x"));
    }
}
