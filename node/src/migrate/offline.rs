//! Balancing moves carried out agent to agent while every coordinator is
//! away (docs/balancing.md, "Moves with the coordinators away").
//!
//! The move runs the same machinery as a coordinator-recorded migration
//! (the source's steps in [`super::source`], the target's arrival in
//! [`super::manager`], the state over `AgentPeer`), with two differences:
//! - **the record is the agents' journal** ([`MoveJournal`]) instead of a
//!   Raft entry: the source's reports go to its journal, and the
//!   switch-over is the target's commit (`AgentPeer.OfflineMove`,
//!   journalled by the target before it answers);
//! - **the assignment sets are stale**, so the manager lays the journal
//!   over each one ([`overlay`]): it makes the move's migration appear in
//!   the set on both sides while the state moves, and after the commit
//!   hides the allocation from the source and adds it to the target, until
//!   the coordinators' own sets agree (or they refused the move).
//!
//! Authorization, checked on both sides: the source moves only what its
//! own balancer journalled; the target takes an offer only for an item its
//! balancer reserved for that source in the negotiation
//! ([`MoveJournal::is_reserved`]), journals it, and its `AgentPeer`
//! registry then serves that move id alone, from that source.

use std::time::Duration;

use herd_actors::workload::DesiredAlloc;
use herd_api::proto::agent::{MigrationAssignment, OfflineMoveReply, OfflineMoveRequest};
use tonic::Status;

use super::transfer;
use crate::balance::journal::{MoveEntry, MoveJournal, Phase, Role};

/// The action names of `OfflineMoveRequest.action`.
pub const OFFER: &str = "offer";
/// The source asks the target to take over.
pub const COMMIT: &str = "commit";
/// The source gives the move up.
pub const ABORT: &str = "abort";
/// The source asks where the target stands.
pub const STATUS: &str = "status";
/// The phase answered for a move the target does not know.
pub const UNKNOWN: &str = "unknown";
/// Drivers whose work a target takes up from a peer's offline offer: those
/// that move live (their capability `migration` is not `none`). The spec
/// comes from the peer alone (no coordinator vouches for it), so an offer
/// may never start a driver that runs arbitrary commands (`exec`): an
/// allow-list, not the agent's own driver table, so that a driver added
/// later is refused until someone decides it is safe here.
const OFFLINE_MOVABLE_DRIVERS: [&str; 3] = ["simvm", "vm", "dljob"];

/// The largest `desired_json` a target accepts.
pub const MAX_DESIRED_BYTES: usize = 64 * 1024;
/// Longest bound on a name or id in a request.
const MAX_NAME_BYTES: usize = 256;
/// Downtime limit of an offline live move (the default of `herd alloc
/// migrate`).
const DOWNTIME_LIMIT_MS: u64 = 300;
/// How long an offline move's steps may take.
const STEP_BUDGET_MS: u64 = 600_000;
/// One `OfflineMove` call's timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the source keeps asking an unreachable target to commit
/// before it leaves the question to [`resolve_switching`] (and, once the
/// coordinators answer, to them: `balance::offline::UNSETTLED_AFTER`).
pub const COMMIT_BUDGET: Duration = Duration::from_secs(30);

/// FAULT-INJECTION HOOK for tests: `MS` makes a target that journalled an
/// offline move's commit hold that long before it answers the source, so
/// that a test can kill it between the two (the source then never hears
/// the answer). Unset in production.
pub const FAULT_COMMIT_HOLD_ENV: &str = "HERD_FAULT_OFFLINE_COMMIT_HOLD_MS";

