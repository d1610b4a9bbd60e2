//! The source's side of a migration: the steps the agent that runs the
//! allocation takes to move it, reported to the coordinators one by one.
//!
//! 1. `preparing`: ask the target to ready itself (`PrepareIncoming`).
//! 2. `transferring`: move the state while the workload runs (a live
//!    move's pre-copy), or stop it at a checkpoint and copy the checkpoint
//!    directory (a checkpoint move).
//! 3. `switching`: the source is paused or stopped and the target holds
//!    everything (a live move's target says so, `ConfirmIncoming`: the
//!    source's program is done when it sent the last byte, the target's
//!    only when it took it in); then ask for the switch-over.
//!
//! A gang member's learner first stops at the step its gang agreed on
//! ([`super::gang`]), between 1 and 2.
//!
//! Any failure aborts the migration: the source's copy runs on (its
//! workload actor starts or resumes it once the assignment no longer names
//! the migration) and the target drops what it received.
//!
//! The reports of steps 1 and 2 are Raft round trips that nothing on the
//! source waits for: `preparing` is sent while the target readies itself,
//! `transferring` while the move runs, and each is awaited only before the
//! next report (phases advance one at a time). Step 3's two reports are in
//! series: the switch-over is refused until `switching` is in. Each step
//! leaves a timing mark in the log (`source.*`,
//! `herd_actors::driver::move_timing`) for `herd bench migrate`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_actors::driver::live::{IncomingEndpoints, MoveLimits, MoveProgress};
use herd_actors::driver::move_timing;
use herd_actors::driver::MigrationMode;
use herd_actors::workload::{MoveOutReady, SupervisorMsg};
use herd_api::migration::MigrationPhase;
use herd_api::proto::agent::agent_peer_client::AgentPeerClient;
use herd_api::proto::agent::{MigrationAssignment, PrepareIncomingRequest};
use ractor::ActorRef;
use tonic::transport::Channel;

use super::gang;
use super::report::MigrationReporter;
use super::transfer::{self, SendOptions, TransferError};

/// The checkpoint directory of an allocation, relative to its directory:
/// what a checkpoint move copies (the dljob driver's `HERD_CHECKPOINT_DIR`).
pub const CHECKPOINT_SUBDIR: &str = "checkpoints";
/// How many Transfer streams a checkpoint copy may open after cuts.
const TRANSFER_ATTEMPTS: u32 = 5;
/// How long the source waits for its workload to stop or hand its handle.
const MOVE_OUT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a live move's target may take to take in the last of the
/// state once the source's program sent it.
const CONFIRM_WAIT: Duration = Duration::from_secs(30);
/// How long the source waits before asking a target again whose agent
/// could not be reached.
const CONFIRM_RETRY: Duration = Duration::from_millis(200);
/// The shortest time a step is given whatever its phase deadline says.
const MIN_STEP: Duration = Duration::from_secs(5);

/// FAULT-INJECTION HOOK for tests: `PHASE:MS` makes a source hold for MS
/// milliseconds once it reached PHASE (`transferring`: its workload
/// stopped or handed over, nothing sent yet; `switching`: everything sent,
/// the switch-over not asked for), so that a test can kill an agent or a
/// coordinator at that point. Unset in production.
pub const FAULT_HOLD_ENV: &str = "HERD_FAULT_MIGRATION_HOLD";

/// How long [`FAULT_HOLD_ENV`] says to hold at `phase`, if at all.
fn fault_hold_at(phase: MigrationPhase) -> Option<Duration> {
    let value = std::env::var(FAULT_HOLD_ENV).ok()?;
    let (at, ms) = value.split_once(':')?;
    (at == phase.as_str())
        .then(|| ms.parse::<u64>().ok())
        .flatten()
        .map(Duration::from_millis)
}

/// Holds for as long as [`FAULT_HOLD_ENV`] says at `phase`; the record
/// shows `phase` by then (`pending`, its report, is awaited first), so a
/// test that waits for the phase finds the source holding.
async fn fault_hold(phase: MigrationPhase, pending: &mut PendingReport) -> Result<(), String> {
    let Some(hold) = fault_hold_at(phase) else {
        return Ok(());
    };
    pending.done().await?;
    tracing::warn!(
        phase = phase.as_str(),
        ms = hold.as_millis() as u64,
        "fault injection: holding the migration"
    );
    tokio::time::sleep(hold).await;
    Ok(())
}

