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
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What agents log: herd at info, its libraries' chatter at warn.
const AGENT_LOG_FILTER: &str = "info,h2=warn,tower=warn,hyper=warn";

/// The first process of an agent's container in Docker mode, in the role
/// systemd plays on a host: it runs `herd ARGS` and runs it again when it
/// exits, except while the file `$HERD_CHAOS_HOLD` exists. So the harness
/// can kill the agent alone (hold, then `kill -9` it) while its workloads
/// run on in the container, as on a host, and bring it back by removing
/// the file.
const DOCKER_AGENT_LOOP: &str =
    r#"while :; do [ -e "$HERD_CHAOS_HOLD" ] || /usr/local/bin/herd "$@"; sleep 0.2; done"#;
/// Inside an agent's data dir: while it exists, [`DOCKER_AGENT_LOOP`]
/// does not start the agent.
const HOLD_FILE: &str = "chaos-agent-held";
/// How long a killed agent may take to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

use crate::docker::DockerEnv;
use crate::history::{GuestSeen, SeenProcess};
use crate::ports::free_loopback_port;
use crate::process_cluster::ClusterError;
use crate::tls::{daemon_args, ClusterTls};

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
    /// Where it reaches the coordinators (`HOST:PORT,...`).
    coordinators: String,
    child: Option<Child>,
    /// Its container, once created (Docker mode).
    container: Option<String>,
}

impl AgentProcess {
    /// The process's id while the harness runs it on this host (None in
    /// Docker mode, or once it is gone): for signals the harness has no
    /// verb for, SIGHUP's certificate reload among them.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
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
    /// The job version's marker (`HERD_CHAOS_MARK`), when its spec had one.
    pub mark: Option<String>,
    /// For a simulated VM's copy, what it said of its guest
    /// ([`GuestSeen`]); None for any other process.
    pub guest: Option<GuestSeen>,
}

impl From<WorkloadProcess> for SeenProcess {
    fn from(w: WorkloadProcess) -> Self {
        SeenProcess {
            pid: w.pid,
            node: w.node,
            alloc_id: w.alloc_id,
            job: w.job,
            instance: w.instance,
            mark: w.mark,
            guest: w.guest,
        }
    }
}

