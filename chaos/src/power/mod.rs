//! The `power` scenario's own parts (docs/chaos.md, "Power budgets under
//! faults"): agents with SIMULATED GPUs, a budget on the whole cluster
//! oversubscribed by 30 %, load spikes forced on every GPU while the
//! nemesis kills agents and cuts coordinators off, and a sampler that
//! reads every agent's GPU power figures five times a second into the
//! history, for the power checker (`check::power`).
//!
//! The spikes are a SIMULATION knob: every agent of the run is started with
//! `HERD_SIM_GPU_SPIKE_FILE` naming one file, and while it holds `1.0` the
//! simulated GPUs of every agent are fully busy, whatever runs on them
//! (`actors/src/resources/simulated.rs`). Everything else is real: the
//! agents' governors, their shares from the coordinators, their metrics.

pub mod record;
pub mod scrape;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use herd_api::client::HerdClient;
use herd_api::proto::v1::power_client::PowerClient;
use herd_api::proto::v1::SetPowerBudgetRequest;
use tokio::task::JoinHandle;

use crate::history::Record;
use crate::nemesis::rng::Rng;
use crate::workload::Recorder;
use record::{BudgetSet, NodePower, PowerTick, SpikeWindow};

/// Simulated GPUs per agent.
pub const SIM_GPUS: u32 = 4;
/// Their model.
pub const SIM_MODEL: &str = "h100";
/// Its nameplate (TDP, the highest limit), watts (docs/power.md).
pub const NAMEPLATE_WATTS: f64 = 700.0;
/// How far the budget oversubscribes the nameplate: budget = nameplate / this.
pub const OVERSUBSCRIPTION: f64 = 1.3;
/// The group the budget covers: every node.
pub const GROUP: &str = "cluster";
/// The thresholds set with it, thousandths of the budget (herd's defaults).
pub const CAP_PERMILLE: u32 = 900;
/// The second, hard threshold.
pub const HARD_PERMILLE: u32 = 970;
/// How often every agent is sampled (5 Hz).
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(200);
/// Longest one scrape may take (a paused or killed agent must not hold the
/// sampler up for long).
const SCRAPE_LIMIT: Duration = Duration::from_millis(400);
/// The environment variable the simulated GPU backend reads its spike file
/// from (`herd_actors::resources::simulated::SPIKE_FILE_ENV`; the harness
/// talks to herd only through its binary, so the name is repeated here).
pub const SPIKE_FILE_ENV: &str = "HERD_SIM_GPU_SPIKE_FILE";
/// Quiet time before the first spike (the faults' warm-up too).
const SPIKE_WARMUP: Duration = Duration::from_secs(2);
/// Shortest and longest spike, ms.
const SPIKE_MS: (u64, u64) = (1500, 3000);
/// Shortest and longest lull between spikes, ms.
const LULL_MS: (u64, u64) = (1000, 2000);

/// The agents of a power run: where each serves its metrics.
#[derive(Debug, Clone)]
pub struct PowerNodes {
    /// Node name → its `--metrics-listen` address.
    pub metrics: BTreeMap<String, String>,
    /// The spike file every agent reads.
    pub spike_file: PathBuf,
}

/// The spike file of a run whose agents live under `root`.
pub fn spike_file(root: &Path) -> PathBuf {
    root.join("sim-gpu-spike")
}

