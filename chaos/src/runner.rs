//! Runs one scenario: starts the cluster (and agents), runs the clients,
//! injects the seeded fault schedule, waits for convergence, tears down and
//! looks for leftovers. The result is a [`History`]; judging it is the
//! checkers' job.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use herd_api::client::HerdClient;
use herd_api::proto::v1::allocs_client::AllocsClient;
use herd_api::proto::v1::nodes_client::NodesClient;
use herd_api::proto::v1::{ListAllocsRequest, ListNodesRequest};

use crate::agents::{kill_processes_under, processes_under, AgentSet};
use crate::docker::DockerEnv;
use crate::finals;
use crate::history::{FaultWindow, History, Record, Sample, SeenProcess};
use crate::migrate;
use crate::nemesis::rng::Rng;
use crate::nemesis::schedule::{plan, ScheduleShape};
use crate::nemesis::{self, NemesisError, Targets};
use crate::power;
use crate::process_cluster::{ClusterError, ProcessCluster};
use crate::scenario::Scenario;
use crate::setup::{start, Started};
use crate::workload::{self, ClientContext, Recorder};

/// The name of the service job scenarios with agents keep running.
pub const SERVICE_JOB: &str = "chaos-svc";
/// A second service those scenarios keep running, with
/// `stop_after_disconnect` set: herd promises that two copies of one of its
/// instances never run at once, and the at-most-once checker holds it to that.
pub const CAREFUL_JOB: &str = "chaos-careful";
/// How many instances [`CAREFUL_JOB`] runs.
pub const CAREFUL_COUNT: u32 = 2;
/// Its `stop_after_disconnect`: half the node TTL the harness gives the
/// coordinators (`--node-ttl-ms 2000`), as docs/job-specs.md advises.
pub const CAREFUL_STOP_AFTER: Duration = Duration::from_secs(1);

/// How a run is carried out.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The herd binary to start.
    pub binary: PathBuf,
    /// What to run.
    pub scenario: Scenario,
    /// How long faults are injected (convergence is awaited after).
    pub duration: Duration,
    /// The seed of the schedule and the clients.
    pub seed: u64,
    /// How long after the last heal the cluster must be whole again.
    pub converge_bound: Duration,
    /// Register clients.
    pub register_clients: u64,
    /// Register keys.
    pub keys: usize,
    /// `libherd_chaos_shim.so`, for scenarios that slow fsyncs or skew
    /// clocks (see [`crate::shim::beside`]).
    pub shim: Option<PathBuf>,
    /// Docker mode: coordinators run as containers of this environment.
    pub docker: Option<Arc<DockerEnv>>,
    /// Mutual TLS for every process the run starts (`--tls`): the CA that
    /// issues their certificates. The harness's own transport must be a
    /// client certificate of it (`herd_api::tls::install`).
    pub tls: Option<crate::tls::ClusterTls>,
    /// Where the members' and agents' logs are copied at the end.
    pub logs: Option<PathBuf>,
}

/// Why a run could not be carried out (not a herd bug: a harness failure
/// or a cluster that never got going).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Starting, killing or signalling processes failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A nemesis could not act.
    #[error(transparent)]
    Nemesis(#[from] NemesisError),
    /// The cluster did not get ready before any fault.
    #[error("setup: {0}")]
    Setup(String),
}

/// How long the jobs a run starts with may take to be accepted.
const SETUP_LIMIT: Duration = Duration::from_secs(20);

/// Probes with a deadline: a paused member must not stall the run.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

async fn leader(cluster: &ProcessCluster) -> Option<u64> {
    let status = tokio::time::timeout(PROBE_TIMEOUT, cluster.status())
        .await
        .ok()??;
    (status.leader != 0).then_some(status.leader)
}

/// Longest a member may take to say whom it follows while a fault is in
/// force (short: a paused member must not hold the fault loop up).
const LEADER_PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// The leader a majority of the members name, as soon as a majority does.
async fn majority_leader(cluster: &ProcessCluster) -> Option<u64> {
    let ids = cluster.ids();
    let majority = ids.len() / 2 + 1;
    let mut answers: FuturesUnordered<_> = ids
        .iter()
        .map(|id| async move {
            let report = tokio::time::timeout(LEADER_PROBE_TIMEOUT, cluster.member_report(*id))
                .await
                .ok()
                .flatten()?;
            // Answered as itself, not as a process that took its port.
            (report.id == *id).then_some(report.leader).flatten()
        })
        .collect();
    let mut named: BTreeMap<u64, usize> = BTreeMap::new();
    while let Some(answer) = answers.next().await {
        if let Some(leader) = answer {
            let count = named.entry(leader).or_default();
            *count += 1;
            if *count >= majority {
                return Some(leader);
            }
        }
    }
    None
}

