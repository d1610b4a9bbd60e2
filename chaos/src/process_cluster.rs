//! A herd coordinator cluster made of real OS processes on loopback.
//!
//! Each member runs the `herd` binary with its own data dir and log file;
//! members can be killed with SIGKILL, restarted with the same command line,
//! wiped, and new members started to join. Dropping the cluster kills every
//! process it started.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_api::client::HerdClient;
use herd_api::proto::v1::cluster_client::ClusterClient;
use herd_api::proto::v1::{ClusterStatus, ClusterStatusRequest, MemberReport, MemberStatusRequest};
use thiserror::Error;

use crate::docker::{DockerEnv, SHIM_IN_IMAGE};
use crate::ports::free_loopback_port;
use crate::shim::{ShimFaults, CONTROL_ENV};
use crate::tls::{daemon_args, ClusterTls};

/// A harness failure (not a herd failure: those are test assertions).
#[derive(Debug, Error)]
pub enum ClusterError {
    /// Spawning, killing or file handling failed.
    #[error("{what}: {source}")]
    Io {
        /// What the harness was doing.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The cluster did not reach the awaited condition in time.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// The condition.
        what: String,
        /// How long.
        waited: Duration,
    },
    /// No such member.
    #[error("member {0} is not part of this harness")]
    UnknownMember(u64),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// How a member process starts.
#[derive(Debug, Clone)]
pub enum Launch {
    /// `--bootstrap --peers ...`.
    Bootstrap(String),
    /// `--join ADDR`.
    Join(String),
    /// Neither: waits to be added.
    Wait,
}

/// One coordinator process.
pub struct MemberProcess {
    /// Raft id.
    pub id: u64,
    /// Its address.
    pub addr: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Where its stdout and stderr go.
    pub log_path: PathBuf,
    launch: Launch,
    /// Arguments for this member only (its `--dial` map), kept across restarts.
    own_args: Vec<String>,
    /// Whether its data dir is a size-limited tmpfs this harness mounted.
    mounted: bool,
    /// Its fault shim's control file, when the cluster runs with the shim.
    shim_control: Option<PathBuf>,
    child: Option<Child>,
    /// Its container, once created (Docker mode).
    container: Option<String>,
    /// Killed by the harness, to be restarted by it: not a crash.
    killed: bool,
}

impl MemberProcess {
    /// Whether the process is running (as far as this harness knows).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The process's id while the harness runs it on this host (None in
    /// Docker mode, or once it is gone): for signals the harness has no
    /// verb for, SIGHUP's certificate reload among them.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// How the members of a [`ProcessCluster`] are started, beyond their ids
/// and addresses.
#[derive(Debug, Clone, Default)]
pub struct ClusterSetup {
    /// Arguments on every member's command line.
    pub extra_args: Vec<String>,
    /// Arguments for one member only (its `--dial` map), kept across restarts.
    pub own_args: BTreeMap<u64, Vec<String>>,
    /// Size of each member's own tmpfs data dir, MiB (None: the plain file
    /// system), so that a disk can really fill up. Mounting needs root.
    pub disk_mib: Option<u64>,
    /// `libherd_chaos_shim.so`, preloaded into every member so that
    /// [`ProcessCluster::set_shim_faults`] can slow its fsyncs and skew its
    /// wall clock.
    pub shim: Option<PathBuf>,
    /// Run members as containers of this Docker environment instead of
    /// local processes (addresses must come from
    /// [`DockerEnv::member_addr`]).
    pub docker: Option<Arc<DockerEnv>>,
    /// Mutual TLS with this CA (local processes only); None: `--insecure`.
    pub tls: Option<ClusterTls>,
}

/// A cluster of coordinator processes.
pub struct ProcessCluster {
    binary: PathBuf,
    root: tempfile::TempDir,
    extra_args: Vec<String>,
    disk_mib: Option<u64>,
    shim: Option<PathBuf>,
    docker: Option<Arc<DockerEnv>>,
    tls: Option<ClusterTls>,
    members: BTreeMap<u64, MemberProcess>,
}

/// What members log: herd at info, its libraries' chatter at warn.
const MEMBER_LOG_FILTER: &str = "info,openraft=warn,sled=warn,h2=warn,tower=warn,hyper=warn";

/// The file a full-disk fault fills a member's data dir with.
const FILLER: &str = "chaos-filler";

impl ProcessCluster {
    /// Starts `size` members bootstrapped together, with `extra_args` on every command line.
    pub fn start(binary: &Path, size: u64, extra_args: &[&str]) -> Result<Self, ClusterError> {
        let addrs = Self::pick_addrs(size)?;
        let setup = ClusterSetup {
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            ..ClusterSetup::default()
        };
        Self::start_at(binary, &addrs, setup)
    }

