//! Live migration of a QEMU VM between two agents, through QMP: QEMU moves
//! the bytes, herd orchestrates it.
//!
//! **Target** ([`prepare_incoming`]): the VM's QEMU is started from the same
//! spec as a normal start (same command line, same handle), plus
//! `-incoming defer -S`. If the VM has a local disk (the fresh `disk_size`
//! disk in the allocation directory, created empty with the same size), an
//! NBD server on the driver's migration host exports it writable; then
//! `migrate-incoming` listens on `tcp:HOST:0`, the port QEMU took read back
//! from `query-migrate`. The migration host is the node's `migration_host`
//! (by default the host of the agent's `advertise` address; loopback for a
//! driver built without a node's configuration): the address the source's
//! agent reaches this one at, bound and published in the endpoints, which
//! say where: `main` (the migration stream), `nbd` and `nbd_export` (the
//! disk). When the agent runs with TLS (the driver was given the node's
//! identity), both streams are mutual TLS ([`super::tls`]): before it
//! listens, the target gets a `tls-creds-x509` server object and a
//! `tls-authz` admitting only the source node's certificate (named by
//! [`SOURCE_NODE_ENV`] in the spec's environment), given to
//! `migrate-set-parameters` and `nbd-server-start`; otherwise both are
//! plain TCP (docs/vm.md, "What travels in the clear").
//!
//! **Confirm** ([`confirm_incoming`], target, before the switch-over): the
//! source's QEMU is done once it sent the last byte; the target's QEMU has
//! the VM only once it loaded it (`query-migrate`: `completed`). The
//! source's agent asks for that (`ConfirmIncoming`) before it asks for the
//! switch-over, so a stream cut or refused on the way in, or a target that
//! failed to load it, aborts the move with the VM running on at its source.
//!
//! **Source** ([`migrate_out`]): `migrate-set-parameters` sets the
//! downtime limit and the bandwidth cap, with `auto-converge` on, and under
//! TLS a client `tls-creds-x509` object with `tls-hostname`
//! `<target>.node.herd` (the target must hold the certificate of the node
//! the source's agent moves the VM to; `node.herd`, any node of the
//! cluster's CA, when no agent named it); a local
//! disk is mirrored first (`blockdev-add` of an NBD client node for the
//! target's export, with the same credentials under TLS, then
//! `blockdev-mirror sync=full` into it, at the same cap) until it is in
//! sync (job `ready`); then
//! `migrate` to `main`, followed every [`POLL`] through `query-migrate`. With
//! a disk, `pause-before-switchover` is on: once QEMU has stopped the VM for
//! the last pass, the mirror is cancelled (a ready mirror, cancelled, first
//! copies what is still dirty: the target's disk is then an exact copy,
//! taken with the VM stopped), and the migration goes on with
//! `migrate-continue`. On `completed` the source is paused (`postmigrate`).
//! Past the deadline, or on any error, the move is abandoned as
//! [`cancel_out`] does, the VM running on here.
//!
//! **Abort** ([`cancel_out`], source): `migrate_cancel`, the mirror
//! force-cancelled, its NBD node and the TLS credentials dropped (a next
//! move drops them too, should an agent crash have left them), then
//! `cont` if the VM was left paused (a completed
//! migration leaves it in `postmigrate`; QEMU itself restarts a VM whose
//! migration was cancelled midway).
//!
//! **Switch** ([`finish_incoming`], target, after the switch-over
//! committed): waits for the incoming migration to be `completed` (the VM
//! paused, thanks to `-S`), stops the NBD server (its export holds the disk,
//! and a guest resumed beside it gets a permission conflict), then `cont`.
//! Order across the two: the source's mirror is cancelled before the
//! source's migration completes, so before `migrate_out` returns and so
//! before the target is finished; the source is stopped by the agent after
//! the switch-over (QEMU quits; nothing more to cancel there).
//!
//! A VM that dirties memory faster than the link: QEMU keeps iterating, and
//! with `auto-converge` it throttles the guest's vCPUs step by step until
//! the rest fits the downtime limit; a move that still does not converge
//! is cancelled at its deadline. A disk given by the user (`disk`, not
//! `disk_size`) is not copied: it is taken to be shared storage, the same
//! image at the same path on both nodes (QEMU opens it inactive on the
//! target until the switch-over).
//!
//! One QMP client at a time: QEMU serves one connection on its QMP socket,
//! so every step connects, asks what it needs on that one connection, and
//! disconnects, leaving room for [`cancel_out`] and the agent's state checks
//! while a move runs. The waits (QMP coming up, a migration or mirror in
//! flight) look every [`POLL`]: every look that comes late adds to the move,
//! and one costs QEMU a connection and two small JSON exchanges.
//!
//! Each step leaves a timing mark in the agent's log
//! ([`crate::driver::move_timing`]: `vm.in.*` on the target, `vm.out.*` on
//! the source), which `herd bench migrate` reads to say where a move's time
//! goes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::qmp::{Qmp, QmpError};
use super::tls::{self, MigrationTls, Side};
use super::{qemu, socket, VmDriver};
pub use crate::driver::live::SOURCE_NODE_ENV;
use crate::driver::live::{
    IncomingEndpoints, MigrationHost, MoveLimits, MoveProgress, MoveStats, ProgressSink,
};
use crate::driver::move_timing;
use crate::driver::patience::Patience;
use crate::driver::{Driver, DriverError, WorkloadHandle, WorkloadSpec, WorkloadState};

