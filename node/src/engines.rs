//! The SIMULATED inference engines on this node, as the agent sees them:
//! found by the `engine.json` each writes into its allocation directory
//! (so a restarted agent finds running engines too), and polled several
//! times a second for their stats, of which the latest are kept for
//! `NodeAgent.EngineStats` (and, later, for the rescheduler).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use herd_actors::inference::endpoint::EngineEndpoint;
use herd_api::proto::agent::AllocEngineStats;
use herd_api::proto::inference::inference_engine_client::InferenceEngineClient;
use herd_api::proto::inference::{EngineStats, StatsRequest};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// How often every engine's stats are read.
pub const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long one engine gets to answer.
const CALL_TIMEOUT: Duration = Duration::from_millis(1000);

/// This node's engines; cheap to clone.
#[derive(Clone)]
pub struct Engines {
    allocs_dir: PathBuf,
    /// Each engine's latest stats, with when the poll that read them began.
    latest: Arc<RwLock<BTreeMap<String, (AllocEngineStats, Instant)>>>,
}

impl Engines {
    /// The engines under `data_dir/allocs/`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            allocs_dir: data_dir.join("allocs"),
            latest: Arc::default(),
        }
    }

    /// The engine of allocation `alloc_id` or, when it is empty, one of
    /// `job` (the least loaded by its latest stats).
    pub fn find(&self, alloc_id: &str, job: &str) -> Result<EngineEndpoint, Status> {
        if !alloc_id.is_empty() {
            let valid = alloc_id != "." && alloc_id != ".." && !alloc_id.contains(['/', '\0']);
            if !valid || alloc_id.len() > 256 {
                return Err(Status::invalid_argument(format!(
                    "field `alloc_id`: {alloc_id:?} is not an allocation id"
                )));
            }
            return EngineEndpoint::read(&self.allocs_dir.join(alloc_id))
                .map_err(|e| Status::internal(format!("reading the engine of {alloc_id}: {e}")))?
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "allocation {alloc_id} runs no inference engine on this node"
                    ))
                });
        }
        if job.is_empty() {
            return Err(Status::invalid_argument(
                "give `alloc_id` or `job` to choose the engine",
            ));
        }
        let load = |e: &EngineEndpoint| {
            self.latest
                .read()
                .ok()
                .and_then(|l| l.get(&e.alloc_id).and_then(|(s, _)| s.stats.clone()))
                .map(|s| s.batch_size + s.queue_len)
                .unwrap_or(0)
        };
        self.all()
            .into_iter()
            .filter(|e| e.job == job)
            .min_by_key(load)
            .ok_or_else(|| {
                Status::not_found(format!("job {job:?} runs no inference engine on this node"))
            })
    }

    /// Every engine that wrote an `engine.json`, with its latest stats and
    /// when the poll that read them began (none before its first poll), for
    /// the fleet view's dispatcher.
    pub fn local(&self) -> Vec<(EngineEndpoint, Option<(EngineStats, Instant)>)> {
        let latest = self.latest.read().ok();
        self.all()
            .into_iter()
            .map(|e| {
                let stats = latest.as_ref().and_then(|l| {
                    l.get(&e.alloc_id)
                        .and_then(|(s, at)| s.stats.clone().map(|s| (s, *at)))
                });
                (e, stats)
            })
            .collect()
    }

    /// Every engine that wrote an `engine.json`.
    fn all(&self) -> Vec<EngineEndpoint> {
        let Ok(dir) = std::fs::read_dir(&self.allocs_dir) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|entry| EngineEndpoint::read(&entry.path()).ok().flatten())
            .collect()
    }

    /// The latest stats of every engine that answered its last poll.
    pub fn snapshot(&self) -> Vec<AllocEngineStats> {
        self.latest
            .read()
            .map(|l| l.values().map(|(s, _)| s.clone()).collect())
            .unwrap_or_default()
    }

    /// Starts polling every engine's stats every [`POLL_EVERY`]; the task
    /// runs until aborted.
    pub fn spawn_poller(&self) -> JoinHandle<()> {
        let engines = self.clone();
        tokio::spawn(async move {
            let mut channels: HashMap<String, Channel> = HashMap::new();
            let mut tick = tokio::time::interval(POLL_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                engines.poll_once(&mut channels).await;
            }
        })
    }

    async fn poll_once(&self, channels: &mut HashMap<String, Channel>) {
        let started = Instant::now();
        let found = self.all();
        channels.retain(|addr, _| found.iter().any(|e| &e.addr == addr));
        let mut fresh = BTreeMap::new();
        for engine in found {
            let channel = match channels.get(&engine.addr) {
                Some(c) => c.clone(),
                None => match connect_lazy(&engine.addr) {
                    Ok(c) => {
                        channels.insert(engine.addr.clone(), c.clone());
                        c
                    }
                    Err(_) => continue,
                },
            };
            let mut client = InferenceEngineClient::new(channel);
            let call = client.stats(StatsRequest {});
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(stats)) => {
                    fresh.insert(
                        engine.alloc_id.clone(),
                        (
                            AllocEngineStats {
                                alloc_id: engine.alloc_id,
                                job: engine.job,
                                at_ms: herd_api::clock::now_ms(),
                                stats: Some(stats.into_inner()),
                            },
                            started,
                        ),
                    );
                }
                // Gone or stuck (a stale engine.json): not reported.
                _ => {
                    channels.remove(&engine.addr);
                }
            }
        }
        if let Ok(mut latest) = self.latest.write() {
            *latest = fresh;
        }
    }
}

/// A channel to an engine on this host (connected on first use).
pub fn connect_lazy(addr: &str) -> Result<Channel, Status> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| e.connect_timeout(CALL_TIMEOUT).connect_lazy())
        .map_err(|e| Status::internal(format!("bad engine address {addr:?}: {e}")))
}