/// The workload processes running now.
fn sample(agents: &AgentSet, at_ns: u64, settled: bool) -> Sample {
    Sample {
        at_ns,
        settled,
        processes: agents
            .workloads()
            .into_iter()
            .map(SeenProcess::from)
            .collect(),
    }
}

/// Whether the cluster is whole: a leader every member knows, every agent's
/// node ready, the service running at its count (one process per instance).
async fn whole(
    cluster: &ProcessCluster,
    client: &HerdClient,
    agents: Option<&AgentSet>,
    service_count: u32,
) -> bool {
    if leader(cluster).await.is_none() {
        return false;
    }
    for id in cluster.ids() {
        let report = tokio::time::timeout(PROBE_TIMEOUT, cluster.member_report(id)).await;
        match report {
            // Answered as itself: an address reused by another process
            // (a proxy, another member) must not pass for this member.
            Ok(Some(r)) if r.leader.is_some() && r.id == id => {}
            _ => return false,
        }
    }
    let Some(agents) = agents else {
        return true;
    };
    let nodes = tokio::time::timeout(
        PROBE_TIMEOUT,
        client.call(|ch| async move {
            NodesClient::new(ch)
                .list(ListNodesRequest { stale: false })
                .await
                .map(|r| r.into_inner())
        }),
    )
    .await;
    let Ok(Ok(nodes)) = nodes else {
        return false;
    };
    let ready: BTreeSet<String> = nodes
        .nodes
        .into_iter()
        // A node drained by the workload is alive; drains end before the
        // final convergence, so every node is ready again by then.
        .filter(|n| n.status == "ready" || n.status == "draining")
        .map(|n| n.name)
        .collect();
    if !agents.names().iter().all(|n| ready.contains(n)) {
        return false;
    }
    // No stale copy anywhere: an agent back from a fault has stopped what
    // was placed elsewhere meanwhile, for every job, not only the service.
    let workloads = agents.workloads();
    let mut instances = BTreeSet::new();
    if !workloads
        .iter()
        .filter_map(|w| w.instance.map(|i| (w.job.as_str(), i)))
        .all(|key| instances.insert(key))
    {
        return false;
    }
    if service_count == 0 {
        return true;
    }
    for (job, count) in [(SERVICE_JOB, service_count), (CAREFUL_JOB, CAREFUL_COUNT)] {
        if !at_count(client, &workloads, job, count).await {
            return false;
        }
    }
    true
}

/// Whether `job` runs `count` allocations, each as one process of its own
/// instance.
async fn at_count(
    client: &HerdClient,
    workloads: &[crate::agents::WorkloadProcess],
    job: &str,
    count: u32,
) -> bool {
    let allocs = tokio::time::timeout(
        PROBE_TIMEOUT,
        client.call(|ch| async move {
            AllocsClient::new(ch)
                .list(ListAllocsRequest {
                    job: job.into(),
                    stale: false,
                })
                .await
                .map(|r| r.into_inner())
        }),
    )
    .await;
    let Ok(Ok(allocs)) = allocs else {
        return false;
    };
    let running = allocs
        .allocs
        .iter()
        .filter(|a| a.status == "running" && a.desired == "run")
        .count();
    let processes: Vec<_> = workloads.iter().filter(|w| w.job == job).collect();
    let instances: BTreeSet<Option<u32>> = processes.iter().map(|p| p.instance).collect();
    running == count as usize
        && processes.len() == count as usize
        && instances.len() == count as usize
}

/// How often members that exited on their own are restarted, as systemd's
/// `RestartSec=1` would.
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);

/// Restarts members that exited on their own (see
/// [`ProcessCluster::supervise`]).
fn supervise(cluster: &mut ProcessCluster) -> Result<(), ClusterError> {
    for id in cluster.supervise()? {
        tracing::info!(
            member = id,
            "member exited on its own; restarted as its supervisor would"
        );
    }
    Ok(())
}

