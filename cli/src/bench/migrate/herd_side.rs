//! The herd half of `herd bench migrate`: one `herd coordinator` and two
//! `herd node` agents on loopback, started from this very binary (as
//! `herd bench raft` starts its coordinators), jobs submitted and moved
//! through the public gRPC API as `herd job run` and `herd alloc migrate`
//! do, and the migration record followed until it ends.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herd_api::client::{HerdClient, Repeat};
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::allocs_client::AllocsClient;
use herd_api::proto::v1::jobs_client::JobsClient;
use herd_api::proto::v1::nodes_client::NodesClient;
use herd_api::spec_file::parse_job_spec;
use herd_chaos::agents::{kill_processes_under, AgentSet};
use herd_chaos::process_cluster::ProcessCluster;

use crate::exit::CliError;

/// The two agents' names.
pub const NODES: [&str; 2] = ["bench-a", "bench-b"];
/// How often the migration record (and the logs) are looked at while a
/// migration runs: the resolution of `resumed_after_ms` and of a DL job's
/// stop-to-resumed figure.
const WATCH_EVERY: Duration = Duration::from_millis(10);
/// How long a started workload may take to run (a TCG guest boots in
/// seconds; a trainer writing 100 MiB of padding first takes a few).
const START_WAIT: Duration = Duration::from_secs(120);
/// How long a migration may take in all before the bench gives up on it.
const MIGRATION_WAIT: Duration = Duration::from_secs(300);
/// How long, after the switch-over, the workload may take to be seen
/// running on the target.
const RESUME_WAIT: Duration = Duration::from_secs(60);

/// Reads what is appended to a log file, line by line, from where it stood
/// when the tail was made (a file not there yet counts as empty).
pub struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LogTail {
    /// A tail from the file's current end.
    pub fn from_end(path: &Path) -> Self {
        let offset = std::fs::metadata(path).map_or(0, |m| m.len());
        Self {
            path: path.to_path_buf(),
            offset,
            partial: String::new(),
        }
    }

    /// A tail from the file's start.
    pub fn from_start(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    /// The complete lines appended since the last call.
    pub fn new_lines(&mut self) -> Vec<String> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        // Bounded per call: a log that grows faster is read on the next.
        let read = file
            .take(4 << 20)
            .read_to_end(&mut bytes)
            .map_or(0, |n| n as u64);
        self.offset += read;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let Some(end) = self.partial.rfind('\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(end + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        complete.lines().map(str::to_string).collect()
    }

    /// Whether a line appended since the last call contains `needle`.
    pub fn saw(&mut self, needle: &str) -> bool {
        self.new_lines().iter().any(|l| l.contains(needle))
    }
}

/// When the bench saw each moment of one migration.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    /// Each phase the record was seen in, in order, with the milliseconds
    /// from the start request to the first poll that showed it (a phase
    /// shorter than a poll may be missed).
    pub phases: Vec<(String, u64)>,
    /// The workload stopped on the source (the `stopped` probe held).
    pub stopped: Option<Instant>,
    /// The record first seen in `switching` (or already `completed`).
    pub switching: Option<Instant>,
    /// The workload first seen running on the target (the `resumed` probe).
    pub resumed: Option<Instant>,
    /// The wall clock (µs since the epoch) when the start request was
    /// sent: where the agents' timing marks are measured from.
    pub requested_us: u64,
}

/// Probes a migration's watch calls every [`WATCH_EVERY`]; each returns
/// true once its moment has come (and is not called again after).
pub struct Probes<'a> {
    /// The workload stopped on the source, if the kind stops it.
    pub stopped: Option<&'a mut dyn FnMut() -> bool>,
    /// The workload runs on the target.
    pub resumed: &'a mut dyn FnMut() -> bool,
}

/// A running allocation: its id and node.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Allocation id.
    pub alloc: String,
    /// The node it runs on.
    pub node: String,
}

impl Placed {
    /// The other agent of the two.
    pub fn other_node(&self) -> &'static str {
        if self.node == NODES[0] {
            NODES[1]
        } else {
            NODES[0]
        }
    }
}

/// The coordinator, the two agents, and a client to them.
pub struct HerdCluster {
    // Dropped first: the agents (and every workload under their data
    // dirs), then the coordinator.
    agents: AgentSet,
    _cluster: ProcessCluster,
    client: HerdClient,
}

fn runtime(what: &str) -> impl FnOnce(herd_api::client::ClientError) -> CliError + '_ {
    move |e| CliError::runtime(format!("{what}: {e}"))
}

