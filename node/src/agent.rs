//! `NodeAgent`: the root of the node's supervision tree.
//!
//! ```text
//! NodeAgent
//! ├── ResourceMonitor      host and GPU figures
//! ├── PowerGovernor        the node's share of the power budgets, enforced
//! ├── WorkloadSupervisor   one WorkloadActor per allocation
//! └── CoordinatorLink      register, heartbeat, watch, report
//! ```
//!
//! A child that fails or stops is started again (ractor's default would
//! stop the root with it). The link holds references to the other two, so
//! it is restarted after either of them. Restarts are bounded: more than
//! [`MAX_RESTARTS`] within [`RESTART_WINDOW`] stops the agent, because a
//! child that cannot stay up is a fault an operator must see. The monitor
//! and the governor share one GPU backend, chosen once at start. Stopping the
//! tree never stops workloads: they outlive the agent and are re-adopted.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
// The runtime's clock: the deterministic simulation drives it.
use tokio::time::Instant;

use herd_actors::driver::Driver;
use herd_actors::power::{GovernorArgs, PolicyConfig, PowerGovernor, PowerMsg};
use herd_actors::resources::GpuBackend;
use herd_actors::resources::{self, MonitorArgs, ResourceMonitor, ResourceMsg};
use herd_actors::workload::{
    AllocReport, RestartPolicy, SupervisorArgs, SupervisorMsg, WorkloadSupervisor,
};
use herd_api::client::Connector;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::{mpsc, Mutex};

use crate::balance::assigned::{self, AssignedTx};
use crate::balance::{BalanceMsg, Balancer, BalancerArgs};
use crate::config::NodeConfig;
use crate::link::{capabilities_of, CoordinatorLink, LinkArgs, LinkMsg, SharedFence};
use crate::metrics::AgentStats;
use crate::migrate::manager::{MigrationManager, MigrationManagerArgs, MigrationMsg};
use crate::migrate::IncomingRegistry;
use crate::wiring::Wiring;

/// Most child restarts tolerated within [`RESTART_WINDOW`].
pub const MAX_RESTARTS: usize = 10;
/// The window [`MAX_RESTARTS`] counts in.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How often the monitor samples the host.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Messages of the [`NodeAgent`].
pub enum AgentMsg {
    /// The current workload supervisor (it changes when restarted).
    Supervisor(RpcReplyPort<ActorRef<SupervisorMsg>>),
    /// Stops listening to the coordinators and stops every workload (for
    /// `herd dev`, whose data vanishes on exit); replies once asked.
    StopWorkloads(RpcReplyPort<ActorRef<SupervisorMsg>>),
    /// The children the metrics ask before each scrape (they change when
    /// restarted).
    Children(RpcReplyPort<Children>),
}

/// The children a scrape of the agent's metrics asks.
pub struct Children {
    /// The resource monitor.
    pub monitor: ActorRef<ResourceMsg>,
    /// The power governor.
    pub governor: ActorRef<PowerMsg>,
    /// The workload supervisor.
    pub supervisor: ActorRef<SupervisorMsg>,
}

/// What the root needs to build its children.
pub struct AgentArgs {
    /// The node's configuration.
    pub config: Arc<NodeConfig>,
    /// Where the gRPC services find the balancer (set once it runs).
    pub balance: crate::balance::BalanceHandle,
    /// This node's inference engines (their queues count in its load).
    pub engines: crate::engines::Engines,
    /// This agent's HTTP endpoint as clients reach it, if it has one.
    pub http_advertise: Option<String>,
    /// Where clients reach this agent.
    pub advertise: String,
    /// Its drivers and its transport to the coordinators.
    pub wiring: Wiring,
    /// The assignment fence, loaded (and checked) before the tree starts;
    /// shared by every incarnation of the link, so a restarted link keeps it.
    pub fence: SharedFence,
    /// The migrations this agent's `AgentPeer` service may receive, which
    /// the migration manager authorizes from its assignment sets.
    pub incoming: IncomingRegistry,
    /// What the actors count for the agent's metrics.
    pub stats: Arc<AgentStats>,
}

