//! The node agent daemon (`herd node`): configuration, the wiring of the
//! actors from `herd-actors` into a supervision tree ([`agent`]), the link
//! to the coordinators ([`link`]), the agent's own gRPC server ([`logs`])
//! and the SIMULATED inference engines it proxies and polls ([`engines`],
//! [`infer`]).
//!
//! It never depends on the coordinator or consensus crates: agents and
//! coordinators meet only on the wire.
#![warn(missing_docs)]

pub mod acl;
pub mod agent;
pub mod balance;
pub mod config;
pub mod engines;
pub mod gpu_activity;
pub mod infer;
pub mod limits;
pub mod link;
pub mod logs;
pub mod metrics;
pub mod migrate;
pub mod serve;
pub mod wiring;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures::Stream;
use herd_actors::workload::SupervisorMsg;
use herd_api::proto::agent::node_agent_server::NodeAgentServer;
use ractor::{Actor, ActorRef};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Connected;

pub use config::{NodeConfig, NodeSettings};
pub use wiring::Wiring;

use agent::{AgentArgs, AgentMsg, NodeAgent};
use logs::{LogLocator, NodeAgentService};

/// Why an agent could not start.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The data directory cannot be used.
    #[error("data dir {path}: {message}")]
    DataDir {
        /// The directory.
        path: String,
        /// The OS error.
        message: String,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {message}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        message: String,
    },
    /// The assignment fence in the data dir cannot be used (the message
    /// names the file, what is wrong and what the operator can do).
    #[error(transparent)]
    Fence(#[from] link::fence::FenceError),
    /// The actor tree did not start.
    #[error("the agent's actors did not start: {0}")]
    Actors(String),
}

/// A running node agent.
pub struct RunningNode {
    /// Where its gRPC server listens.
    pub local_addr: SocketAddr,
    /// The migrations this agent may receive, served by its `AgentPeer`
    /// service; the migration orchestration authorizes and revokes them.
    pub incoming: migrate::IncomingRegistry,
    /// Where its OpenAI-compatible HTTP endpoint listens, when it has one.
    pub http_addr: Option<SocketAddr>,
    /// Where it serves Prometheus metrics, when it does.
    pub metrics_addr: Option<SocketAddr>,
    root: ActorRef<AgentMsg>,
    root_task: JoinHandle<()>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    engine_poller: JoinHandle<()>,
    fleet_view: Option<JoinHandle<()>>,
    acl_refresher: Option<JoinHandle<()>>,
    rescheduler: Option<JoinHandle<()>>,
    http_server: Option<JoinHandle<std::io::Result<()>>>,
    metrics_server: Option<JoinHandle<()>>,
}

impl RunningNode {
    /// Stops the agent: its actors and server end, its workloads keep running
    /// (a restarted agent re-adopts them).
    pub async fn shutdown(mut self) {
        self.engine_poller.abort();
        if let Some(task) = self.fleet_view.take() {
            task.abort();
        }
        if let Some(task) = self.acl_refresher.take() {
            task.abort();
        }
        if let Some(task) = self.rescheduler.take() {
            task.abort();
        }
        if let Some(task) = self.http_server.take() {
            task.abort();
        }
        if let Some(task) = self.metrics_server.take() {
            task.abort();
        }
        self.root.stop(Some("shutdown".into()));
        let _ = (&mut self.root_task).await;
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.server).await;
    }

    /// Stops every workload of this node and waits (up to `limit`) until
    /// none runs, then shuts the agent down. For `herd dev`, whose data
    /// directory is removed on exit; a real node is drained instead.
    pub async fn stop_workloads_and_shutdown(self, limit: std::time::Duration) {
        let started = tokio::time::Instant::now();
        if let Ok(supervisor) = ractor::call_t!(self.root, AgentMsg::StopWorkloads, 2000) {
            while started.elapsed() < limit {
                let active = ractor::call_t!(supervisor, SupervisorMsg::Active, 2000).unwrap_or(0);
                if active == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        self.shutdown().await;
    }

    /// Resolves when the actor tree ended on its own (too many restarts).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.root_task).await;
    }
}

/// Answers log requests from whichever supervisor currently runs.
struct SupervisorLogs {
    root: ActorRef<AgentMsg>,
}

#[tonic::async_trait]
impl LogLocator for SupervisorLogs {
    async fn log_paths(&self, alloc_id: &str) -> Option<(PathBuf, PathBuf)> {
        let supervisor: ActorRef<SupervisorMsg> =
            ractor::call_t!(self.root, AgentMsg::Supervisor, 2000).ok()?;
        let id = alloc_id.to_string();
        ractor::call_t!(supervisor, SupervisorMsg::LogPaths, 2000, id)
            .ok()
            .flatten()
    }
}