/// Holds a target's answer to a commit as [`FAULT_COMMIT_HOLD_ENV`] says
/// (nothing when it is unset, or for any other action).
pub async fn fault_commit_hold(action: &str) {
    if action != COMMIT {
        return;
    }
    let Some(ms) = std::env::var(FAULT_COMMIT_HOLD_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    tracing::warn!(
        ms,
        "fault injection: holding the answer to an offline move's commit"
    );
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn source_assignment(entry: &MoveEntry, driver: &str) -> MigrationAssignment {
    MigrationAssignment {
        id: entry.move_id.clone(),
        role: "source".into(),
        peer_node: entry.target.clone(),
        peer_addr: entry.peer_addr.clone(),
        phase: match entry.phase {
            Phase::Moving => "planned",
            _ => "switching",
        }
        .into(),
        kind: driver.to_string(),
        downtime_limit_ms: DOWNTIME_LIMIT_MS,
        bandwidth_bytes_per_sec: 0,
        from_generation: entry.generation,
        phase_deadline_ms: entry.at_ms + STEP_BUDGET_MS,
        group: String::new(),
    }
}

fn target_assignment(entry: &MoveEntry, driver: &str) -> MigrationAssignment {
    MigrationAssignment {
        id: entry.move_id.clone(),
        role: "target".into(),
        peer_node: entry.source.clone(),
        peer_addr: entry.peer_addr.clone(),
        phase: "planned".into(),
        kind: driver.to_string(),
        downtime_limit_ms: DOWNTIME_LIMIT_MS,
        bandwidth_bytes_per_sec: 0,
        from_generation: entry.generation,
        phase_deadline_ms: entry.at_ms + STEP_BUDGET_MS,
        group: String::new(),
    }
}

/// One allocation of an assignment set, with the migration it takes part in.
pub type SetItem = (DesiredAlloc, Option<MigrationAssignment>);

/// Lays the journal `entries` over the assignment set `allocs` (stale
/// while the coordinators are away); returns the set to act on and the
/// moves whose entries may be closed, because the set itself now says all
/// there is to say (the coordinators took the move) or the move ended
/// without the target taking it.
pub fn overlay(entries: &[MoveEntry], mut allocs: Vec<SetItem>) -> (Vec<SetItem>, Vec<String>) {
    let mut close = Vec::new();
    for entry in entries {
        let listed_at = |allocs: &[SetItem], pred: &dyn Fn(u64) -> bool| {
            allocs
                .iter()
                .any(|(d, _)| d.alloc_id == entry.alloc_id && pred(d.generation))
        };
        match (entry.role, entry.phase) {
            // Kept: the coordinators' set names the allocation here, at its
            // generation, without the move: its copy resumes.
            (_, Phase::Aborted | Phase::Refused | Phase::Kept) => close.push(entry.move_id.clone()),
            (Role::Source, Phase::Moving | Phase::Switching | Phase::Reported) => {
                for (d, m) in allocs.iter_mut() {
                    if d.alloc_id == entry.alloc_id
                        && d.generation == entry.generation
                        && m.as_ref().is_none_or(|m| m.id == entry.move_id)
                    {
                        *m = Some(source_assignment(entry, &d.task.driver));
                    }
                }
            }
            (Role::Source, Phase::Switched | Phase::Accepted) => {
                let still_here = listed_at(&allocs, &|g| g == entry.generation);
                if entry.phase == Phase::Accepted && !still_here {
                    close.push(entry.move_id.clone());
                }
                allocs.retain(|(d, _)| {
                    !(d.alloc_id == entry.alloc_id && d.generation <= entry.generation)
                });
            }
            (Role::Target, phase) => {
                let Some(desired) = &entry.desired else {
                    continue;
                };
                let arrived = listed_at(&allocs, &|g| g > entry.generation);
                if arrived {
                    if phase == Phase::Accepted {
                        close.push(entry.move_id.clone());
                    }
                    continue;
                }
                allocs.retain(|(d, _)| d.alloc_id != entry.alloc_id);
                let migration = (phase == Phase::Moving)
                    .then(|| target_assignment(entry, &desired.task.driver));
                if phase == Phase::Moving || phase.target_owns() {
                    allocs.push((desired.clone(), migration));
                }
            }
        }
    }
    (allocs, close)
}

/// How long a target keeps an arrival whose source neither committed nor
/// aborted (the source's whole step budget, and a minute more).
pub const ARRIVAL_LIMIT_MS: u64 = STEP_BUDGET_MS + 60_000;

/// Gives up the arrivals (target entries still `moving`) older than
/// [`ARRIVAL_LIMIT_MS`] at `now_ms`: their source is gone. Safe because the
/// commit is the target's alone to journal: a source that asks later hears
/// `aborted` and resumes its own copy.
pub fn expire_stale_arrivals(journal: &MoveJournal, now_ms: u64) {
    for e in journal.entries() {
        if e.role == Role::Target
            && e.phase == Phase::Moving
            && now_ms.saturating_sub(e.at_ms) > ARRIVAL_LIMIT_MS
        {
            tracing::warn!(move_id = %e.move_id, alloc = %e.alloc_id, source = %e.source, "the source of an offline move neither committed nor aborted; dropping the arrival");
            let reason = format!(
                "the source neither committed nor aborted within {} s",
                ARRIVAL_LIMIT_MS / 1000
            );
            if let Err(err) = journal.advance(&e.move_id, Phase::Aborted, Some(reason)) {
                tracing::warn!(move_id = %e.move_id, error = %err, "cannot journal the abort");
            }
        }
    }
}

/// Whether an allocation report from this node about `alloc_id` at
/// `generation` must wait: the journal says the allocation left (or is
/// leaving) at that generation and the coordinators have not decided on
/// the move yet, so the report of its copy stopping here would read as the
/// work ending. Once they decided, it may go: refused, it tells them the
/// copy here stopped; accepted, its old generation is refused.
pub fn report_withheld(journal: &MoveJournal, alloc_id: &str, generation: u64) -> bool {
    journal.of_alloc(alloc_id).is_some_and(|e| {
        e.role == Role::Source
            && e.generation == generation
            && matches!(
                e.phase,
                Phase::Switching | Phase::Reported | Phase::Switched
            )
    })
}

fn check_name(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() || value.len() > MAX_NAME_BYTES {
        return Err(Status::invalid_argument(format!(
            "field `{field}` must be 1 to {MAX_NAME_BYTES} bytes, got {}",
            value.len()
        )));
    }
    Ok(())
}

/// The target's side of `AgentPeer.OfflineMove`: `node` is this agent.
/// The request is untrusted: names bounded, the desired allocation
/// decoded under a size limit and checked against the request, and an
/// offer taken only for an item this agent's balancer reserved for that
/// source.
pub fn serve(
    journal: &MoveJournal,
    node: &str,
    request: OfflineMoveRequest,
) -> Result<OfflineMoveReply, Status> {
    check_name("move_id", &request.move_id)?;
    let phase_of = |e: Option<MoveEntry>| OfflineMoveReply {
        phase: e.map_or(UNKNOWN, |e| e.phase.as_str()).to_string(),
    };
    let journal_error = |e: crate::balance::journal::JournalError| Status::internal(e.to_string());
    let ours = |e: &MoveEntry| {
        e.role == Role::Target && e.source == request.source_node && e.target == node
    };
    match request.action.as_str() {
        OFFER => {
            check_name("alloc_id", &request.alloc_id)?;
            check_name("source_node", &request.source_node)?;
            if let Some(existing) = journal.get(&request.move_id) {
                if ours(&existing) && existing.alloc_id == request.alloc_id {
                    return Ok(phase_of(Some(existing)));
                }
                return Err(Status::failed_precondition(format!(
                    "move {} is already recorded for another allocation or peer",
                    request.move_id
                )));
            }
            if !journal.is_reserved(&request.alloc_id, &request.source_node) {
                return Err(Status::failed_precondition(format!(
                    "no balancing reservation here for {} from {}: offer it through the negotiation first",
                    request.alloc_id, request.source_node
                )));
            }
            if request.desired_json.len() > MAX_DESIRED_BYTES {
                return Err(Status::invalid_argument(format!(
                    "field `desired_json` is {} bytes, over the limit of {MAX_DESIRED_BYTES}",
                    request.desired_json.len()
                )));
            }
            let mut desired: DesiredAlloc = serde_json::from_slice(&request.desired_json)
                .map_err(|e| Status::invalid_argument(format!("field `desired_json`: {e}")))?;
            if desired.alloc_id != request.alloc_id || desired.generation != request.generation {
                return Err(Status::invalid_argument(format!(
                    "field `desired_json` describes {} at generation {}, not {} at {}",
                    desired.alloc_id, desired.generation, request.alloc_id, request.generation
                )));
            }
            if !OFFLINE_MOVABLE_DRIVERS.contains(&desired.task.driver.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "field `desired_json`: driver {:?} does not move agent to agent (only {})",
                    desired.task.driver.chars().take(32).collect::<String>(),
                    OFFLINE_MOVABLE_DRIVERS.join(", ")
                )));
            }
            desired.generation = request.generation.saturating_add(1);
            desired.moving_out = None;
            let entry = MoveEntry {
                move_id: request.move_id.clone(),
                alloc_id: request.alloc_id.clone(),
                generation: request.generation,
                source: request.source_node.clone(),
                target: node.to_string(),
                peer_addr: request.source_addr.clone(),
                role: Role::Target,
                phase: Phase::Moving,
                at_ms: herd_api::clock::now_ms(),
                desired: Some(desired),
                reason: None,
            };
            journal
                .record(entry)
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            tracing::info!(move_id = %request.move_id, alloc = %request.alloc_id, source = %request.source_node, "offline balancing move accepted: journalled");
            Ok(phase_of(journal.get(&request.move_id)))
        }
        COMMIT | ABORT => {
            let Some(entry) = journal.get(&request.move_id).filter(ours) else {
                return Ok(phase_of(None));
            };
            let (phase, reason) = if request.action == COMMIT {
                (Phase::Switched, None)
            } else {
                let reason: String = request.reason.chars().take(512).collect();
                (Phase::Aborted, Some(format!("source: {reason}")))
            };
            let now = journal
                .advance(&entry.move_id, phase, reason)
                .map_err(journal_error)?;
            tracing::info!(move_id = %now.move_id, alloc = %now.alloc_id, phase = now.phase.as_str(), "offline balancing move: {}", request.action);
            Ok(phase_of(Some(now)))
        }
        STATUS => Ok(phase_of(journal.get(&request.move_id).filter(ours))),
        other => Err(Status::invalid_argument(format!(
            "field `action`: {:?} is not one of offer, commit, abort, status",
            other.chars().take(32).collect::<String>()
        ))),
    }
}

