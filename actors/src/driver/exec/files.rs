//! The files through which the driver and the executor talk, all in the
//! allocation's directory. They are the only shared state, so that a new agent
//! process can pick up a workload from the directory alone.
//!
//! - `launch.json` (driver → executor): what to run, fully resolved.
//! - `started.json` (executor → driver): pids and start times, limits applied.
//! - `start-error.json` (executor → driver): why the task could not be spawned.
//! - `exit.json` (executor, or `stop` when the executor was killed): how it ended.
//! - `stdout.log`, `stderr.log`: the task's output; `executor.log`: the executor's.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::driver::confine::RunAs;
use crate::driver::{ExitInfo, WorkloadSpec};

/// Launch description written by the driver.
pub const LAUNCH: &str = "launch.json";
/// Written by the executor once the task runs.
pub const STARTED: &str = "started.json";
/// Written by the executor when the task could not be spawned.
pub const START_ERROR: &str = "start-error.json";
/// Written once the task ended.
pub const EXIT: &str = "exit.json";
/// The task's standard output and error (appended across runs), where every
/// driver's output goes ([`crate::driver::logs`]).
pub use crate::driver::logs::{STDERR, STDOUT};
/// The executor's own diagnostics (appended across runs).
pub const EXECUTOR_LOG: &str = "executor.log";

/// `PATH` given to tasks when the agent itself has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the executor needs, resolved by the driver so that the executor
/// depends on nothing but this file (not on the agent's environment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    /// The allocation, for messages and the cgroup name.
    pub alloc_id: String,
    /// The allocation's generation this run belongs to.
    pub generation: u64,
    /// The job, for messages.
    pub job: String,
    /// Program to run: a path, or a name looked up in the task's `PATH`.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The task's whole environment (see [`resolve_env`]).
    pub env: BTreeMap<String, String>,
    /// Its working directory.
    pub workdir: PathBuf,
    /// The allocation directory (absolute).
    pub alloc_dir: PathBuf,
    /// CPU limit in millicores; 0 for none.
    pub cpu_millis: u64,
    /// Memory limit in bytes; 0 for none.
    pub memory_bytes: u64,
    /// The unprivileged user the task runs as (the node's `exec_user`);
    /// `None`: the executor's own user. Absent in launch files of older
    /// agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<RunAs>,
}

impl Launch {
    /// The launch description of `spec`, whose `alloc_dir` must be absolute.
    /// `agent_path` is the agent's own `PATH`, if any.
    pub fn from_spec(spec: &WorkloadSpec, agent_path: Option<&str>) -> Option<Self> {
        let command = spec.task.command.clone()?;
        let workdir = spec
            .task
            .workdir
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| spec.alloc_dir.clone());
        Some(Self {
            alloc_id: spec.alloc_id.clone(),
            generation: spec.generation,
            job: spec.job.clone(),
            command,
            args: spec.task.args.clone(),
            env: resolve_env(spec, agent_path),
            workdir,
            alloc_dir: spec.alloc_dir.clone(),
            cpu_millis: spec.task.resources.cpu_millis,
            memory_bytes: spec.task.resources.memory_bytes,
            run_as: None,
        })
    }
}

/// The task's environment. Nothing of the agent's environment leaks into a
/// task except `PATH` (a task without it could not find `sh`), so a workload
/// behaves the same on every node whatever the agent was started with. Layers,
/// later ones winning: `PATH` (the agent's, else [`DEFAULT_PATH`]) and
/// `HERD_ALLOC_ID`, `HERD_ALLOC_DIR`, `HERD_JOB`; then the task's own `env`;
/// then the agent's extra `env` (ranks, peers, ports it assigned, which the
/// task must not be able to shadow by accident).
pub fn resolve_env(spec: &WorkloadSpec, agent_path: Option<&str>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        agent_path.unwrap_or(DEFAULT_PATH).to_string(),
    );
    env.insert("HERD_ALLOC_ID".to_string(), spec.alloc_id.clone());
    env.insert(
        "HERD_ALLOC_DIR".to_string(),
        spec.alloc_dir.display().to_string(),
    );
    env.insert("HERD_JOB".to_string(), spec.job.clone());
    env.extend(spec.task.env.clone());
    env.extend(spec.env.clone());
    env
}

/// Whether CPU and memory limits are enforced for a run, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// True when the task runs in a cgroup v2 with `memory.max` and `cpu.max` set.
    pub enforced: bool,
    /// The cgroup directory, when enforced.
    pub cgroup: Option<PathBuf>,
    /// Why they are not enforced, when they are not.
    pub reason: Option<String>,
}

/// Identity of one run: the executor and the task, each by pid and start time
/// (clock ticks after boot, field 22 of `/proc/PID/stat`), plus the boot, so
/// that a recycled pid or a reboot is never mistaken for the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// The allocation's generation.
    pub generation: u64,
    /// The executor's pid (leader of its own session and process group).
    pub executor_pid: u32,
    /// The executor's start time.
    pub executor_start_ticks: u64,
    /// The task's pid (leader of its own process group).
    pub task_pid: u32,
    /// The task's start time.
    pub task_start_ticks: u64,
    /// `/proc/sys/kernel/random/boot_id` when it started.
    pub boot_id: String,
    /// When the task started, ms since the epoch.
    pub started_at_ms: u64,
    /// Resource limits applied.
    pub limits: Limits,
}

/// Why the executor could not start the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartFailure {
    /// What failed, with the OS error.
    pub message: String,
}

