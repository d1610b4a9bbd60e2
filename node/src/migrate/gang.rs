//! A gang member's source: its learner stops at the step the whole gang
//! agreed on, so that every member's checkpoint is of the same step.
//!
//! Through the checkpoint protocol of `docs/dljob.md`, in the learner's
//! checkpoint directory, while the migration is `preparing` (the target
//! already prepared):
//! 1. **Probe**: two checkpoint requests [`PACE_WINDOW`] apart give the
//!    learner's step and its pace.
//! 2. **Agree**: the source reports both (`gang_step`) and asks again until
//!    the reply carries the group's stop step, which the coordinators choose
//!    once every member reported, ahead of every learner.
//! 3. **Stop there**: the source creates `checkpoint.hold` and asks for a
//!    checkpoint `at_step` that step; the learner runs on to it,
//!    checkpoints, answers and holds there. An answer of another step (it
//!    was past it already) fails the move, and the group with it.
//!
//! The source then stops the learner as any checkpoint move does (SIGTERM:
//! it checkpoints the step it holds at and exits), checks that `latest`
//! names that step's checkpoint, and removes the hold before the copy.
//! However the move ends otherwise, the hold is removed (by the source on
//! failure, by the manager once the allocation no longer moves out), so a
//! learner never stays held.

use std::path::Path;
use std::time::Duration;

use herd_actors::toy_train::checkpoint::{self, DoneRecord, Request};
use tokio::time::Instant;

use super::report::MigrationReporter;

/// Time between the two probes that measure a learner's pace.
pub const PACE_WINDOW: Duration = Duration::from_secs(1);
/// How long the learner may take to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long agreeing on the step and reaching it may take in all; the
/// leader's phase deadline ends a slower move first.
const AGREE_BUDGET: Duration = Duration::from_secs(90);
/// How often the answer file is looked at.
const POLL: Duration = Duration::from_millis(20);
/// How often the coordinators are asked for the group's step.
const AGREE_POLL: Duration = Duration::from_millis(200);

/// Where this member's learner stopped: the gang's step and the
/// checkpoint it wrote there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// The gang's common step.
    pub step: u64,
    /// The checkpoint file the learner wrote at it.
    pub checkpoint: String,
}

/// Runs steps 1 to 3 of the module's documentation for migration `id`,
/// whose learner checkpoints into `dir`: the learner holds at the gang's
/// step on success. On failure the hold is released.
pub async fn stop_at_common_step(
    dir: &Path,
    id: &str,
    reporter: &MigrationReporter,
) -> Result<Stopped, String> {
    let result = agree_and_stop(dir, id, reporter).await;
    if result.is_err() {
        release(dir, id);
    }
    result
}

async fn agree_and_stop(
    dir: &Path,
    id: &str,
    reporter: &MigrationReporter,
) -> Result<Stopped, String> {
    let deadline = Instant::now() + AGREE_BUDGET;
    let first = ask(dir, &request(id, "probe-1", None), PROBE_TIMEOUT).await?;
    let first_at = Instant::now();
    tokio::time::sleep(PACE_WINDOW).await;
    let second = ask(dir, &request(id, "probe-2", None), PROBE_TIMEOUT).await?;
    let elapsed_ms = first_at.elapsed().as_millis().max(1);
    let pace_milli = u128::from(second.step.saturating_sub(first.step)) * 1_000_000 / elapsed_ms;
    let pace_milli = u64::try_from(pace_milli).unwrap_or(u64::MAX);
    tracing::info!(migration = %id, step = second.step, pace_milli, "learner probed; agreeing on the gang's step");

    let stop = loop {
        let reply = reporter
            .gang_step(id, second.step, pace_milli)
            .await
            .map_err(|e| format!("cannot agree on the gang's step: {e}"))?;
        if let Some(step) = reply.stop_step {
            break step;
        }
        if Instant::now() >= deadline {
            return Err("the gang's other members never reported their steps".into());
        }
        tokio::time::sleep(AGREE_POLL).await;
    };
    tracing::info!(migration = %id, step = stop, "stopping the learner at the gang's step");
    checkpoint::write_atomic(dir, checkpoint::HOLD, id.as_bytes())
        .map_err(|e| format!("cannot hold the learner: {e}"))?;
    let asked = request(id, "stop", Some(stop));
    let left = deadline.saturating_duration_since(Instant::now());
    let done = ask(dir, &asked, left).await?;
    if done.step != stop {
        return Err(format!(
            "the learner was at step {} already, past the gang's step {stop}",
            done.step
        ));
    }
    Ok(Stopped {
        step: stop,
        checkpoint: done.checkpoint,
    })
}

/// After the learner stopped (SIGTERM while it held): checks that its
/// newest checkpoint is the one of the gang's step, then removes the hold
/// so that it does not travel with the checkpoint.
pub fn check_stopped(dir: &Path, id: &str, stopped: &Stopped) -> Result<(), String> {
    let latest = std::fs::read_to_string(dir.join(checkpoint::LATEST))
        .map_err(|e| format!("cannot read the learner's latest checkpoint: {e}"))?;
    release(dir, id);
    if latest.trim() != stopped.checkpoint {
        return Err(format!(
            "the learner did not stop at the gang's step {}: its newest checkpoint is {:?}, not {:?}",
            stopped.step,
            latest.trim(),
            stopped.checkpoint
        ));
    }
    Ok(())
}

/// Lets the learner go on: removes the hold, and a request of migration
/// `id` still pending. Errors are logged only (a missing file is the usual
/// case).
pub fn release(dir: &Path, id: &str) {
    release_hold(dir);
    if let Ok(Some(pending)) = checkpoint::pending(dir) {
        if pending.id.starts_with(id) {
            let _ = std::fs::remove_file(dir.join(checkpoint::REQUEST));
        }
    }
}

/// Removes `checkpoint.hold` from `dir` if it is there: called for every
/// checkpoint-moved allocation that no longer moves out, so that a learner
/// held by a move that ended any other way (an abort decided elsewhere, an
/// agent restarted mid-move) goes on.
pub fn release_hold(dir: &Path) {
    let path = dir.join(checkpoint::HOLD);
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::info!(path = %path.display(), "released a learner held for a gang move"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot release a held learner")
        }
    }
}

fn request(id: &str, what: &str, at_step: Option<u64>) -> Request {
    Request {
        id: format!("{id}-{what}"),
        at_step,
    }
}

/// Writes `request` and waits up to `timeout` for the answer echoing it.
async fn ask(dir: &Path, request: &Request, timeout: Duration) -> Result<DoneRecord, String> {
    checkpoint::write_atomic(dir, checkpoint::REQUEST, request.encode().as_bytes())
        .map_err(|e| format!("cannot ask the learner for a checkpoint: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(done) = read_done(dir).filter(|d| d.request == request.id) {
            return Ok(done);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the learner did not answer checkpoint request {} within {timeout:?} \
                 (does it follow the protocol of docs/dljob.md, `at_step` and `checkpoint.hold` included?)",
                request.id
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn read_done(dir: &Path) -> Option<DoneRecord> {
    let bytes = std::fs::read(dir.join(checkpoint::DONE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}