/// The endpoint name, in [`IncomingEndpoints::extra`], of the target's NBD
/// server (`HOST:PORT`) that receives the VM's local disk.
pub const NBD_ENDPOINT: &str = "nbd";
/// The endpoint name, in [`IncomingEndpoints::extra`], of the NBD export
/// (the target's disk device) the source mirrors its disk into.
pub const NBD_EXPORT: &str = "nbd_export";

/// The id of the disk mirror job on the source.
const MIRROR_JOB: &str = "herd-mirror";
/// The node name, on the source, of the NBD client node the mirror writes
/// into (the target's export).
const MIRROR_TARGET: &str = "herd-mirror-target";
/// How often a wait on QEMU looks again: a new QMP socket, a migration or
/// a mirror in flight. Measured (docs/benchmarks.md): at 100 ms, then 20
/// ms, the late look was a visible part of a small VM's move; at 5 ms it
/// is under 3 ms on average, for about 200 short QMP exchanges a second.
const POLL: Duration = Duration::from_millis(5);
/// How often the wait for a new QEMU's QMP socket looks again, at most: a
/// failed `connect` costs QEMU nothing, unlike a QMP exchange, so this
/// wait, on a move's critical path, looks more often than [`POLL`].
const QMP_UP_POLL: Duration = Duration::from_millis(2);
/// How long QEMU may take to open its QMP socket after it started.
const QMP_UP_WAIT: Duration = Duration::from_secs(30);
/// How long a cancelled move may take to wind down, and a target to see
/// the end of a migration its source completed.
const SETTLE_WAIT: Duration = Duration::from_secs(30);
/// The grace a half-prepared target gets when it is stopped.
const TARGET_STOP_GRACE: Duration = Duration::from_secs(5);
/// How many free ports are tried for the NBD server.
const PORT_TRIES: usize = 5;
/// QEMU's `max-bandwidth` when no cap is asked for (1 TiB/s: none).
const UNCAPPED: u64 = 1 << 40;
/// QEMU's largest `downtime-limit`, ms.
const MAX_DOWNTIME_MS: u64 = 2_000_000;
/// `query-migrate` states of a migration still under way.
const ACTIVE: [&str; 7] = [
    "setup",
    "active",
    "pre-switchover",
    "device",
    "wait-unplug",
    "cancelling",
    "postcopy-active",
];

/// One QEMU (source or target) as the move sees it: its QMP socket and
/// directory, and errors that name its allocation.
struct Machine<'a> {
    alloc: &'a str,
    socket: PathBuf,
    /// Where the fresh disk lives (the socket's directory).
    alloc_dir: PathBuf,
}

impl<'a> Machine<'a> {
    fn of(handle: &'a WorkloadHandle) -> Result<Self, DriverError> {
        let socket = socket(handle)?;
        let alloc_dir =
            socket
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| DriverError::BadHandle {
                    alloc: handle.alloc_id.clone(),
                    message: format!("QMP socket {} has no directory", socket.display()),
                })?;
        Ok(Machine {
            alloc: &handle.alloc_id,
            socket,
            alloc_dir,
        })
    }

    fn error(&self, message: impl Into<String>) -> DriverError {
        DriverError::Io {
            alloc: self.alloc.to_string(),
            message: message.into(),
        }
    }

    fn qmp_error(&self, e: QmpError) -> DriverError {
        self.error(e.to_string())
    }

    async fn connect(&self) -> Result<Qmp, DriverError> {
        Qmp::connect(&self.socket)
            .await
            .map_err(|e| self.qmp_error(e))
    }

    /// One connection for several commands in a row (see the module
    /// documentation: dropped as soon as the step is done).
    async fn session(&self) -> Result<Session<'_, 'a>, DriverError> {
        Ok(Session {
            vm: self,
            qmp: self.connect().await?,
        })
    }

    /// Runs one command on a connection of its own.
    async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value, DriverError> {
        self.session().await?.execute(command, arguments).await
    }

    /// `query-migrate`'s `status` ("none" before any migration).
    async fn migration(&self) -> Result<Value, DriverError> {
        self.execute("query-migrate", None).await
    }

    /// The VM's run state (`query-status`).
    async fn run_state(&self) -> Result<String, DriverError> {
        self.connect()
            .await?
            .status()
            .await
            .map_err(|e| self.qmp_error(e))
    }

    /// The mirror job, when there is one (`query-jobs`).
    async fn mirror(&self) -> Result<Option<Value>, DriverError> {
        let jobs = self.execute("query-jobs", None).await?;
        Ok(jobs
            .as_array()
            .and_then(|jobs| jobs.iter().find(|j| j["id"] == MIRROR_JOB))
            .cloned())
    }
}

