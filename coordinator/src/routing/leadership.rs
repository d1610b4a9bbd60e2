//! Whether a request started under a leader can still expect an answer
//! from it.
//!
//! openraft 0.9 has no check-quorum: a leader cut off from the others keeps
//! believing it leads, and a write proposed to it, or forwarded to it by a
//! follower, waits until the client gives up. Instead a member watches its
//! own Raft metrics: a leader that has heard from no quorum for longer than
//! an election timeout refuses new work at once (`Unavailable`, so clients
//! try another member), and a request in flight when the leader changes or
//! goes quiet is abandoned with an honest "outcome unknown" (writes) or
//! retried under the new leader (reads), rather than hanging. A member with
//! no leader at all, in touch with no majority of the voters, is likewise
//! taken for cut off ([`LeadershipWatch::cut_off`]): its requests are
//! refused at once instead of waiting for an election it cannot win.
//!
//! One task per member watches openraft's metrics and republishes only the
//! verdict (who leads, in which term, whether it has gone quiet). openraft
//! publishes metrics on every turn of its loop, thousands of times a second
//! under load, and waking every in-flight request on each turn was a
//! measurable share of a loaded leader's CPU (docs/benchmarks.md).

use std::collections::BTreeSet;
use std::time::Duration;

use herd_consensus::health::PeerHealth;
use openraft::{BasicNode, RaftMetrics};
use tokio::sync::watch;
// The runtime's clock: the deterministic simulation drives it.
use tokio::time::Instant;

use herd_consensus::Raft;

/// Watches leadership for one member.
#[derive(Clone)]
pub struct LeadershipWatch {
    raft: Raft,
    me: u64,
    quorum_timeout_ms: u64,
    verdicts: watch::Receiver<LeaderView>,
}

/// The part of the metrics that decides whether a leader is relied on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LeaderView {
    /// Whom this member takes for the leader.
    leader: Option<u64>,
    /// The term it is in.
    term: u64,
    /// How long this member, if it leads, has heard from no quorum; kept
    /// only once that is longer than the quorum timeout, so the view
    /// changes when the silence starts to matter, not on every tick.
    quiet_ms: Option<u64>,
    /// Since when this member has known no leader; None while it has one.
    /// Carried across the terms of one leaderless stretch.
    leaderless_since: Option<Instant>,
}

impl LeaderView {
    /// The view of `metrics` under `quorum_timeout_ms`.
    fn of(metrics: &RaftMetrics<u64, BasicNode>, quorum_timeout_ms: u64) -> Self {
        Self {
            leader: metrics.current_leader,
            term: metrics.current_term,
            quiet_ms: metrics
                .millis_since_quorum_ack
                .filter(|silent| *silent > quorum_timeout_ms),
            leaderless_since: None,
        }
    }

    /// This view, with the leaderless stretch it continues from `before`.
    fn after(mut self, before: Option<&LeaderView>) -> Self {
        self.leaderless_since = match self.leader {
            Some(_) => None,
            None => before
                .and_then(|b| b.leaderless_since)
                .or_else(|| Some(Instant::now())),
        };
        self
    }

    /// Whether `other` would lead to the same decisions (the length of a
    /// silence past the timeout does not matter, only that it is past).
    fn same_verdict(&self, other: &Self) -> bool {
        self.leader == other.leader
            && self.term == other.term
            && self.quiet_ms.is_some() == other.quiet_ms.is_some()
    }
}

impl LeadershipWatch {
    /// A watch for member `me`; a leader is doubted once it has heard from
    /// no quorum for as long as a follower waits before calling an
    /// election (openraft's leader lease, the maximal election timeout,
    /// plus the minimal one): by then another leader may be elected.
    ///
    /// Spawns the task that publishes verdicts; it ends with Raft.
    pub fn new(raft: Raft, me: u64) -> Self {
        let config = raft.config();
        let quorum_timeout_ms = config.election_timeout_max + config.election_timeout_min;
        let verdicts = spawn_verdicts(raft.metrics(), quorum_timeout_ms);
        Self {
            raft,
            me,
            quorum_timeout_ms,
            verdicts,
        }
    }

    /// Why `leader` should not be relied on now, if it should not.
    pub fn doubt(&self, leader: u64) -> Option<String> {
        doubt(
            &self.raft.metrics().borrow(),
            self.me,
            leader,
            self.quorum_timeout_ms,
        )
    }

    /// Resolves, with the reason, once `leader` should no longer be relied on.
    pub async fn lost(&self, leader: u64) -> String {
        lost(self.verdicts.clone(), self.me, leader).await
    }

    /// Why this member should stop waiting for a leader, if it should: it
    /// has had none for longer than a quorum timeout, and within the last
    /// one it was in touch (per `health`) with no majority of the voters.
    /// A member in a majority exchanges votes with the others while it
    /// elects and waits; one cut off from a majority would wait in vain, so
    /// its callers are told at once (`Unavailable`) and try another member.
    pub fn cut_off(&self, health: &PeerHealth) -> Option<String> {
        let since = self.verdicts.borrow().leaderless_since?;
        let voters: BTreeSet<u64> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        let window = Duration::from_millis(self.quorum_timeout_ms);
        cut_off_reason(self.me, since.elapsed(), &voters, window, |peer| {
            health.in_touch_within(peer, window)
        })
    }
}