/// The root's state: its children and what rebuilding them needs.
pub struct AgentState {
    config: Arc<NodeConfig>,
    advertise: String,
    drivers: HashMap<String, Arc<dyn Driver>>,
    connector: Option<Connector>,
    report_tx: mpsc::UnboundedSender<AllocReport>,
    report_rx: Arc<Mutex<mpsc::UnboundedReceiver<AllocReport>>>,
    monitor: ActorRef<ResourceMsg>,
    /// The GPUs, shared by the monitor and the governor (a restarted child
    /// gets the same backend, so simulated limits survive it).
    gpu: Arc<dyn GpuBackend>,
    /// SIMULATED GPUs driven by their work (none on real GPUs); stops with
    /// the agent.
    _gpu_drive: Option<crate::gpu_activity::GpuDrive>,
    governor: ActorRef<PowerMsg>,
    supervisor: ActorRef<SupervisorMsg>,
    link: ActorRef<LinkMsg>,
    migrations: ActorRef<MigrationMsg>,
    incoming: IncomingRegistry,
    fence: SharedFence,
    /// The balancer (when `balance` is on) and what it needs to restart.
    balancer: Option<ActorRef<BalanceMsg>>,
    balance: crate::balance::BalanceHandle,
    engines: crate::engines::Engines,
    http_advertise: Option<String>,
    assigned_tx: AssignedTx,
    restarts: VecDeque<Instant>,
    /// Set by [`AgentMsg::StopWorkloads`]: the link stays down.
    winding_down: bool,
    stats: Arc<AgentStats>,
}

/// The actor; see the module documentation.
pub struct NodeAgent;

impl NodeAgent {
    /// Picks the GPU backend once, saying which and why in the log.
    fn detect_gpus(config: &NodeConfig) -> Result<Arc<dyn GpuBackend>, ActorProcessingErr> {
        let sim = config.sim_gpus.as_ref().map(|s| {
            resources::SimGpus::new(s.count, &s.model)
                .with_pinned_activity(s.pinned_activity.clone().unwrap_or_default())
        });
        let detection = resources::detect(sim)?;
        tracing::info!(
            backend = detection.backend.name(),
            "GPUs: {}",
            detection.note
        );
        if let Some((min, max)) = config.gpu_lock_clocks {
            Self::lock_clocks(detection.backend.as_ref(), min, max);
        }
        Ok(detection.backend)
    }

    /// Locks every GPU's graphics clock to `min..=max` MHz (the
    /// `gpu_lock_clocks` setting); a GPU that refuses is logged, not fatal:
    /// the agent still serves, with that GPU's clocks free.
    fn lock_clocks(backend: &dyn GpuBackend, min: u32, max: u32) {
        let gpus = match backend.gpus() {
            Ok(gpus) => gpus,
            Err(e) => {
                tracing::warn!(error = %e, "GPU clocks not locked: cannot list the GPUs");
                return;
            }
        };
        for gpu in gpus {
            match backend.lock_clocks(gpu.index, min, max) {
                Ok(()) => tracing::info!(
                    gpu = gpu.index,
                    "graphics clock locked to {min}..={max} MHz"
                ),
                Err(e) => tracing::warn!(gpu = gpu.index, error = %e, "GPU clock not locked"),
            }
        }
    }

    async fn spawn_monitor(
        myself: &ActorRef<AgentMsg>,
        config: &NodeConfig,
        gpu: &Arc<dyn GpuBackend>,
    ) -> Result<ActorRef<ResourceMsg>, ActorProcessingErr> {
        let args = MonitorArgs {
            data_dir: config.data_dir.clone(),
            gpu: gpu.clone(),
            refresh_interval: SAMPLE_EVERY,
        };
        let (monitor, _) =
            Actor::spawn_linked(None, ResourceMonitor, args, myself.get_cell()).await?;
        Ok(monitor)
    }

