//! Live migration of a SIMULATED VM between two agents: the `herd sim-vm`
//! processes move the memory between themselves over their own migration
//! stream ([`super::stream`]), the driver orchestrates them through their
//! control sockets ([`super::control`]), as the real `vm` driver
//! orchestrates QEMU through QMP. The agents' `AgentPeer` service is not
//! on the memory's path (it carries files: checkpoints).
//!
//! - **Target** ([`prepare_incoming`]): the spec's `herd sim-vm` started as
//!   a normal start would (same command line, same handle, persisted by the
//!   agent), plus `--incoming HOST:0`: paused, listening on a free port of
//!   the driver's migration host (the node's `migration_host`, by default
//!   the host of the agent's `advertise` address; loopback for a driver
//!   built without a node's configuration), and `--migration-source-node`
//!   naming the spec's `HERD_MIGRATION_SOURCE_NODE` (under TLS only that
//!   node's certificate may send the memory; see [`super::tls`]). The
//!   endpoint is the address it reports over its control socket, the
//!   address it bound.
//! - **Source** ([`migrate_out`]): `migrate` to that address with the
//!   downtime limit, the bandwidth cap and the target node its agent
//!   assigned the move to (checked under TLS), then `status` every 50 ms for
//!   the progress, until `completed` (the target acknowledged the whole
//!   memory with a matching checksum; the source stays paused, which
//!   `state` reports as `Paused`). Past the deadline, or on any failure,
//!   the move is cancelled and the VM runs on here.
//! - **Abort** ([`cancel_out`]): `cancel`; the guest runs again here,
//!   unthrottled.
//! - **Switch** ([`finish_incoming`]): waits until the memory has arrived,
//!   then `resume`: the guest goes on writing from where the source paused.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::control::{self, ControlError, GuestMode, InPhase, OutPhase, Request};
use super::memory::PAGE_SIZE;
use super::SimVmDriver;
use crate::driver::exec::Detail;
use crate::driver::live::{
    IncomingEndpoints, MoveLimits, MoveProgress, MoveStats, ProgressSink, SOURCE_NODE_ENV,
};
use crate::driver::{Driver, DriverError, WorkloadHandle, WorkloadSpec, WorkloadState};

/// How often a move in flight is looked at.
const POLL: Duration = Duration::from_millis(50);
/// How long a started process may take to answer on its control socket.
const UP_WAIT: Duration = Duration::from_secs(30);
/// How long a cancel or an arrival may take to settle.
const SETTLE_WAIT: Duration = Duration::from_secs(30);
/// The grace a stale or half-prepared target gets when it is stopped.
const TARGET_STOP_GRACE: Duration = Duration::from_secs(5);

/// The control socket of the simulated VM of `handle`.
pub fn control_socket(handle: &WorkloadHandle) -> Result<PathBuf, DriverError> {
    let exec = SimVmDriver::exec_handle(handle)?;
    Ok(Detail::of(&exec)?.alloc_dir.join(control::CONTROL_SOCKET))
}

fn io(handle: &WorkloadHandle, message: impl std::fmt::Display) -> DriverError {
    DriverError::Io {
        alloc: handle.alloc_id.clone(),
        message: message.to_string(),
    }
}

/// [`Driver::prepare_incoming`] for simulated VMs; see the module
/// documentation.
pub(super) async fn prepare_incoming(
    driver: &SimVmDriver,
    spec: &WorkloadSpec,
) -> Result<(WorkloadHandle, IncomingEndpoints), DriverError> {
    let source = spec.env.get(SOURCE_NODE_ENV);
    if let Some(name) = source.filter(|name| !herd_api::tls::identity::valid_name(name)) {
        return Err(DriverError::Start {
            alloc: spec.alloc_id.clone(),
            message: format!("{SOURCE_NODE_ENV}: {name:?} is not a node name"),
        });
    }
    // A target readied twice (its agent restarted midway) starts over: an
    // incoming VM holds nothing yet worth keeping.
    if let Some(stale) = driver.recover(spec).await? {
        driver.stop(&stale, TARGET_STOP_GRACE).await?;
    }
    let mut args = vec![
        "--incoming".to_string(),
        driver.migration_host().with_port(0),
    ];
    // Under TLS only this node's certificate may send the memory.
    if let Some(name) = source {
        args.extend(["--migration-source-node".to_string(), name.clone()]);
    }
    let handle = driver.start_with_args(spec, &args).await?;
    match listening(driver, &handle).await {
        Ok(main) => Ok((
            handle,
            IncomingEndpoints {
                main,
                ..Default::default()
            },
        )),
        Err(e) => {
            let _ = driver.stop(&handle, TARGET_STOP_GRACE).await;
            Err(e)
        }
    }
}