impl HerdCluster {
    /// Starts one coordinator and the two agents from `exe`, the agents
    /// allowing jobs to name files under `allowed` (`--allow-path`), and
    /// waits until both agents are ready nodes.
    pub async fn start(exe: &Path, allowed: &[PathBuf]) -> Result<Self, CliError> {
        eprintln!(
            "starting 1 herd coordinator and 2 node agents ({})",
            exe.display()
        );
        let cluster = ProcessCluster::start(exe, 1, &[]).map_err(CliError::runtime)?;
        cluster
            .wait_for_leader(Duration::from_secs(30))
            .await
            .map_err(CliError::runtime)?;
        let mut agents = AgentSet::new(exe, &cluster.addr_list()).map_err(CliError::runtime)?;
        let allow: Vec<String> = allowed
            .iter()
            .flat_map(|dir| ["--allow-path".to_string(), dir.display().to_string()])
            .collect();
        let allow: Vec<&str> = allow.iter().map(String::as_str).collect();
        for name in NODES {
            agents.start(name, &allow).map_err(CliError::runtime)?;
        }
        let client = cluster.client().map_err(CliError::runtime)?;
        let started = Instant::now();
        loop {
            let ready = list_nodes(&client)
                .await
                .map(|nodes| {
                    NODES
                        .iter()
                        .all(|name| nodes.iter().any(|n| n.name == *name && n.status == "ready"))
                })
                .unwrap_or(false);
            if ready {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(CliError::runtime(format!(
                    "the node agents {NODES:?} did not become ready within 30 s (logs under {})",
                    agents.root().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            agents,
            _cluster: cluster,
            client,
        })
    }

    /// How node `node`'s agent says its `driver` moves workloads
    /// (`live`, `checkpoint`, ...), if it offers that driver.
    pub async fn migration_mode(
        &self,
        node: &str,
        driver: &str,
    ) -> Result<Option<String>, CliError> {
        let nodes = list_nodes(&self.client)
            .await
            .map_err(runtime("cannot list nodes"))?;
        Ok(nodes
            .iter()
            .find(|n| n.name == node)
            .and_then(|n| n.drivers.iter().find(|d| d.driver == driver))
            .map(|d| d.migration.clone()))
    }

    /// Submits the job spec `toml` (checked as `herd job run` checks it).
    pub async fn submit(&self, toml: &str) -> Result<(), CliError> {
        let spec = parse_job_spec(toml, "bench job").map_err(CliError::runtime)?;
        let request = pb::SubmitJobRequest {
            spec: Some(pb::JobSpec::from(&spec)),
        };
        self.client
            .call(|ch| {
                let request = request.clone();
                async move { JobsClient::new(ch).submit(request).await }
            })
            .await
            .map_err(runtime("cannot submit the bench job"))?;
        Ok(())
    }

    /// Waits until `job` has one running allocation.
    pub async fn running(&self, job: &str) -> Result<Placed, CliError> {
        let started = Instant::now();
        loop {
            let allocs = self.allocs(job).await?;
            if let Some(a) = allocs
                .iter()
                .find(|a| a.status == "running" && a.desired == "run")
            {
                return Ok(Placed {
                    alloc: a.id.clone(),
                    node: a.node.clone(),
                });
            }
            if let Some(failed) = allocs.iter().find(|a| a.status == "failed") {
                return Err(CliError::runtime(format!(
                    "the bench job {job} failed to start on {} (see {})",
                    failed.node,
                    self.alloc_dir(&failed.node, &failed.id).display()
                )));
            }
            if started.elapsed() > START_WAIT {
                return Err(CliError::runtime(format!(
                    "the bench job {job} did not run within {START_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn allocs(&self, job: &str) -> Result<Vec<pb::Alloc>, CliError> {
        let request = pb::ListAllocsRequest {
            job: job.to_string(),
            stale: false,
        };
        self.client
            .call_as(Repeat::Safe, |ch| {
                let request = request.clone();
                async move {
                    AllocsClient::new(ch)
                        .list(request)
                        .await
                        .map(|r| r.into_inner().allocs)
                }
            })
            .await
            .map_err(runtime("cannot list allocations"))
    }

    /// An allocation's directory on `node`.
    pub fn alloc_dir(&self, node: &str, alloc: &str) -> PathBuf {
        self.agents
            .agent(node)
            .map(|a| a.data_dir.clone())
            .unwrap_or_else(|_| self.agents.root().join(format!("node-{node}")))
            .join("allocs")
            .join(alloc)
    }

    /// The agent `node`'s own log.
    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.agents
            .agent(node)
            .map(|a| a.log_path.clone())
            .unwrap_or_else(|_| self.agents.root().join(format!("node-{node}.log")))
    }

    /// Moves `placed` to the other agent (`herd alloc migrate`'s request)
    /// and follows the record until it ends and `probes.resumed` holds.
    /// An aborted migration is an error naming its reason.
    pub async fn migrate(
        &self,
        placed: &Placed,
        downtime_limit: Duration,
        bandwidth: Option<u64>,
        probes: Probes<'_>,
    ) -> Result<(pb::MigrationInfo, Timeline), CliError> {
        let request = pb::StartMigrationRequest {
            alloc_id: placed.alloc.clone(),
            target: placed.other_node().to_string(),
            downtime_limit_ms: u64::try_from(downtime_limit.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            bandwidth_bytes_per_sec: bandwidth.unwrap_or(0),
        };
        let begun = Instant::now();
        let requested_us = herd_actors::driver::move_timing::wall_us();
        let started = crate::cmd::migration::start(&self.client, &request)
            .await
            .map_err(runtime("cannot start the migration"))?;
        let Probes {
            mut stopped,
            resumed,
        } = probes;
        let mut timeline = Timeline {
            requested_us,
            ..Timeline::default()
        };
        let mut ended: Option<(pb::MigrationInfo, Instant)> = None;
        loop {
            let now = Instant::now();
            if timeline.stopped.is_none() && stopped.as_mut().is_some_and(|probe| probe()) {
                timeline.stopped = Some(now);
            }
            if ended.is_none() {
                let m = self.migration(&started.id).await?;
                if timeline.phases.last().is_none_or(|(p, _)| *p != m.phase) {
                    let ms = u64::try_from(now.saturating_duration_since(begun).as_millis())
                        .unwrap_or(u64::MAX);
                    timeline.phases.push((m.phase.clone(), ms));
                }
                if timeline.switching.is_none()
                    && (m.phase == "switching" || m.phase == "completed")
                {
                    timeline.switching = Some(now);
                }
                match m.phase.as_str() {
                    "completed" => ended = Some((m, now)),
                    "aborted" => {
                        return Err(CliError::runtime(format!(
                            "migration {} of {} aborted: {}",
                            m.id, m.alloc_id, m.error
                        )))
                    }
                    _ if begun.elapsed() > MIGRATION_WAIT => {
                        return Err(CliError::runtime(format!(
                            "migration {} did not end within {MIGRATION_WAIT:?} (phase {})",
                            m.id, m.phase
                        )))
                    }
                    _ => {}
                }
            }
            // The target runs the workload only after the switch-over.
            if timeline.switching.is_some() && resumed() {
                timeline.resumed = Some(now);
            }
            if timeline.resumed.is_some() {
                if let Some((m, _)) = ended {
                    return Ok((m, timeline));
                }
            }
            if let Some((m, at)) = &ended {
                if at.elapsed() > RESUME_WAIT {
                    return Err(CliError::runtime(format!(
                        "migration {} completed, but its workload was not seen running on {} within {RESUME_WAIT:?} (see {})",
                        m.id,
                        m.target,
                        self.alloc_dir(&m.target, &m.alloc_id).display()
                    )));
                }
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
    }

    async fn migration(&self, id: &str) -> Result<pb::MigrationInfo, CliError> {
        crate::cmd::migration::get(&self.client, id, false)
            .await
            .map_err(runtime("cannot read the migration"))
    }

    /// Stops `job` and ends its processes under `alloc`'s directory on
    /// both agents at once (the bench measures moves, not graceful
    /// stops), then waits until no allocation of it runs.
    pub async fn finish(&self, job: &str, alloc: &str) -> Result<(), CliError> {
        let request = pb::StopJobRequest {
            name: job.to_string(),
        };
        self.client
            .call(|ch| {
                let request = request.clone();
                async move { JobsClient::new(ch).stop(request).await }
            })
            .await
            .map_err(runtime("cannot stop the bench job"))?;
        let started = Instant::now();
        loop {
            for node in NODES {
                kill_processes_under(&self.alloc_dir(node, alloc));
            }
            let allocs = self.allocs(job).await?;
            if allocs.iter().all(|a| a.status != "running") {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(CliError::runtime(format!(
                    "the bench job {job} still runs 30 s after it was stopped"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn list_nodes(client: &HerdClient) -> Result<Vec<pb::Node>, herd_api::client::ClientError> {
    client
        .call_as(Repeat::Safe, |ch| async move {
            NodesClient::new(ch)
                .list(pb::ListNodesRequest { stale: false })
                .await
                .map(|r| r.into_inner().nodes)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_log_tail_returns_whole_lines_once_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let mut tail = LogTail::from_start(&path);
        assert!(tail.new_lines().is_empty(), "no file yet");
        let mut file = std::fs::File::create(&path).expect("create");
        write!(file, "one\ntw").expect("write");
        assert_eq!(tail.new_lines(), ["one"]);
        write!(file, "o\nthree\n").expect("write");
        assert_eq!(tail.new_lines(), ["two", "three"]);
        assert!(tail.new_lines().is_empty());
        let mut late = LogTail::from_end(&path);
        writeln!(file, "four").expect("write");
        assert!(late.saw("four"));
        assert!(!late.saw("four"), "seen once");
    }
}
