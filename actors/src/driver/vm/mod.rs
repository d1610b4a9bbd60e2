//! The `vm` driver: virtual machines under real QEMU, driven through QMP.
//!
//! QEMU runs as the task of the exec driver's detached executor (through
//! [`ExecBacked`], the kind [`Vm`] adding QEMU's command line, the host
//! checks, the fresh disk and the QMP socket in the handle), so everything
//! the exec driver guarantees holds for VMs too: the VM outlives
//! an agent restart and is re-adopted from its handle, its exit is recorded
//! while no agent runs, and its serial console is captured (to
//! `stdout.log`, read by `herd alloc logs`). On top of that, QMP (a unix
//! socket in the allocation directory) pauses, resumes and inspects it, and
//! `stop` first asks the guest to power down.
//!
//! Acceleration: KVM when `/dev/kvm` opens (`accel = "auto"`, the default),
//! TCG otherwise; `accel = "tcg"` forces emulation where nested KVM
//! misbehaves. Live migration (pre-copy through QMP `migrate` to a target
//! started with `-incoming defer -S`, the local disk mirrored over NBD) is
//! in [`migrate`].
//!
//! Confinement: a spec cannot hand QEMU arguments of its own (its settings
//! are a fixed set of keys, and every path is a single option value, commas
//! escaped); its kernel, initrd and disk must resolve inside the allocation
//! directory or a directory the node allows, and a host block device is a
//! disk only if the node lists it (`vm_devices`). QEMU runs with
//! `-sandbox` (seccomp: no exec, no privilege change, no obsolete or
//! resource-control calls) where it is built with it, and with
//! `-nodefaults`: no device the spec did not ask for.

pub mod guest;
pub mod migrate;
pub mod qemu;
pub mod qmp;
pub mod tls;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herd_api::driver_settings;
use herd_api::job::TaskSpec;
use herd_api::validate::FieldError;
use herd_api::vm::{Accel, VmSettings};
use serde::{Deserialize, Serialize};

use super::confine::{self, Confinement};
use super::exec_backed::{ExecBacked, ExecCommand, ExecKind, Run};
use super::live::{IncomingEndpoints, MigrationHost, MoveLimits, MoveStats, ProgressSink};
use super::{
    DriverCapabilities, DriverError, MigrationMode, WorkloadHandle, WorkloadSpec, WorkloadState,
};
use qmp::Qmp;

/// Longest `qemu-img create` may take.
const IMG_TIMEOUT: Duration = Duration::from_secs(60);
/// Most of the stop grace given to the guest to power itself down.
const POWERDOWN_WAIT: Duration = Duration::from_secs(10);
/// QEMU run states (`query-status`) of a VM whose guest is frozen with
/// its memory kept: paused by `stop`, an incoming migration's target
/// (`inmigrate`, then `paused` under `-S`), a source stopped for or after
/// the switch-over (`finish-migrate`, `postmigrate`), before `cont`
/// (`prelaunch`).
const FROZEN: [&str; 5] = [
    "paused",
    "inmigrate",
    "prelaunch",
    "finish-migrate",
    "postmigrate",
];

/// The `vm` kind of exec-backed workload: QEMU, plus its QMP socket.
/// Holds the node's confinement: where the kernel, initrd and disk a spec
/// names may be, and which host block devices a VM may be given; and the
/// host its incoming migrations listen on ([`migrate`]), and the node's
/// TLS identity that puts their streams under TLS ([`tls`]).
#[derive(Debug, Clone, Default)]
pub struct Vm {
    confinement: Confinement,
    migration_host: MigrationHost,
    migration_tls: Option<tls::MigrationTls>,
}

/// The `vm` driver.
pub type VmDriver = ExecBacked<Vm>;

/// The handle's driver-specific part: the exec run that is QEMU, and its
/// socket (the persisted format of VM handles; it must keep reading).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VmDetail {
    /// The exec driver's detail of the QEMU process.
    exec: serde_json::Value,
    /// The QMP socket.
    qmp: PathBuf,
}

fn unsupported(spec: &WorkloadSpec, message: String) -> DriverError {
    DriverError::Unsupported {
        alloc: spec.alloc_id.clone(),
        message,
    }
}

/// The QMP socket named in one of our handles.
fn socket(handle: &WorkloadHandle) -> Result<PathBuf, DriverError> {
    VmDriver::exec_handle(handle)?;
    serde_json::from_value::<VmDetail>(handle.detail.clone())
        .map(|detail| detail.qmp)
        .map_err(|e| DriverError::BadHandle {
            alloc: handle.alloc_id.clone(),
            message: e.to_string(),
        })
}

