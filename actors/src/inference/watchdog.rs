//! Bounds on the two migration states an engine holds for another party:
//! a request frozen for the last stage of a migration (the source side) and
//! KV blocks staged for an incoming one (the target side). Both wait for an
//! agent's next call (`Release`/`Thaw`, `ResumeImported`/`AbortImport`); an
//! agent or engine that dies meanwhile would leave the request stopped, or
//! the blocks held, forever. The watchdog gives each a deadline: a request
//! frozen longer than [`Bounds::frozen`] is thawed (it decodes again on the
//! source; a later `Release` is refused, so the migration aborts and the
//! target drops its copy: the client reads one of the two, never both), and
//! a staged migration with no new block for [`Bounds::staged_idle`] is
//! aborted (its blocks freed).
//!
//! Pure: the caller passes the time; [`super::runtime`] drives it on the
//! real clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::engine::RequestId;

/// How long each migration state may wait for the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// A frozen request not released or thawed by then thaws.
    pub frozen: Duration,
    /// A staged migration with no new block (nor resume) by then is aborted.
    pub staged_idle: Duration,
}

impl Default for Bounds {
    /// 10 s each: a healthy migration's freeze lasts tens to hundreds of
    /// milliseconds and its copy stages follow each other at once, so only
    /// a dead or stuck party reaches these; they stay below the target
    /// agent's 30 s handoff so the source is free again first.
    fn default() -> Self {
        Self {
            frozen: Duration::from_secs(10),
            staged_idle: Duration::from_secs(10),
        }
    }
}

/// What expired at a given time, taken from the watchdog.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Frozen requests to thaw.
    pub thaw: Vec<RequestId>,
    /// Staged migrations to abort.
    pub abort: Vec<String>,
}

/// The deadlines of frozen requests and staged migrations.
#[derive(Debug, Default)]
pub struct Watchdog {
    bounds: Bounds,
    frozen: HashMap<RequestId, Instant>,
    staged: HashMap<String, Instant>,
}

impl Watchdog {
    /// A watchdog with `bounds`.
    pub fn new(bounds: Bounds) -> Self {
        Self {
            bounds,
            ..Self::default()
        }
    }

    /// Request `id` was frozen at `now`.
    pub fn froze(&mut self, id: RequestId, now: Instant) {
        self.frozen.insert(id, now);
    }

    /// Request `id` is no longer frozen (released, thawed or gone).
    pub fn unfroze(&mut self, id: RequestId) {
        self.frozen.remove(&id);
    }

    /// Migration `migration` staged blocks at `now` (progress).
    pub fn staged(&mut self, migration: &str, now: Instant) {
        self.staged.insert(migration.to_string(), now);
    }

    /// Migration `migration` holds nothing staged any more (resumed or
    /// aborted).
    pub fn unstaged(&mut self, migration: &str) {
        self.staged.remove(migration);
    }

    /// The earliest deadline, if anything is watched.
    pub fn next_deadline(&self) -> Option<Instant> {
        let frozen = self.frozen.values().map(|at| *at + self.bounds.frozen);
        let staged = self.staged.values().map(|at| *at + self.bounds.staged_idle);
        frozen.chain(staged).min()
    }

    /// Takes what is past its deadline at `now`.
    pub fn expired(&mut self, now: Instant) -> Expired {
        let mut expired = Expired::default();
        let bounds = self.bounds;
        self.frozen.retain(|id, at| {
            let keep = now < *at + bounds.frozen;
            if !keep {
                expired.thaw.push(*id);
            }
            keep
        });
        self.staged.retain(|m, at| {
            let keep = now < *at + bounds.staged_idle;
            if !keep {
                expired.abort.push(m.clone());
            }
            keep
        });
        expired.thaw.sort_unstable();
        expired.abort.sort_unstable();
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_freeze_expires_after_its_bound_unless_released() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(Bounds {
            frozen: 2 * S,
            staged_idle: 5 * S,
        });
        w.froze(1, t0);
        w.froze(2, t0 + S);
        w.froze(3, t0);
        w.unfroze(3);
        assert_eq!(w.next_deadline(), Some(t0 + 2 * S));
        assert_eq!(w.expired(t0 + S), Expired::default());
        assert_eq!(w.expired(t0 + 2 * S).thaw, vec![1]);
        assert_eq!(w.expired(t0 + 3 * S).thaw, vec![2]);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn staged_blocks_expire_only_without_progress() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(Bounds {
            frozen: S,
            staged_idle: 3 * S,
        });
        w.staged("m", t0);
        w.staged("m", t0 + 2 * S);
        assert_eq!(w.expired(t0 + 4 * S), Expired::default());
        w.staged("done", t0);
        w.unstaged("done");
        let expired = w.expired(t0 + 5 * S);
        assert_eq!(expired.abort, vec!["m".to_string()]);
        assert!(expired.thaw.is_empty());
        assert_eq!(w.next_deadline(), None);
    }
}
