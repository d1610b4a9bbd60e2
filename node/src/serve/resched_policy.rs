//! The rescheduling policy, PURE: which running requests of this node's
//! instances move, and where, from the loads the fleet view last saw.
//!
//! A request moves off an instance of this node when that instance is
//! - **draining** (its engine is stopping: node drained, service scaled
//!   in): every running request goes, to let it end without losing any;
//! - **about to run out of KV blocks**: fewer free blocks than its reserve
//!   (a tenth of its blocks, and at least one per running request, each of
//!   which may need a new block within 16 tokens), or requests already
//!   queued or swapped out for lack of room. Moving a running request frees
//!   its blocks and its batch slot now, instead of the engine preempting
//!   one later (recompute or swap) and the queue waiting meanwhile.
//!
//! It goes to the instance of the same service with the lowest virtual
//! usage per block ([`super::dispatch::virtual_usage`], plus what moves
//! there already) among those that are not draining, have no queue, and
//! keep their own reserve free after taking it; a pressured source only
//! gives to an instance less loaded than itself would be after the move.
//! The request chosen is the running one with the most tokens left (it
//! would hold and grow its blocks the longest); one with fewer than
//! [`Settings::min_remaining_tokens`] left finishes where it is.
//!
//! Llumnix (Sun et al., OSDI 2024, §4.4) migrates between instances of
//! low and high "freeness" in the same spirit; this is herd's own,
//! simpler rule on the stats the agents already exchange.

use std::collections::BTreeSet;

use herd_actors::inference::blocks::blocks_for;
use herd_api::proto::inference::EngineStats;

use super::dispatch::{virtual_usage, InstanceLoad, Policy};

/// The policy's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Free blocks an instance keeps, as a fraction of its blocks.
    pub reserve_fraction: f64,
    /// A request with fewer tokens left than this is not moved.
    pub min_remaining_tokens: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            reserve_fraction: 0.1,
            min_remaining_tokens: 16,
        }
    }
}

/// One instance as the rescheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceView {
    /// Its allocation.
    pub alloc_id: String,
    /// Its service.
    pub job: String,
    /// Its node's agent (`HOST:PORT`).
    pub agent: String,
    /// Whether it runs on this node (only those are sources).
    pub local: bool,
    /// Its latest stats (fresh: the caller left stale ones out).
    pub stats: EngineStats,
    /// Blocks of requests moving (or just moved) there, not in its stats yet.
    pub incoming_blocks: u64,
}

/// Why a request moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its instance is stopping.
    Draining,
    /// Its instance is about to run out of KV blocks.
    LowOnBlocks,
}

/// A request to migrate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// Index of the source in the views.
    pub source: usize,
    /// The request's engine id on the source.
    pub request_id: u64,
    /// Index of the target in the views.
    pub target: usize,
    /// Blocks it takes on the target.
    pub blocks: u64,
    /// Why.
    pub why: Why,
}

/// Free blocks `stats`' instance keeps in reserve.
pub fn reserve(stats: &EngineStats, settings: &Settings) -> u64 {
    let fraction = (stats.total_blocks as f64 * settings.reserve_fraction).ceil() as u64;
    fraction.max(stats.batch_size as u64).max(1)
}

/// Whether the instance is about to run out of KV blocks.
pub fn pressured(stats: &EngineStats, settings: &Settings) -> bool {
    stats.queue_len + stats.swapped > 0 || (stats.free_blocks as u64) < reserve(stats, settings)
}

/// Virtual usage with what moves there, in blocks.
fn usage(view: &InstanceView) -> u64 {
    virtual_usage(&InstanceLoad::from_stats(&view.stats), &Policy::default()) + view.incoming_blocks
}

