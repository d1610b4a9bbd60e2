//! Starting a coordinator: data dir, storage, Raft, services, then joining
//! or bootstrapping a cluster. Each step is logged, and each refusal says why.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use herd_api::proto::internal::IdentityRequest;
use herd_api::proto::v1::cluster_client::ClusterClient;
use herd_api::proto::v1::AddMemberRequest;
use herd_consensus::codec;
use herd_consensus::health::PeerHealth;
use herd_consensus::identity::ClusterIdentity;
use herd_consensus::log_store::LogStore;
use herd_consensus::network::{internal_client, DialMap, NetworkFactory};
use herd_consensus::state_machine::StateMachineStore;
use herd_consensus::storage::{KvStore, SledStore, Space};
use herd_consensus::Raft;
use openraft::BasicNode;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

use crate::config::{CoordinatorConfig, StartMode};
use crate::coordinator::Coordinator;
use crate::data_dir::{self, DataDirError};
use crate::machine::app::StateApp;
use crate::machine::command::Command;
use crate::service;

/// Why a coordinator did not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The data dir is not this member's.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The data dir holds another cluster's state.
    #[error("data dir {dir} belongs to cluster {mine}, but {peer} belongs to cluster {theirs}: this directory is from another cluster; start with an empty --data-dir to join this one")]
    ForeignCluster {
        /// The directory.
        dir: String,
        /// Cluster id in the directory.
        mine: String,
        /// The peer asked.
        peer: String,
        /// The peer's cluster id.
        theirs: String,
    },
    /// Storage could not be opened.
    #[error("cannot open storage: {0}")]
    Storage(String),
    /// The listen address is taken or invalid.
    #[error("cannot listen on {addr}: {message}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        message: String,
    },
    /// Raft refused to start.
    #[error("cannot start raft: {0}")]
    Raft(String),
}

/// A started coordinator: its handle, its address, and how to stop it.
pub struct RunningCoordinator {
    /// The member's handle.
    pub coordinator: Arc<Coordinator>,
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
    /// Where the web dashboard is served, when it is on (bound address).
    pub dashboard_addr: Option<SocketAddr>,
    /// Where Prometheus metrics are served, when they are on (bound address).
    pub metrics_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<JoinHandle<()>>,
}

impl RunningCoordinator {
    /// Runs until the server stops (it stops only on error or shutdown).
    pub async fn wait(mut self) -> Result<(), String> {
        let result = (&mut self.server).await;
        self.stop_background();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("server failed: {e}")),
            Err(e) => Err(format!("server task failed: {e}")),
        }
    }

    /// Resolves, with the reason, once Raft on this member has stopped on a
    /// fatal error, such as a log write refused by a full disk: openraft
    /// then stops rather than risk its log, and the member can serve
    /// nothing more. Its process should exit so that its supervisor
    /// restarts it from the durable state once the cause is mended.
    pub async fn raft_stopped(&self) -> String {
        let mut metrics = self.coordinator.raft().metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "raft has shut down".to_string();
            }
        }
    }

    /// Stops serving and shuts Raft down.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.stop_background();
        let _ = (&mut self.server).await;
        if let Err(e) = self.coordinator.raft().shutdown().await {
            tracing::warn!(error = %e, "raft shutdown failed");
        }
    }

    fn stop_background(&mut self) {
        for task in self.background.drain(..) {
            task.abort();
        }
    }
}

