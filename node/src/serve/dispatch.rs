//! The dispatch policy, PURE: which instance of a service a new request
//! goes to, from the instances' loads as the fleet view last saw them.
//!
//! It is Llumnix's *virtual usage* (Sun et al., "Llumnix: Dynamic
//! Scheduling for Large Language Model Serving", OSDI 2024, §4.4): the KV
//! memory an instance's requests need, not only what they hold, so that an
//! instance with a long queue looks as full as it will be:
//!
//! ```text
//! V(instance) = Σ running   held blocks
//!             + Σ waiting   blocks_for(prompt + generated)   (what admission needs)
//!             + Σ swapped   blocks_for(prompt + generated)
//!             + Σ pending   blocks_for(prompt)   (sent here, not yet in its stats)
//!             + headroom    if any high-priority request is on it
//! ```
//!
//! A new request goes to the instance with the highest *freeness* among
//! those whose whole KV cache could hold it, Llumnix's dispatch metric:
//!
//! ```text
//! F(instance) = (total_blocks − V) / (requests + pending requests + 1)
//! ```
//!
//! (when `total_blocks − V` is negative, an overcommitted instance, it is
//! multiplied by that count instead, so that more requests still make it
//! worse). Dividing by the requests matters: balancing KV memory alone sends
//! a run of short requests to one instance, whose prefills then queue
//! behind each other; `herd bench serve` measured the plain `V /
//! total_blocks` rule at up to twice round-robin's mean time to first token
//! under bursty light load, and freeness never worse than round-robin
//! (docs/benchmarks.md). Ties are broken at random (seeded in tests). Kept
//! free of I/O so that it is unit-tested and simulated ([`super::sim`]) as
//! is.

use herd_actors::inference::blocks::{blocks_for, BLOCK_TOKENS};
use herd_api::proto::inference::EngineStats;

/// One request on an instance, as the dispatcher counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLoad {
    /// Whether it holds its blocks on the GPU now (running).
    pub running: bool,
    /// Blocks it holds (running) or needs to run again (waiting, swapped).
    pub blocks: u32,
    /// Whether it is a high-priority request.
    pub high: bool,
}

/// An instance's load as the dispatcher sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceLoad {
    /// All its KV blocks.
    pub total_blocks: u32,
    /// Its requests, from its latest stats.
    pub requests: Vec<RequestLoad>,
    /// Blocks of the requests sent to it since those stats were read.
    pub pending_blocks: u64,
    /// Requests known to be on their way in (a migration landing there),
    /// counted as requests too. The agents' own dispatch leaves it at 0:
    /// requests it sent since the last poll may already have finished.
    pub pending_requests: u32,
}

impl InstanceLoad {
    /// The load an engine's stats describe (`pending_blocks` left at 0).
    pub fn from_stats(stats: &EngineStats) -> Self {
        let requests = stats
            .requests
            .iter()
            .map(|r| {
                let running = r.phase == "running";
                let blocks = if running {
                    r.blocks
                } else {
                    let context = r.prompt_tokens as usize + r.generated as usize;
                    u32::try_from(blocks_for(context)).unwrap_or(u32::MAX)
                };
                RequestLoad {
                    running,
                    blocks,
                    high: r.priority == "high",
                }
            })
            .collect();
        Self {
            total_blocks: stats.total_blocks,
            requests,
            pending_blocks: 0,
            pending_requests: 0,
        }
    }
}

/// The policy's one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Blocks held back on an instance that serves a high-priority request,
    /// so that normal requests go elsewhere and it keeps room to grow
    /// (Llumnix's headroom for high-priority requests).
    pub high_headroom_blocks: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            high_headroom_blocks: 32,
        }
    }
}

/// Blocks a new request needs before its first token (its prompt).
pub fn prompt_blocks(prompt_tokens: u32) -> u64 {
    blocks_for(prompt_tokens as usize) as u64
}

/// Blocks a request needs at its longest: `prompt + max_tokens - 1` tokens
/// (the last token's KV entry is never written).
pub fn peak_blocks(prompt_tokens: u32, max_tokens: u32) -> u64 {
    (prompt_tokens as u64 + max_tokens as u64)
        .saturating_sub(1)
        .div_ceil(BLOCK_TOKENS as u64)
}

