//! The rescheduling policy, PURE: which running requests of this node's
//! instances move, and where, from the loads the fleet view last saw.
//!
//! A request moves off an instance of this node when that instance is
//! - **draining** (its engine is stopping: node drained, service scaled
//!   in): every request goes, to let it end without losing any: each one
//!   still waiting for its prefill at once (it holds no KV, so its move
//!   copies nothing; it may join a queue elsewhere rather than be lost),
//!   and the running ones one after the other;
//! - **holding back a high-priority request**: one waits there, queued,
//!   for KV blocks (an engine run with `priority_preemption = false`, or
//!   one whose blocks other high-priority requests hold): the running
//!   normal-priority request whose move frees enough blocks, the cheapest
//!   (fewest blocks to copy) first, moves, instead of the high one waiting
//!   for requests to finish or the engine preempting one;
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

use herd_actors::inference::blocks::{blocks_for, BLOCK_TOKENS};
use herd_api::proto::inference::{EngineStats, RequestProgress};

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
    /// A high-priority request waits on its instance for KV blocks.
    HighPriorityRoom,
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

/// Blocks a high-priority request waiting on `stats`' instance lacks to be
/// admitted: its prefill's blocks plus one per running request (each of
/// which may take a block meanwhile), less the free ones; `None` when no
/// high-priority request waits or the first one fits already (it waits
/// for a step, or for a batch slot, which moving blocks does not give).
pub fn high_priority_deficit(stats: &EngineStats) -> Option<u64> {
    let waiting = stats
        .requests
        .iter()
        .filter(|r| r.priority == "high" && r.phase == "waiting")
        .min_by_key(|r| r.id)?;
    let need = blocks_for(waiting.prompt_tokens as usize + waiting.generated as usize) as u64
        + stats.batch_size as u64;
    let deficit = need.saturating_sub(stats.free_blocks as u64);
    (deficit > 0).then_some(deficit)
}

/// Virtual usage with what moves there, in blocks.
fn usage(view: &InstanceView) -> u64 {
    virtual_usage(&InstanceLoad::from_stats(&view.stats), &Policy::default()) + view.incoming_blocks
}

/// Blocks a request takes on its target: its context (the next token's
/// block is the target's own reserve).
fn blocks_on_target(request: &RequestProgress) -> u64 {
    blocks_for(request.prompt_tokens as usize + request.generated as usize) as u64
}

/// How the target of one move is chosen.
#[derive(Clone, Copy)]
struct Need {
    /// Blocks it takes there.
    blocks: u64,
    /// Whether the target must have room now (no queue, its reserve free
    /// after taking it); else it only needs a cache that can hold it
    /// whole (a waiting request off a draining instance queues there
    /// rather than being lost).
    room: bool,
    /// With `room`: the source's load per block it must stay under (a
    /// pressured source gives only to an instance less loaded than it is).
    under: Option<(u64, u128)>,
    /// Tokens its whole run needs (`prompt + max_tokens - 1`).
    whole_tokens: u64,
}

/// The target of a move off source `s`: the instance of the same service,
/// not draining, with the lowest virtual usage per block after the move.
fn target(
    views: &[InstanceView],
    s: usize,
    incoming: &[u64],
    need: Need,
    settings: &Settings,
) -> Option<usize> {
    let source = &views[s];
    views
        .iter()
        .enumerate()
        .filter(|(t, v)| *t != s && v.job == source.job && !v.agent.is_empty() && !v.stats.draining)
        .filter(|(t, v)| {
            if !need.room {
                let capacity = v.stats.total_blocks as u64 * BLOCK_TOKENS as u64;
                return capacity >= need.whole_tokens;
            }
            let free = (v.stats.free_blocks as u64).saturating_sub(incoming[*t]);
            v.stats.queue_len + v.stats.swapped == 0
                && free >= need.blocks + reserve(&v.stats, settings)
        })
        .map(|(t, v)| {
            let used = usage(v) - v.incoming_blocks + incoming[t] + need.blocks;
            (t, used, v.stats.total_blocks.max(1) as u128)
        })
        .filter(|(_, used, total)| match need.under {
            None => true,
            Some((source_usage, source_total)) => {
                (*used as u128) * source_total < (source_usage as u128) * total
            }
        })
        .min_by(|a, b| {
            ((a.1 as u128) * b.2)
                .cmp(&((b.1 as u128) * a.2))
                .then(a.0.cmp(&b.0))
        })
        .map(|(t, _, _)| t)
}