    /// Loopback addresses for members `1..=size`, on ports free a moment ago.
    pub fn pick_addrs(size: u64) -> Result<BTreeMap<u64, String>, ClusterError> {
        (1..=size)
            .map(|id| {
                let port = free_loopback_port().map_err(io("pick a port"))?;
                Ok((id, format!("127.0.0.1:{port}")))
            })
            .collect()
    }

    /// Starts members at `addrs`, bootstrapped together, as `setup` says.
    pub fn start_at(
        binary: &Path,
        addrs: &BTreeMap<u64, String>,
        setup: ClusterSetup,
    ) -> Result<Self, ClusterError> {
        let ClusterSetup {
            extra_args,
            mut own_args,
            disk_mib,
            shim,
            docker,
            tls,
        } = setup;
        let root = tempfile::Builder::new()
            .prefix("herd-cluster-")
            .tempdir()
            .map_err(io("create cluster dir"))?;
        let mut cluster = Self {
            binary: binary.to_path_buf(),
            root,
            extra_args,
            disk_mib,
            shim,
            docker,
            tls,
            members: BTreeMap::new(),
        };
        let peers = addrs
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
        for (id, addr) in addrs {
            let own = own_args.remove(id).unwrap_or_default();
            cluster.add_process(*id, addr.clone(), Launch::Bootstrap(peers.clone()), own)?;
        }
        Ok(cluster)
    }

    /// Starts another member process (for membership changes), on a fresh port.
    pub fn spawn_member(&mut self, id: u64, launch: Launch) -> Result<String, ClusterError> {
        let port = free_loopback_port().map_err(io("pick a port"))?;
        let addr = format!("127.0.0.1:{port}");
        self.add_process(id, addr.clone(), launch, Vec::new())?;
        Ok(addr)
    }

    fn add_process(
        &mut self,
        id: u64,
        addr: String,
        launch: Launch,
        own_args: Vec<String>,
    ) -> Result<(), ClusterError> {
        let data_dir = self.root.path().join(format!("member-{id}"));
        let log_path = self.root.path().join(format!("member-{id}.log"));
        let mounted = match self.disk_mib {
            Some(mib) => {
                mount_tmpfs(&data_dir, mib)?;
                true
            }
            None => false,
        };
        let shim_control = match &self.shim {
            Some(_) => {
                let path = self.root.path().join(format!("member-{id}.shim"));
                ShimFaults::default()
                    .write(&path)
                    .map_err(io(format!("write {}", path.display())))?;
                Some(path)
            }
            None => None,
        };
        let mut member = MemberProcess {
            id,
            addr,
            data_dir,
            log_path,
            launch,
            own_args,
            mounted,
            shim_control,
            child: None,
            container: None,
            killed: false,
        };
        self.spawn(&mut member)?;
        self.members.insert(id, member);
        Ok(())
    }