/// The instance's virtual usage, in blocks (see the module documentation).
pub fn virtual_usage(load: &InstanceLoad, policy: &Policy) -> u64 {
    let requests: u64 = load.requests.iter().map(|r| r.blocks as u64).sum();
    let headroom = if load.requests.iter().any(|r| r.high) {
        policy.high_headroom_blocks as u64
    } else {
        0
    };
    requests + load.pending_blocks + headroom
}

/// Why no instance was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    /// There is no instance to choose from.
    #[error("no instance")]
    NoInstance,
    /// The request is larger than every instance's whole KV cache.
    #[error(
        "request needs {needed_blocks} blocks of {BLOCK_TOKENS} tokens of KV cache but the largest instance holds {largest_blocks}"
    )]
    TooLarge {
        /// Blocks the request needs at its longest.
        needed_blocks: u64,
        /// The largest instance's blocks.
        largest_blocks: u32,
    },
}

/// An instance's freeness ([module documentation](self)) as an exact
/// fraction (numerator, positive denominator).
pub fn freeness(load: &InstanceLoad, policy: &Policy) -> (i128, i128) {
    let free = i128::from(load.total_blocks) - i128::from(virtual_usage(load, policy));
    let count = load.requests.len() as i128 + i128::from(load.pending_requests) + 1;
    if free >= 0 {
        (free, count)
    } else {
        (free * count, 1)
    }
}