/// Why member `me`, without a leader for `leaderless_for`, should stop
/// waiting for one: see [`LeadershipWatch::cut_off`].
fn cut_off_reason(
    me: u64,
    leaderless_for: Duration,
    voters: &BTreeSet<u64>,
    quorum_timeout: Duration,
    in_touch: impl Fn(u64) -> bool,
) -> Option<String> {
    // Learners do not elect; a short stretch is an election under way.
    if !voters.contains(&me) || leaderless_for <= quorum_timeout {
        return None;
    }
    let reached = voters
        .iter()
        .filter(|&&voter| voter == me || in_touch(voter))
        .count();
    if reached * 2 > voters.len() {
        return None;
    }
    Some(format!(
        "member {me} has had no leader for {} ms and was in touch with {reached} of the {} voters (itself included) in the last {} ms: it may be cut off from a majority",
        leaderless_for.as_millis(),
        voters.len(),
        quorum_timeout.as_millis()
    ))
}

/// Publishes the [`LeaderView`] of every metrics update that changes the
/// verdict, until the metrics end (Raft stopped).
fn spawn_verdicts(
    mut metrics: watch::Receiver<RaftMetrics<u64, BasicNode>>,
    quorum_timeout_ms: u64,
) -> watch::Receiver<LeaderView> {
    let mut first = LeaderView::of(&metrics.borrow_and_update(), quorum_timeout_ms).after(None);
    // A member just started has heard no leader yet, and its first election
    // comes only after a lease and a timeout (`RaftTuning`): date its
    // leaderless stretch from then, so that a cluster starting up together
    // is not taken for one cut off.
    first.leaderless_since = first
        .leaderless_since
        .map(|since| since + Duration::from_millis(quorum_timeout_ms));
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        // Dropping `tx` when Raft stops tells every waiter so.
        while metrics.changed().await.is_ok() {
            let view = LeaderView::of(&metrics.borrow_and_update(), quorum_timeout_ms);
            tx.send_if_modified(|published| {
                let view = view.after(Some(published));
                let changed = !published.same_verdict(&view);
                if changed {
                    *published = view;
                }
                changed
            });
        }
    });
    rx
}

/// Resolves, with the reason, once the views from `verdicts` say `leader`
/// should no longer be relied on by member `me`.
async fn lost(mut verdicts: watch::Receiver<LeaderView>, me: u64, leader: u64) -> String {
    loop {
        let reason = doubt_view(&verdicts.borrow_and_update(), me, leader);
        if let Some(reason) = reason {
            return reason;
        }
        if verdicts.changed().await.is_err() {
            return "raft has stopped on this member".to_string();
        }
    }
}

/// Why `leader` should not be relied on, seen from member `me`'s metrics.
pub fn doubt(
    metrics: &RaftMetrics<u64, BasicNode>,
    me: u64,
    leader: u64,
    quorum_timeout_ms: u64,
) -> Option<String> {
    doubt_view(&LeaderView::of(metrics, quorum_timeout_ms), me, leader)
}

