//! `CoordinatorLink`: the node's one actor that talks to the coordinators.
//!
//! It registers the node, heartbeats to the leader (following it when it
//! moves), watches the allocations assigned here and hands them to the
//! workload supervisor, and delivers the supervisor's reports. When no
//! coordinator answers it keeps retrying and changes nothing on the node:
//! the work runs on, except that of jobs with `stop_after_disconnect`, which
//! the supervisor stops once it is told the coordinators have been silent
//! that long (the link tells it how long every [`SILENCE_CHECK`]).
//!
//! Every network wait happens in a spawned task that messages the actor
//! back, so the actor's mailbox never blocks on a coordinator.

pub mod fence;
mod gpu_classes;
mod reports;
mod watch;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use herd_actors::driver::Driver;
use herd_actors::power::{GovernorStatus, NodeShare, PowerMsg};
use herd_actors::resources::{HostReport, Reserved, ResourceMsg};
use herd_actors::workload::{AllocReport, DesiredAlloc, SupervisorMsg};

use crate::migrate::manager::MigrationMsg;
use herd_api::alloc::AllocStatus;
use herd_api::capabilities::NodeDrivers;
use herd_api::client::{Connector, HerdClient, Repeat};
use herd_api::convert::capabilities::drivers_to_proto;
use herd_api::job::{JobType, TaskSpec};
use herd_api::power::Thresholds;
use herd_api::proto::agent::agent_client::AgentClient;
use herd_api::proto::agent::PowerShare;
use herd_api::proto::agent::{
    AssignedAllocation, AssignedAllocations, HeartbeatReply, HeartbeatRequest, RegisterNodeRequest,
};
use herd_api::proto::v1::{GpuPower, NodeUsage, PowerEvent};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::NodeConfig;
use fence::{Admission, AssignmentFence};

/// The assignment fence, shared by every incarnation of the link (a
/// restarted link keeps the fence its predecessor moved).
pub type SharedFence = Arc<std::sync::Mutex<AssignmentFence>>;

/// Longest a registration or heartbeat call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest the link waits for the resource monitor.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the supervisor hears how long the coordinators have been
/// silent. Much finer than the heartbeat (a third of the node TTL): a job's
/// `stop_after_disconnect` must act well before the TTL runs out and its
/// replacement starts, so the check may not add a heartbeat period to it.
pub const SILENCE_CHECK: Duration = Duration::from_millis(100);

/// Messages of the [`CoordinatorLink`].
pub enum LinkMsg {
    /// Time to register or heartbeat.
    Tick,
    /// Time to tell the supervisor how long the coordinators have been silent.
    CheckSilence,
    /// A registration attempt, sent at the instant given, ended; with the
    /// cluster id the coordinators answered (empty when they did not say).
    Registered(Result<String, String>, Instant),
    /// A heartbeat, sent at the instant given, ended.
    HeartbeatDone(Result<HeartbeatReply, String>, Instant),
    /// The coordinators sent the allocations wanted here.
    Assigned(AssignedAllocations),
}

/// What the link needs; cloned on every (re)start by its parent.
#[derive(Clone)]
pub struct LinkArgs {
    /// The node's configuration.
    pub config: Arc<NodeConfig>,
    /// Where clients reach this agent (its server is already bound).
    pub advertise: String,
    /// How to reach the coordinators; `None`: TCP.
    pub connector: Option<Connector>,
    /// The workload supervisor, fed with assignments (through `migrations`).
    pub supervisor: ActorRef<SupervisorMsg>,
    /// The migration manager, which acts on an assignment set's migrations
    /// and passes the set on to the supervisor.
    pub migrations: ActorRef<MigrationMsg>,
    /// The resource monitor, asked for figures at every heartbeat.
    pub monitor: ActorRef<ResourceMsg>,
    /// The power governor: given the power share each heartbeat reply
    /// carries, asked for its GPUs' power figures at every heartbeat.
    pub governor: ActorRef<PowerMsg>,
    /// Reports from the supervisor, delivered by the link.
    pub reports: Arc<Mutex<mpsc::UnboundedReceiver<AllocReport>>>,
    /// Sender of that channel, for reports the link makes itself.
    pub report_tx: mpsc::UnboundedSender<AllocReport>,
    /// Which assignment sets are stale (see [`fence`]).
    pub fence: SharedFence,
    /// The drivers this agent offers and what each allows, declared at
    /// every registration so the coordinators know what can move here
    /// (see [`capabilities_of`]).
    pub drivers: NodeDrivers,
    /// Where the link's calls are counted (the agent's metrics).
    pub stats: Arc<crate::metrics::AgentStats>,
    /// Where every admitted assignment set is published for the balancer.
    pub assigned: crate::balance::AssignedTx,
}

