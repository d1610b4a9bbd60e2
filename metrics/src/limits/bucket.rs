//! Token buckets, one per client: the arithmetic of the per-client request
//! rate limit, kept apart from the tower plumbing so that it is tested with
//! a clock the test moves.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How fast a client may send requests: `per_second` on average, up to
/// `burst` at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second (> 0).
    pub per_second: f64,
    /// The bucket's size, the most requests served back to back (>= 1).
    pub burst: f64,
}

/// One client's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            last: now,
        }
    }

    /// Adds what accrued since the last look (never past `burst`; a clock
    /// that went back adds nothing).
    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.last = now.max(self.last);
    }

    /// Takes one token, or says how long until one is there.
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / rate.per_second;
            Err(Duration::from_secs_f64(wait.clamp(0.0, 3600.0)))
        }
    }
}

/// The buckets of every client seen, keyed by `K`, at most `max_clients`
/// of them: when full, the buckets that refilled completely (clients idle
/// long enough to be forgotten without changing any answer) are dropped;
/// if none did, new clients share one overflow bucket, so that a client
/// inventing keys (IPv6 addresses) cannot grow the map or escape the limit.
#[derive(Debug)]
pub struct Buckets<K> {
    rate: Rate,
    max_clients: usize,
    inner: Mutex<Inner<K>>,
}

#[derive(Debug)]
struct Inner<K> {
    buckets: HashMap<K, Bucket>,
    overflow: Option<Bucket>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// Buckets of `rate`, for at most `max_clients` clients at once.
    pub fn new(rate: Rate, max_clients: usize) -> Self {
        Self {
            rate,
            max_clients: max_clients.max(1),
            inner: Mutex::new(Inner {
                buckets: HashMap::new(),
                overflow: None,
            }),
        }
    }

    /// The rate each client gets.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes a token from `key`'s bucket at `now`: Ok to serve the request,
    /// or how long until the client may send again.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let rate = self.rate;
        // A poisoned lock only means another request panicked mid-update of
        // plain numbers: the map is still usable.
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(bucket) = inner.buckets.get_mut(key) {
            return bucket.take(rate, now);
        }
        if inner.buckets.len() >= self.max_clients {
            inner.buckets.retain(|_, bucket| {
                bucket.refill(rate, now);
                bucket.tokens < rate.burst
            });
        }
        if inner.buckets.len() >= self.max_clients {
            return inner
                .overflow
                .get_or_insert_with(|| Bucket::full(rate, now))
                .take(rate, now);
        }
        let mut bucket = Bucket::full(rate, now);
        let taken = bucket.take(rate, now);
        inner.buckets.insert(key.clone(), bucket);
        taken
    }

    /// How many clients have a bucket now.
    pub fn clients(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .buckets
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        per_second: 10.0,
        burst: 5.0,
    };

    #[test]
    fn a_burst_is_served_then_the_rate_holds() {
        let buckets = Buckets::new(RATE, 100);
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(buckets.take(&"a", t0).is_ok(), "request {i} of the burst");
        }
        let wait = buckets.take(&"a", t0).expect_err("the burst is spent");
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // 100 ms later one token has accrued, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(buckets.take(&"a", t1).is_ok());
        assert!(buckets.take(&"a", t1).is_err());
        // Over one second at most 10 more are served.
        let mut served = 0;
        for ms in 1..=1000 {
            if buckets.take(&"a", t1 + Duration::from_millis(ms)).is_ok() {
                served += 1;
            }
        }
        assert_eq!(served, 10);
    }

    #[test]
    fn clients_do_not_share_buckets_and_a_quiet_client_refills_to_the_burst_only() {
        let buckets = Buckets::new(RATE, 100);
        let t0 = Instant::now();
        for _ in 0..5 {
            buckets.take(&"a", t0).expect("burst");
        }
        assert!(buckets.take(&"a", t0).is_err());
        assert!(buckets.take(&"b", t0).is_ok(), "b has its own bucket");
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..5 {
            buckets.take(&"a", later).expect("refilled");
        }
        assert!(buckets.take(&"a", later).is_err(), "never past the burst");
        // A clock that goes back adds nothing and breaks nothing.
        assert!(buckets.take(&"a", t0).is_err());
    }

    #[test]
    fn the_map_is_bounded_and_new_clients_share_the_overflow_bucket() {
        let buckets = Buckets::new(RATE, 3);
        let t0 = Instant::now();
        for key in 0..3 {
            for _ in 0..5 {
                buckets.take(&key, t0).expect("burst");
            }
        }
        assert_eq!(buckets.clients(), 3);
        // None refilled: keys 3.. share one bucket of 5.
        let served = (3..100).filter(|key| buckets.take(key, t0).is_ok()).count();
        assert_eq!(served, 5);
        assert_eq!(buckets.clients(), 3);
        // Once the first three refilled completely they are forgotten.
        let later = t0 + Duration::from_secs(10);
        assert!(buckets.take(&1000, later).is_ok());
        assert_eq!(buckets.clients(), 1);
    }
}
