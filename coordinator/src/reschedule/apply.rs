//! Running a plan's moves through live migrations, a few at a time, in the
//! plan's order: the one engine behind `herd reschedule apply` (the CLI,
//! over gRPC), the leader's rescheduling loop and the placement fallback
//! (the leader, on its own state and log).
//!
//! Nothing is trusted from planning time. Just before a move starts, its
//! allocation must still run where the plan found it; then the start
//! itself (`Command::StartMigration`, decided by `start_migration`)
//! re-checks room, constraints and movability against the state at that
//! moment. A refused move is skipped with the reason and the others go on.
//! A move waits while an earlier move in flight moves the same allocation
//! or leaves the node it goes to (the room it may count on).
//!
//! Where the moves go is a [`Cluster`]: the engine only orders, starts,
//! follows and reports.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::plan::LiveMove;

/// How a run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyOptions {
    /// At most this many migrations at once (at least 1).
    pub concurrency: usize,
    /// Follow the last migrations until they end; without it the run
    /// returns once every move is started or skipped.
    pub wait: bool,
    /// How often migrations in flight are asked where they stand.
    pub poll_every: Duration,
    /// How long a migration that cannot be asked about is ridden out (an
    /// election) before the run gives up following it.
    pub unreachable_for: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            concurrency: 2,
            wait: true,
            poll_every: Duration::from_millis(200),
            unreachable_for: Duration::from_secs(30),
        }
    }
}

/// How one move of the plan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Migration `id` completed.
    Completed {
        /// The migration.
        id: String,
        /// The workload's pause, ms.
        downtime_ms: u64,
    },
    /// Migration `id` was aborted (the allocation stays at its source).
    Aborted {
        /// The migration.
        id: String,
        /// Why.
        why: String,
    },
    /// Not started: the reason.
    Skipped(String),
    /// Started and still under way when the run returned (not waiting).
    Running {
        /// The migration.
        id: String,
    },
}

impl Outcome {
    /// Its name in output (`completed`, `aborted`, `skipped`, `running`).
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Completed { .. } => "completed",
            Outcome::Aborted { .. } => "aborted",
            Outcome::Skipped(_) => "skipped",
            Outcome::Running { .. } => "running",
        }
    }
}

/// A migration as started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// Its id.
    pub id: String,
    /// Where the allocation runs.
    pub source: String,
    /// Where it goes.
    pub target: String,
}

/// Where a migration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Under way.
    Running,
    /// Ended, completed.
    Completed {
        /// The workload's pause, ms.
        downtime_ms: u64,
    },
    /// Ended, aborted.
    Aborted {
        /// Why.
        why: String,
    },
}

/// What asking about a migration gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Its phase.
    Phase(Phase),
    /// No answer this time (coordinators electing): ridden out for
    /// [`ApplyOptions::unreachable_for`].
    Unreachable(String),
}

/// The cluster the moves go to.
///
/// Exists so the CLI (over gRPC) and the leader (on its own state, its
/// decisions fenced by its term) share one engine. An `Err` from a method
/// ends the run: the cluster cannot be reached, or (the leader) leadership
/// was lost.
pub trait Cluster {
    /// Why the run cannot go on.
    type Error: std::fmt::Display;

    /// The node allocation `alloc_id` runs on now; None when it is gone.
    fn node_of(
        &self,
        alloc_id: &str,
    ) -> impl Future<Output = Result<Option<String>, Self::Error>> + Send;

    /// Starts move `m`: the migration, or why it was refused (the move is
    /// skipped).
    fn start(
        &self,
        m: &LiveMove,
    ) -> impl Future<Output = Result<Result<Started, String>, Self::Error>> + Send;

    /// Where migration `id` stands.
    fn poll(&self, id: &str) -> impl Future<Output = Result<Poll, Self::Error>> + Send;
}

/// Why a run stopped before every move ended.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError<E: std::fmt::Display> {
    /// The cluster said so.
    #[error("{0}")]
    Cluster(E),
    /// A migration in flight could not be asked about for too long.
    #[error("cannot follow migration {id} (it goes on; see `herd migration status {id}`): {why}")]
    LostSight {
        /// The migration.
        id: String,
        /// The last answer.
        why: String,
    },
}

/// What a run reports as it goes (the CLI prints a line per event).
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// Move `index` started.
    Started {
        /// Position in the plan.
        index: usize,
        /// The migration.
        started: &'a Started,
    },
    /// Move `index` ended, was skipped, or is left running.
    Ended {
        /// Position in the plan.
        index: usize,
        /// How.
        outcome: &'a Outcome,
    },
}

/// A started move of the plan, followed until it ends.
struct InFlight {
    index: usize,
    id: String,
    unreachable_since: Option<Instant>,
}

/// Whether move `i` must wait for the moves in flight (positions in
/// `moves`): one of them moves the same allocation, or leaves the node move
/// `i` goes to.
pub fn must_wait(moves: &[LiveMove], i: usize, in_flight: &[usize]) -> bool {
    let m = &moves[i];
    in_flight.iter().any(|&f| {
        let earlier = &moves[f];
        earlier.alloc_id == m.alloc_id || earlier.source == m.target
    })
}