/// What each of the agent's drivers allows, by the name job specs use: the
/// declaration a registration carries.
pub fn capabilities_of<'a>(
    drivers: impl IntoIterator<Item = (&'a String, &'a Arc<dyn Driver>)>,
) -> NodeDrivers {
    drivers
        .into_iter()
        .map(|(name, driver)| (name.clone(), driver.capabilities()))
        .collect()
}

/// The link's state.
pub struct LinkState {
    args: LinkArgs,
    client: HerdClient,
    registered: bool,
    in_flight: bool,
    watching: bool,
    /// The heartbeat period in force (see [`heartbeat_period`]).
    heartbeat: Duration,
    /// The task that sends [`LinkMsg::Tick`] every `heartbeat`.
    ticker: JoinHandle<()>,
    /// The coordinators' node TTL, once a heartbeat reply said it.
    ttl: Option<Duration>,
    /// The shortest `stop_after_disconnect` among the jobs assigned here.
    shortest_stop_after: Option<Duration>,
    /// When the last registration or heartbeat a coordinator accepted was
    /// sent (the leader judges node liveness by these, and received it
    /// later, so the silence measured here is never shorter than the
    /// leader's); the link's start before any.
    last_contact: Instant,
    tasks: Vec<JoinHandle<()>>,
    /// The allocations (id, generation) whose assignment was logged, so
    /// that each is logged once, with the request id that made its job
    /// version, rather than on every set that lists it.
    logged: HashSet<(String, u64)>,
}

/// The actor; see the module documentation.
pub struct CoordinatorLink;