/// The moves to start now. `busy` are sources that take no new move this
/// round (one already running, or stats older than their last move);
/// `skip` are `(source alloc, request)` pairs not to try (moving or
/// recently failed). At most one move of a running request per source; a
/// draining source also gives every request still waiting for its
/// prefill (it holds no KV: its move copies nothing).
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
        let movable = |r: &&RequestProgress| !skip.contains(&(source.alloc_id.clone(), r.id));
        let running: Vec<&RequestProgress> = source
            .stats
            .requests
            .iter()
            .filter(|r| r.phase == "running" && r.generated > 0 && r.blocks > 0)
            .filter(|r| r.max_tokens.saturating_sub(r.generated) >= settings.min_remaining_tokens)
            .filter(movable)
            .collect();
        let whole = |r: &RequestProgress| r.prompt_tokens as u64 + r.max_tokens as u64 - 1;
        if source.stats.draining {
            // Waiting requests first (oldest first): nothing to copy.
            let mut waiting: Vec<&RequestProgress> = source
                .stats
                .requests
                .iter()
                .filter(|r| r.phase == "waiting")
                .filter(movable)
                .collect();
            waiting.sort_by_key(|r| (r.priority != "high", r.id));
            for r in waiting {
                let need = Need {
                    blocks: blocks_on_target(r),
                    room: false,
                    under: None,
                    whole_tokens: whole(r),
                };
                if let Some(t) = target(views, s, &incoming, need, settings) {
                    push(&mut moves, &mut incoming, s, r, t, Why::Draining);
                }
            }
        }
        let source_under = Some((usage(source), source.stats.total_blocks.max(1) as u128));
        // (the request, why, whether the target must be less loaded)
        let mut choices: Vec<(&RequestProgress, Why, bool)> = Vec::new();
        if source.stats.draining {
            choices.extend(
                longest_first(&running)
                    .first()
                    .map(|r| (*r, Why::Draining, false)),
            );
        } else {
            if let Some(deficit) = high_priority_deficit(&source.stats) {
                // Normal requests only; the cheapest that frees enough,
                // else the one that frees the most (the next round moves
                // another once the stats show this one gone).
                let mut normal: Vec<&RequestProgress> = running
                    .iter()
                    .copied()
                    .filter(|r| r.priority != "high")
                    .collect();
                normal.sort_by_key(|r| {
                    (
                        r.blocks,
                        std::cmp::Reverse(r.max_tokens - r.generated),
                        r.id,
                    )
                });
                let pick = normal
                    .iter()
                    .find(|r| r.blocks as u64 >= deficit)
                    .or_else(|| normal.last());
                choices.extend(pick.map(|r| (*r, Why::HighPriorityRoom, false)));
            }
            if pressured(&source.stats, settings) {
                choices.extend(
                    longest_first(&running)
                        .first()
                        .map(|r| (*r, Why::LowOnBlocks, true)),
                );
            }
        }
        // The first choice with a target.
        for (request, why, less_loaded) in choices {
            let need = Need {
                blocks: blocks_on_target(request),
                room: true,
                under: if less_loaded { source_under } else { None },
                whole_tokens: whole(request),
            };
            if let Some(t) = target(views, s, &incoming, need, settings) {
                push(&mut moves, &mut incoming, s, request, t, why);
                break;
            }
        }
    }
    moves
}

/// Records the move of `r` from `source` to `target`.
fn push(
    moves: &mut Vec<Move>,
    incoming: &mut [u64],
    source: usize,
    r: &RequestProgress,
    target: usize,
    why: Why,
) {
    let blocks = blocks_on_target(r);
    incoming[target] += blocks;
    moves.push(Move {
        source,
        request_id: r.id,
        target,
        blocks,
        why,
    });
}