async fn until_whole(
    cluster: &ProcessCluster,
    client: &HerdClient,
    agents: Option<&AgentSet>,
    service_count: u32,
    limit: Duration,
) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if whole(cluster, client, agents, service_count).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Runs `config`'s scenario and returns what was observed.
pub async fn run(config: &RunConfig) -> Result<History, RunError> {
    let scenario = &config.scenario;
    let mut rng = Rng::new(config.seed);
    let recorder = Arc::new(Recorder::new());
    let Started {
        mut cluster,
        net,
        mut agents,
        agent_net,
        power: power_nodes,
    } = start(config, &mut rng).await?;
    let cluster_root = cluster.root().to_path_buf();
    let addrs: Vec<String> = cluster
        .ids()
        .iter()
        .filter_map(|id| cluster.member(*id).ok().map(|m| m.addr.clone()))
        .collect();
    let client = cluster.client()?;
    let agents_root = agents.as_ref().map(|a| a.root().to_path_buf());
    if scenario.service_count > 0 {
        let careful = workload::careful_spec(CAREFUL_JOB, CAREFUL_COUNT, CAREFUL_STOP_AFTER);
        for spec in [
            workload::sleeper_spec(SERVICE_JOB, scenario.service_count),
            careful,
        ] {
            let name = spec.name.clone();
            workload::submit_setup(&client, addrs.len(), spec, &recorder, SETUP_LIMIT)
                .await
                .map_err(|error| RunError::Setup(format!("submit {name}: {error}")))?;
        }
    }
    // Balancing moves are migrations too, judged the same way.
    let migrates = (scenario.migrations || scenario.balancing) && agents.is_some();
    if migrates {
        let spec = if scenario.balancing {
            migrate::movable_train_spec()
        } else {
            migrate::train_spec()
        };
        workload::submit_setup(&client, addrs.len(), spec, &recorder, SETUP_LIMIT)
            .await
            .map_err(|error| RunError::Setup(format!("submit {}: {error}", migrate::TRAIN_JOB)))?;
    }
    // Live moves too: a simulated VM beside the trainers.
    let moves_vms = scenario.migrations && agents.is_some();
    if moves_vms {
        workload::submit_setup(
            &client,
            addrs.len(),
            migrate::vm_spec(),
            &recorder,
            SETUP_LIMIT,
        )
        .await
        .map_err(|error| RunError::Setup(format!("submit {}: {error}", migrate::VM_JOB)))?;
    }
    if !until_whole(
        &cluster,
        &client,
        agents.as_ref(),
        scenario.service_count,
        Duration::from_secs(40),
    )
    .await
    {
        return Err(RunError::Setup(
            "the cluster was not whole (leader, nodes ready, service at count) within 40 s of starting".into(),
        ));
    }
    if migrates && !migrate::until_training(&client, SETUP_LIMIT).await {
        return Err(RunError::Setup(format!(
            "{} did not run its {} trainers within {SETUP_LIMIT:?}",
            migrate::TRAIN_JOB,
            migrate::TRAIN_COUNT
        )));
    }
    if moves_vms
        && !migrate::until_running(&client, migrate::VM_JOB, migrate::VM_COUNT, SETUP_LIMIT).await
    {
        return Err(RunError::Setup(format!(
            "{} did not run its {} VMs within {SETUP_LIMIT:?}",
            migrate::VM_JOB,
            migrate::VM_COUNT
        )));
    }
    // balance-away: movable trainers crowded on one node before the
    // coordinators go away.
    if let (true, Some(set)) = (crate::away::applies(scenario), &agents) {
        crate::away::prepare(&client, set, addrs.len(), &recorder, 2 * SETUP_LIMIT)
            .await
            .map_err(RunError::Setup)?;
    }

    // Power: the budget, then the sampler (until teardown) and the spikes
    // (until the faults end).
    let power_stop = Arc::new(AtomicBool::new(false));
    let spike_stop = Arc::new(AtomicBool::new(false));
    let mut power_tasks = Vec::new();
    let mut spike_task = None;
    if let Some(nodes) = &power_nodes {
        power::prepare(&client, nodes, &recorder, SETUP_LIMIT)
            .await
            .map_err(RunError::Setup)?;
        power_tasks.push(power::spawn_sampler(
            nodes.clone(),
            recorder.clone(),
            power_stop.clone(),
        ));
        spike_task = Some(power::spawn_spikes(
            nodes.spike_file.clone(),
            recorder.clone(),
            spike_stop.clone(),
            rng.fork(),
        ));
    }

    // Clients.
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = ClientContext::new(addrs.clone(), recorder.clone(), stop.clone());
    let keys = workload::register_keys(config.keys);
    let mut tasks = Vec::new();
    for process in 1..=config.register_clients {
        tasks.push(tokio::spawn(workload::register_client(
            ctx.clone(),
            process,
            keys.clone(),
            rng.fork(),
        )));
    }
    tasks.push(tokio::spawn(workload::job_client(
        ctx.clone(),
        config.register_clients + 1,
        rng.fork(),
    )));
    // Drains stop with the faults, so that every node is eligible again
    // before convergence is judged.
    let node_stop = Arc::new(AtomicBool::new(false));
    let node_task = agents.as_ref().filter(|_| scenario.drains).map(|set| {
        let node_ctx = ClientContext {
            stop: node_stop.clone(),
            ..ctx.clone()
        };
        tokio::spawn(workload::node_client(
            node_ctx,
            config.register_clients + 2,
            set.names(),
            rng.fork(),
        ))
    });

    // Migration clients stop moving with the faults and follow what they
    // started to its end, so that every migration has ended before
    // convergence is judged.
    let migrate_stop = Arc::new(AtomicBool::new(false));
    // One client per trainer, and one per VM.
    let moved: Vec<&str> = std::iter::repeat_n(migrate::TRAIN_JOB, migrate::TRAIN_COUNT as usize)
        .chain(std::iter::repeat_n(
            migrate::VM_JOB,
            migrate::VM_COUNT as usize,
        ))
        .collect();
    let migrate_tasks = match agents.as_ref().filter(|_| scenario.migrations) {
        Some(set) => migrate::spawn_clients(
            &ctx,
            migrate_stop.clone(),
            config.register_clients + 3,
            &moved,
            &set.names(),
            &mut rng,
        ),
        None => Vec::new(),
    };

    // Faults.
    let run_start = Instant::now();
    let windows = plan(
        &mut rng,
        scenario.faults,
        config.duration,
        &ScheduleShape {
            fault_ms: scenario.fault_ms,
            ..ScheduleShape::default()
        },
    );
    let mut faults: Vec<FaultWindow> = Vec::new();
    let mut active: Option<(nemesis::Active, usize)> = None;
    let mut unrecovered: Vec<usize> = Vec::new();
    let mut next = 0;
    let mut last_probe = Instant::now();
    // The leader before the fault in force, and its window, until a
    // majority names another.
    let mut awaiting_leader: Option<(u64, usize)> = None;
    let mut last_leader_probe = Instant::now();
    let mut last_sample = Instant::now();
    let mut last_supervised = Instant::now();
    let mut last_heal_ns = recorder.now_ns();
    loop {
        let now = run_start.elapsed();
        if let Some((fault, index)) = active.take() {
            let window = &windows[index];
            if now < window.start + window.length {
                // A fault acting in steps (agents killed inside it).
                let mut fault = fault;
                let mut targets = Targets {
                    cluster: &mut cluster,
                    agents: agents.as_mut(),
                    net: net.as_ref(),
                    agent_net: agent_net.as_ref(),
                };
                nemesis::advance(&mut fault, now.saturating_sub(window.start), &mut targets)?;
                active = Some((fault, index));
            } else {
                let mut targets = Targets {
                    cluster: &mut cluster,
                    agents: agents.as_mut(),
                    net: net.as_ref(),
                    agent_net: agent_net.as_ref(),
                };
                nemesis::heal(&fault, &mut targets)?;
                awaiting_leader = None;
                last_heal_ns = recorder.now_ns();
                if let Some(f) = faults.last_mut() {
                    f.end_ns = Some(last_heal_ns);
                }
                unrecovered.push(faults.len() - 1);
                next = index + 1;
            }
        } else if next < windows.len() && now >= windows[next].start {
            let known_leader = leader(&cluster).await;
            let mut targets = Targets {
                cluster: &mut cluster,
                agents: agents.as_mut(),
                net: net.as_ref(),
                agent_net: agent_net.as_ref(),
            };
            let fault = nemesis::inject(windows[next].fault, &mut targets, known_leader, &mut rng)?;
            tracing::info!(fault = %fault.what, "injected");
            faults.push(FaultWindow {
                what: fault.what.clone(),
                start_ns: recorder.now_ns(),
                end_ns: None,
                recovered_after_ns: None,
                lost_node: fault.lost_node.clone(),
                unsupervised_node: fault.unsupervised_node.clone(),
                new_leader_after_ns: None,
            });
            active = Some((fault, next));
            awaiting_leader = known_leader.map(|l| (l, faults.len() - 1));
        }
        if let (Some((old, index)), Some(_)) = (awaiting_leader, &active) {
            if last_leader_probe.elapsed() >= Duration::from_millis(100) {
                last_leader_probe = Instant::now();
                if let Some(new) = majority_leader(&cluster).await.filter(|l| *l != old) {
                    let window = &mut faults[index];
                    window.new_leader_after_ns =
                        Some(recorder.now_ns().saturating_sub(window.start_ns));
                    awaiting_leader = None;
                    tracing::info!(leader = new, "a majority names a new leader");
                }
            }
        }
        if !unrecovered.is_empty()
            && active.is_none()
            && last_probe.elapsed() >= Duration::from_millis(200)
        {
            last_probe = Instant::now();
            if whole(&cluster, &client, agents.as_ref(), scenario.service_count).await {
                let at = recorder.now_ns();
                for index in unrecovered.drain(..) {
                    let end = faults[index].end_ns.unwrap_or(at);
                    faults[index].recovered_after_ns = Some(at.saturating_sub(end));
                }
            }
        }
        if let Some(set) = &agents {
            if last_sample.elapsed() >= Duration::from_millis(250) {
                last_sample = Instant::now();
                let settled = active.is_none() && unrecovered.is_empty();
                recorder.push(Record::Sample(sample(set, recorder.now_ns(), settled)));
            }
        }
        if last_supervised.elapsed() >= SUPERVISE_EVERY {
            last_supervised = Instant::now();
            supervise(&mut cluster)?;
        }
        if now >= config.duration && active.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    spike_stop.store(true, Ordering::Relaxed);
    if let Some(task) = spike_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    node_stop.store(true, Ordering::Relaxed);
    if let Some(task) = node_task {
        // It finishes the drain cycle it is in (bounded by its retries).
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    migrate_stop.store(true, Ordering::Relaxed);
    for task in migrate_tasks {
        let bound = migrate::FOLLOW_AFTER_STOP + Duration::from_secs(5);
        let _ = tokio::time::timeout(bound, task).await;
    }

    // Convergence after the last heal.
    let converge_started = Instant::now();
    let mut converged_at = None;
    while converge_started.elapsed() < config.converge_bound {
        if whole(&cluster, &client, agents.as_ref(), scenario.service_count).await {
            converged_at = Some(recorder.now_ns());
            break;
        }
        if let Some(set) = &agents {
            recorder.push(Record::Sample(sample(set, recorder.now_ns(), false)));
        }
        if last_supervised.elapsed() >= SUPERVISE_EVERY {
            last_supervised = Instant::now();
            supervise(&mut cluster)?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(at) = converged_at {
        for index in unrecovered.drain(..) {
            let end = faults[index].end_ns.unwrap_or(at);
            faults[index].recovered_after_ns = Some(at.saturating_sub(end));
        }
    }
    recorder.push(Record::Converged {
        healed_ns: last_heal_ns,
        at_ns: converged_at,
        bound_ns: config.converge_bound.as_nanos() as u64,
    });

    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        // A client finishes its current operation (bounded) and returns.
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    if let Some(set) = &agents {
        // Settled samples: now no instance may run twice.
        for _ in 0..4 {
            recorder.push(Record::Sample(sample(
                set,
                recorder.now_ns(),
                converged_at.is_some(),
            )));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    finals::record(&client, &keys, &recorder).await;
    if let (true, Some(set)) = (crate::away::applies(scenario), &agents) {
        crate::away::record_final(&client, set, &recorder).await;
    }
    if migrates {
        migrate::record_final(&client, &recorder).await;
    }
    power_stop.store(true, Ordering::Relaxed);
    for task in power_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }

    // Logs first (a failing run is read from them), then teardown; anything
    // still alive after it is a leak.
    if let Some(dir) = &config.logs {
        let saved = cluster.save_logs(dir).and_then(|()| match &agents {
            Some(set) => set.save_logs(dir),
            None => Ok(()),
        });
        if let Err(e) = saved {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot save the run's logs");
        }
    }
    drop(agents);
    drop(agent_net);
    drop(cluster);
    drop(net);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut leftovers = processes_under(&cluster_root);
    if let Some(root) = &agents_root {
        leftovers.extend(processes_under(root));
        kill_processes_under(root);
    }
    kill_processes_under(&cluster_root);
    if let Some(docker) = &config.docker {
        leftovers.extend(docker.leftover_containers());
    }
    recorder.push(Record::Leftovers {
        processes: leftovers,
    });
    let mut records = recorder.take();
    records.extend(faults.into_iter().map(Record::Fault));
    Ok(History { records })
}