impl Actor for CoordinatorLink {
    type Msg = LinkMsg;
    type State = LinkState;
    type Arguments = LinkArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: LinkArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let client = match &args.connector {
            Some(connect) => HerdClient::with_connector(&args.config.coordinators, connect)?,
            None => HerdClient::new(&args.config.coordinators)?,
        }
        .with_token(args.config.token.as_deref().unwrap_or(""))?
        .with_leader_routing();
        let reports = tokio::spawn(reports::run(
            args.config.name.clone(),
            client.clone(),
            args.reports.clone(),
            crate::balance::journal::MoveJournal::open(&args.config.data_dir).ok(),
        ));
        let heartbeat = args.config.heartbeat;
        let ticker = myself.send_interval(heartbeat, || LinkMsg::Tick);
        myself.send_interval(SILENCE_CHECK, || LinkMsg::CheckSilence);
        myself.cast(LinkMsg::Tick)?;
        args.stats.link_restarted();
        Ok(LinkState {
            args,
            client,
            registered: false,
            in_flight: false,
            watching: false,
            heartbeat,
            ticker,
            ttl: None,
            shortest_stop_after: None,
            last_contact: Instant::now(),
            tasks: vec![reports],
            logged: HashSet::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for task in state.tasks.drain(..) {
            task.abort();
        }
        state.ticker.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LinkMsg::CheckSilence => {
                state
                    .args
                    .supervisor
                    .cast(SupervisorMsg::CoordinatorsSilent(
                        state.last_contact.elapsed(),
                    ))?;
            }
            LinkMsg::Tick => {
                if state.in_flight {
                    return Ok(());
                }
                state.in_flight = true;
                let args = state.args.clone();
                let client = state.client.clone();
                let sent = Instant::now();
                if state.registered {
                    tokio::spawn(async move {
                        let result = heartbeat(&args, &client).await;
                        let _ = myself.cast(LinkMsg::HeartbeatDone(result, sent));
                    });
                } else {
                    tokio::spawn(async move {
                        let result = register(&args, &client).await;
                        let _ = myself.cast(LinkMsg::Registered(result, sent));
                    });
                }
            }
            LinkMsg::Registered(result, sent) => {
                state.in_flight = false;
                match result {
                    Ok(cluster_id) => {
                        state.args.stats.contact("register", sent);
                        tracing::info!(node = %state.args.config.name, cluster = %cluster_id, "registered with the coordinators");
                        if let Err(reason) =
                            lock_fence(&state.args.fence).observe_cluster(&cluster_id)
                        {
                            tracing::warn!(%reason, "the registration named a bad cluster id; the assignment fence keeps its own");
                        }
                        state.registered = true;
                        state.last_contact = state.last_contact.max(sent);
                        if !state.watching {
                            state.watching = true;
                            state.tasks.push(tokio::spawn(watch::run(
                                state.args.config.name.clone(),
                                state.client.clone(),
                                myself.clone(),
                            )));
                        }
                    }
                    Err(e) => {
                        state.args.stats.contact_failed("register", "failed");
                        tracing::warn!(error = %e, "cannot register; retrying")
                    }
                }
            }
            LinkMsg::HeartbeatDone(result, sent) => {
                state.in_flight = false;
                match result {
                    Ok(reply) if reply.reregister => {
                        state.args.stats.contact_failed("heartbeat", "reregister");
                        tracing::warn!("the coordinators ask this node to register again");
                        // The reply still carries the node's power share:
                        // pass it on now rather than a heartbeat later.
                        if let Some(share) = reply.power.map(share_from_proto) {
                            if let Err(e) =
                                state.args.governor.cast(PowerMsg::SetShare(Some(share)))
                            {
                                tracing::warn!(error = %e, "power governor unreachable; share not passed on");
                            }
                        }
                        state.registered = false;
                        myself.cast(LinkMsg::Tick)?;
                    }
                    Ok(reply) => {
                        state.args.stats.contact("heartbeat", sent);
                        state.last_contact = state.last_contact.max(sent);
                        state.ttl = Some(Duration::from_millis(reply.ttl_ms));
                        state.retune(&myself)?;
                        // The governor checks the share and keeps it (and
                        // the last one while no reply comes).
                        let share = reply.power.map(share_from_proto);
                        if let Err(e) = state.args.governor.cast(PowerMsg::SetShare(share)) {
                            tracing::warn!(error = %e, "power governor unreachable; share not passed on");
                        }
                    }
                    Err(e) => {
                        state.args.stats.contact_failed("heartbeat", "failed");
                        tracing::debug!(error = %e, "heartbeat failed; retrying")
                    }
                }
            }
            LinkMsg::Assigned(assigned) => self.assigned(&myself, state, assigned)?,
        }
        Ok(())
    }
}