/// The source's end of an offline move: where the target is and what the
/// journal says.
#[derive(Clone)]
pub struct OfflineSource {
    /// This agent's journal.
    pub journal: MoveJournal,
    /// The move.
    pub move_id: String,
    /// This node.
    pub node: String,
    /// How to reach peers (None: TCP).
    pub connector: Option<herd_api::client::Connector>,
}

impl OfflineSource {
    fn entry(&self) -> Result<MoveEntry, String> {
        self.journal
            .get(&self.move_id)
            .ok_or_else(|| format!("move {} is not in the journal", self.move_id))
    }

    /// Whether the move is still before the switch-over (`moving`).
    pub fn still_moving(&self) -> bool {
        self.entry().is_ok_and(|e| e.phase == Phase::Moving)
    }

    /// Sends one `OfflineMove` call to the target of `entry`.
    pub async fn call(
        &self,
        entry: &MoveEntry,
        request: OfflineMoveRequest,
    ) -> Result<String, String> {
        // The other end of the move, as this agent's journal names it.
        let peer_node = match entry.role {
            Role::Source => &entry.target,
            Role::Target => &entry.source,
        };
        let mut peer = transfer::connect_via(&entry.peer_addr, peer_node, self.connector.as_ref())
            .map_err(|e| e.to_string())?;
        let mut call = tonic::Request::new(request);
        call.set_timeout(CALL_TIMEOUT);
        peer.offline_move(call)
            .await
            .map(|r| r.into_inner().phase)
            .map_err(|e| format!("{}: {}", e.code(), e.message()))
    }