/// A phase report sent in the background while the flow goes on; awaited
/// before the next report.
struct PendingReport {
    phase: MigrationPhase,
    task: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl PendingReport {
    /// Sends `phase` for migration `id` now, in a task of its own.
    fn send(reporter: &MigrationReporter, id: &str, alloc: &str, phase: MigrationPhase) -> Self {
        let (reporter, id, alloc) = (reporter.clone(), id.to_string(), alloc.to_string());
        let task = tokio::spawn(async move {
            reporter
                .advance(&id, phase, 0, 0)
                .await
                .map_err(|e| format!("cannot report {}: {e}", phase.as_str()))?;
            move_timing::mark(&alloc, &format!("source.{}_reported", phase.as_str()), "");
            Ok(())
        });
        Self {
            phase,
            task: Some(task),
        }
    }

    /// Waits for the report's answer (once; later calls return at once).
    async fn done(&mut self) -> Result<(), String> {
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        task.await.map_err(|e| {
            format!(
                "the {} report's task ended abnormally: {e}",
                self.phase.as_str()
            )
        })?
    }
}

impl Drop for PendingReport {
    fn drop(&mut self) {
        // A flow that failed meanwhile reports its abort; a late phase
        // report after it would only be refused.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One migration out of this node, as its assignment describes it.
#[derive(Clone)]
pub struct Outgoing {
    /// This node's name.
    pub node: String,
    /// The allocation that moves.
    pub alloc_id: String,
    /// Its generation here (the migration's `from_generation`).
    pub generation: u64,
    /// The allocation's directory on this node.
    pub alloc_dir: PathBuf,
    /// How its driver moves it.
    pub mode: MigrationMode,
    /// The migration, as assigned.
    pub assignment: MigrationAssignment,
    /// How to reach the target's `AgentPeer` service (None: TCP).
    pub peers: Option<herd_api::client::Connector>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("node", &self.node)
            .field("alloc_id", &self.alloc_id)
            .field("generation", &self.generation)
            .field("alloc_dir", &self.alloc_dir)
            .field("mode", &self.mode)
            .field("assignment", &self.assignment)
            .field("peers", &self.peers.as_ref().map(|_| "a connector"))
            .finish()
    }
}

/// Runs the source's steps to the switch-over; on failure reports the abort
/// (to the coordinators, and to the target) and returns why.
pub async fn run(
    outgoing: Outgoing,
    supervisor: ActorRef<SupervisorMsg>,
    reporter: MigrationReporter,
) -> Result<(), String> {
    let id = outgoing.assignment.id.clone();
    let result = steps(&outgoing, &supervisor, &reporter).await;
    if let Err(reason) = &result {
        tracing::warn!(migration = %id, alloc = %outgoing.alloc_id, %reason, "migration out failed; aborting it");
        if !outgoing.assignment.group.is_empty() {
            gang::release(&outgoing.alloc_dir.join(CHECKPOINT_SUBDIR), &id);
        }
        let may_abort = reporter.may_abort_target();
        if let (true, Ok(mut peer)) = (
            may_abort,
            transfer::connect_via(
                &outgoing.assignment.peer_addr,
                &outgoing.assignment.peer_node,
                outgoing.peers.as_ref(),
            ),
        ) {
            let _ = transfer::abort_incoming(&mut peer, &id, reason).await;
        }
        if let Err(e) = reporter.abort(&id, reason).await {
            tracing::warn!(migration = %id, error = %e, "cannot report the abort; the leader's deadline ends it");
        }
    }
    result
}

async fn steps(
    outgoing: &Outgoing,
    supervisor: &ActorRef<SupervisorMsg>,
    reporter: &MigrationReporter,
) -> Result<(), String> {
    let a = &outgoing.assignment;
    let alloc = outgoing.alloc_id.as_str();
    let started = Instant::now();
    move_timing::mark(alloc, "source.begin", "");
    let mut preparing = PendingReport::send(reporter, &a.id, alloc, MigrationPhase::Preparing);
    let mut peer = transfer::connect_via(&a.peer_addr, &a.peer_node, outgoing.peers.as_ref())
        .map_err(|e| e.to_string())?;
    let request = PrepareIncomingRequest {
        migration_id: a.id.clone(),
        alloc_id: outgoing.alloc_id.clone(),
        source_node: outgoing.node.clone(),
        kind: a.kind.clone(),
    };
    let prepared = transfer::prepare(&mut peer, &request)
        .await
        .map_err(|e| format!("the target {} could not prepare: {e}", a.peer_node))?;
    move_timing::mark(alloc, "source.target_ready", "");
    preparing.done().await?;
    // A gang member's learner first stops at the step the gang agrees on.
    let gang_stop = if a.group.is_empty() {
        None
    } else if outgoing.mode != MigrationMode::CheckpointRestart {
        return Err(format!(
            "a gang moves through checkpoints only, and the {} driver moves {}",
            a.kind,
            outgoing.mode.as_str()
        ));
    } else {
        let dir = outgoing.alloc_dir.join(CHECKPOINT_SUBDIR);
        Some(gang::stop_at_common_step(&dir, &a.id, reporter).await?)
    };
    let mut transferring =
        PendingReport::send(reporter, &a.id, alloc, MigrationPhase::Transferring);
    let (bytes, rounds, downtime_ms) = match outgoing.mode {
        MigrationMode::CheckpointRestart => {
            let ready = move_out(outgoing, supervisor, true).await?;
            let stopped_at = Instant::now();
            let dir = outgoing.alloc_dir.join(CHECKPOINT_SUBDIR);
            if let Some(stopped) = &gang_stop {
                gang::check_stopped(&dir, &a.id, stopped)?;
            }
            fault_hold(MigrationPhase::Transferring, &mut transferring).await?;
            let options = SendOptions {
                bandwidth_bytes_per_sec: bandwidth(a),
                ..SendOptions::default()
            };
            let stats = transfer::send_with_resume(
                &mut peer,
                &request,
                &dir,
                &options,
                TRANSFER_ATTEMPTS,
                &|_| {},
            )
            .await
            .map_err(|e| format!("copying the checkpoint failed: {e}"))?;
            tracing::info!(
                migration = %a.id,
                step = ?ready.exit,
                bytes = stats.bytes_sent,
                "checkpoint copied to the target"
            );
            let moved = stats.bytes_sent + stats.bytes_skipped;
            // The workload is down from its stop until the target starts it
            // after the switch-over; measured here up to the switch.
            (moved, 1, stopped_at.elapsed().as_millis() as u64)
        }
        MigrationMode::LivePreCopy => {
            let ready = move_out(outgoing, supervisor, false).await?;
            move_timing::mark(alloc, "source.handed_over", "");
            fault_hold(MigrationPhase::Transferring, &mut transferring).await?;
            let endpoints = IncomingEndpoints {
                main: prepared.endpoint.clone(),
                extra: prepared.endpoints.clone().into_iter().collect(),
                target_node: Some(a.peer_node.clone()),
            };
            let limits = MoveLimits {
                downtime_limit: Duration::from_millis(a.downtime_limit_ms.max(1)),
                bandwidth_bytes_per_sec: bandwidth(a),
                deadline: step_budget(a),
            };
            let last = Arc::new(AtomicU64::new(0));
            let seen = last.clone();
            let progress = move |p: MoveProgress| seen.store(p.bytes, Ordering::Relaxed);
            let stats = ready
                .driver
                .migrate_out(&ready.handle, &endpoints, &limits, &progress)
                .await
                .map_err(|e| format!("the live move failed: {e}"))?;
            move_timing::mark(alloc, "source.moved", "");
            (
                stats.bytes.max(last.load(Ordering::Relaxed)),
                stats.rounds,
                stats.downtime_ms,
            )
        }
        MigrationMode::None | MigrationMode::RequestKvCache => {
            return Err(format!(
                "the {} driver's workloads cannot move whole ({} moves)",
                a.kind,
                outgoing.mode.as_str()
            ))
        }
    };
    transferring.done().await?;
    // A live move's target confirms it took in the whole state while
    // `switching` is reported: the switch-over is asked for after both.
    let switching = async {
        reporter
            .advance(&a.id, MigrationPhase::Switching, bytes, rounds)
            .await
            .map_err(|e| format!("cannot report switching: {e}"))
    };
    let confirmed = async {
        match outgoing.mode {
            MigrationMode::LivePreCopy => confirm_target(&mut peer, outgoing).await,
            _ => Ok(()),
        }
    };
    let (switching, confirmed) = tokio::join!(switching, confirmed);
    confirmed?;
    switching?;
    move_timing::mark(alloc, "source.switching_reported", "");
    if let Some(hold) = fault_hold_at(MigrationPhase::Switching) {
        tracing::warn!(
            phase = "switching",
            ms = hold.as_millis() as u64,
            "fault injection: holding the migration"
        );
        tokio::time::sleep(hold).await;
    }
    let reply = reporter
        .switch(&a.id, bytes, rounds, downtime_ms)
        .await
        .map_err(|e| format!("the switch-over was refused: {e}"))?;
    move_timing::mark(alloc, "source.switched", "");
    if reply.phase == MigrationPhase::Switching.as_str() {
        // A gang member: the group switches over once every member asked;
        // the assignment set says how it ended.
        tracing::info!(
            migration = %a.id,
            alloc = %outgoing.alloc_id,
            group = %a.group,
            step = ?gang_stop.as_ref().map(|s| s.step),
            bytes,
            "ready to switch over; waiting for the rest of the gang"
        );
        return Ok(());
    }
    tracing::info!(
        migration = %a.id,
        alloc = %outgoing.alloc_id,
        target = %a.peer_node,
        phase = %reply.phase,
        generation = reply.generation,
        bytes,
        downtime_ms,
        total_ms = started.elapsed().as_millis() as u64,
        "migrated out"
    );
    Ok(())
}

/// Asks the target whether it holds the whole state of a live move. A
/// target's agent of a release before `ConfirmIncoming` cannot say: the
/// source's word (its program sent everything) is taken, as it was then.
async fn confirm_target(
    peer: &mut AgentPeerClient<Channel>,
    outgoing: &Outgoing,
) -> Result<(), String> {
    let a = &outgoing.assignment;
    let deadline = Instant::now() + CONFIRM_WAIT;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match transfer::confirm_incoming(peer, &a.id, &outgoing.node, wait).await {
            Ok(()) => {
                move_timing::mark(&outgoing.alloc_id, "source.target_confirmed", "");
                return Ok(());
            }
            Err(TransferError::Refused {
                code: tonic::Code::Unimplemented,
                ..
            }) => {
                tracing::warn!(migration = %a.id, target = %a.peer_node, "the target's agent cannot confirm what it holds (an older release); switching over on the source's word");
                return Ok(());
            }
            // The call was cut (the target's agent restarting): ask the
            // restarted agent, which takes the arrival up from its disk.
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tracing::info!(migration = %a.id, target = %a.peer_node, error = %e, "asking the target to confirm again");
                tokio::time::sleep(CONFIRM_RETRY).await;
            }
            Err(e) => {
                return Err(format!(
                    "the target {} does not hold the whole state: {e}",
                    a.peer_node
                ))
            }
        }
    }
}