/// Starts an agent: binds its server, starts its actors and returns once
/// both run. `executor` is the herd binary (the exec driver's supervisor).
pub async fn start(config: NodeConfig, executor: PathBuf) -> Result<RunningNode, NodeError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| NodeError::Bind {
            addr: config.listen.to_string(),
            message: e.to_string(),
        })?;
    let local_addr = listener.local_addr().map_err(|e| NodeError::Bind {
        addr: config.listen.to_string(),
        message: e.to_string(),
    })?;
    let allocs = herd_actors::workload::store::AllocStore::new(&config.data_dir);
    let wiring = Wiring::host_confined(
        &executor,
        Some(allocs.root()),
        &config.confinement,
        &config.migration_host,
    );
    let incoming = herd_metrics::limits::cap_connections(
        TcpListenerStream::new(listener),
        limits::connection_cap(&config.limits),
        limits::tcp_peer,
    );
    start_with(config, wiring, incoming, local_addr).await
}

/// Starts an agent on `wiring`, serving the connections `incoming` yields
/// (`local_addr` is what it reports as bound). [`start`] passes every
/// driver and a TCP listener; the deterministic simulation passes its
/// simulated drivers and network, so the same agent runs in both.
pub async fn start_with<S, IO, E>(
    mut config: NodeConfig,
    wiring: Wiring,
    incoming: S,
    local_addr: SocketAddr,
) -> Result<RunningNode, NodeError>
where
    S: Stream<Item = Result<IO, E>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    std::fs::create_dir_all(&config.data_dir).map_err(|e| NodeError::DataDir {
        path: config.data_dir.display().to_string(),
        message: e.to_string(),
    })?;
    let advertise = if config.advertise.ends_with(":0") {
        local_addr.to_string()
    } else {
        config.advertise.clone()
    };
    // Before anything runs: an agent must not act on assignments without
    // knowing which ones it already acted on.
    let fence = link::fence::AssignmentFence::load(&config.data_dir)?;
    let name = config.name.clone();
    let engines = engines::Engines::new(&config.data_dir);
    // Bound before the actors start, so the registration carries its address.
    let http_listener = match config.http.as_mut() {
        Some(http) => {
            let listen = http.listen;
            let bind_error = |e: std::io::Error| NodeError::Bind {
                addr: listen.to_string(),
                message: e.to_string(),
            };
            let listener = TcpListener::bind(listen).await.map_err(bind_error)?;
            let bound = listener.local_addr().map_err(bind_error)?;
            if http.advertise.ends_with(":0") {
                http.advertise = bound.to_string();
            }
            Some((listener, bound))
        }
        None => None,
    };
    let metrics_listen = config.metrics_listen;
    let metrics_listener = match metrics_listen {
        Some(listen) => Some(
            TcpListener::bind(listen)
                .await
                .map_err(|e| NodeError::Bind {
                    addr: listen.to_string(),
                    message: format!("(metrics, --metrics-listen) {e}"),
                })?,
        ),
        None => None,
    };
    let stats = Arc::new(metrics::AgentStats::default());
    let grpc_metrics = herd_metrics::GrpcMetrics::default();
    let mut drivers: Vec<String> = wiring.drivers.keys().cloned().collect();
    drivers.sort();
    // An agent that runs inference engines follows the fleet's instances.
    let fleet = wiring.drivers.contains_key("inference").then(|| {
        serve::fleet::Fleet::new(&name, engines.clone(), serve::dispatch::Policy::default())
    });
    let coordinators = match &wiring.connector {
        Some(connect) => {
            herd_api::client::HerdClient::with_connector(&config.coordinators, connect)
        }
        None => herd_api::client::HerdClient::new(&config.coordinators),
    }
    .map_err(|e| e.to_string())
    .and_then(|client| {
        client
            .with_token(config.token.as_deref().unwrap_or(""))
            .map_err(|e| e.to_string())
    });
    // The token table this agent checks its own callers against, fetched
    // from the coordinators with this agent's node token (acl/).
    let acl = acl::AgentAcl::new(Some(&config.data_dir));
    // An agent given a token of its own is in a bootstrapped cluster (node
    // tokens exist only there): without a saved table, it refuses callers
    // until the first table comes, rather than serve as an open cluster
    // would while the coordinators are out of reach. A table saying the
    // cluster is open replaces this.
    if config
        .token
        .as_deref()
        .is_some_and(|t| !t.trim().is_empty())
    {
        acl.mark_closed();
    }
    let acl_refresher = match &coordinators {
        Ok(client) => Some(acl::refresh::spawn(
            acl.clone(),
            client.clone(),
            name.clone(),
        )),
        Err(_) => None,
    };
    // Calls to other agents (forwarded inference, engine stats) carry this
    // agent's own token.
    let agent_token = herd_api::client::BearerToken::new(config.token.as_deref().unwrap_or(""))
        .unwrap_or_default();
    if let Some(fleet) = &fleet {
        fleet.set_token(agent_token.clone());
    }
    let fleet_view = match (&fleet, coordinators) {
        (Some(fleet), Ok(client)) => Some(fleet.spawn(client)),
        (Some(_), Err(e)) => {
            tracing::warn!(error = %e, "no fleet view: only this node's engines serve");
            None
        }
        (None, _) => None,
    };
    let reschedule = fleet.is_some() && config.reschedule_requests;
    let inference = infer::Inference::new(&name, engines.clone(), fleet)
        .counted(stats.clone())
        .with_token(agent_token);
    let rescheduler = reschedule.then(|| {
        serve::resched::spawn(
            inference.clone(),
            advertise.clone(),
            config.reschedule_policy,
        )
    });
    let incoming_migrations =
        migrate::IncomingRegistry::new().dialing_peers_with(wiring.connector.clone());
    let balance = balance::BalanceHandle::new(&name).with_inference(inference.clone());
    let data_dir = config.data_dir.clone();
    let server_limits = config.limits;
    let http_advertise = config.http.as_ref().map(|h| h.advertise.clone());
    let args = AgentArgs {
        balance: balance.clone(),
        engines: engines.clone(),
        http_advertise,
        config: Arc::new(config),
        advertise: advertise.clone(),
        wiring,
        fence: Arc::new(std::sync::Mutex::new(fence)),
        incoming: incoming_migrations.clone(),
        stats: stats.clone(),
    };
    let (root, root_task) = Actor::spawn(None, NodeAgent, args)
        .await
        .map_err(|e| NodeError::Actors(e.to_string()))?;
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let engine_poller = engines.spawn_poller();
    let service = NodeAgentService::new(
        SupervisorLogs { root: root.clone() },
        inference.clone(),
        balance.clone(),
    );
    let http_addr = http_listener.as_ref().map(|(_, bound)| *bound);
    let http_server = http_listener.map(|(listener, _)| {
        limits::spawn_http(
            listener,
            serve::http::router(inference.clone()).layer(axum::middleware::from_fn_with_state(
                acl.clone(),
                acl::http::check,
            )),
            &server_limits,
        )
    });
    let peer = migrate::AgentPeerService::new(incoming_migrations.clone(), balance)
        .with_requests(inference.clone())
        .with_offline_moves(&name, &data_dir);
    let metrics_server = match metrics_listener {
        Some(listener) => {
            match metrics::serve(listener, root.clone(), stats, &grpc_metrics, drivers) {
                Ok(running) => Some(running),
                Err(e) => {
                    root.stop(Some("the metrics endpoint did not start".into()));
                    return Err(NodeError::Bind {
                        addr: metrics_listen.map(|a| a.to_string()).unwrap_or_default(),
                        message: format!("(metrics, --metrics-listen) {e}"),
                    });
                }
            }
        }
        None => None,
    };
    let metrics_addr = metrics_server.as_ref().map(|m| m.local_addr);
    // Under mutual TLS the agent-to-agent service serves node agents'
    // certificates only; `NodeAgent` (logs, inference, stats) any of the
    // cluster's CA (docs/security.md).
    let router = limits::server(&server_limits)
        .layer(grpc_metrics.layer())
        .layer(limits::rate_layer(&server_limits))
        .add_service(acl::guard(
            &acl,
            NodeAgentServer::new(service)
                .max_decoding_message_size(limits::MAX_AGENT_MESSAGE)
                .max_encoding_message_size(limits::MAX_AGENT_MESSAGE),
        ))
        .add_service(herd_api::tls::roles_only(
            &[herd_api::tls::PeerRole::Node],
            peer.into_server(),
        ));
    let shutdown = async {
        let _ = shutdown_rx.await;
    };
    // Under TLS the handshake is herd's own, so that a certificate
    // renewed in place reaches new connections (`herd_api::tls::serve`).
    let server = match herd_api::tls::server_tls() {
        Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(
            herd_metrics::accept::handshaken(incoming, tls),
            shutdown,
        )),
        None => tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown)),
    };
    tracing::info!(node = %name, addr = %local_addr, %advertise, http = ?http_addr, metrics = ?metrics_addr, tls = herd_api::tls::enabled(), "node agent running");
    Ok(RunningNode {
        local_addr,
        incoming: incoming_migrations,
        http_addr,
        metrics_addr,
        root,
        root_task,
        shutdown: Some(shutdown_tx),
        server,
        engine_poller,
        fleet_view,
        acl_refresher,
        rescheduler,
        http_server,
        metrics_server: metrics_server.map(|m| m.into_task()),
    })
}