    /// `herd coordinator ...` for `member`, its data dir at `data_dir`.
    fn member_args(&self, member: &MemberProcess, data_dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "coordinator".into(),
            "--id".into(),
            member.id.to_string().into(),
            "--listen".into(),
            member.addr.clone().into(),
            "--data-dir".into(),
            data_dir.into(),
        ];
        match &member.launch {
            Launch::Bootstrap(peers) => {
                args.extend(["--bootstrap".into(), "--peers".into(), peers.into()]);
            }
            Launch::Join(addr) => args.extend(["--join".into(), addr.into()]),
            Launch::Wait => {}
        }
        args.extend(self.extra_args.iter().map(OsString::from));
        args.extend(member.own_args.iter().map(OsString::from));
        let name = member.id.to_string();
        args.extend(
            daemon_args(self.tls.as_ref(), "coordinator", &name)
                .into_iter()
                .map(OsString::from),
        );
        args
    }

    fn spawn(&self, member: &mut MemberProcess) -> Result<(), ClusterError> {
        member.killed = false;
        if let Some(tls) = &self.tls {
            tls.issue("coordinator", &member.id.to_string())?;
        }
        if let Some(docker) = &self.docker {
            return self.spawn_container(docker, member);
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&member.log_path)
            .map_err(io(format!("open {}", member.log_path.display())))?;
        let log_err = log.try_clone().map_err(io("clone log handle"))?;
        let mut command = Command::new(&self.binary);
        command
            .args(self.member_args(member, &member.data_dir))
            .env("HERD_LOG", MEMBER_LOG_FILTER)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        crate::tls::clear_transport_env(&mut command);
        if let (Some(shim), Some(control)) = (&self.shim, &member.shim_control) {
            command.env("LD_PRELOAD", shim).env(CONTROL_ENV, control);
        }
        let child = command.spawn().map_err(io(format!(
            "spawn {} for member {}",
            self.binary.display(),
            member.id
        )))?;
        member.child = Some(child);
        Ok(())
    }

    /// Docker mode: creates member's container the first time, starts it
    /// again after that (same file system, same address).
    fn spawn_container(
        &self,
        docker: &DockerEnv,
        member: &mut MemberProcess,
    ) -> Result<(), ClusterError> {
        if let Some(name) = &member.container {
            return docker.start(name);
        }
        let name = docker.member_container(member.id);
        std::fs::create_dir_all(&member.data_dir)
            .map_err(io(format!("create {}", member.data_dir.display())))?;
        let args: Vec<String> = self
            .member_args(member, Path::new("/data"))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut mounts = vec![(member.data_dir.clone(), "/data")];
        // The run's root in the environment: leaked processes are found by
        // it, inside containers as outside.
        let mut env = vec![
            ("HERD_LOG", MEMBER_LOG_FILTER.to_string()),
            ("HERD_CHAOS_ROOT", self.root.path().display().to_string()),
        ];
        if let Some(control) = &member.shim_control {
            mounts.push((self.root.path().to_path_buf(), "/chaos"));
            let file = control
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            env.push(("LD_PRELOAD", SHIM_IN_IMAGE.to_string()));
            env.push((CONTROL_ENV, format!("/chaos/{file}")));
        }
        docker.run(&name, &member.addr, &mounts, &env, None, &args)?;
        member.container = Some(name);
        Ok(())
    }

    fn member_mut(&mut self, id: u64) -> Result<&mut MemberProcess, ClusterError> {
        self.members
            .get_mut(&id)
            .ok_or(ClusterError::UnknownMember(id))
    }

    /// The member with this id.
    pub fn member(&self, id: u64) -> Result<&MemberProcess, ClusterError> {
        self.members.get(&id).ok_or(ClusterError::UnknownMember(id))
    }

    /// Ids of every member this harness started.
    pub fn ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// `kill -9` a member and reap it.
    pub fn kill(&mut self, id: u64) -> Result<(), ClusterError> {
        self.member_mut(id)?.killed = true;
        if let Some(docker) = self.docker.clone() {
            if let Some(name) = &self.member(id)?.container {
                docker.kill(name)?;
            }
            return Ok(());
        }
        let member = self.member_mut(id)?;
        if let Some(mut child) = member.child.take() {
            child.kill().map_err(io(format!("kill member {id}")))?;
            child.wait().map_err(io(format!("reap member {id}")))?;
        }
        Ok(())
    }