    fn request(&self, action: &str, entry: &MoveEntry) -> OfflineMoveRequest {
        OfflineMoveRequest {
            action: action.to_string(),
            move_id: entry.move_id.clone(),
            alloc_id: entry.alloc_id.clone(),
            generation: entry.generation,
            source_node: self.node.clone(),
            ..Default::default()
        }
    }

    /// Offers the allocation, as `desired` runs it here, to the target.
    pub async fn offer(&self, desired: &DesiredAlloc) -> Result<(), String> {
        let entry = self.entry()?;
        let mut request = self.request(OFFER, &entry);
        request.desired_json = serde_json::to_vec(desired).map_err(|e| e.to_string())?;
        match self.call(&entry, request).await?.as_str() {
            "moving" => Ok(()),
            other => Err(format!("the target answered the offer with {other}")),
        }
    }

    /// The switch-over: journals `switching`, asks the target to commit,
    /// journals `switched` once it did. An error leaves `switching` (the
    /// target may have committed): [`resolve_switching`] settles it.
    pub async fn switch(&self) -> Result<u64, String> {
        let entry = self
            .journal
            .advance(&self.move_id, Phase::Switching, None)
            .map_err(|e| e.to_string())?;
        if entry.phase != Phase::Switching {
            return Err(format!(
                "move {} is {}, not switching",
                entry.move_id,
                entry.phase.as_str()
            ));
        }
        let deadline = tokio::time::Instant::now() + COMMIT_BUDGET;
        loop {
            match self.call(&entry, self.request(COMMIT, &entry)).await {
                Ok(phase) => return self.settle(&entry, &phase),
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(format!("the target did not answer the commit: {e}"))
                }
                Err(e) => {
                    tracing::debug!(move_id = %entry.move_id, error = %e, "commit unanswered; asking again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Records what the target said of a commit or a status question;
    /// a move reported to the coordinators meanwhile is theirs to settle,
    /// and the answer changes nothing.
    fn settle(&self, entry: &MoveEntry, phase: &str) -> Result<u64, String> {
        let to = match phase {
            // Refused: the target had taken over, and the coordinators
            // since refused it; this agent's own report will hear so too.
            "switched" | "accepted" | "refused" => Phase::Switched,
            _ => Phase::Aborted,
        };
        let reason = (to == Phase::Aborted).then(|| format!("the target answered {phase}"));
        let now = self
            .journal
            .advance(&entry.move_id, to, reason)
            .map_err(|e| e.to_string())?;
        match now.phase {
            Phase::Switched => Ok(entry.generation + 1),
            Phase::Aborted => Err(format!("the target did not take over: it says {phase}")),
            other => Err(format!(
                "the target answered {phase}, but the move is {} here: the coordinators settle it",
                other.as_str()
            )),
        }
    }

    /// Asks the target of a move reported unsettled to abort it, and
    /// whether it answered that it does not hold it as taken over
    /// (`aborted`, or no such move): then it never will, since its commit
    /// is journalled forward only and this source asks for none any more.
    /// False when it does not answer, or holds the move as switched.
    pub async fn target_disowns(&self, entry: &MoveEntry) -> bool {
        let mut request = self.request(ABORT, entry);
        request.reason = "the commit went unanswered; the coordinators settle the move".into();
        matches!(
            self.call(entry, request).await.as_deref(),
            Ok("aborted" | UNKNOWN)
        )
    }

    /// Gives the move up before the switch-over; a move in `switching` is
    /// left to [`resolve_switching`] instead (the target may own it).
    pub async fn abort(&self, reason: &str) -> Result<(), String> {
        let entry = self.entry()?;
        if entry.phase != Phase::Moving {
            if entry.phase == Phase::Switching {
                let this = self.clone();
                tokio::spawn(async move { resolve_switching(this).await });
            }
            return Ok(());
        }
        self.journal
            .advance(&self.move_id, Phase::Aborted, Some(reason.to_string()))
            .map_err(|e| e.to_string())?;
        let mut request = self.request(ABORT, &entry);
        request.reason = reason.to_string();
        if let Err(e) = self.call(&entry, request).await {
            tracing::debug!(move_id = %entry.move_id, error = %e, "the target did not hear the abort; its arrival lapses with its agent");
        }
        Ok(())
    }
}

/// Takes up the journal a new migration manager finds: a move this agent
/// was the source of and left in `moving` is aborted (its steps died with
/// the old manager, as a coordinator-recorded migration's source does on a
/// restart; the workload resumes here), the target told so. A move left in
/// `switching` is settled with the target once the set names it
/// ([`resolve_switching`]).
pub fn take_up(journal: &MoveJournal, node: &str, connector: Option<herd_api::client::Connector>) {
    for entry in journal.entries() {
        if entry.role != Role::Source || entry.phase != Phase::Moving {
            continue;
        }
        let source = OfflineSource {
            journal: journal.clone(),
            move_id: entry.move_id.clone(),
            node: node.to_string(),
            connector: connector.clone(),
        };
        tracing::info!(move_id = %entry.move_id, alloc = %entry.alloc_id, "an offline balancing move was cut short by a restart; aborting it");
        let reason = "the source agent restarted during the move";
        // Journalled before the first set is acted on, so that the move is
        // not started again; the target hears it when it can.
        if let Err(e) = journal.advance(&entry.move_id, Phase::Aborted, Some(reason.into())) {
            tracing::warn!(move_id = %entry.move_id, error = %e, "cannot abort the move");
            continue;
        }
        let mut request = source.request(ABORT, &entry);
        request.reason = reason.to_string();
        tokio::spawn(async move {
            if let Err(e) = source.call(&entry, request).await {
                tracing::debug!(move_id = %source.move_id, error = %e, "the target did not hear the abort");
            }
        });
    }
}

/// Settles a move the source left in `switching` (a commit unanswered, or
/// an agent restarted there): asks the target until it answers, then
/// journals what it says: switched (the target runs it), or aborted (it
/// never committed, and now never will: the abort is sent first).
pub async fn resolve_switching(source: OfflineSource) {
    loop {
        let Ok(entry) = source.entry() else {
            return;
        };
        if entry.phase != Phase::Switching {
            return;
        }
        let asked = source.call(&entry, source.request(STATUS, &entry)).await;
        let settled = match asked.as_deref() {
            Ok("moving") => source
                .call(&entry, source.request(COMMIT, &entry))
                .await
                .ok(),
            Ok(phase) => Some(phase.to_string()),
            Err(_) => None,
        };
        if let Some(phase) = settled {
            let _ = source.settle(&entry, &phase);
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herd_api::job::{JobType, TaskSpec};

    use super::*;

    fn desired(alloc: &str, generation: u64) -> DesiredAlloc {
        DesiredAlloc {
            alloc_id: alloc.into(),
            generation,
            job: "vms".into(),
            job_type: JobType::Service,
            task: TaskSpec {
                driver: "simvm".into(),
                command: None,
                args: Vec::new(),
                env: BTreeMap::new(),
                workdir: None,
                resources: Default::default(),
                config: BTreeMap::new(),
            },
            env: BTreeMap::new(),
            stop_after_disconnect: None,
            moving_out: None,
        }
    }

    fn entry(role: Role, phase: Phase) -> MoveEntry {
        MoveEntry {
            move_id: "off-1".into(),
            alloc_id: "a1".into(),
            generation: 1,
            source: "n1".into(),
            target: "n2".into(),
            peer_addr: "127.0.0.1:1".into(),
            role,
            phase,
            at_ms: 1,
            desired: (role == Role::Target).then(|| desired("a1", 2)),
            reason: None,
        }
    }

    /// What [`overlay`] makes of `allocs` with one entry of `role` in
    /// `phase`: the set as [`ids`], and the moves it closes.
    fn overlay_one(role: Role, phase: Phase, allocs: Vec<SetItem>) -> (Ids, Vec<String>) {
        let (set, close) = overlay(&[entry(role, phase)], allocs);
        (ids(&set), close)
    }

    /// A journal in a fresh directory holding `entries`; the directory
    /// lasts as long as the returned guard.
    fn journal_holding(entries: &[MoveEntry]) -> (tempfile::TempDir, MoveJournal) {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = MoveJournal::load(&dir.path().join("j.json")).expect("journal");
        for e in entries {
            journal.record(e.clone()).expect("record");
        }
        (dir, journal)
    }

    /// A set as (allocation, generation, role in a move) per item.
    type Ids = Vec<(String, u64, Option<String>)>;

    fn ids(set: &[SetItem]) -> Ids {
        set.iter()
            .map(|(d, m)| {
                (
                    d.alloc_id.clone(),
                    d.generation,
                    m.as_ref().map(|m| m.role.clone()),
                )
            })
            .collect()
    }

    #[test]
    fn the_source_moves_then_hides_what_left_until_the_coordinators_agree() {
        let stale = vec![(desired("a1", 1), None), (desired("a2", 1), None)];
        let (got, close) = overlay_one(Role::Source, Phase::Moving, stale.clone());
        assert_eq!(
            got,
            vec![
                ("a1".into(), 1, Some("source".into())),
                ("a2".into(), 1, None)
            ]
        );
        assert!(close.is_empty());
        for phase in [Phase::Switched, Phase::Accepted] {
            let (got, close) = overlay_one(Role::Source, phase, stale.clone());
            assert_eq!(got, vec![("a2".into(), 1, None)], "{phase:?}");
            assert!(close.is_empty(), "the stale set still names it here");
        }
        // The coordinators' set no longer lists it here: closed.
        let fresh = vec![(desired("a2", 1), None)];
        let (_, close) = overlay_one(Role::Source, Phase::Accepted, fresh.clone());
        assert_eq!(close, vec!["off-1".to_string()]);
        // Switched, not yet accepted: kept open whatever the set says.
        let (_, close) = overlay_one(Role::Source, Phase::Switched, fresh);
        assert!(close.is_empty());
    }

    #[test]
    fn the_target_readies_then_runs_what_arrived_and_gives_way_when_refused() {
        let stale = vec![(desired("b1", 4), None)];
        let (got, _) = overlay_one(Role::Target, Phase::Moving, stale.clone());
        assert_eq!(
            got,
            vec![
                ("b1".into(), 4, None),
                ("a1".into(), 2, Some("target".into()))
            ]
        );
        let (got, close) = overlay_one(Role::Target, Phase::Switched, stale.clone());
        assert_eq!(got, vec![("b1".into(), 4, None), ("a1".into(), 2, None)]);
        assert!(close.is_empty());
        // Refused: not added (its copy stops), and the entry closes.
        let (got, close) = overlay_one(Role::Target, Phase::Refused, stale.clone());
        assert_eq!(got, vec![("b1".into(), 4, None)]);
        assert_eq!(close, vec!["off-1".to_string()]);
        // Accepted and the coordinators list it here at generation 2: closed.
        let fresh = vec![(desired("b1", 4), None), (desired("a1", 2), None)];
        let (got, close) = overlay_one(Role::Target, Phase::Accepted, fresh);
        assert_eq!(got, vec![("b1".into(), 4, None), ("a1".into(), 2, None)]);
        assert_eq!(close, vec!["off-1".to_string()]);
    }

    #[test]
    fn the_stop_report_of_a_moved_copy_waits_for_the_coordinators_decision() {
        let (_dir, journal) = journal_holding(&[entry(Role::Source, Phase::Moving)]);
        assert!(!report_withheld(&journal, "a1", 1), "still the source's");
        journal
            .advance("off-1", Phase::Switching, None)
            .expect("switching");
        assert!(report_withheld(&journal, "a1", 1));
        assert!(!report_withheld(&journal, "a1", 2), "another generation");
        assert!(!report_withheld(&journal, "a2", 1));
        journal
            .advance("off-1", Phase::Switched, None)
            .expect("switched");
        assert!(report_withheld(&journal, "a1", 1));
        // The coordinators decided: the report may go.
        journal
            .advance("off-1", Phase::Refused, Some("stopped".into()))
            .expect("refused");
        assert!(!report_withheld(&journal, "a1", 1));
    }

    #[test]
    fn an_arrival_whose_source_went_silent_is_given_up() {
        let (_dir, journal) = journal_holding(&[entry(Role::Target, Phase::Moving)]);
        expire_stale_arrivals(&journal, 1 + ARRIVAL_LIMIT_MS);
        assert_eq!(journal.get("off-1").map(|e| e.phase), Some(Phase::Moving));
        expire_stale_arrivals(&journal, 2 + ARRIVAL_LIMIT_MS);
        assert_eq!(journal.get("off-1").map(|e| e.phase), Some(Phase::Aborted));
    }

    #[test]
    fn an_offer_needs_a_reservation_and_a_matching_allocation() {
        let (_dir, journal) = journal_holding(&[]);
        let offer = |json: Vec<u8>| OfflineMoveRequest {
            action: OFFER.into(),
            move_id: "off-1".into(),
            alloc_id: "a1".into(),
            generation: 1,
            source_node: "n1".into(),
            source_addr: "127.0.0.1:1".into(),
            desired_json: json,
            reason: String::new(),
        };
        let good = serde_json::to_vec(&desired("a1", 1)).expect("json");
        let err = serve(&journal, "n2", offer(good.clone())).expect_err("no reservation");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        journal.reserve("a1", "n1", herd_api::clock::now_ms() + 60_000);
        let err = serve(&journal, "n2", offer(b"{".to_vec())).expect_err("bad json");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let other = serde_json::to_vec(&desired("a9", 1)).expect("json");
        assert!(serve(&journal, "n2", offer(other)).is_err());
        // A peer's spec may not start a driver that runs commands.
        let mut exec = desired("a1", 1);
        exec.task.driver = "exec".into();
        exec.task.command = Some("/bin/sh".into());
        let err = serve(
            &journal,
            "n2",
            offer(serde_json::to_vec(&exec).expect("json")),
        )
        .expect_err("exec refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("does not move"), "{}", err.message());
        assert!(journal.get("off-1").is_none(), "nothing journalled");
        let reply = serve(&journal, "n2", offer(good.clone())).expect("offer");
        assert_eq!(reply.phase, "moving");
        let e = journal.get("off-1").expect("journalled");
        assert_eq!(e.desired.as_ref().map(|d| d.generation), Some(2));
        // Repeated: answered from the journal.
        assert_eq!(
            serve(&journal, "n2", offer(good)).expect("again").phase,
            "moving"
        );
        let commit = OfflineMoveRequest {
            action: COMMIT.into(),
            move_id: "off-1".into(),
            source_node: "n1".into(),
            ..Default::default()
        };
        // Only the source that offered may commit.
        let stranger = OfflineMoveRequest {
            source_node: "n3".into(),
            ..commit.clone()
        };
        assert_eq!(
            serve(&journal, "n2", stranger).expect("status").phase,
            UNKNOWN
        );
        assert_eq!(
            serve(&journal, "n2", commit).expect("commit").phase,
            "switched"
        );
        // An abort after the commit changes nothing.
        let abort = OfflineMoveRequest {
            action: ABORT.into(),
            move_id: "off-1".into(),
            source_node: "n1".into(),
            ..Default::default()
        };
        assert_eq!(
            serve(&journal, "n2", abort).expect("abort").phase,
            "switched"
        );
        let bad = OfflineMoveRequest {
            action: "steal".into(),
            move_id: "off-1".into(),
            ..Default::default()
        };
        assert!(serve(&journal, "n2", bad).is_err());
    }

    #[test]
    fn a_reported_move_stays_paused_until_the_coordinators_settle_it() {
        let stale = vec![(desired("a1", 1), None), (desired("a2", 1), None)];
        // Reported: still the source's move (the copy stays paused).
        let (set, close) = overlay(&[entry(Role::Source, Phase::Reported)], stale.clone());
        assert_eq!(
            ids(&set),
            vec![
                ("a1".into(), 1, Some("source".into())),
                ("a2".into(), 1, None)
            ]
        );
        assert_eq!(
            set[0].1.as_ref().map(|m| m.phase.as_str()),
            Some("switching")
        );
        assert!(close.is_empty());
        // Kept: the set as the coordinators send it, the move closed, so
        // the copy resumes.
        let (got, close) = overlay_one(Role::Source, Phase::Kept, stale);
        assert_eq!(got, vec![("a1".into(), 1, None), ("a2".into(), 1, None)]);
        assert_eq!(close, vec!["off-1".to_string()]);
    }

    #[test]
    fn a_late_answer_of_the_target_is_ignored_once_the_move_was_reported() {
        let (_dir, journal) = journal_holding(&[entry(Role::Source, Phase::Moving)]);
        journal
            .advance("off-1", Phase::Switching, None)
            .expect("switching");
        journal
            .advance("off-1", Phase::Reported, None)
            .expect("reported");
        assert!(report_withheld(&journal, "a1", 1));
        let source = OfflineSource {
            journal: journal.clone(),
            move_id: "off-1".into(),
            node: "n1".into(),
            connector: None,
        };
        let e = journal.get("off-1").expect("entry");
        for late in ["aborted", "unknown", "switched"] {
            let err = source
                .settle(&e, late)
                .expect_err("not settled by the target");
            assert!(err.contains("coordinators"), "{err}");
            assert_eq!(journal.get("off-1").map(|e| e.phase), Some(Phase::Reported));
        }
        // Kept by the coordinators: the report of its copy may go again.
        journal
            .advance("off-1", Phase::Kept, Some("target down".into()))
            .expect("kept");
        assert!(!report_withheld(&journal, "a1", 1));
    }

    #[tokio::test]
    async fn a_target_that_does_not_answer_does_not_disown_the_move() {
        let mut e = entry(Role::Source, Phase::Moving);
        // Nothing listens there.
        e.peer_addr = "127.0.0.1:1".into();
        let (_dir, journal) = journal_holding(&[e.clone()]);
        let source = OfflineSource {
            journal,
            move_id: "off-1".into(),
            node: "n1".into(),
            connector: None,
        };
        assert!(!source.target_disowns(&e).await);
    }
}