/// `exit.json`: how a run ended, tagged with the run so that a later run in
/// the same directory is never mistaken for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The run's executor pid.
    pub executor_pid: u32,
    /// The run's executor start time.
    pub executor_start_ticks: u64,
    /// How it ended.
    #[serde(flatten)]
    pub exit: ExitInfo,
}

/// Writes `value` as JSON to `dir/name` atomically and durably: a reader sees
/// either nothing or the whole file, even after a crash or power loss.
///
/// The temporary file is created afresh (`O_EXCL`, after removing whatever
/// has its name), so a symlink a task planted under that name is replaced,
/// never followed: the driver writes only inside the directory.
pub fn write_atomic<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    remove(dir, &format!(".{name}.tmp"))?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// Reads `dir/name` as JSON: `Ok(None)` when it does not exist.
/// A symlink under that name is not followed (`ELOOP`): a task cannot make
/// the driver read a file outside the directory.
pub fn read_json<T: DeserializeOwned>(dir: &Path, name: &str) -> io::Result<Option<T>> {
    let read = || -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        io::Read::read_to_end(
            &mut OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(dir.join(name))?,
            &mut bytes,
        )?;
        Ok(bytes)
    };
    match read() {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens `dir/name` for appending, creating it (mode 0644) if absent, but
/// never through a symlink (`O_NOFOLLOW`): the task's logs and the
/// executor's are opened by the agent's user, and a task must not be able
/// to point them at a file outside its directory.
pub fn open_append(dir: &Path, name: &str) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(name))
}

/// Removes `dir/name`; absent is fine.
pub fn remove(dir: &Path, name: &str) -> io::Result<()> {
    match fs::remove_file(dir.join(name)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Milliseconds since the epoch (0 if the clock is before it): herd's one
/// wall-clock stamp, re-exported for the executor's records.
pub use herd_api::clock::now_ms;

#[cfg(test)]
mod tests {
    use super::*;
    use herd_api::job::TaskSpec;
    use herd_api::resources::Resources;

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            alloc_id: "a1".into(),
            generation: 4,
            job: "train".into(),
            task: TaskSpec {
                driver: "exec".into(),
                command: Some("/bin/echo".into()),
                args: vec!["hi".into()],
                env: [("A", "task"), ("B", "task"), ("PATH", "/opt/bin")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                workdir: None,
                resources: Resources {
                    cpu_millis: 1500,
                    memory_bytes: 1 << 30,
                    gpus: 0,
                    gpu_model: None,
                },
                config: Default::default(),
            },
            alloc_dir: "/var/herd/a1".into(),
            env: [("B".to_string(), "agent".to_string())].into(),
        }
    }

    #[test]
    fn launch_resolves_workdir_env_and_limits_and_round_trips_through_json() {
        let launch = Launch::from_spec(&spec(), Some("/usr/bin")).expect("has a command");
        assert_eq!(launch.workdir, PathBuf::from("/var/herd/a1"));
        assert_eq!((launch.cpu_millis, launch.memory_bytes), (1500, 1 << 30));
        let expected: BTreeMap<String, String> = [
            ("A", "task"),
            ("B", "agent"),
            ("HERD_ALLOC_DIR", "/var/herd/a1"),
            ("HERD_ALLOC_ID", "a1"),
            ("HERD_JOB", "train"),
            ("PATH", "/opt/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(launch.env, expected);
        let json = serde_json::to_string(&launch).expect("serializes");
        let back: Launch = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, launch);
    }

    #[test]
    fn launch_takes_the_task_workdir_and_a_default_path_and_needs_a_command() {
        let mut spec = spec();
        spec.task.workdir = Some("/srv".into());
        spec.task.env.clear();
        let launch = Launch::from_spec(&spec, None).expect("has a command");
        assert_eq!(launch.workdir, PathBuf::from("/srv"));
        assert_eq!(launch.env["PATH"], DEFAULT_PATH);
        spec.task.command = None;
        assert_eq!(Launch::from_spec(&spec, None), None);
    }

    #[test]
    fn exit_records_are_flat_json_and_atomic_writes_replace_whole_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            read_json::<ExitRecord>(dir.path(), EXIT).expect("read"),
            None
        );
        let record = ExitRecord {
            executor_pid: 10,
            executor_start_ticks: 20,
            exit: ExitInfo {
                code: Some(3),
                signal: None,
                finished_at_ms: 1234,
                message: None,
            },
        };
        write_atomic(dir.path(), EXIT, &record).expect("write");
        let raw: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join(EXIT)).expect("read raw"))
                .expect("json");
        assert_eq!(raw["code"], 3);
        assert_eq!(raw["executor_pid"], 10);
        let back: Option<ExitRecord> = read_json(dir.path(), EXIT).expect("read");
        assert_eq!(back, Some(record));
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from(EXIT)],
            "no temp file left"
        );
        remove(dir.path(), EXIT).expect("remove");
        remove(dir.path(), EXIT).expect("removing an absent file is fine");
    }

    #[test]
    fn symlinks_planted_in_the_directory_are_never_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").expect("write");
        let alloc = dir.path().join("alloc");
        fs::create_dir(&alloc).expect("mkdir");
        for name in [".exit.json.tmp", STDOUT, EXIT] {
            std::os::unix::fs::symlink(&victim, alloc.join(name)).expect("symlink");
        }
        let err = open_append(&alloc, STDOUT).expect_err("a symlinked log");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        let err = read_json::<ExitRecord>(&alloc, EXIT).expect_err("a symlinked record");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        write_atomic(&alloc, EXIT, &serde_json::json!({"code": 0})).expect("write");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
        assert!(!alloc.join(".exit.json.tmp").exists());
    }
}
