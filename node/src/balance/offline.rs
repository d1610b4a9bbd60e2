//! The balancer's part in moves made with every coordinator away
//! (docs/balancing.md, "Moves with the coordinators away"):
//! - journalling an approved move of an allocation (the migration manager
//!   carries it out agent to agent, [`crate::migrate::offline`]) and
//!   waiting for its end;
//! - the load this node carries according to the journal, not the stale
//!   assignment set (what left is no longer counted, what arrived is);
//! - the negotiation's reservations, which authorize a peer's offer;
//! - once the coordinators answer again, reporting every move switched
//!   over meanwhile and journalling their verdict;
//! - reporting a move this agent is the source of whose commit went
//!   unanswered ([`UNSETTLED_AFTER`] in `switching`: the target died or is
//!   cut off), journalled `reported` first, so that from then on only the
//!   coordinators' answer settles it: the target's (the copy here goes),
//!   kept here (journalled `kept`, and the copy resumes once), or wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herd_api::client::{HerdClient, Repeat};
use herd_api::proto::agent::agent_client::AgentClient;
use herd_api::proto::agent::{OfflineMoveReport, OfflineMoveVerdict};
use herd_api::resources::Resources;
use herd_balance::{Event, PeerInfo};

use super::assigned::AssignedWork;
use super::journal::{MoveEntry, MoveJournal, Phase, Role};
use super::moves::MoveOutcome;
use crate::migrate::offline::OfflineSource;

/// Longest an offline move may take before the balancer counts it failed
/// (the move itself ends on its own: aborted, or settled later).
const MOVE_LIMIT: Duration = Duration::from_secs(300);
/// One reconciliation report's timeout.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a source's move stays `switching` (its commit unanswered)
/// before it is reported to the coordinators as unsettled: the time the
/// source keeps asking for the commit, so that a target that answers late
/// settles it itself.
pub const UNSETTLED_AFTER: Duration = crate::migrate::offline::COMMIT_BUDGET;

/// FAULT-INJECTION HOOK for tests: `MS` makes the agent wait that long,
/// once the coordinators answer again, before it reports its offline moves,
/// so that a test can have the coordinators decide otherwise meanwhile.
/// Unset in production.
pub const FAULT_REPORT_HOLD_ENV: &str = "HERD_FAULT_OFFLINE_REPORT_HOLD_MS";

/// The balancer's offline-move state; see the module documentation.
pub struct OfflineMoves {
    node: String,
    journal: MoveJournal,
    reconciling: Arc<AtomicBool>,
}

impl OfflineMoves {
    /// Offline moves of agent `node`, journalled in `journal`. Arrivals an
    /// earlier run of this agent left unfinished are given up
    /// ([`give_up_orphaned_arrivals`]).
    pub fn new(node: &str, journal: MoveJournal) -> Self {
        give_up_orphaned_arrivals(&journal);
        Self {
            node: node.to_string(),
            journal,
            reconciling: Arc::new(AtomicBool::new(false)),
        }
    }

    /// What runs here according to the journal: the assignment set `work`
    /// less what left (or is switching away), plus what arrived.
    pub fn effective_work(&self, work: Vec<AssignedWork>) -> Vec<AssignedWork> {
        effective_work(work, &self.journal.entries())
    }

    /// Whether `alloc_id` is in a move of the journal (not to be offered
    /// again until it is settled).
    pub fn in_journal(&self, alloc_id: &str) -> bool {
        self.journal.of_alloc(alloc_id).is_some()
    }

    /// Keeps the negotiation's reservations, which authorize offers.
    pub fn on_event(&self, event: &Event, reservation_ttl_ms: u64) {
        match event {
            Event::IncomingReserved { item, from, .. } => self.journal.reserve(
                item,
                &from.id,
                herd_api::clock::now_ms() + reservation_ttl_ms,
            ),
            Event::IncomingCancelled { item, from } | Event::ReservationExpired { item, from } => {
                self.journal.release(item, from)
            }
            Event::MoveReceived { item, from } => self.journal.release(&item.id, &from.id),
            _ => {}
        }
    }

