//! The `simvm` driver: SIMULATED VMs, for scale tests and the rescheduler.
//!
//! Each one is a `herd sim-vm` process (under the exec driver's executor,
//! through [`ExecBacked`], so it is re-adopted and supervised like any
//! workload; its settings parsed by `herd_api::driver_settings::simvm`, as
//! at submit) holding its memory
//! as a real buffer that it writes at the configured dirty rate
//! ([`memory::SimulatedMemory`]). Nothing is emulated: it costs a process
//! and its memory, not a QEMU, so thousands fit where real VMs would not.
//! It is named simulated wherever it appears.
//!
//! Live migration (mode `live`): the simulated VM models QEMU, so it moves
//! its memory the way QEMU does, over its own migration stream
//! ([`stream`]) from the source's `herd sim-vm` to an incoming one started
//! on the target, pre-copy rounds then stop-and-copy, with auto-converge
//! throttling a guest that dirties faster than the link ([`machine`]). The
//! agents orchestrate it through the driver's live-move methods
//! ([`migrate`]), which steer each process over its control socket in the
//! allocation directory ([`control`], what QMP is to QEMU); the target's
//! endpoint is the incoming process's listening address. The agents'
//! `AgentPeer` service carries files (checkpoints), not this memory.
//!
//! Under TLS (the agent's `--tls-*`, handed over with
//! [`SimVmDriver::with_migration_tls`]) that stream is mutual TLS with the
//! node's certificate, each side checking the exact node on the other end
//! ([`tls`]); without, plain TCP.

pub mod control;
pub mod machine;
pub mod memory;
pub mod migrate;
pub mod stream;
pub mod tls;

use std::path::Path;

use herd_api::driver_settings;
use herd_api::job::TaskSpec;
use herd_api::validate::FieldError;
use herd_api::vm::SimVmSettings;

use super::exec_backed::{ExecBacked, ExecCommand, ExecKind, Run};
use super::live::{IncomingEndpoints, MigrationHost, MoveLimits, MoveStats, ProgressSink};
use super::vm::tls::MigrationTls;
use super::{
    DriverCapabilities, DriverError, MigrationMode, WorkloadHandle, WorkloadSpec, WorkloadState,
};

/// The `simvm` kind of exec-backed workload: `herd sim-vm` sized by the
/// task's memory, with its control socket in the allocation directory;
/// holds the host its incoming migrations listen on ([`migrate`]) and the
/// node's TLS identity its migration streams use ([`tls`]).
#[derive(Debug, Clone, Default)]
pub struct SimVm {
    migration_host: MigrationHost,
    migration_tls: Option<MigrationTls>,
}

/// The `simvm` driver.
pub type SimVmDriver = ExecBacked<SimVm>;

impl ExecBacked<SimVm> {
    /// Makes incoming migrations listen on `host` and name it in their
    /// endpoints: the node's `migration_host`, which other agents reach.
    /// Default: loopback.
    pub fn with_migration_host(mut self, host: MigrationHost) -> Self {
        self.kind_mut().migration_host = host;
        self
    }

    /// Where this driver's incoming migrations listen.
    pub fn migration_host(&self) -> &MigrationHost {
        &self.kind().migration_host
    }

    /// Puts the VMs' migration streams under mutual TLS with `tls`, the
    /// agent's own identity (`MigrationTls::from_transport` of the
    /// process's transport): each `herd sim-vm` gets the CA, certificate
    /// and key at start, and checks the exact node on the other end of a
    /// move ([`tls`]). None (the default): plain TCP.
    pub fn with_migration_tls(mut self, tls: Option<MigrationTls>) -> Self {
        self.kind_mut().migration_tls = tls;
        self
    }

    /// The identity the VMs' migration streams use, if any.
    pub fn migration_tls(&self) -> Option<&MigrationTls> {
        self.kind().migration_tls.as_ref()
    }
}

#[async_trait::async_trait]
impl ExecKind for SimVm {
    const NAME: &'static str = driver_settings::SIMVM;
    type Settings = SimVmSettings;

