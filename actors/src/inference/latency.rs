//! An engine's recent latencies: time to first token (TTFT) of each
//! request and time between tokens (TBT) of each token after the first,
//! on the engine's modelled clock, kept for a window of wall time.
//!
//! The engine process serves them in its stats (`recent_ttft_ms`,
//! `recent_tbt_ms`) as a uniform sample of at most [`MAX_REPORTED`] values
//! each, so that a service's percentiles can be computed over all its
//! instances together (`herd service status`, the coordinators'
//! autoscaler). A window of wall time, not a count of requests, so that an
//! idle engine's figures empty out instead of keeping the last busy
//! period's forever.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::engine::{RequestId, TokenEvent};

/// How long a sample is kept.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Most samples of each kind kept (the oldest go first).
pub const MAX_KEPT: usize = 16_384;
/// Most samples of each kind reported.
pub const MAX_REPORTED: usize = 512;

#[derive(Debug, Default)]
struct Inner {
    ttft: VecDeque<(Instant, u32)>,
    tbt: VecDeque<(Instant, u32)>,
    /// When each request's last token was produced (modelled µs).
    last_token_us: HashMap<RequestId, u64>,
}

/// The samples, shared between the engine task and the stats handler.
#[derive(Debug, Default)]
pub struct LatencyLog {
    inner: Mutex<Inner>,
}

fn to_ms(us: u64) -> u32 {
    u32::try_from(us.div_ceil(1000)).unwrap_or(u32::MAX)
}

fn push(queue: &mut VecDeque<(Instant, u32)>, at: Instant, value: u32) {
    queue.push_back((at, value));
    while queue.len() > MAX_KEPT {
        queue.pop_front();
    }
}

/// At most `max` of `values`, evenly spread over them.
fn thin(values: &VecDeque<(Instant, u32)>, since: Instant, max: usize) -> Vec<u32> {
    let recent: Vec<u32> = values
        .iter()
        .filter(|(at, _)| *at >= since)
        .map(|(_, v)| *v)
        .collect();
    if recent.len() <= max {
        return recent;
    }
    (0..max)
        .filter_map(|i| recent.get(i * recent.len() / max).copied())
        .collect()
}

impl LatencyLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the latencies `tokens` show, produced at `now` (wall clock).
    pub fn record(&self, tokens: &[TokenEvent], now: Instant) {
        let mut inner = self.lock();
        for token in tokens {
            if let Some(ttft) = token.ttft_us {
                push(&mut inner.ttft, now, to_ms(ttft));
            } else if let Some(previous) = inner.last_token_us.get(&token.request).copied() {
                let gap = token.at_us.saturating_sub(previous);
                push(&mut inner.tbt, now, to_ms(gap));
            }
            if token.last {
                inner.last_token_us.remove(&token.request);
            } else {
                inner.last_token_us.insert(token.request, token.at_us);
            }
        }
        // Requests that left without a last token here (migrated away)
        // are not told apart: bound what they leave behind.
        if inner.last_token_us.len() > MAX_KEPT {
            inner.last_token_us.clear();
        }
    }

    /// Forgets a request that left the engine without its last token
    /// (cancelled, or migrated away).
    pub fn forget(&self, request: RequestId) {
        self.lock().last_token_us.remove(&request);
    }

    /// The TTFT and TBT samples (ms) of the last [`WINDOW`] before `now`,
    /// at most [`MAX_REPORTED`] of each.
    pub fn recent(&self, now: Instant) -> (Vec<u32>, Vec<u32>) {
        let since = now.checked_sub(WINDOW).unwrap_or(now);
        let mut inner = self.lock();
        while inner.ttft.front().is_some_and(|(at, _)| *at < since) {
            inner.ttft.pop_front();
        }
        while inner.tbt.front().is_some_and(|(at, _)| *at < since) {
            inner.tbt.pop_front();
        }
        (
            thin(&inner.ttft, since, MAX_REPORTED),
            thin(&inner.tbt, since, MAX_REPORTED),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(
        request: RequestId,
        index: u32,
        at_us: u64,
        ttft_us: Option<u64>,
        last: bool,
    ) -> TokenEvent {
        TokenEvent {
            request,
            index,
            at_us,
            ttft_us,
            last,
        }
    }

    #[test]
    fn ttft_and_gaps_between_tokens_are_recorded_per_request() {
        let log = LatencyLog::default();
        let now = Instant::now();
        log.record(
            &[
                token(1, 0, 100_000, Some(100_000), false),
                token(2, 0, 120_000, Some(50_000), false),
            ],
            now,
        );
        log.record(
            &[
                token(1, 1, 125_000, None, false),
                token(2, 1, 150_500, None, true),
            ],
            now,
        );
        log.record(&[token(1, 2, 150_000, None, true)], now);
        let (ttft, tbt) = log.recent(now);
        assert_eq!(ttft, vec![100, 50]);
        assert_eq!(tbt, vec![25, 31, 25]);
        // A token of a request whose earlier tokens ran elsewhere (imported)
        // gives no gap.
        log.record(&[token(9, 40, 1_000_000, None, false)], now);
        assert_eq!(log.recent(now).1.len(), 3);
    }

    #[test]
    fn old_samples_leave_the_window_and_many_are_thinned() {
        let log = LatencyLog::default();
        let start = Instant::now();
        log.record(&[token(1, 0, 5_000, Some(5_000), true)], start);
        let later = start + WINDOW + Duration::from_millis(1);
        assert_eq!(log.recent(later).0, Vec::<u32>::new());
        let many: Vec<TokenEvent> = (0..2000u64)
            .map(|i| token(i + 10, 0, i * 1000, Some(i * 1000), true))
            .collect();
        log.record(&many, later);
        let (ttft, _) = log.recent(later);
        assert_eq!(ttft.len(), MAX_REPORTED);
        // Evenly spread: the first and a late sample are there.
        assert_eq!(ttft[0], 0);
        assert!(ttft[MAX_REPORTED - 1] >= 1990);
    }
}