    async fn spawn_governor(
        myself: &ActorRef<AgentMsg>,
        config: &NodeConfig,
        gpu: &Arc<dyn GpuBackend>,
    ) -> Result<ActorRef<PowerMsg>, ActorProcessingErr> {
        let args = GovernorArgs {
            node: config.name.clone(),
            gpu: gpu.clone(),
            sample_every: herd_actors::power::governor::SAMPLE_EVERY,
            config: PolicyConfig::default(),
            share_file: Some(herd_actors::power::share_file::path_in(&config.data_dir)),
        };
        let (governor, _) =
            Actor::spawn_linked(None, PowerGovernor, args, myself.get_cell()).await?;
        Ok(governor)
    }

    async fn spawn_supervisor(
        myself: &ActorRef<AgentMsg>,
        state_dir: PathBuf,
        drivers: &HashMap<String, Arc<dyn Driver>>,
        report_tx: &mpsc::UnboundedSender<AllocReport>,
        stop_grace: Duration,
    ) -> Result<ActorRef<SupervisorMsg>, ActorProcessingErr> {
        let args = SupervisorArgs {
            data_dir: state_dir,
            drivers: drivers.clone(),
            reports: report_tx.clone(),
            restart: RestartPolicy::default(),
            stop_grace,
        };
        let (supervisor, _) =
            Actor::spawn_linked(None, WorkloadSupervisor, args, myself.get_cell()).await?;
        Ok(supervisor)
    }

    async fn spawn_migrations(
        myself: &ActorRef<AgentMsg>,
        config: &NodeConfig,
        drivers: &HashMap<String, Arc<dyn Driver>>,
        incoming: &IncomingRegistry,
        stats: &Arc<AgentStats>,
    ) -> Result<ActorRef<MigrationMsg>, ActorProcessingErr> {
        let args = MigrationManagerArgs {
            node: config.name.clone(),
            data_dir: config.data_dir.clone(),
            drivers: drivers.clone(),
            incoming: incoming.clone(),
            stats: stats.clone(),
        };
        let (manager, _) =
            Actor::spawn_linked(None, MigrationManager, args, myself.get_cell()).await?;
        Ok(manager)
    }

    async fn spawn_link(
        myself: &ActorRef<AgentMsg>,
        state: &AgentState,
    ) -> Result<ActorRef<LinkMsg>, ActorProcessingErr> {
        let args = LinkArgs {
            config: state.config.clone(),
            advertise: state.advertise.clone(),
            connector: state.connector.clone(),
            supervisor: state.supervisor.clone(),
            migrations: state.migrations.clone(),
            monitor: state.monitor.clone(),
            governor: state.governor.clone(),
            reports: state.report_rx.clone(),
            report_tx: state.report_tx.clone(),
            fence: state.fence.clone(),
            drivers: capabilities_of(&state.drivers),
            assigned: state.assigned_tx.clone(),
            stats: state.stats.clone(),
        };
        Self::spawn_link_with(myself, args).await
    }

    async fn spawn_link_with(
        myself: &ActorRef<AgentMsg>,
        args: LinkArgs,
    ) -> Result<ActorRef<LinkMsg>, ActorProcessingErr> {
        let (link, _) = Actor::spawn_linked(None, CoordinatorLink, args, myself.get_cell()).await?;
        Ok(link)
    }