    fn running(&self, member: &mut MemberProcess) -> bool {
        match (&self.docker, &member.container) {
            (Some(docker), Some(name)) => docker.is_running(name),
            _ => member.is_running(),
        }
    }

    /// Restarts every member that exited on its own (a coordinator exits
    /// when its Raft stops on a storage error), as a supervisor such as
    /// systemd's `Restart=on-failure` would; members the harness killed
    /// wait for their heal. Returns the members restarted.
    pub fn supervise(&mut self) -> Result<Vec<u64>, ClusterError> {
        let mut restarted = Vec::new();
        for id in self.ids() {
            let mut member = self
                .members
                .remove(&id)
                .ok_or(ClusterError::UnknownMember(id))?;
            let result = if member.killed || self.running(&mut member) {
                Ok(())
            } else {
                restarted.push(id);
                self.spawn(&mut member)
            };
            self.members.insert(id, member);
            result?;
        }
        Ok(restarted)
    }

    /// Starts a killed member again with the same command line and data dir.
    pub fn restart(&mut self, id: u64) -> Result<(), ClusterError> {
        let mut member = self
            .members
            .remove(&id)
            .ok_or(ClusterError::UnknownMember(id))?;
        let running = self.running(&mut member);
        let result = if running {
            Ok(())
        } else {
            self.spawn(&mut member)
        };
        self.members.insert(id, member);
        result
    }

    /// SIGSTOPs a member: it keeps its sockets but answers nothing, like a
    /// process stuck in a long GC pause or a hung VM.
    pub fn pause(&mut self, id: u64) -> Result<(), ClusterError> {
        self.signal(id, libc::SIGSTOP)
    }

    /// SIGCONTs a paused member.
    pub fn resume(&mut self, id: u64) -> Result<(), ClusterError> {
        self.signal(id, libc::SIGCONT)
    }

    fn signal(&mut self, id: u64, signal: i32) -> Result<(), ClusterError> {
        if let Some(docker) = self.docker.clone() {
            // The cgroup freezer stops every process of the container.
            let Some(name) = &self.member(id)?.container else {
                return Ok(());
            };
            return match signal {
                libc::SIGSTOP => docker.pause(name),
                libc::SIGCONT => docker.unpause(name),
                _ => docker.kill(name),
            };
        }
        let member = self.member_mut(id)?;
        let Some(child) = &member.child else {
            return Ok(());
        };
        let pid = i32::try_from(child.id()).map_err(|_| ClusterError::UnknownMember(id))?;
        // SAFETY: kill(2) takes plain integers; the child is not reaped yet,
        // so the pid still names it.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            return Err(ClusterError::Io {
                what: format!("signal {signal} to member {id}"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Copies every member's log into `dir` as `member-ID.log` (from the
    /// container in Docker mode), so a run's logs outlive its cluster.
    pub fn save_logs(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for member in self.members.values() {
            let target = dir.join(format!("member-{}.log", member.id));
            match (&self.docker, &member.container) {
                (Some(docker), Some(name)) => std::fs::write(target, docker.logs(name))?,
                _ => {
                    std::fs::copy(&member.log_path, target)?;
                }
            }
        }
        Ok(())
    }

    /// The directory holding every member's data and log (process command
    /// lines mention it, which is how leaked processes are found).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Deletes a (killed) member's data dir, as a lost disk would.
    pub fn wipe(&mut self, id: u64) -> Result<(), ClusterError> {
        let dir = self.member(id)?.data_dir.clone();
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ClusterError::Io {
                what: format!("wipe {}", dir.display()),
                source: e,
            }),
        }
    }