/// The index of the instance a request needing `needed_blocks` at its
/// longest goes to: the highest freeness among those that can hold it,
/// ties broken by `rng`.
pub fn pick(
    loads: &[InstanceLoad],
    needed_blocks: u64,
    policy: &Policy,
    rng: &mut fastrand::Rng,
) -> Result<usize, DispatchError> {
    let largest_blocks = loads
        .iter()
        .map(|l| l.total_blocks)
        .max()
        .ok_or(DispatchError::NoInstance)?;
    // (index, freeness) of each instance that fits.
    let fitting: Vec<(usize, (i128, i128))> = loads
        .iter()
        .enumerate()
        .filter(|(_, l)| l.total_blocks as u64 >= needed_blocks && l.total_blocks > 0)
        .map(|(i, l)| (i, freeness(l, policy)))
        .collect();
    // a/b against c/d with b, d > 0: a·d against c·b, exact.
    let cmp = |(_, (a, b)): &(usize, (i128, i128)), (_, (c, d)): &(usize, (i128, i128))| {
        (a * d).cmp(&(c * b))
    };
    let best = fitting
        .iter()
        .max_by(|a, b| cmp(a, b))
        .ok_or(DispatchError::TooLarge {
            needed_blocks,
            largest_blocks,
        })?;
    let tied: Vec<usize> = fitting
        .iter()
        .filter(|c| cmp(c, best).is_eq())
        .map(|(i, _)| *i)
        .collect();
    Ok(tied[rng.usize(..tied.len())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_api::proto::inference::RequestProgress;

    fn running(blocks: u32) -> RequestLoad {
        RequestLoad {
            running: true,
            blocks,
            high: false,
        }
    }

    fn load(total: u32, requests: Vec<RequestLoad>) -> InstanceLoad {
        InstanceLoad {
            total_blocks: total,
            requests,
            pending_blocks: 0,
            pending_requests: 0,
        }
    }

    #[test]
    fn queued_requests_count_what_they_will_need_not_what_they_hold() {
        let stats = EngineStats {
            total_blocks: 64,
            requests: vec![
                RequestProgress {
                    phase: "running".into(),
                    blocks: 3,
                    prompt_tokens: 40,
                    generated: 5,
                    priority: "normal".into(),
                    ..Default::default()
                },
                // Waiting (recomputed after 17 tokens): 100 + 17 tokens = 8 blocks.
                RequestProgress {
                    phase: "waiting".into(),
                    blocks: 0,
                    prompt_tokens: 100,
                    generated: 17,
                    priority: "high".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let load = InstanceLoad::from_stats(&stats);
        assert_eq!(load.requests[0], running(3));
        assert_eq!(
            load.requests[1],
            RequestLoad {
                running: false,
                blocks: 8,
                high: true
            }
        );
        let policy = Policy {
            high_headroom_blocks: 10,
        };
        assert_eq!(virtual_usage(&load, &policy), 3 + 8 + 10);
        let mut pending = load.clone();
        pending.pending_blocks = 4;
        assert_eq!(virtual_usage(&pending, &policy), 25);
    }

    #[test]
    fn the_highest_freeness_wins_and_a_long_queue_counts() {
        let policy = Policy::default();
        let mut rng = fastrand::Rng::with_seed(7);
        // Few running requests but a long queue on 0: it is the fuller one
        // (28 free blocks over 3 against 50 over 4).
        let queued = load(
            100,
            vec![
                running(2),
                RequestLoad {
                    running: false,
                    blocks: 70,
                    high: false,
                },
            ],
        );
        let busy = load(100, vec![running(20), running(20), running(10)]);
        assert_eq!(pick(&[queued, busy], 1, &policy, &mut rng), Ok(1));
        // Free blocks count, not shares: 170 free on the big one beats 80.
        let big = load(200, vec![running(30)]);
        let small = load(100, vec![running(20)]);
        assert_eq!(pick(&[small, big], 1, &policy, &mut rng), Ok(1));
        // Per request: many short requests make an instance less free than
        // one long one holding more blocks (90/5 = 18 against 70/2 = 35).
        let many_short = load(100, vec![running(2); 4]);
        let one_long = load(100, vec![running(30)]);
        assert_eq!(pick(&[many_short, one_long], 1, &policy, &mut rng), Ok(1));
        // Overcommitted instances: the one with fewer requests is less bad.
        let over_many = load(10, vec![running(6), running(6), running(6)]);
        let over_few = load(10, vec![running(18)]);
        assert_eq!(pick(&[over_many, over_few], 1, &policy, &mut rng), Ok(1));
    }

    #[test]
    fn a_high_priority_request_keeps_headroom_so_normal_ones_go_elsewhere() {
        let policy = Policy {
            high_headroom_blocks: 16,
        };
        let with_high = load(
            100,
            vec![RequestLoad {
                running: true,
                blocks: 4,
                high: true,
            }],
        );
        let normal = load(100, vec![running(10)]);
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(pick(&[with_high, normal], 1, &policy, &mut rng), Ok(1));
    }

    #[test]
    fn pending_requests_spread_a_burst_between_polls() {
        let policy = Policy::default();
        let mut rng = fastrand::Rng::with_seed(3);
        let mut loads = vec![load(64, vec![]), load(64, vec![])];
        let mut counts = [0; 2];
        for _ in 0..10 {
            let i = pick(&loads, 4, &policy, &mut rng).expect("an instance");
            loads[i].pending_blocks += 4;
            loads[i].pending_requests += 1;
            counts[i] += 1;
        }
        assert_eq!(counts, [5, 5]);
    }

    #[test]
    fn ties_are_broken_at_random_by_the_seeded_rng() {
        let policy = Policy::default();
        let loads = vec![load(64, vec![]); 4];
        let picks = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..32)
                .map(|_| pick(&loads, 1, &policy, &mut rng).expect("an instance"))
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(11), picks(11), "the same seed picks the same");
        let seen: std::collections::BTreeSet<usize> = picks(11).into_iter().collect();
        assert_eq!(seen.len(), 4, "every tied instance is picked sometimes");
    }

    #[test]
    fn a_request_no_instance_can_hold_is_refused_naming_the_largest() {
        let policy = Policy::default();
        let mut rng = fastrand::Rng::with_seed(0);
        let loads = vec![load(32, vec![]), load(36, vec![running(30)])];
        assert_eq!(peak_blocks(500, 100), 38);
        assert_eq!(
            pick(&loads, peak_blocks(500, 100), &policy, &mut rng),
            Err(DispatchError::TooLarge {
                needed_blocks: 38,
                largest_blocks: 36
            })
        );
        // It fits the larger one only, however loaded.
        assert_eq!(pick(&loads, 34, &policy, &mut rng), Ok(1));
        assert_eq!(
            pick(&[], 1, &policy, &mut rng),
            Err(DispatchError::NoInstance)
        );
    }
}