/// Why `leader` should not be relied on, seen from member `me`'s view.
fn doubt_view(view: &LeaderView, me: u64, leader: u64) -> Option<String> {
    if leader == me {
        // An election without a winner yet may elect this member again;
        // openraft answers what it proposed once the outcome is known.
        match view.leader {
            None => return None,
            Some(other) if other != me => {
                return Some(format!(
                    "leadership passed from member {me} to member {other}"
                ))
            }
            Some(_) => {}
        }
    } else if view.leader != Some(leader) {
        return Some(match view.leader {
            Some(other) => format!("leadership passed from member {leader} to member {other}"),
            None => {
                format!("member {me} no longer follows member {leader} (an election is under way)")
            }
        });
    } else {
        return None;
    }
    view.quiet_ms.map(|silent| {
        format!(
            "member {me} leads term {} but has heard from no quorum for {silent} ms; it may be cut off from the others",
            view.term
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(me: u64, leader: Option<u64>, silent: Option<u64>) -> RaftMetrics<u64, BasicNode> {
        let mut m = RaftMetrics::new_initial(me);
        m.current_leader = leader;
        m.current_term = 4;
        m.millis_since_quorum_ack = silent;
        m
    }

    #[test]
    fn a_leader_heard_from_lately_is_trusted() {
        assert_eq!(doubt(&metrics(1, Some(1), Some(120)), 1, 1, 800), None);
        // Newly elected: no acknowledgement yet is not a doubt.
        assert_eq!(doubt(&metrics(1, Some(1), None), 1, 1, 800), None);
        // A follower cannot see the leader's quorum; it trusts whom it follows.
        assert_eq!(doubt(&metrics(2, Some(1), None), 2, 1, 800), None);
    }

    #[test]
    fn a_quiet_leader_and_a_changed_leader_are_doubted() {
        let quiet = doubt(&metrics(1, Some(1), Some(900)), 1, 1, 800).expect("doubted");
        assert!(quiet.contains("no quorum for 900 ms"), "{quiet}");
        let moved = doubt(&metrics(2, Some(3), None), 2, 1, 800).expect("doubted");
        assert!(moved.contains("from member 1 to member 3"), "{moved}");
        let electing = doubt(&metrics(2, None, None), 2, 1, 800).expect("doubted");
        assert!(electing.contains("election"), "{electing}");
        // A leader in an election of its own may win again: not doubted yet.
        assert_eq!(doubt(&metrics(1, None, None), 1, 1, 800), None);
        let replaced = doubt(&metrics(1, Some(2), None), 1, 1, 800).expect("doubted");
        assert!(replaced.contains("from member 1 to member 2"), "{replaced}");
    }

    #[test]
    fn a_leaderless_member_gives_up_waiting_only_when_cut_off_from_a_majority() {
        let voters = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
        let quorum_timeout = Duration::from_millis(400);
        let long = Duration::from_millis(900);
        let alone = cut_off_reason(1, long, &voters(&[1, 2, 3]), quorum_timeout, |_| false)
            .expect("in touch with no one");
        assert!(alone.contains("1 of the 3 voters"), "{alone}");
        assert!(alone.contains("no leader for 900 ms"), "{alone}");
        // With one other of three it can elect: an election is under way.
        assert_eq!(
            cut_off_reason(1, long, &voters(&[1, 2, 3]), quorum_timeout, |p| p == 2),
            None
        );
        // Two of five is a minority; three is not.
        let minority = cut_off_reason(2, long, &voters(&[1, 2, 3, 4, 5]), quorum_timeout, |p| {
            p == 1
        })
        .expect("a minority");
        assert!(minority.contains("2 of the 5 voters"), "{minority}");
        assert_eq!(
            cut_off_reason(2, long, &voters(&[1, 2, 3, 4, 5]), quorum_timeout, |p| p
                == 1
                || p == 3),
            None
        );
        // A short stretch is an election, and a learner does not elect.
        let short = Duration::from_millis(300);
        assert_eq!(
            cut_off_reason(1, short, &voters(&[1, 2, 3]), quorum_timeout, |_| false),
            None
        );
        assert_eq!(
            cut_off_reason(4, long, &voters(&[1, 2, 3]), quorum_timeout, |_| false),
            None
        );
        // A member alone in its cluster is its own majority.
        assert_eq!(
            cut_off_reason(1, long, &voters(&[1]), quorum_timeout, |_| false),
            None
        );
    }

    #[tokio::test]
    async fn a_leaderless_stretch_is_dated_from_its_start_across_terms() {
        let (tx, rx) = watch::channel(metrics(2, Some(1), None));
        let mut verdicts = spawn_verdicts(rx, 400);
        assert_eq!(verdicts.borrow_and_update().leaderless_since, None);
        tx.send_modify(|m| m.current_leader = None);
        verdicts.changed().await.expect("changed");
        let started = verdicts
            .borrow_and_update()
            .leaderless_since
            .expect("dated");
        // A new election round moves the term, not the start.
        tokio::time::sleep(Duration::from_millis(5)).await;
        tx.send_modify(|m| m.current_term = 5);
        verdicts.changed().await.expect("changed");
        assert_eq!(verdicts.borrow_and_update().leaderless_since, Some(started));
        tx.send_modify(|m| m.current_leader = Some(3));
        verdicts.changed().await.expect("changed");
        assert_eq!(verdicts.borrow_and_update().leaderless_since, None);
    }

    #[tokio::test]
    async fn waiters_wake_only_when_the_verdict_changes() {
        let (tx, rx) = watch::channel(metrics(1, Some(1), Some(10)));
        let mut verdicts = spawn_verdicts(rx, 800);
        // Metrics published on every turn of Raft's loop, same verdict.
        for silent in 11..200 {
            tx.send_modify(|m| m.millis_since_quorum_ack = Some(silent));
            tokio::task::yield_now().await;
        }
        assert!(!verdicts.has_changed().expect("open"), "woken for nothing");
        let waiting = tokio::spawn(lost(verdicts.clone(), 2, 1));
        // The silence passes the timeout: the verdict changes once.
        tx.send_modify(|m| m.millis_since_quorum_ack = Some(900));
        tokio::task::yield_now().await;
        tx.send_modify(|m| m.millis_since_quorum_ack = Some(950));
        tokio::task::yield_now().await;
        verdicts.changed().await.expect("changed");
        assert_eq!(verdicts.borrow_and_update().quiet_ms, Some(900));
        // A follower of member 1 trusts it whatever the leader's silence...
        assert!(!waiting.is_finished());
        // ...until member 1 is no longer the one it follows.
        tx.send_modify(|m| m.current_leader = Some(3));
        let reason = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert!(reason.contains("from member 1 to member 3"), "{reason}");
        // Raft stopping ends every wait.
        drop(tx);
        let stopped = lost(verdicts, 2, 3).await;
        assert!(stopped.contains("stopped"), "{stopped}");
    }
}