/// One QMP connection to a [`Machine`], for a step's commands in a row.
struct Session<'m, 'a> {
    vm: &'m Machine<'a>,
    qmp: Qmp,
}

impl Session<'_, '_> {
    /// Runs `command` on this connection.
    async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, DriverError> {
        self.qmp
            .execute(command, arguments)
            .await
            .map_err(|e| self.vm.qmp_error(e))
    }

    /// The VM's run state (`query-status`).
    async fn run_state(&mut self) -> Result<String, DriverError> {
        self.qmp.status().await.map_err(|e| self.vm.qmp_error(e))
    }

    /// Gives QEMU the node's TLS credentials for `side` ([`tls`]): written
    /// to a private directory, `object-add`ed, and the directory removed
    /// at once (QEMU loaded the files when it made the object).
    async fn add_tls_creds(
        &mut self,
        identity: &MigrationTls,
        side: Side,
    ) -> Result<(), DriverError> {
        let dir = identity.write_dir(&self.vm.alloc_dir, side).map_err(|e| {
            self.vm.error(format!(
                "cannot write QEMU's TLS credentials in {}: {e}",
                self.vm.alloc_dir.join(tls::CREDS_DIR).display()
            ))
        })?;
        let added = self
            .execute("object-add", Some(tls::creds_object(&dir, side)))
            .await;
        let removed = tls::remove_dir(&dir);
        added?;
        removed.map_err(|e| {
            self.vm
                .error(format!("cannot remove {}: {e}", dir.display()))
        })
    }

    /// Drops what an earlier move of this QEMU left behind (the mirror's
    /// NBD node, the TLS credentials), so that this one can add its own;
    /// nothing to drop is no error, and a real failure shows in the next
    /// command.
    async fn forget_move(&mut self) {
        let _ = self
            .execute("blockdev-del", Some(json!({ "node-name": MIRROR_TARGET })))
            .await;
        let _ = self
            .execute("object-del", Some(json!({ "id": tls::CREDS_ID })))
            .await;
    }

    /// The block device of the VM's local disk (the fresh disk in its
    /// directory), if it has one; a disk given by the user is not local.
    async fn local_disk(&mut self) -> Result<Option<String>, DriverError> {
        let fresh = self.vm.alloc_dir.join(qemu::FRESH_DISK);
        let blocks = self.execute("query-block", None).await?;
        let same = |file: &str| {
            let file = Path::new(file);
            file == fresh
                || matches!(
                    (std::fs::canonicalize(file), std::fs::canonicalize(&fresh)),
                    (Ok(a), Ok(b)) if a == b
                )
        };
        for block in blocks.as_array().into_iter().flatten() {
            let Some(file) = block["inserted"]["file"].as_str() else {
                continue;
            };
            if !same(file) {
                continue;
            }
            let device = match block["device"].as_str() {
                Some(device) if !device.is_empty() => device,
                _ => block["inserted"]["node-name"].as_str().unwrap_or_default(),
            };
            if device.is_empty() {
                return Err(self.vm.error(format!(
                    "QEMU names no device for the disk {}",
                    fresh.display()
                )));
            }
            return Ok(Some(device.to_string()));
        }
        Ok(None)
    }
}

fn u64_at(value: &Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or(0)
}

/// A port nothing listens on now, on `host` (QEMU binds it next; the
/// caller retries if another process took it in between).
fn free_port(host: &MigrationHost) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((host.host(), 0))?
        .local_addr()?
        .port())
}

