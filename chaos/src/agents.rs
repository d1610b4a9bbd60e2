//! Node agents as real OS processes (`herd node`), and the workloads they
//! start, seen from outside through /proc.
//!
//! A workload of the exec driver outlives its agent (that is how an agent
//! restart re-adopts it), so killing "a node" here means killing the agent
//! and every process whose allocation directory lies under that node's data
//! dir. Dropping the set kills all of them: a test never leaks processes.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::ports::free_loopback_port;
use crate::process_cluster::ClusterError;

/// One agent process.
pub struct AgentProcess {
    /// Node name.
    pub name: String,
    /// Its gRPC address.
    pub addr: String,
    /// Its data dir (allocations live under it).
    pub data_dir: PathBuf,
    /// Where its output goes.
    pub log_path: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

/// A workload process found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadProcess {
    /// Its pid.
    pub pid: u32,
    /// The node whose data dir holds its allocation.
    pub node: String,
    /// `HERD_ALLOC_ID`.
    pub alloc_id: String,
    /// `HERD_JOB`.
    pub job: String,
    /// `HERD_ALLOC_INSTANCE`, when set.
    pub instance: Option<u32>,
}

/// Node agents started against one cluster.
pub struct AgentSet {
    binary: PathBuf,
    root: tempfile::TempDir,
    coordinators: String,
    agents: BTreeMap<String, AgentProcess>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

impl AgentSet {
    /// An empty set whose agents will register with `coordinators` (`HOST:PORT,...`).
    pub fn new(binary: &Path, coordinators: &str) -> Result<Self, ClusterError> {
        let root = tempfile::Builder::new()
            .prefix("herd-agents-")
            .tempdir()
            .map_err(io("create agents dir"))?;
        Ok(Self {
            binary: binary.to_path_buf(),
            root,
            coordinators: coordinators.to_string(),
            agents: BTreeMap::new(),
        })
    }

    /// Starts agent `name` with `extra_args` (e.g. `--sim-gpus 2`).
    pub fn start(
        &mut self,
        name: &str,
        extra_args: &[&str],
    ) -> Result<&AgentProcess, ClusterError> {
        let port = free_loopback_port().map_err(io("pick a port"))?;
        let mut agent = AgentProcess {
            name: name.to_string(),
            addr: format!("127.0.0.1:{port}"),
            data_dir: self.root.path().join(format!("node-{name}")),
            log_path: self.root.path().join(format!("node-{name}.log")),
            args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        self.spawn(&mut agent)?;
        self.agents.insert(name.to_string(), agent);
        self.agent(name)
    }

    fn spawn(&self, agent: &mut AgentProcess) -> Result<(), ClusterError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&agent.log_path)
            .map_err(io(format!("open {}", agent.log_path.display())))?;
        let log_err = log.try_clone().map_err(io("clone log handle"))?;
        let child = Command::new(&self.binary)
            .args(["node", "--name", &agent.name, "--listen", &agent.addr])
            .args(["--coordinators", &self.coordinators])
            .arg("--data-dir")
            .arg(&agent.data_dir)
            .args(&agent.args)
            .env("HERD_LOG", "info,h2=warn,tower=warn,hyper=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(io(format!("spawn agent {}", agent.name)))?;
        agent.child = Some(child);
        Ok(())
    }

    /// The agent named `name`.
    pub fn agent(&self, name: &str) -> Result<&AgentProcess, ClusterError> {
        self.agents.get(name).ok_or_else(|| ClusterError::Io {
            what: format!("agent {name}"),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not started by this set"),
        })
    }

    /// `kill -9` the agent only: its workloads keep running.
    pub fn kill_agent(&mut self, name: &str) -> Result<(), ClusterError> {
        if let Some(agent) = self.agents.get_mut(name) {
            if let Some(mut child) = agent.child.take() {
                child.kill().map_err(io(format!("kill agent {name}")))?;
                child.wait().map_err(io(format!("reap agent {name}")))?;
            }
        }
        Ok(())
    }

    /// `kill -9` the agent and every process of its workloads, as a node
    /// losing power would.
    pub fn kill_node(&mut self, name: &str) -> Result<(), ClusterError> {
        self.kill_agent(name)?;
        let dir = self.agent(name)?.data_dir.clone();
        kill_processes_under(&dir);
        Ok(())
    }