/// The plan positions of the moves in flight.
fn indices(in_flight: &[InFlight]) -> Vec<usize> {
    in_flight.iter().map(|f| f.index).collect()
}

/// Why move `m` may not start, found just before starting it: its
/// allocation no longer runs where the plan found it.
pub fn stale_reason(m: &LiveMove, now_on: Option<&str>) -> Option<String> {
    match now_on {
        None => Some(format!("allocation {} is gone", m.alloc_id)),
        Some(node) if node != m.source => Some(format!(
            "allocation {} now runs on {node}, not {} as planned",
            m.alloc_id, m.source
        )),
        Some(_) => None,
    }
}

/// Runs `moves` on `cluster`: at most `options.concurrency` at a time, in
/// order, `on_event` told of each start and end. Returns each move's
/// outcome, in plan order.
pub async fn execute<C: Cluster + Sync>(
    cluster: &C,
    moves: &[LiveMove],
    options: &ApplyOptions,
    mut on_event: impl FnMut(Event<'_>) + Send,
) -> Result<Vec<Outcome>, ApplyError<C::Error>> {
    let total = moves.len();
    let concurrency = options.concurrency.max(1);
    let mut outcomes: Vec<Option<Outcome>> = vec![None; total];
    let mut in_flight: Vec<InFlight> = Vec::new();
    let mut next = 0usize;
    loop {
        while next < total
            && in_flight.len() < concurrency
            && !must_wait(moves, next, &indices(&in_flight))
        {
            let m = &moves[next];
            let now_on = cluster
                .node_of(&m.alloc_id)
                .await
                .map_err(ApplyError::Cluster)?;
            let started = match stale_reason(m, now_on.as_deref()) {
                Some(why) => Err(why),
                None => cluster.start(m).await.map_err(ApplyError::Cluster)?,
            };
            match started {
                Ok(started) => {
                    on_event(Event::Started {
                        index: next,
                        started: &started,
                    });
                    in_flight.push(InFlight {
                        index: next,
                        id: started.id,
                        unreachable_since: None,
                    });
                }
                Err(why) => {
                    let outcome = Outcome::Skipped(why);
                    on_event(Event::Ended {
                        index: next,
                        outcome: &outcome,
                    });
                    outcomes[next] = Some(outcome);
                }
            }
            next += 1;
        }
        if in_flight.is_empty() && next >= total {
            break;
        }
        if next >= total && !options.wait {
            for f in &in_flight {
                let outcome = Outcome::Running { id: f.id.clone() };
                on_event(Event::Ended {
                    index: f.index,
                    outcome: &outcome,
                });
                outcomes[f.index] = Some(outcome);
            }
            break;
        }
        tokio::time::sleep(options.poll_every).await;
        let mut still = Vec::with_capacity(in_flight.len());
        for mut f in in_flight.drain(..) {
            let ended = match cluster.poll(&f.id).await.map_err(ApplyError::Cluster)? {
                Poll::Phase(Phase::Running) => None,
                Poll::Phase(Phase::Completed { downtime_ms }) => Some(Outcome::Completed {
                    id: f.id.clone(),
                    downtime_ms,
                }),
                Poll::Phase(Phase::Aborted { why }) => Some(Outcome::Aborted {
                    id: f.id.clone(),
                    why,
                }),
                Poll::Unreachable(why) => {
                    let since = *f.unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > options.unreachable_for {
                        return Err(ApplyError::LostSight { id: f.id, why });
                    }
                    still.push(f);
                    continue;
                }
            };
            match ended {
                Some(outcome) => {
                    on_event(Event::Ended {
                        index: f.index,
                        outcome: &outcome,
                    });
                    outcomes[f.index] = Some(outcome);
                }
                None => {
                    f.unreachable_since = None;
                    still.push(f);
                }
            }
        }
        in_flight = still;
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Skipped("never started".into())))
        .collect())
}