/// Waits until QEMU answers on its QMP socket, failing early if it exited;
/// returns the connection that got the answer, for the next commands.
async fn wait_for_qmp<'m, 'a>(
    driver: &VmDriver,
    vm: &'m Machine<'a>,
    handle: &WorkloadHandle,
) -> Result<Session<'m, 'a>, DriverError> {
    let exec = VmDriver::exec_handle(handle)?;
    let started = Instant::now();
    // QEMU answers within tens of milliseconds: look every millisecond at
    // first, then every QMP_UP_POLL.
    let mut patience = Patience::new(Duration::from_millis(1), QMP_UP_POLL);
    loop {
        let last = match Qmp::connect(&vm.socket).await {
            Ok(qmp) => return Ok(Session { vm, qmp }),
            Err(e) => e,
        };
        if !matches!(
            driver.exec().state(&exec).await?,
            WorkloadState::Running | WorkloadState::Paused
        ) {
            return Err(vm.error(format!(
                "QEMU exited before it answered on QMP (see stdout.log and stderr.log in {})",
                vm.alloc_dir.display()
            )));
        }
        if started.elapsed() > QMP_UP_WAIT {
            return Err(vm.qmp_error(last));
        }
        patience.pause().await;
    }
}

/// [`Driver::prepare_incoming`] for VMs; see the module documentation.
pub(super) async fn prepare_incoming(
    driver: &VmDriver,
    spec: &WorkloadSpec,
) -> Result<(WorkloadHandle, IncomingEndpoints), DriverError> {
    move_timing::mark(&spec.alloc_id, "vm.in.begin", "");
    let source = spec.env.get(SOURCE_NODE_ENV).map(String::as_str);
    if let Some(name) = source.filter(|name| !herd_api::tls::identity::valid_name(name)) {
        return Err(DriverError::Start {
            alloc: spec.alloc_id.clone(),
            message: format!("{SOURCE_NODE_ENV}: {name:?} is not a node name"),
        });
    }
    // A target readied twice (its agent restarted midway) starts over: an
    // incoming QEMU holds nothing yet worth keeping.
    if let Some(stale) = driver.recover(spec).await? {
        driver.stop(&stale, TARGET_STOP_GRACE).await?;
    }
    let args = ["-incoming", "defer", "-S"].map(String::from);
    let handle = driver.start_with_args(spec, &args).await?;
    move_timing::mark(&spec.alloc_id, "vm.in.spawned", "");
    match listen(driver, &handle, source).await {
        Ok(endpoints) => {
            let nbd = endpoints
                .extra
                .get(NBD_ENDPOINT)
                .map(|nbd| format!(" nbd={nbd}"))
                .unwrap_or_default();
            let tls = if driver.migration_tls().is_some() {
                " tls=x509"
            } else {
                ""
            };
            move_timing::mark(
                &spec.alloc_id,
                "vm.in.listening",
                &format!("main={}{nbd}{tls}", endpoints.main),
            );
            Ok((handle, endpoints))
        }
        Err(e) => {
            let _ = driver.stop(&handle, TARGET_STOP_GRACE).await;
            Err(e)
        }
    }
}

/// Under TLS, gives the incoming QEMU its server credentials and admits
/// node `source` only (any node's certificate when None), for the
/// migration stream and the NBD server; nothing without TLS.
async fn secure_incoming(
    qmp: &mut Session<'_, '_>,
    driver: &VmDriver,
    source: Option<&str>,
) -> Result<(), DriverError> {
    if let Some(identity) = driver.migration_tls() {
        qmp.add_tls_creds(identity, Side::Server).await?;
        qmp.execute("object-add", Some(tls::authz_object(source)))
            .await?;
        qmp.execute(
            "migrate-set-parameters",
            Some(json!({"tls-creds": tls::CREDS_ID, "tls-authz": tls::AUTHZ_ID})),
        )
        .await?;
    }
    Ok(())
}