/// Starts a coordinator as `config` says: its state in sled under the data
/// dir, serving TCP on the listen address.
pub async fn start(config: CoordinatorConfig) -> Result<RunningCoordinator, StartError> {
    let restarted = data_dir::claim(&config.data_dir, config.id)?;
    tracing::info!(member = config.id, dir = %config.data_dir.display(), restarted, "data dir ready");

    let store: Arc<dyn KvStore> = Arc::new(
        SledStore::open(&config.data_dir.join("raft"))
            .map_err(|e| StartError::Storage(e.to_string()))?,
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Bind {
            addr: config.listen,
            message: e.to_string(),
        })?;
    let local_addr = listener.local_addr().map_err(|e| StartError::Bind {
        addr: config.listen,
        message: e.to_string(),
    })?;
    // Nagle's algorithm with delayed ACKs would hold small replies for up
    // to 40 ms; Raft and client RPCs are all small and latency-bound.
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        if let Ok(stream) = &stream {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        }
        stream
    });
    let incoming = herd_metrics::limits::cap_connections(
        incoming,
        crate::limits::connection_cap(&config.limits),
        crate::limits::tcp_peer,
    );
    // Bound before Raft starts, so that a taken port refuses the start.
    let dashboard = match config.http_listen {
        Some(addr) => {
            let bind_error = |e: std::io::Error| StartError::Bind {
                addr,
                message: format!("(the dashboard, --http-listen) {e}"),
            };
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(bind_error)?;
            let bound = listener.local_addr().map_err(bind_error)?;
            Some((listener, bound))
        }
        None => None,
    };
    let mut running = start_with(config, store, incoming, local_addr).await?;
    if let Some((listener, bound)) = dashboard {
        let tasks = crate::dashboard::spawn(listener, running.coordinator.clone());
        running.background.extend(tasks);
        running.dashboard_addr = Some(bound);
        tracing::info!(member = running.coordinator.id(), addr = %bound, "serving the dashboard at {}://{bound}/", herd_metrics::https::scheme());
    }
    Ok(running)
}

/// Starts a coordinator on `store`, serving the connections `incoming`
/// yields (`local_addr` is what it reports as bound). [`start`] passes
/// sled and a TCP listener; the deterministic simulation passes the
/// in-memory store and its simulated network, so the same code runs in
/// both.
pub async fn start_with<S, IO, E>(
    config: CoordinatorConfig,
    store: Arc<dyn KvStore>,
    incoming: S,
    local_addr: SocketAddr,
) -> Result<RunningCoordinator, StartError>
where
    S: Stream<Item = Result<IO, E>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let has_state = store
        .last(Space::Log)
        .map_err(|e| StartError::Storage(e.to_string()))?
        .is_some()
        || store
            .get(Space::Meta, b"vote")
            .map_err(|e| StartError::Storage(e.to_string()))?
            .is_some();

    let identity = Arc::new(ClusterIdentity::new(config.id, None));
    let app = Arc::new(RwLock::new(StateApp::new(identity.clone())));
    let state_machine = StateMachineStore::open(store.clone(), app.clone())
        .map_err(|e| StartError::Storage(e.to_string()))?;
    let sm_stats = state_machine.stats();
    tracing::info!(member = config.id, has_state, cluster = ?identity.cluster_id(), "state loaded");

    // The applied state can lag the durable log by the last few entries (a
    // follower killed right after appending); the log then names the cluster.
    if identity.cluster_id().is_none() && has_state {
        if let Some(id) = cluster_id_from_log(store.as_ref()) {
            identity.set_cluster_id(&id);
        }
    }
    if let Some(mine) = identity.cluster_id() {
        check_peers_cluster(&config, &mine).await?;
    }

    let health = Arc::new(PeerHealth::default());
    let network = NetworkFactory::new(identity.clone(), health.clone(), config.dial.clone());
    let raft_config = config
        .raft
        .to_openraft()
        .map_err(|e| StartError::Raft(e.to_string()))?;
    // Bound before Raft starts, so that a taken port refuses the start.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => {
            Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| StartError::Bind {
                        addr,
                        message: format!("(metrics, --metrics-listen) {e}"),
                    })?,
            )
        }
        None => None,
    };
    let log_store = LogStore::new(store);
    let committed = log_store.committed_index();
    log_store
        .forget_leadership()
        .map_err(|e| StartError::Storage(e.to_string()))?;
    let raft = Raft::new(config.id, raft_config, network, log_store, state_machine)
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let coordinator = Arc::new(Coordinator::new(
        raft.clone(),
        app,
        identity.clone(),
        health,
        sm_stats,
        config.node_ttl,
        config.dial.clone(),
    ));

    let mut background = Vec::new();
    let mut metrics_addr = None;
    if let Some(listener) = metrics_listener {
        let metrics =
            crate::metrics::serve(listener, coordinator.clone(), committed).map_err(|e| {
                StartError::Bind {
                    addr: config.metrics_listen.unwrap_or(local_addr),
                    message: format!("(metrics, --metrics-listen) {e}"),
                }
            })?;
        tracing::info!(member = config.id, addr = %metrics.local_addr, "serving metrics at {}://{}/metrics", herd_metrics::https::scheme(), metrics.local_addr);
        metrics_addr = Some(metrics.local_addr);
        background.extend(metrics.tasks);
    }

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let router = service::router(coordinator.clone(), &config.limits);
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
    tracing::info!(member = config.id, addr = %local_addr, advertise = %config.advertise, tls = herd_api::tls::enabled(), "serving gRPC");

    if has_state {
        tracing::info!(
            member = config.id,
            "resuming from existing state; bootstrap and join settings are ignored"
        );
    } else {
        match &config.mode {
            StartMode::Bootstrap(peers) => {
                let members: BTreeMap<u64, BasicNode> = peers
                    .iter()
                    .map(|(id, addr)| (*id, BasicNode::new(addr.clone())))
                    .collect();
                match raft.initialize(members).await {
                    Ok(()) => {
                        tracing::info!(member = config.id, peers = ?peers, "bootstrapped new cluster")
                    }
                    Err(e) => {
                        tracing::info!(member = config.id, reason = %e, "not initializing: already part of a cluster")
                    }
                }
            }
            StartMode::Join(addr) => {
                background.push(tokio::spawn(join_cluster(
                    config.id,
                    config.advertise.clone(),
                    addr.clone(),
                    config.dial.clone(),
                    config.join_token.clone(),
                )));
            }
            StartMode::Wait => tracing::info!(
                member = config.id,
                "waiting to be added: run `herd cluster add {} {}` against the cluster",
                config.id,
                config.advertise
            ),
        }
    }
    background.push(tokio::spawn(establish_cluster_id(coordinator.clone())));
    background.push(tokio::spawn(crate::leader::scheduling::run(
        coordinator.clone(),
    )));
    background.push(tokio::spawn(crate::leader::liveness::run(
        coordinator.clone(),
    )));
    background.push(tokio::spawn(crate::leader::migrations::run(
        coordinator.clone(),
    )));
    background.push(tokio::spawn(crate::autoscale::run(coordinator.clone())));
    // Revocations name certificates: a plaintext member has none to refuse.
    if herd_api::tls::enabled() {
        background.push(tokio::spawn(crate::acl::revoked::watch(
            coordinator.clone(),
        )));
    }
    background.extend(crate::reschedule::spawn_loops(
        &coordinator,
        &config.reschedule,
    ));

    Ok(RunningCoordinator {
        coordinator,
        local_addr,
        dashboard_addr: None,
        metrics_addr,
        shutdown: Some(shutdown_tx),
        server,
        background,
    })
}