/// Waits until the incoming process answers, and returns where it listens.
async fn listening(driver: &SimVmDriver, handle: &WorkloadHandle) -> Result<String, DriverError> {
    let socket = control_socket(handle)?;
    let exec = SimVmDriver::exec_handle(handle)?;
    let started = Instant::now();
    loop {
        match control::status(&socket).await {
            Ok(status) => {
                return status.incoming.map(|i| i.addr).ok_or_else(|| {
                    io(
                        handle,
                        "the simulated VM did not start as an incoming migration's target",
                    )
                })
            }
            Err(e) => {
                if !matches!(
                    driver.exec().state(&exec).await?,
                    WorkloadState::Running | WorkloadState::Paused
                ) {
                    return Err(io(
                        handle,
                        format!(
                            "the sim-vm process exited before it answered on {} (see stdout.log and stderr.log beside it)",
                            socket.display()
                        ),
                    ));
                }
                if started.elapsed() > UP_WAIT {
                    return Err(io(handle, e));
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`Driver::migrate_out`] for simulated VMs; see the module documentation.
pub(super) async fn migrate_out(
    handle: &WorkloadHandle,
    to: &IncomingEndpoints,
    limits: &MoveLimits,
    progress: ProgressSink<'_>,
) -> Result<MoveStats, DriverError> {
    let socket = control_socket(handle)?;
    let result = move_out(handle, &socket, to, limits, progress).await;
    if result.is_err() {
        // Whatever went wrong, the VM runs on here; that cancelling fails
        // too (the process gone) adds nothing to the first error.
        let _ = control::command(&socket, &Request::Cancel).await;
    }
    result
}

async fn move_out(
    handle: &WorkloadHandle,
    socket: &Path,
    to: &IncomingEndpoints,
    limits: &MoveLimits,
    progress: ProgressSink<'_>,
) -> Result<MoveStats, DriverError> {
    let deadline = Instant::now() + limits.deadline;
    let request = Request::Migrate {
        to: to.main.clone(),
        downtime_limit_ms: u64::try_from(limits.downtime_limit.as_millis())
            .unwrap_or(u64::MAX)
            .max(1),
        bandwidth_bytes_per_sec: limits.bandwidth_bytes_per_sec,
        target_node: to.target_node.clone(),
        revoked_certificates: herd_api::tls::revocation::listed(),
    };
    control::command(socket, &request)
        .await
        .map_err(|e| io(handle, e))?;
    loop {
        if Instant::now() >= deadline {
            return Err(io(
                handle,
                format!(
                    "the live migration did not finish within its deadline of {:?}; cancelled, the simulated VM runs on here",
                    limits.deadline
                ),
            ));
        }
        let status = control::status(socket).await.map_err(|e| io(handle, e))?;
        let out = status
            .outgoing
            .ok_or_else(|| io(handle, "the simulated VM reports no outgoing migration"))?;
        match out.phase {
            OutPhase::Completed => {
                return Ok(MoveStats {
                    bytes: out.bytes,
                    rounds: out.rounds,
                    downtime_ms: out.downtime_ms,
                    total_ms: out.total_ms,
                })
            }
            OutPhase::Failed => {
                return Err(io(
                    handle,
                    format!(
                        "the live migration failed: {}",
                        out.error.as_deref().unwrap_or("no reason given")
                    ),
                ))
            }
            OutPhase::Cancelled => return Err(io(handle, "the live migration was cancelled")),
            OutPhase::PreCopy | OutPhase::StopAndCopy => progress(MoveProgress {
                bytes: out.bytes,
                rounds: out.rounds,
                dirty_rate_bytes_per_sec: (out.rounds > 1).then_some(out.dirty_rate_bytes_per_sec),
                remaining_bytes: Some(out.remaining_pages.saturating_mul(PAGE_SIZE as u64)),
            }),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`Driver::cancel_out`] for simulated VMs; see the module documentation.
pub(super) async fn cancel_out(handle: &WorkloadHandle) -> Result<(), DriverError> {
    let socket = control_socket(handle)?;
    control::command(&socket, &Request::Cancel)
        .await
        .map_err(|e| io(handle, e))?;
    let status = control::status(&socket).await.map_err(|e| io(handle, e))?;
    match status.guest {
        GuestMode::Running => Ok(()),
        GuestMode::Paused => Err(io(
            handle,
            "the simulated VM is still paused after the cancel",
        )),
    }
}

/// [`Driver::finish_incoming`] for simulated VMs; see the module
/// documentation.
pub(super) async fn finish_incoming(handle: &WorkloadHandle) -> Result<(), DriverError> {
    let socket = control_socket(handle)?;
    let started = Instant::now();
    loop {
        let status = control::status(&socket).await.map_err(|e| io(handle, e))?;
        let incoming = status.incoming.ok_or_else(|| {
            io(
                handle,
                "the simulated VM is not an incoming migration's target",
            )
        })?;
        match incoming.phase {
            InPhase::Received | InPhase::Resumed => break,
            phase if started.elapsed() > SETTLE_WAIT => {
                return Err(io(
                    handle,
                    format!(
                    "the incoming migration is not complete after {SETTLE_WAIT:?} ({phase:?}{})",
                    incoming
                        .error
                        .map(|e| format!(", last stream: {e}"))
                        .unwrap_or_default()
                ),
                ))
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
    match control::command(&socket, &Request::Resume).await {
        Ok(()) => {}
        Err(ControlError::Refused(why)) => return Err(io(handle, why)),
        Err(e) => return Err(io(handle, e)),
    }
    match control::status(&socket)
        .await
        .map_err(|e| io(handle, e))?
        .guest
    {
        GuestMode::Running => Ok(()),
        GuestMode::Paused => Err(io(handle, "the migrated simulated VM does not run")),
    }
}

/// The state of a running `herd sim-vm`: paused by a migration (a target
/// not resumed, a source that handed over) or running. One that does not
/// answer yet (still starting) counts as running.
pub(super) async fn running_state(handle: &WorkloadHandle) -> WorkloadState {
    let Ok(socket) = control_socket(handle) else {
        return WorkloadState::Running;
    };
    match control::status(&socket).await {
        Ok(status) if status.guest == GuestMode::Paused => WorkloadState::Paused,
        _ => WorkloadState::Running,
    }
}