impl CoordinatorLink {
    fn assigned(
        &self,
        myself: &ActorRef<LinkMsg>,
        state: &mut LinkState,
        assigned: AssignedAllocations,
    ) -> Result<(), ActorProcessingErr> {
        // Moved (and recorded) before the set is acted on: a crash after
        // acting must not leave an older fence behind.
        let admission = lock_fence(&state.args.fence).admit(assigned.index, &assigned.cluster_id);
        match admission {
            Admission::Act => {}
            Admission::Stale { newest } => {
                tracing::debug!(
                    index = assigned.index,
                    newest,
                    "ignoring assignments from a coordinator that lags"
                );
                return Ok(());
            }
            Admission::BadCluster { reason } => {
                tracing::warn!(%reason, index = assigned.index, "ignoring an assignment set that names a bad cluster id");
                return Ok(());
            }
        }
        // The governor caps GPUs by the class of the work bound to each.
        let classes = gpu_classes::gpu_classes(&assigned.allocs);
        if let Err(e) = state.args.governor.cast(PowerMsg::SetClasses(classes)) {
            tracing::warn!(error = %e, "power governor unreachable; GPU classes not passed on");
        }
        state.shortest_stop_after = assigned
            .allocs
            .iter()
            .filter_map(|a| herd_api::duration::from_wire_ms(a.stop_after_disconnect_ms))
            .min();
        state.retune(myself)?;
        let work = assigned
            .allocs
            .iter()
            .filter_map(crate::balance::assigned::from_assignment)
            .collect();
        state.args.assigned.send_replace(work);
        log_new_assignments(&mut state.logged, &assigned.allocs);
        let mut allocs = Vec::with_capacity(assigned.allocs.len());
        for mut alloc in assigned.allocs {
            let migration = alloc.migration.take();
            match desired_from_proto(alloc) {
                Ok(d) => allocs.push((d, migration)),
                Err(report) => {
                    let _ = state.args.report_tx.send(*report);
                }
            }
        }
        state.args.migrations.cast(MigrationMsg::Assigned {
            allocs,
            supervisor: state.args.supervisor.clone(),
            client: state.client.clone(),
        })?;
        Ok(())
    }
}

/// Fewest heartbeats in one node TTL: one lost heartbeat must never mark
/// the node down.
const HEARTBEATS_PER_TTL: u32 = 3;
/// Fewest heartbeats within a job's `stop_after_disconnect`: one slow
/// heartbeat must never stop its work.
const HEARTBEATS_PER_STOP_WINDOW: u32 = 4;
/// The shortest heartbeat period, whatever asks for less.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// How often to heartbeat: the configured period, shortened to fit
/// [`HEARTBEATS_PER_TTL`] in the coordinators' node TTL and
/// [`HEARTBEATS_PER_STOP_WINDOW`] in the shortest `stop_after_disconnect`
/// of the work assigned here (a node running such work heartbeats faster,
/// and no faster than [`MIN_HEARTBEAT`]).
pub fn heartbeat_period(
    configured: Duration,
    ttl: Option<Duration>,
    shortest_stop_after: Option<Duration>,
) -> Duration {
    let mut period = configured;
    if let Some(ttl) = ttl {
        period = period.min(ttl / HEARTBEATS_PER_TTL);
    }
    if let Some(window) = shortest_stop_after {
        period = period.min(window / HEARTBEATS_PER_STOP_WINDOW);
    }
    period.max(MIN_HEARTBEAT)
}

impl LinkState {
    /// Re-arms the heartbeat ticker when what it depends on changed; a
    /// shorter period starts with a heartbeat at once.
    fn retune(&mut self, myself: &ActorRef<LinkMsg>) -> Result<(), ActorProcessingErr> {
        let wanted = heartbeat_period(
            self.args.config.heartbeat,
            self.ttl,
            self.shortest_stop_after,
        );
        if wanted == self.heartbeat {
            return Ok(());
        }
        let shorter = wanted < self.heartbeat;
        tracing::debug!(
            period_ms = wanted.as_millis() as u64,
            "heartbeat period changed"
        );
        self.heartbeat = wanted;
        self.ticker.abort();
        self.ticker = myself.send_interval(wanted, || LinkMsg::Tick);
        if shorter {
            myself.cast(LinkMsg::Tick)?;
        }
        Ok(())
    }
}