/// Asks the workload actor for the workload, stopped at a checkpoint
/// (`stop`) or running (a live move).
async fn move_out(
    outgoing: &Outgoing,
    supervisor: &ActorRef<SupervisorMsg>,
    stop: bool,
) -> Result<MoveOutReady, String> {
    let asked = ractor::call_t!(
        supervisor,
        |reply| SupervisorMsg::MoveOut {
            alloc_id: outgoing.alloc_id.clone(),
            generation: outgoing.generation,
            migration_id: outgoing.assignment.id.clone(),
            stop,
            reply,
        },
        MOVE_OUT_TIMEOUT.as_millis() as u64
    );
    match asked {
        Ok(Ok(ready)) => Ok(ready),
        Ok(Err(e)) => Err(format!("the workload cannot move out: {e}")),
        Err(e) => Err(format!("the workload supervisor did not answer: {e}")),
    }
}

fn bandwidth(a: &MigrationAssignment) -> Option<u64> {
    (a.bandwidth_bytes_per_sec > 0).then_some(a.bandwidth_bytes_per_sec)
}

/// How long a step may take: up to the phase deadline the leader set, but
/// never less than [`MIN_STEP`].
fn step_budget(a: &MigrationAssignment) -> Duration {
    let now = herd_api::clock::now_ms();
    Duration::from_millis(a.phase_deadline_ms.saturating_sub(now)).max(MIN_STEP)
}