    /// Journals the move of `work` to `to`; the migration manager, woken by
    /// the journal, carries it out. Then waits for its end.
    pub async fn move_allocation(&self, work: &AssignedWork, to: &PeerInfo) -> MoveOutcome {
        let move_id = format!(
            "off-{}-{}-{}",
            self.node,
            work.alloc_id,
            herd_api::clock::now_ms()
        );
        let entry = MoveEntry {
            move_id: move_id.clone(),
            alloc_id: work.alloc_id.clone(),
            generation: work.generation,
            source: self.node.clone(),
            target: to.id.clone(),
            peer_addr: to.peer_addr.clone(),
            role: Role::Source,
            phase: Phase::Moving,
            at_ms: herd_api::clock::now_ms(),
            desired: None,
            reason: None,
        };
        let mut changes = self.journal.subscribe();
        if let Err(e) = self.journal.record(entry) {
            return MoveOutcome {
                moved: false,
                migration: None,
                detail: format!("cannot journal the move: {e}"),
            };
        }
        tracing::info!(%move_id, alloc = %work.alloc_id, to = %to.id, "balancing with the coordinators away: moving agent to agent");
        let waited = tokio::time::timeout(MOVE_LIMIT, async {
            loop {
                match self.journal.get(&move_id).map(|e| (e.phase, e.reason)) {
                    Some((Phase::Switched | Phase::Accepted | Phase::Refused, _)) => {
                        return (true, "moved agent to agent (journalled)".to_string())
                    }
                    Some((phase @ (Phase::Aborted | Phase::Kept), reason)) => {
                        return (
                            false,
                            format!("{}: {}", phase.as_str(), reason.unwrap_or_default()),
                        )
                    }
                    None => return (false, "the move's journal entry was closed".into()),
                    Some(_) => {}
                }
                if changes.changed().await.is_err() {
                    return (false, "the journal went away".into());
                }
            }
        })
        .await;
        let (moved, detail) = waited.unwrap_or_else(|_| {
            (
                false,
                format!("not settled after {} s", MOVE_LIMIT.as_secs()),
            )
        });
        MoveOutcome {
            moved,
            migration: Some(move_id),
            detail,
        }
    }

    /// The coordinators answer: reports every move switched over while they
    /// were away, and every move of this source left unsettled (one report
    /// task at a time).
    pub fn coordinators_answered(&self, client: &HerdClient) {
        let now = herd_api::clock::now_ms();
        let pending: Vec<MoveEntry> = self
            .journal
            .entries()
            .into_iter()
            .filter(|e| e.phase == Phase::Switched || unsettled(e, now))
            .collect();
        if pending.is_empty() || self.reconciling.swap(true, Ordering::SeqCst) {
            return;
        }
        let (client, journal, node, flag) = (
            client.clone(),
            self.journal.clone(),
            self.node.clone(),
            self.reconciling.clone(),
        );
        tokio::spawn(async move {
            if let Some(hold) = std::env::var(FAULT_REPORT_HOLD_ENV)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
            {
                tracing::warn!(
                    ms = hold,
                    "fault injection: holding the offline move reports"
                );
                tokio::time::sleep(Duration::from_millis(hold)).await;
            }
            for entry in pending {
                if entry.phase == Phase::Switched {
                    report(&client, &journal, &node, &entry).await;
                } else {
                    report_unsettled(&client, &journal, &node, &entry).await;
                }
            }
            flag.store(false, Ordering::SeqCst);
        });
    }
}

/// Gives up every arrival (a target entry still `moving`) in `journal`,
/// called as the balancer starts: none can be this run's, since a target
/// takes an offer only for an item its own balancer reserved, and
/// reservations live in memory, so these were journalled by an earlier run
/// of the agent, killed in the middle of the move. Its source has most
/// likely aborted already (the transfer broke) but could not tell a dead
/// agent so; left `moving`, the entry would wait for the 11-minute limit
/// of [`crate::migrate::offline::expire_stale_arrivals`], and found open by
/// the `balance-away` chaos scenario's checker after the coordinators had
/// returned. Safe for the same reason as that limit: the commit is the
/// target's alone to journal, so a source still going hears `aborted` (or
/// `unknown` once the entry is closed) and resumes its own copy. Returns
/// how many were given up.
pub fn give_up_orphaned_arrivals(journal: &MoveJournal) -> usize {
    let mut given_up = 0;
    for e in journal.entries() {
        if e.role != Role::Target || e.phase != Phase::Moving {
            continue;
        }
        tracing::warn!(move_id = %e.move_id, alloc = %e.alloc_id, source = %e.source, "an offline move was arriving when this agent stopped; giving it up");
        let reason = "the target agent restarted before the commit".to_string();
        match journal.advance(&e.move_id, Phase::Aborted, Some(reason)) {
            Ok(_) => given_up += 1,
            Err(err) => {
                tracing::warn!(move_id = %e.move_id, error = %err, "cannot journal the abort")
            }
        }
    }
    given_up
}