/// An assignment as the supervisor takes it, or the failure report of one
/// the agent cannot understand.
/// Logs each allocation the first time a set lists it at its generation,
/// naming the request that made its job version when the coordinators know
/// it (the end of a request id's trail from the CLI: api/src/request_id.rs),
/// and forgets those no longer listed.
fn log_new_assignments(logged: &mut HashSet<(String, u64)>, allocs: &[AssignedAllocation]) {
    let listed: HashSet<(String, u64)> = allocs
        .iter()
        .map(|a| (a.id.clone(), a.generation))
        .collect();
    for alloc in allocs {
        if logged.contains(&(alloc.id.clone(), alloc.generation)) {
            continue;
        }
        let role = alloc.migration.as_ref().map_or("", |m| m.role.as_str());
        if alloc.request_id.is_empty() {
            tracing::info!(alloc = %alloc.id, job = %alloc.job, generation = alloc.generation, migration_role = role, "allocation assigned");
        } else {
            tracing::info!(alloc = %alloc.id, job = %alloc.job, generation = alloc.generation, migration_role = role, request_id = %alloc.request_id, "allocation assigned");
        }
    }
    *logged = listed;
}

fn desired_from_proto(alloc: AssignedAllocation) -> Result<DesiredAlloc, Box<AllocReport>> {
    let fail = |detail: String| {
        Box::new(AllocReport {
            alloc_id: alloc.id.clone(),
            generation: alloc.generation,
            status: AllocStatus::Failed,
            at_ms: herd_api::clock::now_ms(),
            event: "start_failed".to_string(),
            detail,
            exit: None,
        })
    };
    let job_type = JobType::parse(&alloc.job_type)
        .ok_or_else(|| fail(format!("unknown job type {:?}", alloc.job_type)))?;
    let task = match alloc.task.clone() {
        Some(task) => TaskSpec::try_from(task).map_err(|e| fail(format!("bad task: {e}")))?,
        None => return Err(fail("the assignment has no task".to_string())),
    };
    Ok(DesiredAlloc {
        alloc_id: alloc.id,
        generation: alloc.generation,
        job: alloc.job,
        job_type,
        task,
        env: alloc.env.into_iter().collect(),
        stop_after_disconnect: herd_api::duration::from_wire_ms(alloc.stop_after_disconnect_ms),
        moving_out: None,
    })
}

async fn host_report(args: &LinkArgs) -> Result<HostReport, String> {
    let report = ractor::call_t!(
        args.monitor,
        ResourceMsg::Snapshot,
        MONITOR_TIMEOUT.as_millis() as u64
    )
    .map_err(|e| format!("resource monitor: {e}"))?;
    Ok(report)
}

/// The fence, whoever held it last (it holds no invariant a panic could
/// have broken halfway: each move is one assignment).
fn lock_fence(fence: &SharedFence) -> std::sync::MutexGuard<'_, AssignmentFence> {
    fence.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers the node; returns the cluster id the coordinators answered.
async fn register(args: &LinkArgs, client: &HerdClient) -> Result<String, String> {
    let report = host_report(args).await?;
    let capacity = report.capacity(&Reserved {
        cpu_millis: args.config.reserved_cpu_millis,
        memory_bytes: args.config.reserved_memory_bytes,
    });
    let request = RegisterNodeRequest {
        name: args.config.name.clone(),
        addr: args.advertise.clone(),
        capacity: Some((&capacity).into()),
        labels: args.config.labels.clone().into_iter().collect(),
        drivers: drivers_to_proto(&args.drivers),
        http: args
            .config
            .http
            .as_ref()
            .map(|h| h.advertise.clone())
            .unwrap_or_default(),
    };
    tokio::time::timeout(
        CALL_TIMEOUT * 3,
        // Registering again is harmless: any coordinator may take it.
        client.call_as(Repeat::Safe, |channel| {
            let request = request.clone();
            async move { AgentClient::new(channel).register(request).await }
        }),
    )
    .await
    .map_err(|_| "registration timed out".to_string())?
    .map_err(|e| e.to_string())
    .map(|reply| reply.into_inner().cluster_id)
}