/// How many of `outcomes` are named `name` (see [`Outcome::name`]).
pub fn count(outcomes: &[Outcome], name: &str) -> usize {
    outcomes.iter().filter(|o| o.name() == name).count()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    fn mv(alloc: &str, source: &str, target: &str) -> LiveMove {
        LiveMove {
            alloc_id: alloc.into(),
            job: format!("job-{alloc}"),
            source: source.into(),
            target: target.into(),
            cpu_millis: 1000,
            memory_bytes: 0,
        }
    }

    #[test]
    fn a_move_waits_for_earlier_ones_leaving_its_target_or_moving_its_allocation() {
        let moves = vec![
            mv("a", "n1", "n3"),
            mv("b", "n2", "n1"),
            mv("c", "n2", "n3"),
            mv("a", "n3", "n2"),
        ];
        // b goes into n1, which a is leaving: it waits.
        assert!(must_wait(&moves, 1, &[0]));
        // c goes into n3 like a: both fit per the plan, no wait.
        assert!(!must_wait(&moves, 2, &[0]));
        // a's second move waits for its first.
        assert!(must_wait(&moves, 3, &[0]));
        // ... and for c, which leaves n2, where it goes.
        assert!(must_wait(&moves, 3, &[2]));
        assert!(!must_wait(&moves, 1, &[]));
    }

    /// A cluster in memory: allocations by node, migrations completing on
    /// their second poll, starts refused for allocations named in `refuse`.
    #[derive(Default)]
    struct Fake {
        nodes: Mutex<BTreeMap<String, String>>,
        polls: Mutex<BTreeMap<String, u32>>,
        started: Mutex<Vec<String>>,
        refuse: Vec<String>,
        max_in_flight: Mutex<(usize, usize)>,
    }

    impl Cluster for Fake {
        type Error = String;

        async fn node_of(&self, alloc_id: &str) -> Result<Option<String>, String> {
            Ok(self.nodes.lock().expect("lock").get(alloc_id).cloned())
        }

        async fn start(&self, m: &LiveMove) -> Result<Result<Started, String>, String> {
            if self.refuse.contains(&m.alloc_id) {
                return Ok(Err("no room".into()));
            }
            let id = format!("mig-{}", m.alloc_id);
            self.started.lock().expect("lock").push(id.clone());
            let mut flying = self.max_in_flight.lock().expect("lock");
            flying.0 += 1;
            flying.1 = flying.1.max(flying.0);
            Ok(Ok(Started {
                id,
                source: m.source.clone(),
                target: m.target.clone(),
            }))
        }

        async fn poll(&self, id: &str) -> Result<Poll, String> {
            let mut polls = self.polls.lock().expect("lock");
            let n = polls.entry(id.to_string()).or_insert(0);
            *n += 1;
            if *n < 2 {
                return Ok(Poll::Phase(Phase::Running));
            }
            self.max_in_flight.lock().expect("lock").0 -= 1;
            let alloc = id.trim_start_matches("mig-").to_string();
            if alloc == "d" {
                return Ok(Poll::Phase(Phase::Aborted {
                    why: "target went down".into(),
                }));
            }
            Ok(Poll::Phase(Phase::Completed { downtime_ms: 7 }))
        }
    }

    #[tokio::test]
    async fn moves_run_in_order_within_the_limit_and_stale_or_refused_ones_are_skipped() {
        let fake = Fake {
            refuse: vec!["c".into()],
            ..Fake::default()
        };
        {
            let mut nodes = fake.nodes.lock().expect("lock");
            for (alloc, node) in [("a", "n1"), ("b", "n1"), ("c", "n2"), ("d", "n2")] {
                nodes.insert(alloc.into(), node.into());
            }
            // e moved elsewhere since planning; f is gone.
            nodes.insert("e".into(), "n9".into());
        }
        let moves = vec![
            mv("a", "n1", "n3"),
            mv("b", "n1", "n3"),
            mv("c", "n2", "n3"),
            mv("d", "n2", "n4"),
            mv("e", "n2", "n4"),
            mv("f", "n2", "n4"),
        ];
        let mut events = Vec::new();
        let outcomes = execute(
            &fake,
            &moves,
            &ApplyOptions {
                concurrency: 2,
                poll_every: Duration::from_millis(1),
                ..ApplyOptions::default()
            },
            |e| {
                events.push(match e {
                    Event::Started { index, .. } => format!("start {index}"),
                    Event::Ended { index, outcome } => format!("{} {index}", outcome.name()),
                })
            },
        )
        .await
        .expect("run");
        assert_eq!(outcomes.len(), 6);
        assert_eq!(
            outcomes[0],
            Outcome::Completed {
                id: "mig-a".into(),
                downtime_ms: 7
            }
        );
        assert_eq!(outcomes[2], Outcome::Skipped("no room".into()));
        assert!(matches!(&outcomes[3], Outcome::Aborted { why, .. } if why.contains("down")));
        assert_eq!(
            outcomes[4],
            Outcome::Skipped("allocation e now runs on n9, not n2 as planned".into())
        );
        assert_eq!(outcomes[5], Outcome::Skipped("allocation f is gone".into()));
        assert_eq!(fake.max_in_flight.lock().expect("lock").1, 2);
        assert_eq!(count(&outcomes, "skipped"), 3);
        // Every move reported once; starts in plan order.
        assert_eq!(events.iter().filter(|e| e.starts_with("start")).count(), 3);
        assert_eq!(events.len(), 3 + 6);
        assert_eq!(
            *fake.started.lock().expect("lock"),
            vec!["mig-a".to_string(), "mig-b".into(), "mig-d".into()]
        );
    }

    #[tokio::test]
    async fn without_waiting_the_last_moves_are_left_running() {
        let fake = Fake::default();
        fake.nodes
            .lock()
            .expect("lock")
            .insert("a".into(), "n1".into());
        let outcomes = execute(
            &fake,
            &[mv("a", "n1", "n2")],
            &ApplyOptions {
                wait: false,
                poll_every: Duration::from_millis(1),
                ..ApplyOptions::default()
            },
            |_| {},
        )
        .await
        .expect("run");
        assert_eq!(outcomes, vec![Outcome::Running { id: "mig-a".into() }]);
    }
}