    /// SIGSTOPs the agent only: its workloads run on, but it sends and
    /// answers nothing, so the coordinators see what a node cut off from
    /// them looks like.
    pub fn pause_agent(&mut self, name: &str) -> Result<(), ClusterError> {
        self.signal(name, libc::SIGSTOP)
    }

    /// SIGCONTs a paused agent.
    pub fn resume_agent(&mut self, name: &str) -> Result<(), ClusterError> {
        self.signal(name, libc::SIGCONT)
    }

    fn signal(&mut self, name: &str, signal: i32) -> Result<(), ClusterError> {
        let Some(child) = &self.agent(name)?.child else {
            return Ok(());
        };
        let Ok(pid) = i32::try_from(child.id()) else {
            return Ok(());
        };
        // SAFETY: kill(2) takes plain integers; the child is not reaped yet,
        // so the pid still names it.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(ClusterError::Io {
                what: format!("signal {signal} to agent {name}"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Starts a killed agent again with the same command line and data dir.
    pub fn restart(&mut self, name: &str) -> Result<(), ClusterError> {
        let mut agent = self.agents.remove(name).ok_or_else(|| ClusterError::Io {
            what: format!("restart agent {name}"),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not started by this set"),
        })?;
        let running = agent
            .child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)));
        let result = if running {
            Ok(())
        } else {
            self.spawn(&mut agent)
        };
        self.agents.insert(name.to_string(), agent);
        result
    }

    /// Every workload process running under any agent of this set.
    pub fn workloads(&self) -> Vec<WorkloadProcess> {
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return found;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if is_zombie(pid) {
                continue;
            }
            let env: BTreeMap<String, String> = environ
                .split(|b| *b == 0)
                .filter_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect();
            let (Some(alloc_dir), Some(alloc_id)) =
                (env.get("HERD_ALLOC_DIR"), env.get("HERD_ALLOC_ID"))
            else {
                continue;
            };
            let Some(agent) = self
                .agents
                .values()
                .find(|a| Path::new(alloc_dir).starts_with(&a.data_dir))
            else {
                continue;
            };
            found.push(WorkloadProcess {
                pid,
                node: agent.name.clone(),
                alloc_id: alloc_id.clone(),
                job: env.get("HERD_JOB").cloned().unwrap_or_default(),
                instance: env.get("HERD_ALLOC_INSTANCE").and_then(|i| i.parse().ok()),
            });
        }
        found.sort_by_key(|w| w.pid);
        found
    }

    /// The directory holding every agent's data dir and log.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Names of the agents of this set.
    pub fn names(&self) -> Vec<String> {
        self.agents.keys().cloned().collect()
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "Z"))
        })
        .unwrap_or(false)
}

/// SIGKILLs every process whose command line or environment points under
/// `dir` (a run's last resort against leaks).
pub fn kill_processes_under(dir: &Path) {
    for (pid, _) in mentioning(dir) {
        let Ok(pid) = i32::try_from(pid) else {
            continue;
        };
        // SAFETY: kill(2) takes plain integers; a pid gone meanwhile only
        // makes it fail with ESRCH.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Live (not zombie) processes other than this one whose command line or
/// environment mentions `dir`, as `PID COMMAND LINE`.
pub fn processes_under(dir: &Path) -> Vec<String> {
    mentioning(dir)
        .into_iter()
        .map(|(pid, command)| format!("{pid} {command}"))
        .collect()
}

/// Pids and command lines of the live processes, other than this one,
/// whose command line or environment mentions `dir`.
fn mentioning(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || is_zombie(pid) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let mentions = |bytes: &[u8]| String::from_utf8_lossy(bytes).contains(&needle);
        if mentions(&cmdline) || mentions(&environ) {
            let command = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push((pid, command.trim().to_string()));
        }
    }
    found
}

impl Drop for AgentSet {
    fn drop(&mut self) {
        let names: Vec<String> = self.agents.keys().cloned().collect();
        for name in names {
            let _ = self.kill_node(&name);
        }
    }
}