/// The node's power share as the governor takes it.
fn share_from_proto(share: PowerShare) -> NodeShare {
    NodeShare {
        watts: share.watts,
        thresholds: Thresholds {
            cap: share.cap_fraction,
            hard: share.hard_fraction,
            release: share.release_fraction,
        },
        group: share.group,
    }
}

/// The GPUs' power figures and the governor's events for a heartbeat: the
/// governor's (sampled every 50 ms while it holds a share) when it has
/// them, else the monitor's.
pub(crate) fn power_usage(
    report: &HostReport,
    governor: Option<GovernorStatus>,
) -> (Vec<GpuPower>, Vec<PowerEvent>) {
    let governor = governor.unwrap_or(GovernorStatus {
        share: None,
        gpus: Vec::new(),
        events: Vec::new(),
        rounds: 0,
    });
    let gpus = if governor.gpus.is_empty() {
        report
            .gpus
            .iter()
            .map(|g| (g, false, String::new()))
            .collect::<Vec<_>>()
    } else {
        governor
            .gpus
            .iter()
            .map(|g| (&g.info, g.capped, g.class.as_str().to_string()))
            .collect()
    };
    let gpus = gpus
        .into_iter()
        .map(|(g, capped, class)| GpuPower {
            index: g.index,
            draw_watts: g.power_draw_watts,
            limit_watts: g.power_limit_watts,
            min_watts: g.power_limit_min_watts,
            max_watts: g.power_limit_max_watts,
            capped,
            class,
            energy_mj: g.energy_millijoules,
        })
        .collect();
    let events = governor
        .events
        .into_iter()
        .map(|e| PowerEvent {
            at_ms: e.at_ms,
            kind: e.kind,
            detail: e.detail,
        })
        .collect();
    (gpus, events)
}