    /// Fills member `id`'s data dir to the last byte (it must be on its own
    /// tmpfs): its next write fails with ENOSPC, as on a full disk.
    pub fn fill_disk(&mut self, id: u64) -> Result<u64, ClusterError> {
        let member = self.member(id)?;
        if !member.mounted {
            return Err(ClusterError::Io {
                what: format!("fill the disk of member {id}"),
                source: std::io::Error::other("its data dir is not a tmpfs of this harness"),
            });
        }
        let path = member.data_dir.join(FILLER);
        let mut file = File::create(&path).map_err(io(format!("create {}", path.display())))?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            use std::io::Write;
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => {
                    return Err(ClusterError::Io {
                        what: format!("fill {}", path.display()),
                        source: e,
                    })
                }
            }
        }
        // The last partial chunk: byte by byte would be slow; halve instead.
        let mut size = chunk.len() / 2;
        while size > 0 {
            use std::io::Write;
            match file.write(&chunk[..size]) {
                Ok(0) | Err(_) => size /= 2,
                Ok(n) => written += n as u64,
            }
        }
        Ok(written)
    }

    /// Makes the shim preloaded into member `id` slow its fsyncs and skew
    /// its wall clock as `faults` says (from the next 25 ms on); the
    /// setting survives restarts until changed.
    pub fn set_shim_faults(&mut self, id: u64, faults: ShimFaults) -> Result<(), ClusterError> {
        let member = self.member(id)?;
        let Some(control) = &member.shim_control else {
            return Err(ClusterError::Io {
                what: format!("set the fault shim of member {id}"),
                source: std::io::Error::other("the cluster was started without the shim"),
            });
        };
        faults
            .write(control)
            .map_err(io(format!("write {}", control.display())))
    }

    /// Frees what [`ProcessCluster::fill_disk`] took.
    pub fn free_disk(&mut self, id: u64) -> Result<(), ClusterError> {
        let path = self.member(id)?.data_dir.join(FILLER);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ClusterError::Io {
                what: format!("remove {}", path.display()),
                source: e,
            }),
        }
    }

    /// Forgets a member (after killing it), e.g. once it is removed from the cluster.
    pub fn forget(&mut self, id: u64) -> Result<(), ClusterError> {
        self.kill(id)?;
        if let Some(member) = self.members.remove(&id) {
            if let (Some(docker), Some(name)) = (&self.docker, &member.container) {
                docker.remove(name);
            }
        }
        Ok(())
    }

    /// Addresses of the running members, comma-separated (for `--addr`).
    pub fn addr_list(&self) -> String {
        self.members
            .values()
            .map(|m| m.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client over every member.
    pub fn client(&self) -> Result<HerdClient, ClusterError> {
        self.client_for(&self.ids())
    }

    /// A client over the given members, tried in that order.
    pub fn client_for(&self, ids: &[u64]) -> Result<HerdClient, ClusterError> {
        let addrs: Vec<String> = ids
            .iter()
            .filter_map(|id| self.members.get(id).map(|m| m.addr.clone()))
            .collect();
        HerdClient::new(&addrs).map_err(|e| ClusterError::Io {
            what: "build client".into(),
            source: std::io::Error::other(e.to_string()),
        })
    }

    /// One member's own Raft report, if it answers.
    pub async fn member_report(&self, id: u64) -> Option<MemberReport> {
        let client = self.client_for(&[id]).ok()?;
        client
            .call_one(0, |ch| async move {
                let mut request = tonic::Request::new(MemberStatusRequest { with_digest: true });
                request.set_timeout(Duration::from_secs(2));
                ClusterClient::new(ch)
                    .member_status(request)
                    .await
                    .map(|r| r.into_inner())
            })
            .await
            .ok()
    }

    /// The leader's cluster status through any member, if one answers.
    pub async fn status(&self) -> Option<ClusterStatus> {
        let client = self.client().ok()?;
        client
            .call(|ch| async move {
                let mut request = tonic::Request::new(ClusterStatusRequest { stale: false });
                request.set_timeout(Duration::from_secs(3));
                ClusterClient::new(ch)
                    .status(request)
                    .await
                    .map(|r| r.into_inner())
            })
            .await
            .ok()
    }

    /// Waits until the running members agree on a leader whose cluster id is set; returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, ClusterError> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.status().await {
                if status.leader != 0 && !status.cluster_id.is_empty() {
                    return Ok(status.leader);
                }
            }
            if started.elapsed() > timeout {
                return Err(ClusterError::Timeout {
                    what: "a leader".into(),
                    waited: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until every member answers at its address as itself: a member
    /// that could not start (its port taken meanwhile) fails the wait
    /// rather than leaving a smaller cluster to be tested unawares.
    /// On a timeout the error carries the member's state and the tail of
    /// its log, because the log lives in this cluster's temporary root and
    /// is gone once the failed run is dropped.
    pub async fn wait_members(&mut self, timeout: Duration) -> Result<(), ClusterError> {
        let started = Instant::now();
        for id in self.ids() {
            loop {
                if self
                    .member_report(id)
                    .await
                    .is_some_and(|report| report.id == id)
                {
                    break;
                }
                if started.elapsed() > timeout {
                    let evidence = self.member_evidence(id);
                    return Err(ClusterError::Timeout {
                        what: format!(
                            "member {id} to answer at {} ({evidence})",
                            self.member(id)?.addr,
                        ),
                        waited: timeout,
                    });
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        Ok(())
    }

    /// What is known of a member that does not answer: whether its process
    /// still runs (or how it ended) and the last lines of its log.
    fn member_evidence(&mut self, id: u64) -> String {
        const TAIL_LINES: usize = 15;
        let docker = self.docker.clone();
        let Some(member) = self.members.get_mut(&id) else {
            return format!("no member {id}");
        };
        let state = match (&mut member.child, &docker, &member.container) {
            (Some(child), _, _) => match child.try_wait() {
                Ok(None) => "process running".to_string(),
                Ok(Some(status)) => format!("process ended: {status}"),
                Err(e) => format!("process state unknown: {e}"),
            },
            (None, Some(_), Some(name)) => format!("container {name}"),
            _ => "no process".to_string(),
        };
        let log = match (&docker, &member.container) {
            (Some(docker), Some(name)) => docker.logs(name),
            _ => std::fs::read_to_string(&member.log_path)
                .unwrap_or_else(|e| format!("cannot read {}: {e}", member.log_path.display())),
        };
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n  ");
        format!("{state}; last lines of its log:\n  {tail}")
    }

    /// Waits until member `id` reports applying at least `index`.
    pub async fn wait_applied(
        &self,
        id: u64,
        index: u64,
        timeout: Duration,
    ) -> Result<MemberReport, ClusterError> {
        let started = Instant::now();
        loop {
            if let Some(report) = self.member_report(id).await {
                if report.last_applied.unwrap_or(0) >= index {
                    return Ok(report);
                }
            }
            if started.elapsed() > timeout {
                return Err(ClusterError::Timeout {
                    what: format!("member {id} to apply index {index}"),
                    waited: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for member in self.members.values_mut() {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            if let (Some(docker), Some(name)) = (&self.docker, &member.container) {
                // Its log outlives the container, as a local member's does.
                let _ = std::fs::write(&member.log_path, docker.logs(name));
                docker.remove(name);
            }
            if member.mounted {
                unmount(&member.data_dir);
            }
        }
    }
}

/// Mounts a tmpfs of `mib` MiB at `dir` (created first).
fn mount_tmpfs(dir: &Path, mib: u64) -> Result<(), ClusterError> {
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let target =
        std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| ClusterError::Io {
            what: format!("mount at {}", dir.display()),
            source: std::io::Error::other("path holds a NUL byte"),
        })?;
    let options =
        std::ffi::CString::new(format!("size={mib}m,mode=0700")).map_err(|_| ClusterError::Io {
            what: "tmpfs options".into(),
            source: std::io::Error::other("NUL byte"),
        })?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(ClusterError::Io {
            what: format!(
                "mount a {mib} MiB tmpfs at {} (full-disk faults need root or CAP_SYS_ADMIN)",
                dir.display()
            ),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Detaches the tmpfs at `dir`; its contents vanish with it.
fn unmount(dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(target) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path; MNT_DETACH never blocks.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        tracing::warn!(dir = %dir.display(), error = %std::io::Error::last_os_error(), "cannot unmount tmpfs");
    }
}
