//! The `vm` driver: virtual machines under real QEMU, driven through QMP.
//!
//! QEMU runs as the task of the exec driver's detached executor, so
//! everything the exec driver guarantees holds for VMs too: the VM outlives
//! an agent restart and is re-adopted from its handle, its exit is recorded
//! while no agent runs, and its serial console is captured (to
//! `stdout.log`, read by `herd alloc logs`). On top of that, QMP (a unix
//! socket in the allocation directory) pauses, resumes and inspects it, and
//! `stop` first asks the guest to power down.
//!
//! Acceleration: KVM when `/dev/kvm` opens (`accel = "auto"`, the default),
//! TCG otherwise; `accel = "tcg"` forces emulation where nested KVM
//! misbehaves. Live migration (pre-copy through QMP `migrate` to a target
//! started with `-incoming`) builds on this driver next.

pub mod guest;
pub mod qemu;
pub mod qmp;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herd_api::vm::{Accel, VmSettings};
use serde::{Deserialize, Serialize};

use super::exec::ExecDriver;
use super::{
    Driver, DriverCapabilities, DriverError, ExitInfo, MigrationMode, WorkloadHandle, WorkloadSpec,
    WorkloadState,
};
use qmp::Qmp;

/// Longest `qemu-img create` may take.
const IMG_TIMEOUT: Duration = Duration::from_secs(60);
/// Most of the stop grace given to the guest to power itself down.
const POWERDOWN_WAIT: Duration = Duration::from_secs(10);

/// The `vm` driver.
#[derive(Debug, Clone)]
pub struct VmDriver {
    exec: ExecDriver,
}

/// The handle's driver-specific part: the exec run that is QEMU, and its socket.
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

impl VmDriver {
    /// A driver whose QEMU processes are supervised by `executor` (the herd binary).
    pub fn new(executor: impl Into<PathBuf>) -> Self {
        Self {
            exec: ExecDriver::new(executor),
        }
    }

    fn settings(spec: &WorkloadSpec) -> Result<VmSettings, DriverError> {
        VmSettings::parse(&spec.task.config, &spec.task.resources)
            .map_err(|e| unsupported(spec, e.to_string()))
    }

    fn exec_handle(handle: &WorkloadHandle) -> Result<(WorkloadHandle, PathBuf), DriverError> {
        let bad = |message: String| DriverError::BadHandle {
            alloc: handle.alloc_id.clone(),
            message,
        };
        if handle.driver != "vm" {
            return Err(bad(format!(
                "it belongs to driver {:?}, not \"vm\"",
                handle.driver
            )));
        }
        let detail: VmDetail =
            serde_json::from_value(handle.detail.clone()).map_err(|e| bad(e.to_string()))?;
        let mut exec = handle.clone();
        exec.driver = "exec".to_string();
        exec.detail = detail.exec;
        Ok((exec, detail.qmp))
    }

    async fn qmp(handle: &WorkloadHandle, socket: &Path) -> Result<Qmp, DriverError> {
        Qmp::connect(socket).await.map_err(|e| DriverError::Io {
            alloc: handle.alloc_id.clone(),
            message: e.to_string(),
        })
    }

    async fn command(&self, handle: &WorkloadHandle, command: &str) -> Result<(), DriverError> {
        let (_, socket) = Self::exec_handle(handle)?;
        let mut qmp = Self::qmp(handle, &socket).await?;
        qmp.execute(command, None)
            .await
            .map(|_| ())
            .map_err(|e| DriverError::Io {
                alloc: handle.alloc_id.clone(),
                message: e.to_string(),
            })
    }

    /// Freezes the VM's vCPUs in place (QMP `stop`); its memory stays.
    pub async fn pause(&self, handle: &WorkloadHandle) -> Result<(), DriverError> {
        self.command(handle, "stop").await
    }

    /// Lets a paused VM run again (QMP `cont`).
    pub async fn resume(&self, handle: &WorkloadHandle) -> Result<(), DriverError> {
        self.command(handle, "cont").await
    }

    /// Creates the fresh qcow2 disk a spec asks for, unless it exists (a
    /// restart of the allocation keeps its disk).
    async fn fresh_disk(spec: &WorkloadSpec, bytes: u64) -> Result<PathBuf, DriverError> {
        let path = spec.alloc_dir.join(qemu::FRESH_DISK);
        if path.exists() {
            return Ok(path);
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
        Ok(path)
    }
}

/// The VM's handle: the executor's, with the QMP socket beside it.
fn vm_handle(
    spec: &WorkloadSpec,
    exec: WorkloadHandle,
    qmp: PathBuf,
) -> Result<WorkloadHandle, DriverError> {
    let detail = VmDetail {
        exec: exec.detail.clone(),
        qmp,
    };
    Ok(WorkloadHandle {
        driver: "vm".to_string(),
        detail: serde_json::to_value(&detail).map_err(|e| DriverError::Start {
            alloc: spec.alloc_id.clone(),
            message: format!("cannot encode the handle: {e}"),
        })?,
        ..exec
    })
}

#[async_trait::async_trait]
impl Driver for VmDriver {
    fn name(&self) -> &'static str {
        "vm"
    }