async fn heartbeat(args: &LinkArgs, client: &HerdClient) -> Result<HeartbeatReply, String> {
    let report = host_report(args).await?;
    let governor = ractor::call_t!(args.governor, PowerMsg::Status, 500).ok();
    let (gpus, power_events) = power_usage(&report, governor);
    let running = ractor::call_t!(args.supervisor, SupervisorMsg::Snapshot, 1000)
        .map(|allocs| {
            allocs
                .iter()
                .filter(|a| a.status == AllocStatus::Running)
                .count() as u32
        })
        .unwrap_or(0);
    let request = HeartbeatRequest {
        name: args.config.name.clone(),
        usage: Some(NodeUsage {
            cpu_busy: report.cpu_busy_fraction,
            memory_available_bytes: report.memory_available_bytes,
            disk_available_bytes: report.disk_available_bytes,
            running_allocs: running,
            gpus_simulated: report.gpus_simulated,
            gpu_power_watts: gpus.iter().map(|g| g.draw_watts).sum(),
            gpus,
            power_events,
            gpu_backend: report.gpu_backend.clone(),
        }),
    };
    tokio::time::timeout(
        CALL_TIMEOUT,
        // A heartbeat sent twice is two heartbeats.
        client.call_leader_as(Repeat::Safe, |channel| {
            let request = request.clone();
            async move {
                AgentClient::new(channel)
                    .heartbeat(request)
                    .await
                    .map(|r| r.into_inner())
            }
        }),
    )
    .await
    .map_err(|_| "heartbeat timed out".to_string())?
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_registration_declares_every_driver_and_the_coordinators_accept_it() {
        use herd_api::capabilities::MigrationMode;
        let wiring = crate::wiring::Wiring::host(std::path::Path::new("/usr/bin/herd"));
        let drivers = capabilities_of(&wiring.drivers);
        let modes: Vec<(&str, &str)> = drivers
            .iter()
            .map(|(name, caps)| (name.as_str(), caps.migration.as_str()))
            .collect();
        assert_eq!(
            modes,
            [
                ("dljob", "checkpoint"),
                ("exec", "none"),
                ("inference", "kv_cache"),
                ("simvm", "live"),
                ("vm", "live"),
            ]
        );
        assert!(drivers["vm"].pause && !drivers["exec"].pause);
        assert_eq!(drivers["exec"].migration, MigrationMode::None);
        // What the agent sends is what a coordinator reads back whole.
        let wire = drivers_to_proto(&drivers);
        assert_eq!(
            herd_api::convert::capabilities::drivers_from_proto(wire).expect("accepted"),
            drivers
        );
        herd_api::capabilities::check_drivers(&drivers).expect("within bounds");
    }

    #[test]
    fn the_power_share_and_figures_cross_the_heartbeat() {
        use herd_actors::power::{GovernedGpu, PriorityClass};
        use herd_actors::resources::GpuInfo;
        let share = share_from_proto(PowerShare {
            watts: 4000.0,
            cap_fraction: 0.9,
            hard_fraction: 0.97,
            release_fraction: 0.85,
            group: "rack=r1".into(),
        });
        assert_eq!(share.thresholds, Thresholds::default());
        assert_eq!((share.watts, share.group.as_str()), (4000.0, "rack=r1"));
        share.check().expect("a valid share");

        let gpu = |index: u32, limit: u32| GpuInfo {
            index,
            uuid: format!("SIM-GPU-{index}"),
            model: "h100".into(),
            memory_total_bytes: 1,
            memory_used_bytes: 0,
            power_draw_watts: f64::from(limit) - 10.0,
            power_limit_watts: limit,
            power_limit_min_watts: 200,
            power_limit_max_watts: 700,
            utilisation_percent: 50,
            energy_millijoules: 0,
        };
        let report = HostReport {
            gpus: vec![gpu(0, 700), gpu(1, 700)],
            ..HostReport::default()
        };
        // No governor answer: the monitor's figures, nothing capped.
        let (gpus, events) = power_usage(&report, None);
        assert_eq!(gpus.len(), 2);
        assert!(gpus.iter().all(|g| !g.capped && g.class.is_empty()));
        assert!(events.is_empty());
        // The governor's, with what it capped and why.
        let status = GovernorStatus {
            share: Some(share),
            gpus: vec![GovernedGpu {
                info: gpu(1, 300),
                class: PriorityClass::Training,
                capped: true,
            }],
            events: vec![herd_actors::power::PowerEvent {
                at_ms: 5,
                kind: "cap".into(),
                detail: "1 GPU(s) lowered".into(),
            }],
            rounds: 3,
        };
        let (gpus, events) = power_usage(&report, Some(status));
        assert_eq!(gpus.len(), 1);
        assert_eq!(
            (gpus[0].index, gpus[0].limit_watts, gpus[0].capped),
            (1, 300, true)
        );
        assert_eq!(gpus[0].class, "training");
        assert_eq!(events[0].kind, "cap");
    }

    #[test]
    fn the_heartbeat_fits_three_in_the_ttl_and_four_in_the_shortest_stop_window() {
        // Before any reply: as configured.
        assert_eq!(heartbeat_period(SECOND, None, None), SECOND);
        // A 2 s TTL: a third of it.
        let ttl = Some(2 * SECOND);
        assert_eq!(heartbeat_period(SECOND, ttl, None), 2 * SECOND / 3);
        // A TTL longer than three periods changes nothing.
        assert_eq!(heartbeat_period(SECOND, Some(60 * SECOND), None), SECOND);
        // Work that stops after 1 s of silence: a quarter of that.
        assert_eq!(
            heartbeat_period(SECOND, ttl, Some(SECOND)),
            Duration::from_millis(250)
        );
        // Never below the floor.
        assert_eq!(
            heartbeat_period(SECOND, Some(Duration::from_millis(150)), Some(SECOND)),
            MIN_HEARTBEAT
        );
    }
}