    fn capabilities(&self) -> DriverCapabilities {
        DriverCapabilities {
            migration: MigrationMode::LivePreCopy,
            pause: false,
            power_cap: false,
        }
    }

    /// Starts `herd sim-vm --incoming`, paused and listening; see [`migrate`].
    async fn prepare_incoming(
        driver: &SimVmDriver,
        spec: &WorkloadSpec,
    ) -> Result<(WorkloadHandle, IncomingEndpoints), DriverError> {
        migrate::prepare_incoming(driver, spec).await
    }

    /// Pre-copy, then stop-and-copy, over the processes' own stream; see
    /// [`migrate`].
    async fn migrate_out(
        _driver: &SimVmDriver,
        handle: &WorkloadHandle,
        to: &IncomingEndpoints,
        limits: &MoveLimits,
        progress: ProgressSink<'_>,
    ) -> Result<MoveStats, DriverError> {
        migrate::migrate_out(handle, to, limits, progress).await
    }

    /// `cancel`: the guest runs on here, unthrottled.
    async fn cancel_out(_driver: &SimVmDriver, handle: &WorkloadHandle) -> Result<(), DriverError> {
        migrate::cancel_out(handle).await
    }

    /// `resume` once the memory has arrived.
    async fn finish_incoming(
        _driver: &SimVmDriver,
        handle: &WorkloadHandle,
    ) -> Result<(), DriverError> {
        migrate::finish_incoming(handle).await
    }

    fn settings(&self, task: &TaskSpec) -> Result<SimVmSettings, FieldError> {
        driver_settings::simvm(task)
    }

    /// The control socket must fit a unix socket's path.
    fn check_host(
        &self,
        spec: &WorkloadSpec,
        _settings: &SimVmSettings,
    ) -> Result<(), DriverError> {
        let socket = spec.alloc_dir.join(control::CONTROL_SOCKET);
        if socket.as_os_str().len() > control::MAX_SOCKET_PATH {
            return Err(DriverError::Unsupported {
                alloc: spec.alloc_id.clone(),
                message: format!(
                    "the simulated VM's control socket {} is longer than the {} bytes a unix socket allows; use a shorter data directory",
                    socket.display(),
                    control::MAX_SOCKET_PATH
                ),
            });
        }
        Ok(())
    }

    /// Under TLS, the node's credentials written where the command line
    /// names them (the process removes them once read; see [`tls`]).
    async fn prepare(
        &self,
        spec: &WorkloadSpec,
        _settings: &SimVmSettings,
    ) -> Result<(), DriverError> {
        let Some(identity) = &self.migration_tls else {
            return Ok(());
        };
        std::fs::create_dir_all(&spec.alloc_dir)
            .and_then(|()| {
                let revoked = herd_api::tls::revocation::listed();
                tls::write_creds(identity, &spec.alloc_dir, &revoked)
            })
            .map(|_| ())
            .map_err(|e| DriverError::Start {
                alloc: spec.alloc_id.clone(),
                message: format!(
                    "cannot write the migration stream's TLS credentials in {}: {e}",
                    spec.alloc_dir.join(super::vm::tls::CREDS_DIR).display()
                ),
            })
    }

    fn command(
        &self,
        herd: &Path,
        spec: &WorkloadSpec,
        settings: &SimVmSettings,
    ) -> Result<ExecCommand, DriverError> {
        let mut args = vec![
            "sim-vm".into(),
            "--memory-mib".into(),
            settings.memory_mib.to_string(),
            "--dirty-bytes-per-sec".into(),
            settings.dirty_bytes_per_sec.to_string(),
            "--seed".into(),
            settings.seed.to_string(),
            "--control".into(),
            spec.alloc_dir
                .join(control::CONTROL_SOCKET)
                .display()
                .to_string(),
        ];
        if self.migration_tls.is_some() {
            args.extend(tls::args(&spec.alloc_dir));
        }
        Ok(ExecCommand {
            program: herd.display().to_string(),
            args,
            env: Default::default(),
        })
    }

