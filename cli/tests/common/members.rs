//! Coordinator processes a test starts one by one, with a command line and
//! environment of its own (the harness's `ProcessCluster` starts members
//! that bootstrap together, all alike): a member started from a backup, a
//! member that joins one, a member restarted as a "newer binary".

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{must_run_cli, until_or_none};

/// One `herd coordinator` process; killed when dropped.
pub struct Member {
    /// Its member id.
    pub id: u64,
    /// Where it listens (and is reached).
    pub addr: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Member {
    /// Starts `herd coordinator --id ID --listen ADDR --data-dir ROOT/member-ID ARGS...`.
    pub fn start(root: &Path, id: u64, addr: &str, args: &[&str]) -> Self {
        let mut member = Self {
            id,
            addr: addr.to_string(),
            data_dir: root.join(format!("member-{id}")),
            log: root.join(format!("member-{id}.log")),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            child: None,
        };
        member.spawn();
        member
    }

    /// Sets an environment variable for the next [`Member::spawn`].
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Starts the process (again) with its command line and environment.
    pub fn spawn(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open member log");
        let mut command = super::herd_command();
        command
            .arg("coordinator")
            .args(["--id", &self.id.to_string(), "--listen", &self.addr])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env("HERD_LOG", "info,openraft=warn,sled=warn,h2=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().expect("spawn herd coordinator"));
    }

    /// `kill -9`, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it as an operator would: SIGTERM, then SIGKILL after 10 s.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: sends a signal to a child this struct started and has
        // not reaped, so the pid is still that child's.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let exited = until_or_none(Duration::from_secs(10), || {
            child.try_wait().ok().flatten().map(|_| ())
        })
        .await;
        if exited.is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything `members` logged, for a failure message.
pub fn logs_of(members: &[&Member]) -> String {
    members
        .iter()
        .map(|m| format!("--- member {} ---\n{}", m.id, m.log_text()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `herd cluster status -o json` from `addr`, once it names a leader and
/// `voters` voters; fails with the members' logs after 60 s.
pub async fn must_see_voters(addr: &str, voters: usize, members: &[&Member]) -> Value {
    let found = until_or_none(Duration::from_secs(60), || {
        let out = must_run_cli(&["--addr", addr, "cluster", "status", "-o", "json"]);
        let status: Value = serde_json::from_slice(&out.stdout).ok()?;
        let count = status["members"]
            .as_array()?
            .iter()
            .filter(|m| m["voter"] == true)
            .count();
        (status["leader"].as_u64()? > 0 && count == voters).then_some(status)
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "{addr} never reported a leader and {voters} voters\n{}",
            logs_of(members)
        )
    })
}

/// `herd cluster member -o json` of the member at `addr` (its own Raft
/// state and state digest), if it answers.
pub fn member_report(addr: &str) -> Option<Value> {
    let out = must_run_cli(&["--addr", addr, "cluster", "member", "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Waits until every member reports the same applied index and state
/// digest, and returns them.
pub async fn must_agree(members: &[&Member]) -> (u64, u64) {
    let found = until_or_none(Duration::from_secs(30), || {
        let reports: Vec<(u64, u64)> = members
            .iter()
            .map(|m| {
                let report = member_report(&m.addr)?;
                Some((
                    report["last_applied"].as_u64()?,
                    report["state_digest"].as_u64()?,
                ))
            })
            .collect::<Option<_>>()?;
        reports.windows(2).all(|w| w[0] == w[1]).then(|| reports[0])
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "the members never agreed on their applied state\n{}",
            logs_of(members)
        )
    })
}