/// On a started incoming QEMU: exports its local disk and listens for the
/// migration stream, on the driver's migration host, all on the connection
/// that saw QMP come up; under TLS, both only for node `source` (any node
/// when None).
async fn listen(
    driver: &VmDriver,
    handle: &WorkloadHandle,
    source: Option<&str>,
) -> Result<IncomingEndpoints, DriverError> {
    let host = driver.migration_host();
    let vm = Machine::of(handle)?;
    let mut qmp = wait_for_qmp(driver, &vm, handle).await?;
    move_timing::mark(&handle.alloc_id, "vm.in.qmp_up", "");
    let secured = |mut arguments: Value| {
        if driver.migration_tls().is_some() {
            arguments["tls-creds"] = json!(tls::CREDS_ID);
            arguments["tls-authz"] = json!(tls::AUTHZ_ID);
        }
        arguments
    };
    secure_incoming(&mut qmp, driver, source).await?;
    let mut extra = BTreeMap::new();
    if let Some(device) = qmp.local_disk().await? {
        let mut last = None;
        for _ in 0..PORT_TRIES {
            let port =
                free_port(host).map_err(|e| vm.error(format!("no free port on {host}: {e}")))?;
            let addr =
                json!({"type": "inet", "data": {"host": host.host(), "port": port.to_string()}});
            match qmp
                .execute("nbd-server-start", Some(secured(json!({ "addr": addr }))))
                .await
            {
                Ok(_) => {
                    last = None;
                    extra.insert(NBD_ENDPOINT.to_string(), host.with_port(port));
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
        qmp.execute(
            "nbd-server-add",
            Some(json!({"device": device, "name": device, "writable": true})),
        )
        .await?;
        extra.insert(NBD_EXPORT.to_string(), device);
    }
    qmp.execute(
        "migrate-incoming",
        Some(json!({ "uri": format!("tcp:{}", host.with_port(0)) })),
    )
    .await?;
    let info = qmp.execute("query-migrate", None).await?;
    let port = info["socket-address"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|address| address["port"].as_str()?.parse::<u16>().ok())
        .ok_or_else(|| {
            vm.error(format!(
                "QEMU did not say which port it listens on for the migration: {info}"
            ))
        })?;
    Ok(IncomingEndpoints {
        main: host.with_port(port),
        extra,
        target_node: None,
    })
}

/// [`Driver::migrate_out`] for VMs; see the module documentation.
/// `tls`: the node's identity when the agent runs with TLS.
pub(super) async fn migrate_out(
    handle: &WorkloadHandle,
    to: &IncomingEndpoints,
    limits: &MoveLimits,
    tls: Option<&MigrationTls>,
    progress: ProgressSink<'_>,
) -> Result<MoveStats, DriverError> {
    let vm = Machine::of(handle)?;
    let result = move_out(&vm, to, limits, tls, progress).await;
    if result.is_err() {
        // Whatever went wrong, the VM runs on here; that abandoning fails
        // too (QEMU gone) adds nothing to the first error.
        let _ = abandon(&vm).await;
    }
    result
}

/// Gives up past `deadline`, naming it.
fn in_time(vm: &Machine<'_>, deadline: Instant, limit: Duration) -> Result<(), DriverError> {
    if Instant::now() >= deadline {
        return Err(vm.error(format!(
            "the live migration did not finish within its deadline of {limit:?}; cancelled, the VM runs on here"
        )));
    }
    Ok(())
}

/// `blockdev-add`'s arguments for the NBD client node that the mirror
/// writes into: the target's export `export` at `addr` (`HOST:PORT`, an
/// IPv6 host in brackets), under TLS with the node's credentials, the
/// target checked to hold the certificate of node `target` (any node's
/// when None: [`tls::peer_hostname`]).
fn nbd_node(
    addr: &str,
    export: &str,
    tls: Option<&MigrationTls>,
    target: Option<&str>,
) -> Result<Value, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        .ok_or_else(|| format!("the target's NBD endpoint {addr:?} is not HOST:PORT"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host);
    let mut node = json!({
        "driver": "nbd",
        "node-name": MIRROR_TARGET,
        "server": {"type": "inet", "host": host, "port": port},
        "export": export,
    });
    if tls.is_some() {
        node["tls-creds"] = json!(tls::CREDS_ID);
        node["tls-hostname"] = json!(tls::peer_hostname(target)?);
    }
    Ok(node)
}

async fn move_out(
    vm: &Machine<'_>,
    to: &IncomingEndpoints,
    limits: &MoveLimits,
    tls: Option<&MigrationTls>,
    progress: ProgressSink<'_>,
) -> Result<MoveStats, DriverError> {
    let started = Instant::now();
    let deadline = started + limits.deadline;
    move_timing::mark(vm.alloc, "vm.out.begin", "");
    // The checks and settings on one connection, `migrate` on it too when
    // there is no disk to mirror first.
    let mut qmp = vm.session().await?;
    let status = qmp.execute("query-migrate", None).await?;
    if let Some(active) = status["status"].as_str().filter(|s| ACTIVE.contains(s)) {
        return Err(vm.error(format!(
            "a migration of this VM is already under way ({active})"
        )));
    }
    let disk = qmp.local_disk().await?;
    let nbd = match (&disk, to.extra.get(NBD_ENDPOINT), to.extra.get(NBD_EXPORT)) {
        (None, None, _) => None,
        (Some(_), Some(addr), Some(export)) => {
            Some(nbd_node(addr, export, tls, to.target_node.as_deref()).map_err(|e| vm.error(e))?)
        }
        (Some(_), _, _) => {
            return Err(
                vm.error("the VM has a local disk but the target exports none to copy it into")
            )
        }
        (None, Some(_), _) => {
            return Err(vm.error(
                "the target exports a disk but the VM has no local disk: the two do not match",
            ))
        }
    };
    qmp.forget_move().await;
    if let Some(identity) = tls {
        qmp.add_tls_creds(identity, Side::Client).await?;
    }
    let bandwidth = limits.bandwidth_bytes_per_sec;
    let downtime_ms = u64::try_from(limits.downtime_limit.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_DOWNTIME_MS);
    // Set either way: a VM keeps its parameters from an earlier move (its
    // agent may have run with TLS then); empty ones mean plain TCP.
    let (creds, hostname) = match tls {
        Some(_) => (
            tls::CREDS_ID.to_string(),
            tls::peer_hostname(to.target_node.as_deref()).map_err(|e| vm.error(e))?,
        ),
        None => (String::new(), String::new()),
    };
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [
            {"capability": "auto-converge", "state": true},
            {"capability": "pause-before-switchover", "state": nbd.is_some()},
        ]})),
    )
    .await?;
    qmp.execute(
        "migrate-set-parameters",
        Some(json!({
            "downtime-limit": downtime_ms,
            "max-bandwidth": bandwidth.unwrap_or(UNCAPPED),
            "tls-creds": creds,
            "tls-hostname": hostname,
        })),
    )
    .await?;

    let mut disk_bytes = 0;
    if let (Some(device), Some(target)) = (&disk, &nbd) {
        // The target's export, opened as a node of its own (drive-mirror's
        // `nbd://` URI cannot carry TLS), then mirrored into as it is.
        qmp.execute("blockdev-add", Some(target.clone())).await?;
        qmp.execute(
            "blockdev-mirror",
            Some(json!({
                "job-id": MIRROR_JOB,
                "device": device,
                "target": MIRROR_TARGET,
                "sync": "full",
                "speed": bandwidth.unwrap_or(0),
                "auto-dismiss": false,
            })),
        )
        .await?;
        drop(qmp);
        move_timing::mark(vm.alloc, "vm.out.mirror_started", "");
        disk_bytes = mirror_until_ready(vm, deadline, limits.deadline, progress).await?;
        move_timing::mark(vm.alloc, "vm.out.mirror_ready", "");
        qmp = vm.session().await?;
    }

    qmp.execute(
        "migrate",
        Some(json!({ "uri": format!("tcp:{}", to.main) })),
    )
    .await?;
    drop(qmp);
    move_timing::mark(vm.alloc, "vm.out.migrate_sent", "");
    let mut continued = false;
    loop {
        in_time(vm, deadline, limits.deadline)?;
        let info = vm.migration().await?;
        let ram = &info["ram"];
        let rounds = u32::try_from(u64_at(ram, "dirty-sync-count")).unwrap_or(u32::MAX);
        let bytes = u64_at(ram, "transferred").saturating_add(disk_bytes);
        match info["status"].as_str().unwrap_or("") {
            "completed" => {
                if nbd.is_some() {
                    // The mirror ended at the switch-over; its connection
                    // to the target's export goes too (best effort: the
                    // source is stopped next anyway).
                    let _ = vm
                        .execute("blockdev-del", Some(json!({ "node-name": MIRROR_TARGET })))
                        .await;
                }
                let downtime_ms = u64_at(&info, "downtime");
                move_timing::mark(
                    vm.alloc,
                    "vm.out.completed",
                    &format!(
                        "qemu_total_ms={} qemu_setup_ms={} downtime_ms={downtime_ms} rounds={rounds}",
                        u64_at(&info, "total-time"),
                        u64_at(&info, "setup-time"),
                    ),
                );
                return Ok(MoveStats {
                    bytes,
                    rounds,
                    downtime_ms,
                    total_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                });
            }
            "pre-switchover" if !continued => {
                // The VM is stopped: the mirror drains what is still dirty
                // and ends, the target's disk an exact copy.
                move_timing::mark(vm.alloc, "vm.out.pre_switchover", "");
                if nbd.is_some() {
                    disk_bytes = finish_mirror(vm, deadline, limits.deadline).await?;
                }
                vm.execute("migrate-continue", Some(json!({"state": "pre-switchover"})))
                    .await?;
                continued = true;
            }
            "failed" => {
                return Err(vm.error(format!(
                    "the migration failed: {}",
                    info["error-desc"].as_str().unwrap_or("QEMU gave no reason")
                )))
            }
            "cancelling" | "cancelled" => {
                return Err(vm.error("the migration was cancelled"));
            }
            _ => {
                let dirty =
                    u64_at(ram, "dirty-pages-rate").saturating_mul(u64_at(ram, "page-size"));
                progress(MoveProgress {
                    bytes,
                    rounds,
                    dirty_rate_bytes_per_sec: (rounds > 1).then_some(dirty),
                    remaining_bytes: ram.get("remaining").and_then(Value::as_u64),
                });
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Follows the mirror until source and target disks are in sync; returns
/// the bytes it copied.
async fn mirror_until_ready(
    vm: &Machine<'_>,
    deadline: Instant,
    limit: Duration,
    progress: ProgressSink<'_>,
) -> Result<u64, DriverError> {
    loop {
        in_time(vm, deadline, limit)?;
        let job = vm
            .mirror()
            .await?
            .ok_or_else(|| vm.error("the disk mirror ended before its disk was copied"))?;
        let done = u64_at(&job, "current-progress");
        match job["status"].as_str().unwrap_or("") {
            "ready" => return Ok(done),
            "concluded" | "aborting" | "null" => {
                return Err(vm.error(format!(
                    "the disk mirror ended before its disk was copied: {}",
                    job["error"].as_str().unwrap_or("cancelled")
                )))
            }
            _ => progress(MoveProgress {
                bytes: done,
                rounds: 0,
                dirty_rate_bytes_per_sec: None,
                remaining_bytes: Some(u64_at(&job, "total-progress").saturating_sub(done)),
            }),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Ends the mirror of a stopped VM so that the target holds an exact copy
/// (`block-job-cancel` on a ready mirror completes it without pivoting);
/// returns the bytes it copied.
async fn finish_mirror(
    vm: &Machine<'_>,
    deadline: Instant,
    limit: Duration,
) -> Result<u64, DriverError> {
    match vm.mirror().await? {
        Some(job) if job["status"] == "ready" => {}
        Some(job) => {
            return Err(vm.error(format!(
                "the disk mirror is not in sync at the switch-over ({})",
                job["status"]
            )))
        }
        None => return Err(vm.error("the disk mirror ended before the switch-over")),
    }
    vm.execute("block-job-cancel", Some(json!({ "device": MIRROR_JOB })))
        .await?;
    loop {
        in_time(vm, deadline, limit)?;
        let job = vm
            .mirror()
            .await?
            .ok_or_else(|| vm.error("the disk mirror vanished while it finished"))?;
        if job["status"] == "concluded" {
            vm.execute("job-dismiss", Some(json!({ "id": MIRROR_JOB })))
                .await?;
            if let Some(error) = job["error"].as_str() {
                return Err(vm.error(format!("the disk mirror failed: {error}")));
            }
            return Ok(u64_at(&job, "current-progress"));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Cancels the migration and the mirror, waits for both to wind down,
/// and lets the VM run again if it was left paused.
async fn abandon(vm: &Machine<'_>) -> Result<(), DriverError> {
    let info = vm.migration().await?;
    if info["status"].as_str().is_some_and(|s| ACTIVE.contains(&s)) {
        vm.execute("migrate_cancel", None).await?;
    }
    if let Some(job) = vm.mirror().await? {
        if job["status"] != "concluded" && job["status"] != "null" {
            vm.execute(
                "block-job-cancel",
                Some(json!({"device": MIRROR_JOB, "force": true})),
            )
            .await?;
        }
    }
    let started = Instant::now();
    loop {
        let migrating = vm.migration().await?["status"]
            .as_str()
            .is_some_and(|s| ACTIVE.contains(&s));
        let state = vm.run_state().await?;
        let mirror = vm.mirror().await?;
        if let Some(job) = &mirror {
            if job["status"] == "concluded" {
                vm.execute("job-dismiss", Some(json!({ "id": MIRROR_JOB })))
                    .await?;
            }
        }
        if !migrating && mirror.is_none() && state != "finish-migrate" {
            let mut qmp = vm.session().await?;
            qmp.forget_move().await;
            if state == "postmigrate" || state == "paused" {
                qmp.execute("cont", None).await?;
            }
            return Ok(());
        }
        if started.elapsed() > SETTLE_WAIT {
            return Err(vm.error(format!(
                "the cancelled migration did not wind down within {SETTLE_WAIT:?} (VM {state})"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`Driver::cancel_out`] for VMs; see the module documentation.
pub(super) async fn cancel_out(handle: &WorkloadHandle) -> Result<(), DriverError> {
    abandon(&Machine::of(handle)?).await
}

/// Waits up to `wait` until the incoming QEMU has loaded the whole
/// migration stream (`query-migrate`: `completed`); returns the connection
/// that saw it. The wait reconnects on every look (another client may need
/// QEMU meanwhile).
async fn wait_loaded<'m, 'a>(
    vm: &'m Machine<'a>,
    wait: Duration,
) -> Result<Session<'m, 'a>, DriverError> {
    let started = Instant::now();
    // Asked right after the source's QEMU completed, the target's is
    // usually a few milliseconds behind (the last bytes, the device
    // state): look every millisecond at first, then every POLL.
    let mut patience = Patience::new(Duration::from_millis(1), POLL);
    loop {
        let mut qmp = vm.session().await?;
        let info = qmp.execute("query-migrate", None).await?;
        match info["status"].as_str().unwrap_or("") {
            "completed" => return Ok(qmp),
            "failed" | "cancelled" => {
                return Err(vm.error(format!(
                    "the incoming migration ended {}: {}",
                    info["status"],
                    info["error-desc"].as_str().unwrap_or("QEMU gave no reason")
                )))
            }
            status if started.elapsed() > wait => {
                return Err(vm.error(format!(
                    "the incoming migration is not complete after {wait:?} ({status})"
                )))
            }
            _ => {
                drop(qmp);
                patience.pause().await;
            }
        }
    }
}

/// [`Driver::confirm_incoming`] for VMs: the incoming QEMU has loaded the
/// last byte of the stream (the guest still paused, under `-S`).
pub(super) async fn confirm_incoming(
    handle: &WorkloadHandle,
    wait: Duration,
) -> Result<(), DriverError> {
    let vm = Machine::of(handle)?;
    wait_loaded(&vm, wait).await?;
    move_timing::mark(&handle.alloc_id, "vm.in.confirmed", "");
    Ok(())
}

/// [`Driver::finish_incoming`] for VMs; see the module documentation.
pub(super) async fn finish_incoming(handle: &WorkloadHandle) -> Result<(), DriverError> {
    let vm = Machine::of(handle)?;
    move_timing::mark(vm.alloc, "vm.in.finish_begin", "");
    // Once the migration is in, the rest is one connection.
    let mut qmp = wait_loaded(&vm, SETTLE_WAIT).await?;
    if qmp.local_disk().await?.is_some() {
        match qmp.execute("nbd-server-stop", None).await {
            Ok(_) => {}
            // Already stopped: a second finish after a lost reply.
            Err(DriverError::Io { message, .. }) if message.contains("not running") => {}
            Err(e) => return Err(e),
        }
    }
    if qmp.run_state().await? != "running" {
        qmp.execute("cont", None).await?;
    }
    match qmp.run_state().await?.as_str() {
        "running" => {
            move_timing::mark(vm.alloc, "vm.in.resumed", "");
            Ok(())
        }
        other => Err(vm.error(format!("the migrated VM does not run after cont ({other})"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_target_is_the_exports_nbd_node_under_tls_when_asked() {
        let plain = nbd_node("10.0.0.7:10809", "virtio0", None, Some("n2")).expect("plain");
        assert_eq!(plain["driver"], "nbd");
        assert_eq!(plain["node-name"], MIRROR_TARGET);
        assert_eq!(plain["server"]["host"], "10.0.0.7");
        assert_eq!(plain["server"]["port"], "10809");
        assert_eq!(plain["export"], "virtio0");
        assert!(plain.get("tls-creds").is_none(), "{plain}");

        let tls = MigrationTls::new(b"CA".to_vec(), b"C".to_vec(), b"K".to_vec());
        let secured = nbd_node("[fd00::7]:4000", "virtio0", Some(&tls), None).expect("tls");
        assert_eq!(secured["server"]["host"], "fd00::7", "no brackets");
        assert_eq!(secured["tls-creds"], tls::CREDS_ID);
        assert_eq!(secured["tls-hostname"], "node.herd");
        // The target named by the agent: only its certificate passes.
        let exact = nbd_node("[fd00::7]:4000", "virtio0", Some(&tls), Some("n2")).expect("tls");
        assert_eq!(exact["tls-hostname"], "n2.node.herd");
        let error = nbd_node("[fd00::7]:4000", "virtio0", Some(&tls), Some("a..b"))
            .expect_err("no DNS name");
        assert!(error.contains("a..b"), "{error}");

        for bad in ["10.0.0.7", ":4000", "host:port", "h:70000"] {
            let error = nbd_node(bad, "virtio0", None, None).expect_err(bad);
            assert!(error.contains(bad), "{error}");
        }
    }
}