impl Vm {
    /// `settings` with the kernel, initrd and disk it names resolved under
    /// the node's confinement, each checked: kernel and initrd regular files
    /// inside the allocation directory or an allowed directory; the disk the
    /// same, or a host block device the node lists in `vm_devices`. What
    /// QEMU is given is the resolved path, so what runs is what was checked.
    /// Errors name the field.
    pub fn confined(
        &self,
        spec: &WorkloadSpec,
        settings: &VmSettings,
    ) -> Result<VmSettings, DriverError> {
        let mut resolved = settings.clone();
        let base = &spec.alloc_dir;
        for (key, path) in [
            ("kernel", &mut resolved.kernel),
            ("initrd", &mut resolved.initrd),
        ] {
            if let Some(given) = path.as_mut() {
                let field = format!("task.config.{key}");
                let found = self
                    .confinement
                    .resolve(&field, given, base, base)
                    .map_err(|m| unsupported(spec, m))?;
                if !found.is_file() {
                    return Err(unsupported(
                        spec,
                        format!("{field}: {given} does not exist on this node as a regular file"),
                    ));
                }
                *given = found.display().to_string();
            }
        }
        if let Some(given) = resolved.disk.as_mut() {
            *given = self.disk(spec, given)?.display().to_string();
        }
        Ok(resolved)
    }

    /// The disk image `given` as QEMU will open it (read-write, as the
    /// agent's user): a host block device only if the node allows it.
    fn disk(&self, spec: &WorkloadSpec, given: &str) -> Result<PathBuf, DriverError> {
        let field = "task.config.disk";
        let target = std::fs::canonicalize(spec.alloc_dir.join(given));
        if let Ok(device) = &target {
            if confine::is_block_device(device) {
                if self.confinement.vm_device_allowed(device) {
                    return Ok(device.clone());
                }
                return Err(unsupported(
                    spec,
                    format!(
                        "{field}: {given} is the host device {}; a VM is given a host device                          only if the node's operator lists it in vm_devices (--vm-device)",
                        device.display()
                    ),
                ));
            }
        }
        let found = self
            .confinement
            .resolve(field, given, &spec.alloc_dir, &spec.alloc_dir)
            .map_err(|m| unsupported(spec, m))?;
        if !found.is_file() {
            let what = if found.exists() {
                "is not a regular file (nor an allowed block device)"
            } else {
                "does not exist on this node"
            };
            return Err(unsupported(spec, format!("{field}: {given} {what}")));
        }
        Ok(found)
    }
}

/// The disk QEMU attaches: the one given, or the fresh one `prepare`
/// creates in the allocation directory.
fn disk_path(spec: &WorkloadSpec, settings: &VmSettings) -> Option<PathBuf> {
    match (&settings.disk, settings.disk_size) {
        (Some(disk), _) => Some(PathBuf::from(disk)),
        (None, Some(_)) => Some(spec.alloc_dir.join(qemu::FRESH_DISK)),
        (None, None) => None,
    }
}