/// `herd node` arguments for a power run's agent serving metrics on `metrics`.
pub fn agent_args(metrics: &str) -> Vec<String> {
    [
        "--sim-gpus",
        &SIM_GPUS.to_string(),
        "--sim-gpu-model",
        SIM_MODEL,
        "--metrics-listen",
        metrics,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Writes `activity` into the spike file (aside, then renamed, so an agent
/// never reads half a number).
pub fn set_spike(file: &Path, activity: f64) -> std::io::Result<()> {
    let aside = file.with_extension("new");
    std::fs::write(&aside, format!("{activity}\n"))?;
    std::fs::rename(&aside, file)
}

/// The budget for `nodes` agents: their nameplate over [`OVERSUBSCRIPTION`].
pub fn budget_watts(nodes: usize) -> u64 {
    let nameplate = nodes as f64 * f64::from(SIM_GPUS) * NAMEPLATE_WATTS;
    (nameplate / OVERSUBSCRIPTION).round() as u64
}

/// Sets the cluster's budget (retrying until the agents have registered
/// their GPUs, within `limit`), records it, and waits until every agent's
/// governor holds a share.
pub async fn prepare(
    client: &HerdClient,
    nodes: &PowerNodes,
    recorder: &Recorder,
    limit: Duration,
) -> Result<BudgetSet, String> {
    let watts = budget_watts(nodes.metrics.len());
    let request = SetPowerBudgetRequest {
        group: GROUP.to_string(),
        watts,
        cap_permille: CAP_PERMILLE,
        hard_permille: HARD_PERMILLE,
    };
    let started = Instant::now();
    loop {
        let request = request.clone();
        let answer = client
            .call(|ch| {
                let request = request.clone();
                async move { PowerClient::new(ch).set_budget(request).await }
            })
            .await;
        match answer {
            Ok(_) => break,
            Err(e) if started.elapsed() > limit => {
                return Err(format!("set the power budget of {watts} W: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    let budget = BudgetSet {
        group: GROUP.to_string(),
        nodes: nodes.metrics.keys().cloned().collect(),
        watts: watts as f64,
        hard_fraction: f64::from(HARD_PERMILLE) / 1000.0,
        sample_period_ms: SAMPLE_PERIOD.as_millis() as u64,
        nameplate_watts: nodes.metrics.len() as f64 * f64::from(SIM_GPUS) * NAMEPLATE_WATTS,
        at_ns: recorder.now_ns(),
    };
    recorder.push(Record::PowerBudget(budget.clone()));
    while started.elapsed() <= limit {
        let tick = sample(nodes, recorder).await;
        if tick.nodes.iter().all(|n| n.share_watts.is_some()) {
            return Ok(budget);
        }
        tokio::time::sleep(SAMPLE_PERIOD).await;
    }
    Err(format!(
        "not every agent held a power share within {limit:?} of the budget"
    ))
}

/// Every agent's figures now (scraped concurrently).
async fn sample(nodes: &PowerNodes, recorder: &Recorder) -> PowerTick {
    let answers = join_all(nodes.metrics.iter().map(|(node, addr)| async move {
        let scraped = scrape::scrape(addr, SCRAPE_LIMIT).await;
        (node.clone(), scraped, recorder.now_ns())
    }))
    .await;
    let nodes: Vec<NodePower> = answers
        .into_iter()
        .map(|(node, scraped, at_ns)| match scraped {
            Ok(s) => NodePower {
                node,
                reached: true,
                at_ns,
                share_watts: s.share_watts,
                gpus: s.gpus,
            },
            Err(e) => {
                tracing::debug!(node, error = %e, "power sample missed");
                NodePower {
                    node,
                    reached: false,
                    at_ns,
                    share_watts: None,
                    gpus: Vec::new(),
                }
            }
        })
        .collect();
    let at_ns = nodes.iter().map(|n| n.at_ns).max().unwrap_or(0);
    PowerTick { at_ns, nodes }
}

/// Samples every agent every [`SAMPLE_PERIOD`] into the history until `stop`.
pub fn spawn_sampler(
    nodes: PowerNodes,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let tick = sample(&nodes, &recorder).await;
            recorder.push(Record::Power(tick));
            next += SAMPLE_PERIOD;
            let now = Instant::now();
            if next > now {
                tokio::time::sleep(next - now).await;
            } else {
                // Behind (a loaded machine): sample again at once, and
                // keep the period from here.
                next = now;
            }
        }
    })
}

/// Forces spikes on every simulated GPU (seeded lengths and lulls) until
/// `stop`, recording each; the last one is ended when it stops.
pub fn spawn_spikes(
    file: PathBuf,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stopped = || stop.load(Ordering::Relaxed);
        let wait = |length: Duration| {
            let stop = stop.clone();
            async move {
                let until = Instant::now() + length;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        wait(SPIKE_WARMUP).await;
        while !stopped() {
            let spike = Duration::from_millis(rng.between(SPIKE_MS.0, SPIKE_MS.1));
            let lull = Duration::from_millis(rng.between(LULL_MS.0, LULL_MS.1));
            if let Err(e) = set_spike(&file, 1.0) {
                tracing::warn!(file = %file.display(), error = %e, "cannot start a spike");
                return;
            }
            let start_ns = recorder.now_ns();
            tracing::info!("power spike on every simulated GPU");
            wait(spike).await;
            let ended = set_spike(&file, 0.0);
            recorder.push(Record::Spike(SpikeWindow {
                activity: 1.0,
                start_ns,
                end_ns: Some(recorder.now_ns()),
            }));
            if let Err(e) = ended {
                tracing::warn!(file = %file.display(), error = %e, "cannot end a spike");
                return;
            }
            wait(lull).await;
        }
    })
}