    fn capabilities(&self) -> DriverCapabilities {
        DriverCapabilities {
            migration: MigrationMode::LivePreCopy,
            pause: true,
            power_cap: false,
        }
    }

    fn check(&self, spec: &WorkloadSpec) -> Result<(), DriverError> {
        let settings = Self::settings(spec)?;
        if qemu::find_in_path(qemu::QEMU).is_none() {
            return Err(unsupported(
                spec,
                format!(
                    "{} not found in PATH: install Debian's qemu-system-x86 to run VMs here",
                    qemu::QEMU
                ),
            ));
        }
        for (key, path) in [
            ("kernel", &settings.kernel),
            ("initrd", &settings.initrd),
            ("disk", &settings.disk),
        ] {
            if let Some(path) = path {
                if !Path::new(path).is_file() {
                    return Err(unsupported(
                        spec,
                        format!("task.config.{key}: {path} does not exist on this node"),
                    ));
                }
            }
        }
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

    async fn start(&self, spec: &WorkloadSpec) -> Result<WorkloadHandle, DriverError> {
        self.check(spec)?;
        let settings = Self::settings(spec)?;
        std::fs::create_dir_all(&spec.alloc_dir).map_err(|e| DriverError::Start {
            alloc: spec.alloc_id.clone(),
            message: format!("cannot create {}: {e}", spec.alloc_dir.display()),
        })?;
        let disk = match (&settings.disk, settings.disk_size) {
            (Some(disk), _) => Some(PathBuf::from(disk)),
            (None, Some(bytes)) => Some(Self::fresh_disk(spec, bytes).await?),
            (None, None) => None,
        };
        let socket = spec.alloc_dir.join(qemu::QMP_SOCKET);
        // A socket left by an earlier run would make QEMU fail to bind.
        let _ = std::fs::remove_file(&socket);
        let qemu = qemu::find_in_path(qemu::QEMU)
            .ok_or_else(|| unsupported(spec, format!("{} not found in PATH", qemu::QEMU)))?;
        let mut exec_spec = spec.clone();
        exec_spec.task.command = Some(qemu.display().to_string());
        exec_spec.task.args = qemu::args(&settings, &spec.alloc_dir, disk.as_deref());
        exec_spec.task.config.clear();
        let exec = self.exec.start(&exec_spec).await?;
        vm_handle(spec, exec, socket)
    }

    async fn recover(&self, spec: &WorkloadSpec) -> Result<Option<WorkloadHandle>, DriverError> {
        // QEMU runs under the executor; only the directory and generation
        // matter to find it, not the command line `start` built.
        let Some(exec) = self.exec.recover(spec).await? else {
            return Ok(None);
        };
        vm_handle(spec, exec, spec.alloc_dir.join(qemu::QMP_SOCKET)).map(Some)
    }

    async fn state(&self, handle: &WorkloadHandle) -> Result<WorkloadState, DriverError> {
        let (exec, socket) = Self::exec_handle(handle)?;
        let state = self.exec.state(&exec).await?;
        if state != WorkloadState::Running {
            return Ok(state);
        }
        // Running as a process; QMP says whether the guest is paused. A VM
        // still creating its socket counts as running.
        match Qmp::connect(&socket).await {
            Ok(mut qmp) => match qmp.status().await {
                Ok(status) if status == "paused" => Ok(WorkloadState::Paused),
                _ => Ok(WorkloadState::Running),
            },
            Err(_) => Ok(WorkloadState::Running),
        }
    }

    async fn wait(&self, handle: &WorkloadHandle) -> Result<ExitInfo, DriverError> {
        let (exec, _) = Self::exec_handle(handle)?;
        self.exec.wait(&exec).await
    }

    async fn stop(
        &self,
        handle: &WorkloadHandle,
        grace: Duration,
    ) -> Result<ExitInfo, DriverError> {
        let (exec, socket) = Self::exec_handle(handle)?;
        let started = Instant::now();
        // Ask the guest first; a guest without ACPI handling ignores it.
        if let Ok(mut qmp) = Qmp::connect(&socket).await {
            let _ = qmp.execute("system_powerdown", None).await;
            let deadline = (grace / 2).min(POWERDOWN_WAIT);
            while started.elapsed() < deadline {
                if !matches!(
                    self.exec.state(&exec).await?,
                    WorkloadState::Running | WorkloadState::Paused
                ) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // QEMU quits cleanly on the SIGTERM the executor forwards.
        self.exec
            .stop(&exec, grace.saturating_sub(started.elapsed()))
            .await
    }
}