/// Log indexes scanned for the cluster id: the first leader proposes it among
/// the first few entries. (Once the log is purged past them, a snapshot has
/// persisted the state that holds it.)
const CLUSTER_ID_SCAN: u64 = 1000;

/// The cluster id proposed in the first entries still in the log, if any.
fn cluster_id_from_log(store: &dyn KvStore) -> Option<String> {
    let entries = store
        .range(
            Space::Log,
            &0u64.to_be_bytes(),
            Some(&CLUSTER_ID_SCAN.to_be_bytes()),
        )
        .ok()?;
    entries.into_iter().find_map(|(_, bytes)| {
        let entry: herd_consensus::types::Entry = codec::decode(&bytes, "log entry").ok()?;
        let openraft::EntryPayload::Normal(proposal) = entry.payload else {
            return None;
        };
        let batch = codec::decode_batch(&proposal.0, "command batch").ok()?;
        batch.iter().find_map(
            |command| match codec::decode::<Command>(command, "command") {
                Ok(Command::InitCluster { cluster_id }) => Some(cluster_id),
                _ => None,
            },
        )
    })
}

/// Refuses to run on a data dir whose cluster differs from the peers' cluster.
async fn check_peers_cluster(config: &CoordinatorConfig, mine: &str) -> Result<(), StartError> {
    let mut addrs: Vec<String> = match &config.mode {
        StartMode::Bootstrap(peers) => peers
            .iter()
            .filter(|(id, _)| **id != config.id)
            .map(|(id, addr)| config.dial.resolve(*id, addr).to_string())
            .collect(),
        StartMode::Join(addr) => vec![addr.clone()],
        StartMode::Wait => Vec::new(),
    };
    addrs.dedup();
    for addr in addrs {
        let Ok(channel) = config.dial.channel(&addr) else {
            continue;
        };
        let mut client = internal_client(channel);
        let mut request = tonic::Request::new(IdentityRequest {});
        request.set_timeout(Duration::from_secs(1));
        // The header alone bounds nothing on this side: a peer that is
        // itself starting (listening, not serving yet) would hold this
        // start for as long as HTTP/2 keep-alive takes to give up, and
        // members restarted all at once would wait on each other.
        let Ok(Ok(reply)) =
            tokio::time::timeout(Duration::from_secs(1), client.identity(request)).await
        else {
            tracing::debug!(%addr, "peer did not answer the identity check");
            continue;
        };
        let reply = reply.into_inner();
        if !reply.cluster_id.is_empty() && reply.cluster_id != mine {
            return Err(StartError::ForeignCluster {
                dir: config.data_dir.display().to_string(),
                mine: mine.to_string(),
                peer: format!("member {} at {addr}", reply.member_id),
                theirs: reply.cluster_id,
            });
        }
    }
    Ok(())
}