    /// Paused while a migration holds it (see [`migrate`]).
    async fn running_state(&self, run: &Run<'_>) -> WorkloadState {
        migrate::running_state(run.handle).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herd_api::resources::{Resources, MIB};

    use super::*;
    use crate::driver::Driver;

    fn spec(config: &[(&str, &str)]) -> WorkloadSpec {
        WorkloadSpec {
            alloc_id: "a1".into(),
            generation: 1,
            job: "vms".into(),
            task: TaskSpec {
                driver: "simvm".into(),
                command: None,
                args: Vec::new(),
                env: BTreeMap::new(),
                workdir: None,
                resources: Resources {
                    cpu_millis: 100,
                    memory_bytes: 64 * MIB,
                    gpus: 0,
                    gpu_model: None,
                },
                config: config
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            alloc_dir: "/tmp/herd-simvm-test/a1".into(),
            env: BTreeMap::new(),
        }
    }

    #[test]
    fn the_simulator_runs_as_the_herd_binary_sized_by_the_task() {
        let driver = SimVmDriver::new("/usr/bin/herd");
        let (_, exec) = driver
            .checked_launch(&spec(&[("dirty_rate", "1MiB"), ("seed", "7")]))
            .expect("valid");
        assert_eq!(exec.task.command.as_deref(), Some("/usr/bin/herd"));
        assert_eq!(
            exec.task.args.join(" "),
            "sim-vm --memory-mib 64 --dirty-bytes-per-sec 1048576 --seed 7 --control /tmp/herd-simvm-test/a1/simvm.sock"
        );
        assert_eq!(
            driver.capabilities().migration,
            MigrationMode::LivePreCopy,
            "moves live"
        );
        assert!(exec.task.config.is_empty(), "settings consumed");
        let err = driver
            .check(&spec(&[("dirty_rate", "fast")]))
            .expect_err("invalid");
        assert!(err.to_string().contains("task.config.dirty_rate"), "{err}");
        let mut long = spec(&[]);
        long.alloc_dir = std::path::PathBuf::from("/").join("d".repeat(120));
        let err = driver.check(&long).expect_err("socket path too long");
        assert!(err.to_string().contains("simvm.sock"), "{err}");
    }
    #[tokio::test]
    async fn under_tls_each_sim_vm_gets_the_node_credentials_at_start() {
        let ca = tls::test_certs::Ca::new();
        let identity = ca.migration_tls(herd_api::tls::PeerRole::Node, "s1");
        let driver = SimVmDriver::new("/usr/bin/herd").with_migration_tls(Some(identity));
        assert!(driver.migration_tls().is_some());
        let alloc = tempfile::tempdir().expect("tempdir");
        let mut spec = spec(&[]);
        spec.alloc_dir = alloc.path().join("a1");
        let (settings, exec) = driver.checked_launch(&spec).expect("valid");
        let args = exec.task.args.join(" ");
        let paths = tls::CredsPaths::in_alloc_dir(&spec.alloc_dir);
        assert!(
            args.ends_with(&tls::args(&spec.alloc_dir).join(" ")),
            "{args}"
        );
        assert!(args.contains(&paths.key.display().to_string()), "{args}");
        // Written by start's prepare (not by a check), read back whole.
        assert!(!paths.key.exists(), "a check writes nothing");
        driver
            .kind()
            .prepare(&spec, &settings)
            .await
            .expect("prepared");
        let loaded = tls::StreamTls::load_and_remove(
            &paths.ca,
            &paths.cert,
            &paths.key,
            Some(&paths.revoked),
        )
        .expect("the process can load them");
        assert!(!paths.revoked.exists(), "removed once read");
        assert_eq!(loaded.identity().name, "s1");
        // Without TLS: the command line of before, nothing written.
        let plain = SimVmDriver::new("/usr/bin/herd");
        let (settings, exec) = plain.checked_launch(&spec).expect("valid");
        assert!(!exec.task.args.join(" ").contains("migration-tls"));
        plain
            .kind()
            .prepare(&spec, &settings)
            .await
            .expect("prepared");
        assert!(!paths.ca.exists());
    }
}