/// Whether `entry` is a move of this source to report unsettled at `now_ms`:
/// `switching` for [`UNSETTLED_AFTER`] or more, or `reported` already (the
/// coordinators said to wait, or did not answer).
pub fn unsettled(entry: &MoveEntry, now_ms: u64) -> bool {
    entry.role == Role::Source
        && match entry.phase {
            Phase::Reported => true,
            Phase::Switching => {
                now_ms.saturating_sub(entry.at_ms) >= UNSETTLED_AFTER.as_millis() as u64
            }
            _ => false,
        }
}

/// What a source journals of the coordinators' answer to an unsettled
/// report, if anything (`wait`: nothing, ask again later).
pub fn unsettled_outcome(verdict: &OfflineMoveVerdict) -> Option<(Phase, Option<String>)> {
    match verdict.decision.as_str() {
        "source" => Some((Phase::Kept, Some(verdict.reason.clone()))),
        "wait" => None,
        "refused" => Some((Phase::Refused, Some(verdict.reason.clone()))),
        "target" => Some((Phase::Accepted, None)),
        // Coordinators older than the decision: only an acceptance is
        // clear; anything else is asked again.
        _ if verdict.accepted => Some((Phase::Accepted, None)),
        _ => None,
    }
}

/// Reports a move of this source whose commit went unanswered: journals
/// `reported` first (from then on the target's word no longer counts),
/// asks the target to abort (its answer, that it does not hold the move
/// as taken over, lets the coordinators keep it here while the target
/// lives), then asks the coordinators and journals their decision.
async fn report_unsettled(
    client: &HerdClient,
    journal: &MoveJournal,
    node: &str,
    entry: &MoveEntry,
) {
    let entry = match journal.advance(&entry.move_id, Phase::Reported, None) {
        Ok(now) if now.phase == Phase::Reported => now,
        // Settled otherwise meanwhile (the target answered the commit).
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(move_id = %entry.move_id, error = %e, "cannot journal the report");
            return;
        }
    };
    let source = OfflineSource {
        journal: journal.clone(),
        move_id: entry.move_id.clone(),
        node: node.to_string(),
        connector: None,
    };
    let disowned = source.target_disowns(&entry).await;
    let mut request = report_of(node, &entry);
    request.unsettled = true;
    request.target_disowned = disowned;
    let Some(verdict) = ask(client, &entry, request).await else {
        return;
    };
    tracing::info!(
        move_id = %entry.move_id,
        alloc = %entry.alloc_id,
        target = %entry.target,
        disowned,
        decision = %verdict.decision,
        reason = %verdict.reason,
        "the coordinators answered a move whose commit went unanswered"
    );
    let Some((phase, reason)) = unsettled_outcome(&verdict) else {
        return;
    };
    match journal.advance(&entry.move_id, phase, reason) {
        Ok(now) if now.phase == Phase::Kept => {
            tracing::warn!(move_id = %entry.move_id, alloc = %entry.alloc_id, "the coordinators kept the allocation here; resuming its copy");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(move_id = %entry.move_id, error = %e, "cannot journal the decision")
        }
    }
}

fn report_of(node: &str, entry: &MoveEntry) -> OfflineMoveReport {
    OfflineMoveReport {
        node: node.to_string(),
        move_id: entry.move_id.clone(),
        alloc_id: entry.alloc_id.clone(),
        from_generation: entry.generation,
        source: entry.source.clone(),
        target: entry.target.clone(),
        unsettled: false,
        target_disowned: false,
    }
}

/// Sends `request` to the leader; None if it did not answer.
async fn ask(
    client: &HerdClient,
    entry: &MoveEntry,
    request: OfflineMoveReport,
) -> Option<OfflineMoveVerdict> {
    let call = client.call_leader_as(Repeat::Safe, |channel| {
        let request = request.clone();
        async move {
            AgentClient::new(channel)
                .report_offline_move(request)
                .await
                .map(|r| r.into_inner())
        }
    });
    match tokio::time::timeout(REPORT_TIMEOUT, call).await {
        Ok(Ok(verdict)) => Some(verdict),
        Ok(Err(e)) => {
            tracing::warn!(move_id = %entry.move_id, error = %e, "cannot report an offline move; trying again later");
            None
        }
        Err(_) => None,
    }
}