    /// Counts a restart; an error when there were too many.
    /// Starts the balancer (decentralised balancing, docs/balancing.md) and
    /// points the gRPC services at it.
    #[allow(clippy::too_many_arguments)]
    async fn spawn_balancer(
        myself: &ActorRef<AgentMsg>,
        config: &NodeConfig,
        advertise: &str,
        http_advertise: Option<String>,
        connector: &Option<Connector>,
        monitor: &ActorRef<ResourceMsg>,
        engines: &crate::engines::Engines,
        assigned_tx: &AssignedTx,
        drivers: &HashMap<String, Arc<dyn Driver>>,
        handle: &crate::balance::BalanceHandle,
        stats: &Arc<AgentStats>,
    ) -> Result<ActorRef<BalanceMsg>, ActorProcessingErr> {
        let coordinators = match connector {
            Some(connect) => {
                herd_api::client::HerdClient::with_connector(&config.coordinators, connect)
            }
            None => herd_api::client::HerdClient::new(&config.coordinators),
        };
        let coordinators = match coordinators {
            Ok(client) => Some(client),
            Err(e) => {
                tracing::warn!(error = %e, "balancing without the coordinators' node list");
                None
            }
        };
        let movable_drivers = drivers
            .iter()
            .filter(|(_, d)| {
                d.capabilities().migration != herd_api::capabilities::MigrationMode::None
            })
            .map(|(name, _)| name.clone())
            .collect();
        let args = BalancerArgs {
            node: config.name.clone(),
            peer_addr: advertise.to_string(),
            http_addr: http_advertise,
            data_dir: config.data_dir.clone(),
            coordinators,
            monitor: monitor.clone(),
            engines: engines.clone(),
            assigned: assigned_tx.subscribe(),
            reserved_cpu_millis: config.reserved_cpu_millis,
            reserved_memory_bytes: config.reserved_memory_bytes,
            movable_drivers,
            config: config.balance.clone(),
            stats: stats.clone(),
            inference: handle.inference(),
        };
        let (balancer, _) = Actor::spawn_linked(None, Balancer, args, myself.get_cell()).await?;
        handle.set(balancer.clone());
        Ok(balancer)
    }

    fn count_restart(state: &mut AgentState) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        state.restarts.push_back(now);
        while state
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            state.restarts.pop_front();
        }
        if state.restarts.len() > MAX_RESTARTS {
            return Err(format!(
                "more than {MAX_RESTARTS} actor restarts within {} s; stopping the agent",
                RESTART_WINDOW.as_secs()
            )
            .into());
        }
        Ok(())
    }
}