/// Asks the cluster at `join_addr` to add this member, until it does,
/// with `token` (an operator's) when the cluster is bootstrapped.
async fn join_cluster(
    id: u64,
    advertise: String,
    join_addr: String,
    dial: DialMap,
    token: Option<String>,
) {
    let bearer = match herd_api::client::BearerToken::new(token.as_deref().unwrap_or("")) {
        Ok(bearer) => bearer,
        Err(e) => {
            tracing::error!(member = id, error = %e, "cannot join: the join token is unusable");
            return;
        }
    };
    let mut delay = Duration::from_millis(200);
    loop {
        match dial.channel(&join_addr) {
            Ok(channel) => {
                let mut client = ClusterClient::with_interceptor(channel, bearer.clone());
                let mut request = tonic::Request::new(AddMemberRequest {
                    id,
                    addr: advertise.clone(),
                });
                request.set_timeout(Duration::from_secs(120));
                match client.add_member(request).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        tracing::info!(member = id, cluster = %reply.cluster_id, voters = ?reply.voters, "joined cluster");
                        return;
                    }
                    Err(status) => {
                        tracing::warn!(member = id, via = %join_addr, reason = status.message(), "join failed; retrying")
                    }
                }
            }
            Err(e) => {
                tracing::error!(member = id, error = %e, "cannot join");
                return;
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Has the first leader name the cluster, once.
async fn establish_cluster_id(coordinator: Arc<Coordinator>) {
    let mut metrics = coordinator.raft().metrics();
    loop {
        if coordinator.identity().cluster_id().is_some() {
            return;
        }
        let is_leader = metrics.borrow().current_leader == Some(coordinator.id());
        if is_leader {
            let cluster_id = uuid::Uuid::new_v4().to_string();
            match coordinator
                .execute_as_leader(crate::routing::forward::LeaderRequest::Write(
                    Command::InitCluster { cluster_id },
                ))
                .await
            {
                Ok(_) => {
                    tracing::info!(cluster = ?coordinator.identity().cluster_id(), "cluster id established");
                    return;
                }
                Err(e) => tracing::debug!(error = ?e, "cluster id not established yet"),
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use herd_consensus::storage::{MemoryStore, WriteOp};
    use herd_consensus::types::{Entry, Proposal};

    use super::*;

    fn entry(index: u64, commands: &[Command]) -> (Vec<u8>, Vec<u8>) {
        let batch: Vec<Vec<u8>> = commands
            .iter()
            .map(|c| codec::encode(c).expect("encode"))
            .collect();
        let entry = Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(Proposal(
                codec::encode(&batch).expect("encode"),
            )),
        };
        (
            index.to_be_bytes().to_vec(),
            codec::encode(&entry).expect("encode"),
        )
    }

    #[test]
    fn the_log_names_the_cluster_when_the_state_lags() {
        let store = MemoryStore::new();
        assert_eq!(cluster_id_from_log(&store), None);
        let put = Command::PutVariable {
            key: "k".into(),
            value: vec![],
            expected_version: None,
        };
        let init = Command::InitCluster {
            cluster_id: "c-123".into(),
        };
        let ops = [entry(1, std::slice::from_ref(&put)), entry(2, &[put, init])]
            .into_iter()
            .map(|(k, v)| WriteOp::Put(k, v))
            .collect();
        store.write(Space::Log, ops).expect("write");
        assert_eq!(cluster_id_from_log(&store).as_deref(), Some("c-123"));
    }
}
