//! The baseline of the real-VM rows: the same VM moved by QEMU alone,
//! between two QEMUs started by hand with the command line herd's driver
//! builds (`herd_actors::driver::vm::qemu::args`): the target with
//! `-incoming defer` and `migrate-incoming` on loopback, the source told
//! `migrate` over QMP after the same `migrate-set-capabilities`
//! (`auto-converge` on) and `migrate-set-parameters` (downtime limit,
//! bandwidth cap; uncapped as herd's driver leaves it: 1 TiB/s) that the
//! driver sends, and followed with `query-migrate` every 5 ms as the
//! driver follows it. No agent, no coordinator: what is left is QEMU's own
//! cost of the move. The target runs without `-S`, so it resumes the guest
//! the moment the last byte is in, which is the best QEMU alone can do.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use herd_actors::driver::vm::qemu;
use herd_actors::driver::vm::qmp::Qmp;
use herd_api::vm::VmSettings;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use super::report::BaselineFigures;
use super::vm::guest_ready;
use super::Limits;
use crate::exit::CliError;

/// QEMU's `max-bandwidth` when no cap is asked for, as herd's driver sets it.
const UNCAPPED: u64 = 1 << 40;
/// How often `query-migrate` is asked, as herd's driver asks.
const POLL: Duration = Duration::from_millis(5);
/// How long QEMU may take to answer on its QMP socket.
const QMP_WAIT: Duration = Duration::from_secs(30);
/// How long the move may take before it is given up.
const MOVE_WAIT: Duration = Duration::from_secs(300);

fn runtime(what: impl std::fmt::Display) -> CliError {
    CliError::runtime(what)
}

/// One hand-started QEMU, killed when dropped.
struct Qemu {
    child: Child,
    socket: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Qemu {
    /// Starts QEMU for `settings` in `dir` (console to `stdout.log`), with
    /// `extra` arguments, and waits for its QMP socket.
    async fn start(dir: &Path, settings: &VmSettings, extra: &[&str]) -> Result<Self, CliError> {
        std::fs::create_dir_all(dir).map_err(|e| runtime(format!("{}: {e}", dir.display())))?;
        let log = |name: &str| {
            std::fs::File::create(dir.join(name))
                .map_err(|e| runtime(format!("{}: {e}", dir.join(name).display())))
        };
        let mut args = qemu::args(settings, dir, None);
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(qemu::QEMU)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log("stdout.log")?)
            .stderr(log("stderr.log")?)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| runtime(format!("cannot start {}: {e}", qemu::QEMU)))?;
        let mut vm = Self {
            child,
            socket: dir.join(qemu::QMP_SOCKET),
            dir: dir.to_path_buf(),
        };
        let started = Instant::now();
        loop {
            match Qmp::connect(&vm.socket).await {
                Ok(_) => return Ok(vm),
                Err(e) if started.elapsed() > QMP_WAIT => return Err(runtime(e)),
                Err(_) => {}
            }
            if let Ok(Some(status)) = vm.child.try_wait() {
                return Err(runtime(format!(
                    "QEMU exited ({status}) before it answered on QMP (see {})",
                    vm.dir.join("stderr.log").display()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value, CliError> {
        let mut qmp = Qmp::connect(&self.socket).await.map_err(runtime)?;
        qmp.execute(command, arguments).await.map_err(runtime)
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn u64_at(value: &Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or(0)
}

/// Boots the VM of `settings` under `dir/src`, waits for its guest to
/// tick, starts the incoming QEMU under `dir/dst`, moves the VM, and
/// returns QEMU's own figures. Both QEMUs are gone when it returns.
pub async fn measure(
    dir: &Path,
    settings: &VmSettings,
    limits: &Limits,
) -> Result<BaselineFigures, CliError> {
    let source = Qemu::start(&dir.join("src"), settings, &[]).await?;
    let result = async {
        guest_ready(&dir.join("src").join("stdout.log")).await?;
        let setup_started = Instant::now();
        let target = Qemu::start(&dir.join("dst"), settings, &["-incoming", "defer"]).await?;
        let moved = async {
            target
                .execute("migrate-incoming", Some(json!({"uri": "tcp:127.0.0.1:0"})))
                .await?;
            let info = target.execute("query-migrate", None).await?;
            let port = info["socket-address"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|a| a["port"].as_str().map(str::to_string))
                .ok_or_else(|| runtime(format!("the incoming QEMU names no port: {info}")))?;
            let setup_ms = u64::try_from(setup_started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let mut figures = move_to(&source, &port, limits).await?;
            figures.setup_ms = setup_ms;
            // The move is real only if the target now runs the guest.
            let state = target.execute("query-status", None).await?;
            if state["status"] != "running" {
                return Err(runtime(format!(
                    "the target QEMU does not run after the move ({})",
                    state["status"]
                )));
            }
            Ok(figures)
        }
        .await;
        target.stop().await;
        moved
    }
    .await;
    source.stop().await;
    result
}

/// Sets the driver's parameters on `source`, runs `migrate` to
/// `127.0.0.1:port` and follows it to the end.
async fn move_to(source: &Qemu, port: &str, limits: &Limits) -> Result<BaselineFigures, CliError> {
    source
        .execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [
                {"capability": "auto-converge", "state": true},
                {"capability": "pause-before-switchover", "state": false},
            ]})),
        )
        .await?;
    source
        .execute(
            "migrate-set-parameters",
            Some(json!({
                "downtime-limit": limits.downtime_limit_ms().max(1),
                "max-bandwidth": limits.bandwidth.unwrap_or(UNCAPPED),
            })),
        )
        .await?;
    source
        .execute(
            "migrate",
            Some(json!({"uri": format!("tcp:127.0.0.1:{port}")})),
        )
        .await?;
    let started = Instant::now();
    loop {
        let info = source.execute("query-migrate", None).await?;
        match info["status"].as_str().unwrap_or("") {
            "completed" => {
                let ram = &info["ram"];
                return Ok(BaselineFigures {
                    total_ms: u64_at(&info, "total-time"),
                    downtime_ms: u64_at(&info, "downtime"),
                    setup_ms: 0,
                    polled_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    bytes: u64_at(ram, "transferred"),
                    rounds: u32::try_from(u64_at(ram, "dirty-sync-count")).unwrap_or(u32::MAX),
                });
            }
            "failed" | "cancelled" => {
                return Err(runtime(format!(
                    "QEMU's migration ended {}: {}",
                    info["status"],
                    info["error-desc"].as_str().unwrap_or("no reason given")
                )))
            }
            status if started.elapsed() > MOVE_WAIT => {
                return Err(runtime(format!(
                    "QEMU's migration did not end within {MOVE_WAIT:?} ({status})"
                )))
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}