/// Creates the fresh qcow2 disk a spec asks for, unless it exists (a
/// restart of the allocation keeps its disk).
async fn fresh_disk(spec: &WorkloadSpec, bytes: u64) -> Result<(), DriverError> {
    let path = spec.alloc_dir.join(qemu::FRESH_DISK);
    if path.exists() {
        return Ok(());
    }
    let img = qemu::find_in_path(qemu::QEMU_IMG).ok_or_else(|| {
        unsupported(
            spec,
            format!(
                "{} not found in PATH: install Debian's qemu-utils",
                qemu::QEMU_IMG
            ),
        )
    })?;
    let output = tokio::time::timeout(
        IMG_TIMEOUT,
        tokio::process::Command::new(img)
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg(bytes.to_string())
            .output(),
    )
    .await
    .map_err(|_| DriverError::Start {
        alloc: spec.alloc_id.clone(),
        message: "qemu-img create timed out".into(),
    })?
    .map_err(|e| DriverError::Start {
        alloc: spec.alloc_id.clone(),
        message: format!("cannot run qemu-img: {e}"),
    })?;
    if !output.status.success() {
        return Err(DriverError::Start {
            alloc: spec.alloc_id.clone(),
            message: format!(
                "qemu-img create failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(())
}

#[async_trait::async_trait]
impl ExecKind for Vm {
    const NAME: &'static str = driver_settings::VM;
    type Settings = VmSettings;

    fn capabilities(&self) -> DriverCapabilities {
        DriverCapabilities {
            migration: MigrationMode::LivePreCopy,
            pause: true,
            power_cap: false,
        }
    }

    /// Freezes the VM's vCPUs in place (QMP `stop`); its memory stays.
    async fn pause(driver: &VmDriver, handle: &WorkloadHandle) -> Result<(), DriverError> {
        driver.command(handle, "stop").await
    }

    /// Lets a paused VM run again (QMP `cont`).
    async fn resume(driver: &VmDriver, handle: &WorkloadHandle) -> Result<(), DriverError> {
        driver.command(handle, "cont").await
    }

    /// Starts QEMU waiting for the VM (`-incoming defer -S`), its local
    /// disk exported over NBD; see [`migrate`].
    async fn prepare_incoming(
        driver: &VmDriver,
        spec: &WorkloadSpec,
    ) -> Result<(WorkloadHandle, IncomingEndpoints), DriverError> {
        migrate::prepare_incoming(driver, spec).await
    }

    /// Mirrors the local disk, then QMP `migrate`; see [`migrate`].
    async fn migrate_out(
        driver: &VmDriver,
        handle: &WorkloadHandle,
        to: &IncomingEndpoints,
        limits: &MoveLimits,
        progress: ProgressSink<'_>,
    ) -> Result<MoveStats, DriverError> {
        migrate::migrate_out(handle, to, limits, driver.migration_tls(), progress).await
    }

    /// `migrate_cancel`, the mirror cancelled, the VM running again.
    async fn cancel_out(_driver: &VmDriver, handle: &WorkloadHandle) -> Result<(), DriverError> {
        migrate::cancel_out(handle).await
    }

    /// Waits until the incoming QEMU has loaded the whole stream.
    async fn confirm_incoming(
        _driver: &VmDriver,
        handle: &WorkloadHandle,
        wait: Duration,
    ) -> Result<(), DriverError> {
        migrate::confirm_incoming(handle, wait).await
    }

    /// Waits for the incoming migration, stops the NBD server, `cont`.
    async fn finish_incoming(
        _driver: &VmDriver,
        handle: &WorkloadHandle,
    ) -> Result<(), DriverError> {
        migrate::finish_incoming(handle).await
    }

    fn confine(&mut self, confinement: &Confinement) {
        self.confinement = confinement.clone();
    }

    fn settings(&self, task: &TaskSpec) -> Result<VmSettings, FieldError> {
        driver_settings::vm(task)
    }

    fn check_host(&self, spec: &WorkloadSpec, settings: &VmSettings) -> Result<(), DriverError> {
        if qemu::find_in_path(qemu::QEMU).is_none() {
            return Err(unsupported(
                spec,
                format!(
                    "{} not found in PATH: install Debian's qemu-system-x86 to run VMs here",
                    qemu::QEMU
                ),
            ));
        }
        self.confined(spec, settings)?;
        if settings.accel == Accel::Kvm && !qemu::kvm_usable() {
            return Err(unsupported(
                spec,
                "task.config.accel: kvm asked for, but /dev/kvm cannot be opened here".into(),
            ));
        }
        let socket = spec.alloc_dir.join(qemu::QMP_SOCKET);
        if socket.as_os_str().len() > qemu::MAX_SOCKET_PATH {
            return Err(unsupported(
                spec,
                format!(
                    "the QMP socket path {} is longer than a unix socket allows; use a shorter data dir",
                    socket.display()
                ),
            ));
        }
        Ok(())
    }

    fn command(
        &self,
        _herd: &Path,
        spec: &WorkloadSpec,
        settings: &VmSettings,
    ) -> Result<ExecCommand, DriverError> {
        let qemu = qemu::find_in_path(qemu::QEMU)
            .ok_or_else(|| unsupported(spec, format!("{} not found in PATH", qemu::QEMU)))?;
        let settings = &self.confined(spec, settings)?;
        let mut args = qemu::args(
            settings,
            &spec.alloc_dir,
            disk_path(spec, settings).as_deref(),
        );
        if qemu::sandbox_supported(&qemu) {
            args.extend(qemu::SANDBOX.iter().map(|a| a.to_string()));
        }
        Ok(ExecCommand {
            program: qemu.display().to_string(),
            args,
            env: Default::default(),
        })
    }

    async fn prepare(&self, spec: &WorkloadSpec, settings: &VmSettings) -> Result<(), DriverError> {
        std::fs::create_dir_all(&spec.alloc_dir).map_err(|e| DriverError::Start {
            alloc: spec.alloc_id.clone(),
            message: format!("cannot create {}: {e}", spec.alloc_dir.display()),
        })?;
        if let (None, Some(bytes)) = (&settings.disk, settings.disk_size) {
            fresh_disk(spec, bytes).await?;
        }
        // A socket left by an earlier run would make QEMU fail to bind.
        let _ = std::fs::remove_file(spec.alloc_dir.join(qemu::QMP_SOCKET));
        Ok(())
    }

    fn wrap_detail(alloc_dir: &Path, exec: serde_json::Value) -> Result<serde_json::Value, String> {
        serde_json::to_value(VmDetail {
            exec,
            qmp: alloc_dir.join(qemu::QMP_SOCKET),
        })
        .map_err(|e| e.to_string())
    }

    fn exec_detail(detail: &serde_json::Value) -> Result<serde_json::Value, String> {
        serde_json::from_value::<VmDetail>(detail.clone())
            .map(|detail| detail.exec)
            .map_err(|e| e.to_string())
    }

    /// QMP says whether the guest is paused: by `stop`, or by a live
    /// migration (a target waiting for it, a source that handed it over).
    /// A VM still creating its socket counts as running.
    async fn running_state(&self, run: &Run<'_>) -> WorkloadState {
        let Ok(socket) = socket(run.handle) else {
            return WorkloadState::Running;
        };
        match Qmp::connect(&socket).await {
            Ok(mut qmp) => match qmp.status().await {
                Ok(status) if FROZEN.contains(&status.as_str()) => WorkloadState::Paused,
                _ => WorkloadState::Running,
            },
            Err(_) => WorkloadState::Running,
        }
    }

    /// Asks the guest to power down and gives it up to half the grace (at
    /// most [`POWERDOWN_WAIT`]); a guest without ACPI handling ignores it,
    /// and QEMU then quits cleanly on the SIGTERM the executor forwards. A
    /// guest that does not run (paused, or a migration's source or target)
    /// cannot act on the request, so none is made.
    async fn before_stop(&self, run: &Run<'_>, grace: Duration) -> Result<(), DriverError> {
        let started = Instant::now();
        if let Ok(mut qmp) = Qmp::connect(&socket(run.handle)?).await {
            if qmp.status().await.map_or(true, |s| s != "running") {
                return Ok(());
            }
            let _ = qmp.execute("system_powerdown", None).await;
            let deadline = (grace / 2).min(POWERDOWN_WAIT);
            while started.elapsed() < deadline {
                if !matches!(
                    run.exec_state().await?,
                    WorkloadState::Running | WorkloadState::Paused
                ) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

impl ExecBacked<Vm> {
    /// Makes incoming migrations listen on `host` (QEMU's migration
    /// listener and NBD server) and name it in their endpoints: the node's
    /// `migration_host`, which other agents reach. Default: loopback.
    pub fn with_migration_host(mut self, host: MigrationHost) -> Self {
        self.kind_mut().migration_host = host;
        self
    }

    /// Where this driver's incoming migrations listen.
    pub fn migration_host(&self) -> &MigrationHost {
        &self.kind().migration_host
    }

    /// Puts this driver's live migrations (QEMU's migration stream and the
    /// NBD copy of a local disk) under mutual TLS with `tls`, the node's
    /// own identity (the agent's `--tls-*`); None keeps them plaintext, as
    /// a plaintext agent's are. Both agents of a move run the same way:
    /// a TLS agent only talks to TLS agents.
    pub fn with_migration_tls(mut self, tls: Option<tls::MigrationTls>) -> Self {
        self.kind_mut().migration_tls = tls;
        self
    }

    /// The TLS identity this driver's migrations use, if any.
    pub fn migration_tls(&self) -> Option<&tls::MigrationTls> {
        self.kind().migration_tls.as_ref()
    }

    async fn command(&self, handle: &WorkloadHandle, command: &str) -> Result<(), DriverError> {
        let socket = socket(handle)?;
        let io = |e: qmp::QmpError| DriverError::Io {
            alloc: handle.alloc_id.clone(),
            message: e.to_string(),
        };
        let mut qmp = Qmp::connect(&socket).await.map_err(io)?;
        qmp.execute(command, None).await.map(|_| ()).map_err(io)
    }
}