/// The moves to start now. `busy` are sources that take no new move this
/// round (one already running, or stats older than their last move);
/// `skip` are `(source alloc, request)` pairs not to try (moving or
/// recently failed). At most one move per source.
pub fn plan(
    views: &[InstanceView],
    busy: &BTreeSet<String>,
    skip: &BTreeSet<(String, u64)>,
    settings: &Settings,
) -> Vec<Move> {
    let mut incoming: Vec<u64> = views.iter().map(|v| v.incoming_blocks).collect();
    let mut moves = Vec::new();
    for (s, source) in views.iter().enumerate() {
        if !source.local || busy.contains(&source.alloc_id) {
            continue;
        }
        let why = if source.stats.draining {
            Why::Draining
        } else if pressured(&source.stats, settings) {
            Why::LowOnBlocks
        } else {
            continue;
        };
        let mut candidates: Vec<_> = source
            .stats
            .requests
            .iter()
            .filter(|r| r.phase == "running" && r.generated > 0 && r.blocks > 0)
            .filter(|r| r.max_tokens.saturating_sub(r.generated) >= settings.min_remaining_tokens)
            .filter(|r| !skip.contains(&(source.alloc_id.clone(), r.id)))
            .collect();
        // Most tokens left first; then the smaller (cheaper to copy); then id.
        candidates.sort_by_key(|r| {
            (
                std::cmp::Reverse(r.max_tokens - r.generated),
                r.blocks,
                r.id,
            )
        });
        let Some(request) = candidates.first() else {
            continue;
        };
        // Blocks it holds on the target once resumed (the next token's too).
        let context = request.prompt_tokens as usize + request.generated as usize;
        let blocks = blocks_for(context) as u64;
        let source_usage = usage(source);
        let source_total = source.stats.total_blocks.max(1) as u128;
        let best = views
            .iter()
            .enumerate()
            .filter(|(t, v)| {
                *t != s
                    && v.job == source.job
                    && !v.agent.is_empty()
                    && !v.stats.draining
                    && v.stats.queue_len + v.stats.swapped == 0
            })
            .filter(|(t, v)| {
                let free = (v.stats.free_blocks as u64).saturating_sub(incoming[*t]);
                free >= blocks + reserve(&v.stats, settings)
            })
            .map(|(t, v)| {
                let used = usage(v) - v.incoming_blocks + incoming[t] + blocks;
                (t, used, v.stats.total_blocks.max(1) as u128)
            })
            // A pressured source gives only to an instance that stays less
            // loaded than it is now: never a ping-pong.
            .filter(|(_, used, total)| {
                why == Why::Draining
                    || (*used as u128) * source_total < (source_usage as u128) * total
            })
            .min_by(|a, b| {
                ((a.1 as u128) * b.2)
                    .cmp(&((b.1 as u128) * a.2))
                    .then(a.0.cmp(&b.0))
            });
        if let Some((t, _, _)) = best {
            incoming[t] += blocks;
            moves.push(Move {
                source: s,
                request_id: request.id,
                target: t,
                blocks,
                why,
            });
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_api::proto::inference::RequestProgress;

    fn running(id: u64, generated: u32, max_tokens: u32, blocks: u32) -> RequestProgress {
        RequestProgress {
            id,
            priority: "normal".into(),
            phase: "running".into(),
            generated,
            max_tokens,
            blocks,
            prompt_tokens: 16 * blocks - generated,
            ..Default::default()
        }
    }

    /// A request queued for its prefill of `blocks` blocks.
    fn waiting(id: u64, blocks: u32) -> RequestProgress {
        RequestProgress {
            id,
            priority: "normal".into(),
            phase: "waiting".into(),
            max_tokens: 100,
            prompt_tokens: 16 * blocks,
            ..Default::default()
        }
    }

    fn view(alloc: &str, local: bool, total: u32, requests: Vec<RequestProgress>) -> InstanceView {
        let held: u32 = requests.iter().map(|r| r.blocks).sum();
        let queue = requests.iter().filter(|r| r.phase == "waiting").count() as u32;
        InstanceView {
            alloc_id: alloc.into(),
            job: "llm".into(),
            agent: format!("{alloc}:1"),
            local,
            stats: EngineStats {
                batch_size: requests.len() as u32 - queue,
                queue_len: queue,
                free_blocks: total - held,
                total_blocks: total,
                requests,
                ..Default::default()
            },
            incoming_blocks: 0,
        }
    }

    fn none() -> (BTreeSet<String>, BTreeSet<(String, u64)>) {
        (BTreeSet::new(), BTreeSet::new())
    }

    #[test]
    fn a_full_instance_gives_its_longest_request_to_the_least_loaded() {
        let settings = Settings::default();
        // 64 blocks: 62 held, a queue behind.
        let full = view(
            "a",
            true,
            64,
            vec![
                running(1, 10, 200, 20),
                running(2, 50, 400, 21),
                running(3, 190, 200, 21),
                waiting(4, 10),
                waiting(5, 10),
            ],
        );
        let busy = view("b", false, 64, vec![running(9, 1, 100, 30)]);
        let idle = view("c", false, 64, vec![running(8, 1, 100, 4)]);
        let (b, s) = none();
        let moves = plan(&[full, busy, idle], &b, &s, &settings);
        assert_eq!(
            moves,
            vec![Move {
                source: 0,
                request_id: 2,
                target: 2,
                blocks: 21,
                why: Why::LowOnBlocks
            }]
        );
    }

    #[test]
    fn nothing_moves_without_pressure_or_without_room() {
        let settings = Settings::default();
        let calm = view("a", true, 64, vec![running(1, 10, 200, 10)]);
        let idle = view("c", false, 64, vec![]);
        let (b, s) = none();
        assert!(plan(&[calm, idle.clone()], &b, &s, &settings).is_empty());
        // Pressured, but the only other instance is as full.
        let full = view("a", true, 64, vec![running(1, 10, 200, 60), waiting(4, 10)]);
        let other = view("b", false, 64, vec![running(2, 10, 200, 50)]);
        assert!(plan(&[full.clone(), other], &b, &s, &settings).is_empty());
        // A remote instance is never a source; another service never a target.
        let mut remote = full.clone();
        remote.local = false;
        assert!(plan(&[remote, idle.clone()], &b, &s, &settings).is_empty());
        let mut elsewhere = idle.clone();
        elsewhere.job = "other".into();
        assert!(plan(&[full.clone(), elsewhere], &b, &s, &settings).is_empty());
        // Busy sources and skipped requests are left alone.
        let busy: BTreeSet<String> = ["a".to_string()].into();
        assert!(plan(&[full.clone(), idle.clone()], &busy, &s, &settings).is_empty());
        let skip: BTreeSet<(String, u64)> = [("a".to_string(), 1)].into();
        assert!(plan(&[full, idle], &b, &skip, &settings).is_empty());
    }

    #[test]
    fn a_draining_instance_moves_even_when_calm_but_not_nearly_done_requests() {
        let settings = Settings::default();
        let mut stopping = view(
            "a",
            true,
            64,
            vec![running(1, 10, 20, 2), running(2, 10, 200, 3)],
        );
        stopping.stats.draining = true;
        let busy_target = view("b", false, 64, vec![running(5, 1, 100, 20)]);
        let (b, s) = none();
        let moves = plan(&[stopping.clone(), busy_target], &b, &s, &settings);
        assert_eq!(moves.len(), 1);
        assert_eq!((moves[0].request_id, moves[0].why), (2, Why::Draining));
        // A draining instance is no target.
        let mut other = view("b", true, 64, vec![]);
        other.stats.draining = true;
        let full = view("c", true, 64, vec![running(7, 10, 200, 60), waiting(8, 2)]);
        assert!(plan(&[full, other], &b, &s, &settings).is_empty());
    }

    #[test]
    fn moves_in_one_round_count_against_the_target_s_room() {
        let settings = Settings::default();
        let a = view("a", true, 64, vec![running(1, 10, 200, 30), waiting(4, 10)]);
        let b = view("b", true, 64, vec![running(2, 10, 200, 30), waiting(5, 10)]);
        // Room for one request of 30 blocks (plus its reserve of 7).
        let c = view("c", false, 64, vec![running(3, 1, 100, 4)]);
        let (busy, skip) = none();
        let moves = plan(&[a, b, c], &busy, &skip, &settings);
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert_eq!(moves[0].target, 2);
    }
}