/// `running` with the most tokens left first (it would hold and grow its
/// blocks longest); then the smaller (cheaper to copy); then by id.
fn longest_first<'a>(running: &[&'a RequestProgress]) -> Vec<&'a RequestProgress> {
    let mut sorted = running.to_vec();
    sorted.sort_by_key(|r| {
        (
            std::cmp::Reverse(r.max_tokens.saturating_sub(r.generated)),
            r.blocks,
            r.id,
        )
    });
    sorted
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

    /// [`plan`] with default settings, no busy source and no skipped
    /// request: what most cases ask.
    fn plan_free(views: &[InstanceView]) -> Vec<Move> {
        let (busy, skip) = none();
        plan(views, &busy, &skip, &Settings::default())
    }

    fn none() -> (BTreeSet<String>, BTreeSet<(String, u64)>) {
        (BTreeSet::new(), BTreeSet::new())
    }

    #[test]
    fn a_full_instance_gives_its_longest_request_to_the_least_loaded() {
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
        let moves = plan_free(&[full, busy, idle]);
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
        assert!(plan_free(&[calm, idle.clone()]).is_empty());
        // Pressured, but the only other instance is as full.
        let full = view("a", true, 64, vec![running(1, 10, 200, 60), waiting(4, 10)]);
        let other = view("b", false, 64, vec![running(2, 10, 200, 50)]);
        assert!(plan_free(&[full.clone(), other]).is_empty());
        // A remote instance is never a source; another service never a target.
        let mut remote = full.clone();
        remote.local = false;
        assert!(plan_free(&[remote, idle.clone()]).is_empty());
        let mut elsewhere = idle.clone();
        elsewhere.job = "other".into();
        assert!(plan_free(&[full.clone(), elsewhere]).is_empty());
        // Busy sources and skipped requests are left alone.
        let busy: BTreeSet<String> = ["a".to_string()].into();
        assert!(plan(&[full.clone(), idle.clone()], &busy, &s, &settings).is_empty());
        let skip: BTreeSet<(String, u64)> = [("a".to_string(), 1)].into();
        assert!(plan(&[full, idle], &b, &skip, &settings).is_empty());
    }

    #[test]
    fn a_draining_instance_moves_even_when_calm_but_not_nearly_done_requests() {
        let mut stopping = view(
            "a",
            true,
            64,
            vec![running(1, 10, 20, 2), running(2, 10, 200, 3)],
        );
        stopping.stats.draining = true;
        let busy_target = view("b", false, 64, vec![running(5, 1, 100, 20)]);
        let moves = plan_free(&[stopping.clone(), busy_target]);
        assert_eq!(moves.len(), 1);
        assert_eq!((moves[0].request_id, moves[0].why), (2, Why::Draining));
        // A draining instance is no target.
        let mut other = view("b", true, 64, vec![]);
        other.stats.draining = true;
        let full = view("c", true, 64, vec![running(7, 10, 200, 60), waiting(8, 2)]);
        assert!(plan_free(&[full, other]).is_empty());
    }

    #[test]
    fn moves_in_one_round_count_against_the_target_s_room() {
        let a = view("a", true, 64, vec![running(1, 10, 200, 30), waiting(4, 10)]);
        let b = view("b", true, 64, vec![running(2, 10, 200, 30), waiting(5, 10)]);
        // Room for one request of 30 blocks (plus its reserve of 7).
        let c = view("c", false, 64, vec![running(3, 1, 100, 4)]);
        let moves = plan_free(&[a, b, c]);
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert_eq!(moves[0].target, 2);
    }

    /// A high-priority request queued for its prefill of `blocks` blocks.
    fn high_waiting(id: u64, blocks: u32) -> RequestProgress {
        RequestProgress {
            priority: "high".into(),
            ..waiting(id, blocks)
        }
    }

    fn high_running(id: u64, generated: u32, max_tokens: u32, blocks: u32) -> RequestProgress {
        RequestProgress {
            priority: "high".into(),
            ..running(id, generated, max_tokens, blocks)
        }
    }

    #[test]
    fn a_waiting_high_request_gets_room_from_the_cheapest_normal_request_that_frees_enough() {
        let settings = Settings::default();
        // 64 blocks, 59 held: the high request needs 8 + 4 (one per
        // running request) and 5 are free: 7 short.
        let full = view(
            "a",
            true,
            64,
            vec![
                running(1, 10, 400, 25),
                running(2, 10, 200, 20),
                running(3, 10, 300, 12),
                high_running(4, 10, 300, 2),
                high_waiting(5, 8),
            ],
        );
        assert_eq!(high_priority_deficit(&full.stats), Some(7));
        let idle = view("b", false, 64, vec![]);
        let moves = plan_free(&[full.clone(), idle.clone()]);
        // Not the longest (1, what low-on-blocks moves), not the high one:
        // the smallest normal one that frees 7.
        assert_eq!(
            moves,
            vec![Move {
                source: 0,
                request_id: 3,
                target: 1,
                blocks: 12,
                why: Why::HighPriorityRoom
            }]
        );
        // Already trying that one: the next cheapest.
        let (busy, _) = none();
        let skip: BTreeSet<(String, u64)> = [("a".to_string(), 3)].into();
        let moves = plan(&[full.clone(), idle.clone()], &busy, &skip, &settings);
        assert_eq!(moves[0].request_id, 2, "{moves:?}");
        // No single request frees enough: the one that frees the most.
        let mut short = full.clone();
        short.stats.requests[4] = high_waiting(5, 40);
        let moves = plan_free(&[short, idle.clone()]);
        assert_eq!(
            (moves[0].request_id, moves[0].why),
            (1, Why::HighPriorityRoom)
        );
        // A target without room for it: none, and nothing else moves there.
        let busy_target = view("b", false, 64, vec![running(9, 10, 200, 50)]);
        assert!(plan_free(&[full, busy_target]).is_empty());
    }

    #[test]
    fn a_high_request_that_fits_or_only_normal_ones_waiting_move_as_low_on_blocks() {
        // The high request fits (it waits for the next step): no deficit.
        let fits = view(
            "a",
            true,
            64,
            vec![
                running(1, 10, 400, 20),
                running(2, 10, 200, 10),
                high_waiting(5, 4),
            ],
        );
        assert_eq!(high_priority_deficit(&fits.stats), None);
        let idle = view("b", false, 64, vec![]);
        // The queue still makes it pressured: the longest moves.
        let moves = plan_free(&[fits, idle.clone()]);
        assert_eq!((moves[0].request_id, moves[0].why), (1, Why::LowOnBlocks));
        // Normal requests waiting: no high-priority room taken.
        let normal = view(
            "a",
            true,
            64,
            vec![
                running(1, 10, 400, 30),
                running(2, 10, 200, 28),
                waiting(5, 10),
            ],
        );
        assert_eq!(high_priority_deficit(&normal.stats), None);
        let moves = plan_free(&[normal, idle]);
        assert_eq!((moves[0].request_id, moves[0].why), (1, Why::LowOnBlocks));
    }

    #[test]
    fn a_draining_instance_gives_its_waiting_requests_too_even_to_a_queue() {
        let mut stopping = view(
            "a",
            true,
            64,
            vec![
                running(1, 10, 200, 20),
                waiting(2, 10),
                high_waiting(3, 12),
                waiting(4, 3),
            ],
        );
        stopping.stats.draining = true;
        // Busy, with a queue: no room for a running request, but a waiting
        // one queues there rather than being lost.
        let queued = view("b", false, 64, vec![running(7, 10, 200, 60), waiting(8, 2)]);
        let moves = plan_free(&[stopping.clone(), queued.clone()]);
        let ids: Vec<(u64, u64)> = moves.iter().map(|m| (m.request_id, m.blocks)).collect();
        // The high-priority one first, then by age.
        assert_eq!(ids, vec![(3, 12), (2, 10), (4, 3)]);
        assert!(moves
            .iter()
            .all(|m| m.why == Why::Draining && m.target == 1));
        // With room somewhere, the running request goes as well.
        let idle = view("c", false, 64, vec![]);
        let moves = plan_free(&[stopping.clone(), queued, idle]);
        assert_eq!(moves.len(), 4, "{moves:?}");
        assert_eq!(moves[3].request_id, 1);
        // A cache too small for the whole request is no target.
        let tiny = view("d", false, 10, vec![]);
        let moves = plan_free(&[stopping, tiny]);
        assert_eq!(
            moves.iter().map(|m| m.request_id).collect::<Vec<_>>(),
            vec![4],
            "only the 3-block prompt (plus 99 tokens) fits in 10 blocks"
        );
    }
}