impl Actor for NodeAgent {
    type Msg = AgentMsg;
    type State = AgentState;
    type Arguments = AgentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: AgentArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let Wiring { drivers, connector } = args.wiring;
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let report_rx = Arc::new(Mutex::new(report_rx));
        let gpu = Self::detect_gpus(&args.config)?;
        let gpu_drive = crate::gpu_activity::spawn(gpu.clone(), args.config.data_dir.clone());
        let monitor = Self::spawn_monitor(&myself, &args.config, &gpu).await?;
        let governor = Self::spawn_governor(&myself, &args.config, &gpu).await?;
        let supervisor = Self::spawn_supervisor(
            &myself,
            args.config.data_dir.clone(),
            &drivers,
            &report_tx,
            args.config.stop_grace,
        )
        .await?;
        let (assigned_tx, _) = assigned::channel();
        let migrations =
            Self::spawn_migrations(&myself, &args.config, &drivers, &args.incoming, &args.stats)
                .await?;
        let link_args = LinkArgs {
            config: args.config.clone(),
            advertise: args.advertise.clone(),
            connector: connector.clone(),
            supervisor: supervisor.clone(),
            migrations: migrations.clone(),
            monitor: monitor.clone(),
            governor: governor.clone(),
            reports: report_rx.clone(),
            report_tx: report_tx.clone(),
            fence: args.fence.clone(),
            drivers: capabilities_of(&drivers),
            stats: args.stats.clone(),
            assigned: assigned_tx.clone(),
        };
        let link = Self::spawn_link_with(&myself, link_args).await?;
        let balancer = if args.config.balance_enabled {
            Some(
                Self::spawn_balancer(
                    &myself,
                    &args.config,
                    &args.advertise,
                    args.http_advertise.clone(),
                    &connector,
                    &monitor,
                    &args.engines,
                    &assigned_tx,
                    &drivers,
                    &args.balance,
                    &args.stats,
                )
                .await?,
            )
        } else {
            None
        };
        Ok(AgentState {
            config: args.config,
            advertise: args.advertise,
            drivers,
            connector,
            report_tx,
            report_rx,
            monitor,
            gpu,
            _gpu_drive: gpu_drive,
            governor,
            supervisor,
            link,
            migrations,
            incoming: args.incoming,
            fence: args.fence,
            balancer,
            balance: args.balance,
            engines: args.engines,
            http_advertise: args.http_advertise,
            assigned_tx,
            restarts: VecDeque::new(),
            winding_down: false,
            stats: args.stats,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AgentMsg::Supervisor(reply) => {
                let _ = reply.send(state.supervisor.clone());
            }
            AgentMsg::StopWorkloads(reply) => {
                state.winding_down = true;
                state.link.stop(Some("winding down".into()));
                state
                    .supervisor
                    .cast(SupervisorMsg::Reconcile(Vec::new()))?;
                let _ = reply.send(state.supervisor.clone());
            }
            AgentMsg::Children(reply) => {
                let _ = reply.send(Children {
                    monitor: state.monitor.clone(),
                    governor: state.governor.clone(),
                    supervisor: state.supervisor.clone(),
                });
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (id, why) = match &event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell.get_id(), format!("stopped ({reason:?})"))
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                (cell.get_id(), format!("failed: {error}"))
            }
            _ => return Ok(()),
        };
        if id == state.monitor.get_id() {
            tracing::error!(%why, "resource monitor ended; restarting it and the link");
            Self::count_restart(state)?;
            state.monitor = Self::spawn_monitor(&myself, &state.config, &state.gpu).await?;
            state
                .link
                .stop(Some("restarting with a new monitor".into()));
        } else if id == state.governor.get_id() {
            // It starts with no share; the next heartbeat reply gives it
            // the share again (the limits it set stay on the GPUs meanwhile).
            tracing::error!(%why, "power governor ended; restarting it and the link");
            Self::count_restart(state)?;
            state.governor = Self::spawn_governor(&myself, &state.config, &state.gpu).await?;
            state
                .link
                .stop(Some("restarting with a new power governor".into()));
        } else if id == state.supervisor.get_id() {
            tracing::error!(%why, "workload supervisor ended; restarting it (it re-adopts running work) and the link");
            Self::count_restart(state)?;
            state.supervisor = Self::spawn_supervisor(
                &myself,
                state.config.data_dir.clone(),
                &state.drivers,
                &state.report_tx,
                state.config.stop_grace,
            )
            .await?;
            state
                .link
                .stop(Some("restarting with a new supervisor".into()));
        } else if id == state.migrations.get_id() {
            tracing::error!(%why, "migration manager ended; restarting it and the link");
            Self::count_restart(state)?;
            state.migrations = Self::spawn_migrations(
                &myself,
                &state.config,
                &state.drivers,
                &state.incoming,
                &state.stats,
            )
            .await?;
            state
                .link
                .stop(Some("restarting with a new migration manager".into()));
        } else if state.balancer.as_ref().is_some_and(|b| b.get_id() == id) {
            tracing::error!(%why, "balancer ended; restarting it");
            Self::count_restart(state)?;
            state.balancer = Some(
                Self::spawn_balancer(
                    &myself,
                    &state.config,
                    &state.advertise,
                    state.http_advertise.clone(),
                    &state.connector,
                    &state.monitor,
                    &state.engines,
                    &state.assigned_tx,
                    &state.drivers,
                    &state.balance,
                    &state.stats,
                )
                .await?,
            );
        } else if id == state.link.get_id() && state.winding_down {
            tracing::info!("coordinator link stopped; winding down");
        } else if id == state.link.get_id() {
            // Stopped by us above, or failed on its own: either way, a fresh one.
            tracing::info!(%why, "coordinator link ended; starting a new one");
            Self::count_restart(state)?;
            state.link = Self::spawn_link(&myself, state).await?;
        }
        Ok(())
    }
}
