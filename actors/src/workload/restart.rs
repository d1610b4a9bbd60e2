//! The local restart policy: how often a failing workload is started again on
//! this node before it is reported failed (and left to the coordinators to
//! place elsewhere).

use std::collections::VecDeque;
use std::time::Duration;
// The runtime's clock: the deterministic simulation drives it.
use tokio::time::Instant;

/// How a workload that exited (a service, or batch work that failed) is
/// restarted in place. Restarts older than `interval` are forgotten, so a
/// service that fails rarely is restarted forever while one that crash-loops
/// is given up on quickly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed within `interval`; 0 never restarts.
    pub attempts: u32,
    /// The window in which restarts are counted.
    pub interval: Duration,
    /// Delay before the first restart; doubled for each later one in the window.
    pub delay: Duration,
    /// The longest delay, however many restarts preceded it.
    pub max_delay: Duration,
}

impl Default for RestartPolicy {
    /// Two restarts within five minutes, after 1 s then 2 s.
    fn default() -> Self {
        Self {
            attempts: 2,
            interval: Duration::from_secs(300),
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }
}

/// The restarts of one workload, to decide on the next one.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
}

impl RestartTracker {
    /// A tracker with no restarts yet.
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            recent: VecDeque::new(),
        }
    }

    /// Decides on a restart after an exit at `now`: `Some(delay)` (and the
    /// restart is counted) or `None` when the attempts are exhausted.
    pub fn next(&mut self, now: Instant) -> Option<Duration> {
        while let Some(first) = self.recent.front() {
            if now.saturating_duration_since(*first) >= self.policy.interval {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        let done = u32::try_from(self.recent.len()).unwrap_or(u32::MAX);
        if done >= self.policy.attempts {
            return None;
        }
        let factor = 1u32.checked_shl(done).unwrap_or(u32::MAX);
        let delay = self
            .policy
            .delay
            .checked_mul(factor)
            .unwrap_or(self.policy.max_delay)
            .min(self.policy.max_delay);
        self.recent.push_back(now);
        Some(delay)
    }

    /// Restarts counted in the current window (for report details).
    pub fn count(&self) -> usize {
        self.recent.len()
    }

    /// The policy's limit, for report details.
    pub fn attempts(&self) -> u32 {
        self.policy.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts: u32) -> RestartPolicy {
        RestartPolicy {
            attempts,
            interval: Duration::from_secs(300),
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(3),
        }
    }

    #[test]
    fn delays_double_up_to_the_cap_and_attempts_run_out() {
        let mut tracker = RestartTracker::new(policy(4));
        let now = Instant::now();
        let delays: Vec<_> = (0..5).map(|_| tracker.next(now)).collect();
        let s = Duration::from_secs;
        assert_eq!(
            delays,
            vec![Some(s(1)), Some(s(2)), Some(s(3)), Some(s(3)), None]
        );
        assert_eq!(tracker.count(), 4);
    }

    #[test]
    fn restarts_older_than_the_interval_are_forgotten() {
        let mut tracker = RestartTracker::new(policy(1));
        let start = Instant::now();
        assert_eq!(tracker.next(start), Some(Duration::from_secs(1)));
        assert_eq!(tracker.next(start + Duration::from_secs(10)), None);
        let later = start + Duration::from_secs(301);
        assert_eq!(tracker.next(later), Some(Duration::from_secs(1)));
    }

    #[test]
    fn zero_attempts_never_restart() {
        assert_eq!(RestartTracker::new(policy(0)).next(Instant::now()), None);
    }
}