/// Node agents started against one cluster.
pub struct AgentSet {
    binary: PathBuf,
    root: tempfile::TempDir,
    coordinators: String,
    agents: BTreeMap<String, AgentProcess>,
    docker: Option<Arc<DockerEnv>>,
    /// Extra environment for every agent started locally (e.g. the
    /// SIMULATED GPUs' spike file of the power scenario).
    env: Vec<(String, String)>,
    /// Mutual TLS with this CA (local agents only); None: `--insecure`.
    tls: Option<ClusterTls>,
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
            docker: None,
            env: Vec::new(),
            tls: None,
        })
    }

    /// Sets `key=value` in the environment of every agent started locally
    /// from now on (restarts included); Docker mode ignores it.
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts every agent from now on with a certificate of `tls`'s CA for
    /// its node (local agents only).
    pub fn with_tls(mut self, tls: ClusterTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Runs the agents as containers of `docker` (Docker mode). Each data
    /// dir is mounted at its own path, so workloads are found through
    /// /proc as locally.
    pub fn in_docker(mut self, docker: Arc<DockerEnv>) -> Self {
        self.docker = Some(docker);
        self
    }

    /// Starts agent `name` with `extra_args` (e.g. `--sim-gpus 2`).
    pub fn start(
        &mut self,
        name: &str,
        extra_args: &[&str],
    ) -> Result<&AgentProcess, ClusterError> {
        let coordinators = self.coordinators.clone();
        self.start_via(name, &coordinators, extra_args)
    }

    /// Starts agent `name` reaching the coordinators at `coordinators`
    /// (`HOST:PORT,...`; e.g. its own proxies) instead of the set's list.
    pub fn start_via(
        &mut self,
        name: &str,
        coordinators: &str,
        extra_args: &[&str],
    ) -> Result<&AgentProcess, ClusterError> {
        let addr = match &self.docker {
            Some(docker) => docker.agent_addr(self.agents.len()),
            None => format!(
                "127.0.0.1:{}",
                free_loopback_port().map_err(io("pick a port"))?
            ),
        };
        let mut agent = AgentProcess {
            name: name.to_string(),
            addr,
            data_dir: self.root.path().join(format!("node-{name}")),
            log_path: self.root.path().join(format!("node-{name}.log")),
            args: extra_args.iter().map(|s| s.to_string()).collect(),
            coordinators: coordinators.to_string(),
            child: None,
            container: None,
        };
        self.spawn(&mut agent)?;
        self.agents.insert(name.to_string(), agent);
        self.agent(name)
    }

    /// `herd node ...` for `agent`.
    fn agent_args(&self, agent: &AgentProcess) -> Vec<String> {
        let mut args: Vec<String> = [
            "node",
            "--name",
            &agent.name,
            "--listen",
            &agent.addr,
            "--coordinators",
            &agent.coordinators,
            "--data-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(agent.data_dir.display().to_string());
        args.extend(agent.args.iter().cloned());
        args.extend(daemon_args(self.tls.as_ref(), "node", &agent.name));
        args
    }

    fn spawn(&self, agent: &mut AgentProcess) -> Result<(), ClusterError> {
        if let Some(tls) = &self.tls {
            tls.issue("node", &agent.name)?;
        }
        if let Some(docker) = &self.docker {
            if let Some(name) = &agent.container {
                return docker.start(name);
            }
            let name = docker.agent_container(&agent.name);
            std::fs::create_dir_all(&agent.data_dir)
                .map_err(io(format!("create {}", agent.data_dir.display())))?;
            let env = [
                ("HERD_LOG", AGENT_LOG_FILTER.to_string()),
                ("HERD_CHAOS_ROOT", self.root.path().display().to_string()),
                ("HERD_CHAOS_HOLD", hold_file(agent).display().to_string()),
            ];
            let data_dir = agent.data_dir.display().to_string();
            let mut args = vec![
                "-c".to_string(),
                DOCKER_AGENT_LOOP.to_string(),
                "herd-agent-loop".to_string(),
            ];
            args.extend(self.agent_args(agent));
            docker.run(
                &name,
                &agent.addr,
                &[(agent.data_dir.clone(), &data_dir)],
                &env,
                Some("/bin/sh"),
                &args,
            )?;
            agent.container = Some(name);
            return Ok(());
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&agent.log_path)
            .map_err(io(format!("open {}", agent.log_path.display())))?;
        let log_err = log.try_clone().map_err(io("clone log handle"))?;
        let mut command = Command::new(&self.binary);
        command
            .args(self.agent_args(agent))
            .env("HERD_LOG", AGENT_LOG_FILTER);
        crate::tls::clear_transport_env(&mut command);
        let child = command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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

    /// `kill -9` the agent only: its workloads keep running. In Docker
    /// mode its container's loop is held first, so it stays down until
    /// [`AgentSet::restart`].
    pub fn kill_agent(&mut self, name: &str) -> Result<(), ClusterError> {
        if self.docker.is_some() {
            let agent = self.agent(name)?;
            let hold = hold_file(agent);
            std::fs::write(&hold, b"").map_err(io(format!("create {}", hold.display())))?;
            let started = Instant::now();
            while let Some(pid) = docker_agent_pid(agent) {
                // SAFETY: kill(2) takes plain integers; a pid gone
                // meanwhile only makes it fail with ESRCH.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                if started.elapsed() > KILL_WAIT {
                    return Err(ClusterError::Io {
                        what: format!("kill agent {name}"),
                        source: std::io::Error::other(format!("pid {pid} still runs")),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            return Ok(());
        }
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
        match (&self.docker, &self.agent(name)?.container) {
            (Some(docker), Some(container)) => docker.kill(container)?,
            (Some(_), None) => {}
            (None, _) => self.kill_agent(name)?,
        }
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
        let agent = self.agent(name)?;
        // The agent only, as locally (in Docker mode not its container's
        // loop, which would go on starting it).
        let pid = if self.docker.is_some() {
            docker_agent_pid(agent)
        } else {
            agent
                .child
                .as_ref()
                .and_then(|c| i32::try_from(c.id()).ok())
        };
        let Some(pid) = pid else {
            return Ok(());
        };
        // SAFETY: kill(2) takes plain integers. A local child is not
        // reaped yet, so the pid still names it; a Docker agent's pid was
        // read from /proc just now, and one gone meanwhile fails (ESRCH).
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
        let running = match (&self.docker, &agent.container) {
            (Some(docker), Some(container)) => {
                // Killed alone: its container's loop starts it again.
                let hold = hold_file(&agent);
                if hold.exists() {
                    std::fs::remove_file(&hold)
                        .map_err(io(format!("remove {}", hold.display())))?;
                }
                docker.is_running(container)
            }
            _ => agent
                .child
                .as_mut()
                .is_some_and(|child| matches!(child.try_wait(), Ok(None))),
        };
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
        for (pid, dir) in live_processes() {
            let Ok(environ) = std::fs::read(dir.join("environ")) else {
                continue;
            };
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
            found.push((
                WorkloadProcess {
                    pid,
                    node: agent.name.clone(),
                    alloc_id: alloc_id.clone(),
                    job: env.get("HERD_JOB").cloned().unwrap_or_default(),
                    instance: env.get("HERD_ALLOC_INSTANCE").and_then(|i| i.parse().ok()),
                    mark: env.get(crate::workload::MARK_ENV).cloned(),
                    guest: None,
                },
                sim_vm_control(&dir),
            ));
        }
        found.sort_by_key(|(w, _)| w.pid);
        // Every simulated VM asked once, then every one again: see
        // `GuestSeen` for why twice.
        let first: Vec<Option<bool>> = found
            .iter()
            .map(|(_, control)| control.as_deref().and_then(guest_running))
            .collect();
        found
            .into_iter()
            .zip(first)
            .map(|((mut w, control), first)| {
                if let Some(control) = control {
                    w.guest = Some(GuestSeen::of(first, guest_running(&control)));
                }
                w
            })
            .collect()
    }

    /// Copies every agent's log into `dir` as `node-NAME.log` (from the
    /// container in Docker mode).
    pub fn save_logs(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for agent in self.agents.values() {
            let target = dir.join(format!("node-{}.log", agent.name));
            match (&self.docker, &agent.container) {
                (Some(docker), Some(name)) => std::fs::write(target, docker.logs(name))?,
                _ => {
                    std::fs::copy(&agent.log_path, target)?;
                }
            }
        }
        Ok(())
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

/// The hold file of `agent`'s container loop ([`DOCKER_AGENT_LOOP`]).
fn hold_file(agent: &AgentProcess) -> PathBuf {
    agent.data_dir.join(HOLD_FILE)
}

/// The pid (seen from this host) of the agent process a Docker agent's
/// container loop runs: `herd node ... --data-dir DIR` with its data dir,
/// not the loop itself (whose command line holds the same arguments).
fn docker_agent_pid(agent: &AgentProcess) -> Option<i32> {
    let data_dir = agent.data_dir.to_string_lossy().into_owned();
    for (pid, dir) in live_processes() {
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_agent = args.first().is_some_and(|a| a.ends_with("/herd"))
            && args.get(1).is_some_and(|a| a == "node")
            && args
                .windows(2)
                .any(|w| w[0] == "--data-dir" && w[1] == data_dir);
        if is_agent {
            return i32::try_from(pid).ok();
        }
    }
    None
}

/// Every live (not zombie) process on this machine, with its /proc
/// directory (containers' processes included: they are the host's).
fn live_processes() -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            (!is_zombie(pid)).then(|| (pid, entry.path()))
        })
        .collect()
}

/// The control socket of a `herd sim-vm` process (`--control PATH` on its
/// command line, `/proc/PID` being `dir`); None for any other process.
fn sim_vm_control(dir: &Path) -> Option<PathBuf> {
    let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if !args.iter().any(|a| *a == b"sim-vm") {
        return None;
    }
    let at = args.iter().position(|a| *a == b"--control")?;
    let path = args.get(at + 1)?;
    Some(PathBuf::from(String::from_utf8_lossy(path).into_owned()))
}

/// How long the harness waits for a simulated VM's answer: it asks from the
/// sampling loop, and a copy that is slower than this is not judged.
const GUEST_QUERY_TIMEOUT: Duration = Duration::from_millis(200);

/// Asks the simulated VM at `control` for its status: whether its guest
/// runs (`Some(true)`), is paused (`Some(false)`), or no answer (None).
fn guest_running(control: &Path) -> Option<bool> {
    use std::io::{BufRead, Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(control).ok()?;
    stream.set_read_timeout(Some(GUEST_QUERY_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(GUEST_QUERY_TIMEOUT)).ok()?;
    stream.write_all(b"{\"op\":\"status\"}\n").ok()?;
    let mut line = String::new();
    std::io::BufReader::new(stream.take(64 * 1024))
        .read_line(&mut line)
        .ok()?;
    let reply: serde_json::Value = serde_json::from_str(&line).ok()?;
    match reply.get("guest")?.as_str()? {
        "running" => Some(true),
        "paused" => Some(false),
        _ => None,
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

/// How many times [`kill_processes_under`] looks again for processes
/// started while it killed.
const KILL_ROUNDS: usize = 20;

/// SIGKILLs every process whose command line or environment points under
/// `dir` (a node's power loss, and a run's last resort against leaks).
///
/// It looks again until a look finds nothing: an executor may fork its task
/// after /proc was listed and before the executor itself is killed, and a
/// task escaping so would run on with nobody knowing of it, which no power
/// loss does (found by the migrate scenario: a sleeper ran twice ever after).
pub fn kill_processes_under(dir: &Path) {
    for _ in 0..KILL_ROUNDS {
        let found = mentioning(dir);
        if found.is_empty() {
            return;
        }
        for (pid, _) in found {
            let Ok(pid) = i32::try_from(pid) else {
                continue;
            };
            // SAFETY: kill(2) takes plain integers; a pid gone meanwhile only
            // makes it fail with ESRCH.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        // Killed processes turn zombie (left out by the next look) once
        // the kernel has delivered the signal.
        std::thread::sleep(Duration::from_millis(5));
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
    for (pid, proc_dir) in live_processes() {
        if pid == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(proc_dir.join("environ")).unwrap_or_default();
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
        if let Some(docker) = &self.docker {
            for agent in self.agents.values() {
                if let Some(container) = &agent.container {
                    // Its log outlives the container, as a local agent's does.
                    let _ = std::fs::write(&agent.log_path, docker.logs(container));
                    docker.remove(container);
                }
            }
        }
    }
}