/// Reports one move and journals the verdict; a failed call leaves it for
/// the next time the coordinators answer.
async fn report(client: &HerdClient, journal: &MoveJournal, node: &str, entry: &MoveEntry) {
    let Some(verdict) = ask(client, entry, report_of(node, entry)).await else {
        return;
    };
    let (phase, reason) = if verdict.accepted {
        (Phase::Accepted, None)
    } else {
        (Phase::Refused, Some(verdict.reason.clone()))
    };
    tracing::info!(
        move_id = %entry.move_id,
        alloc = %entry.alloc_id,
        accepted = verdict.accepted,
        generation = verdict.generation,
        reason = %verdict.reason,
        "the coordinators answered an offline move"
    );
    if let Err(e) = journal.advance(&entry.move_id, phase, reason) {
        tracing::warn!(move_id = %entry.move_id, error = %e, "cannot journal the verdict");
    }
}

/// `work` (the assignment set) with the journal `entries` applied: an
/// allocation switching or switched away is not counted here, one
/// switched here is, with the resources it reserves.
pub fn effective_work(mut work: Vec<AssignedWork>, entries: &[MoveEntry]) -> Vec<AssignedWork> {
    for entry in entries {
        match (entry.role, entry.phase) {
            (
                Role::Source,
                Phase::Switching | Phase::Reported | Phase::Switched | Phase::Accepted,
            ) => {
                work.retain(|w| !(w.alloc_id == entry.alloc_id && w.generation <= entry.generation))
            }
            (Role::Target, phase) if phase.target_owns() => {
                let Some(desired) = &entry.desired else {
                    continue;
                };
                if work.iter().any(|w| w.alloc_id == entry.alloc_id) {
                    continue;
                }
                let r = &desired.task.resources;
                work.push(AssignedWork {
                    alloc_id: entry.alloc_id.clone(),
                    generation: desired.generation,
                    job: desired.job.clone(),
                    driver: desired.task.driver.clone(),
                    resources: Resources {
                        cpu_millis: r.cpu_millis,
                        memory_bytes: r.memory_bytes,
                        gpus: r.gpus,
                        gpu_model: None,
                    },
                    // It moved by balancing, so its job allows it.
                    movable: true,
                    migrating: false,
                    gpu_indices: Vec::new(),
                });
            }
            _ => {}
        }
    }
    work
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herd_actors::workload::DesiredAlloc;
    use herd_api::job::{JobType, TaskSpec};

    use super::*;

    fn work(id: &str) -> AssignedWork {
        AssignedWork {
            alloc_id: id.into(),
            generation: 1,
            job: "vms".into(),
            driver: "simvm".into(),
            resources: Resources {
                cpu_millis: 300,
                memory_bytes: 1 << 20,
                gpus: 0,
                gpu_model: None,
            },
            movable: true,
            migrating: false,
            gpu_indices: Vec::new(),
        }
    }

    fn entry(alloc: &str, role: Role, phase: Phase) -> MoveEntry {
        MoveEntry {
            move_id: format!("off-{alloc}"),
            alloc_id: alloc.into(),
            generation: 1,
            source: "n1".into(),
            target: "n2".into(),
            peer_addr: String::new(),
            role,
            phase,
            at_ms: 1,
            desired: Some(DesiredAlloc {
                alloc_id: alloc.into(),
                generation: 2,
                job: "vms".into(),
                job_type: JobType::Service,
                task: TaskSpec {
                    driver: "simvm".into(),
                    command: None,
                    args: Vec::new(),
                    env: BTreeMap::new(),
                    workdir: None,
                    resources: herd_api::resources::Resources {
                        cpu_millis: 500,
                        ..Default::default()
                    },
                    config: BTreeMap::new(),
                },
                env: BTreeMap::new(),
                stop_after_disconnect: None,
                moving_out: None,
            }),
            reason: None,
        }
    }

    #[test]
    fn a_restarted_target_gives_up_its_unfinished_arrivals_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = MoveJournal::load(&dir.path().join("balance-moves.json")).expect("journal");
        journal
            .record(entry("arriving", Role::Target, Phase::Moving))
            .expect("record");
        journal
            .record(entry("arrived", Role::Target, Phase::Switched))
            .expect("record");
        journal
            .record(entry("leaving", Role::Source, Phase::Moving))
            .expect("record");
        let moves = OfflineMoves::new("n2", journal.clone());
        let phase = |id: &str| journal.get(&format!("off-{id}")).map(|e| e.phase);
        assert_eq!(phase("arriving"), Some(Phase::Aborted));
        assert_eq!(phase("arrived"), Some(Phase::Switched));
        assert_eq!(phase("leaving"), Some(Phase::Moving));
        assert!(!moves.in_journal("nothing"));
        // Nothing left to give up the second time.
        assert_eq!(give_up_orphaned_arrivals(&journal), 0);
    }

    #[test]
    fn load_follows_the_journal_not_the_stale_set() {
        let set = vec![work("a"), work("b")];
        let ids = |w: &[AssignedWork]| w.iter().map(|w| w.alloc_id.clone()).collect::<Vec<_>>();
        // Still moving: counted where it runs.
        let w = effective_work(set.clone(), &[entry("a", Role::Source, Phase::Moving)]);
        assert_eq!(ids(&w), vec!["a", "b"]);
        for phase in [Phase::Switching, Phase::Switched, Phase::Accepted] {
            let w = effective_work(set.clone(), &[entry("a", Role::Source, phase)]);
            assert_eq!(ids(&w), vec!["b"], "{phase:?}");
        }
        let w = effective_work(set.clone(), &[entry("c", Role::Target, Phase::Switched)]);
        assert_eq!(ids(&w), vec!["a", "b", "c"]);
        assert_eq!(w[2].resources.cpu_millis, 500);
        assert_eq!(w[2].generation, 2);
        for phase in [Phase::Moving, Phase::Refused, Phase::Aborted] {
            let w = effective_work(set.clone(), &[entry("c", Role::Target, phase)]);
            assert_eq!(ids(&w), vec!["a", "b"], "{phase:?}");
        }
    }

    #[test]
    fn a_long_switching_move_of_this_source_is_reported_unsettled() {
        let limit = UNSETTLED_AFTER.as_millis() as u64;
        let mut e = entry("a", Role::Source, Phase::Switching);
        e.at_ms = 1_000;
        assert!(
            !unsettled(&e, 1_000 + limit - 1),
            "the commit is still asked"
        );
        assert!(unsettled(&e, 1_000 + limit));
        e.phase = Phase::Reported;
        assert!(unsettled(&e, 1_000), "asked again until they settle it");
        for phase in [Phase::Moving, Phase::Switched, Phase::Kept, Phase::Aborted] {
            e.phase = phase;
            assert!(!unsettled(&e, u64::MAX), "{phase:?}");
        }
        let mut t = entry("a", Role::Target, Phase::Switching);
        t.at_ms = 0;
        assert!(!unsettled(&t, u64::MAX), "only a source reports it");
        // Left out of the load while reported; counted again once kept.
        let w = effective_work(
            vec![work("a")],
            &[entry("a", Role::Source, Phase::Reported)],
        );
        assert!(w.is_empty());
        let w = effective_work(vec![work("a")], &[entry("a", Role::Source, Phase::Kept)]);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn the_coordinators_decision_on_an_unsettled_move_is_journalled_as_it_says() {
        let verdict = |decision: &str, accepted: bool| OfflineMoveVerdict {
            accepted,
            generation: 0,
            reason: format!("because {decision}"),
            decision: decision.into(),
        };
        assert_eq!(
            unsettled_outcome(&verdict("source", false)),
            Some((Phase::Kept, Some("because source".into())))
        );
        assert_eq!(unsettled_outcome(&verdict("wait", false)), None);
        assert_eq!(
            unsettled_outcome(&verdict("target", true)),
            Some((Phase::Accepted, None))
        );
        assert_eq!(
            unsettled_outcome(&verdict("refused", false)).map(|o| o.0),
            Some(Phase::Refused)
        );
        // An older coordinator: only its acceptance is understood.
        assert_eq!(
            unsettled_outcome(&verdict("", true)).map(|o| o.0),
            Some(Phase::Accepted)
        );
        assert_eq!(unsettled_outcome(&verdict("", false)), None);
    }
}
