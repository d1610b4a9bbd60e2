//! Raft RPCs to other coordinators over tonic (the client side).
//!
//! openraft's messages travel bincode-encoded inside `RaftEnvelope`s that also
//! carry the sender's cluster id and the intended member, so a receiver can
//! refuse traffic that is not meant for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use herd_api::proto::internal::internal_client::InternalClient;
use herd_api::proto::internal::RaftEnvelope;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use crate::codec::{self, MAX_DECODED_BYTES};
use crate::health::PeerHealth;
use crate::identity::ClusterIdentity;
use crate::types::{NodeId, TypeConfig};

/// Opens a lazily connected gRPC channel to a coordinator at `addr` (`host:port`).
fn channel_to(addr: &str) -> Result<Channel, String> {
    let endpoint = herd_api::tls::endpoint(addr, herd_api::tls::PeerRole::Coordinator)
        .map_err(|e| format!("invalid coordinator address {addr:?}: {e}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5));
    Ok(endpoint.connect_lazy())
}

/// An `Internal` client with herd's message-size limits.
pub fn internal_client(channel: Channel) -> InternalClient<Channel> {
    let limit = MAX_DECODED_BYTES as usize;
    InternalClient::new(channel)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
}

pub use herd_api::client::Connector;

/// How this member reaches the others. Addresses to dial for members that
/// cannot be reached at the address they advertise in the membership:
/// across address translation, or through the chaos harness's
/// fault-injecting proxies, one per directed link. Every path from this
/// member to another (Raft, forwarding, start-up checks) resolves the
/// address and opens its channel through it, so a proxy, or a simulated
/// network, sees all of that traffic.
#[derive(Clone, Default)]
pub struct DialMap {
    overrides: Arc<BTreeMap<NodeId, String>>,
    connector: Option<Connector>,
}

impl std::fmt::Debug for DialMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DialMap")
            .field("overrides", &self.overrides)
            .field("connector", &self.connector.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl PartialEq for DialMap {
    /// Equal overrides; a custom connector is never equal to another.
    fn eq(&self, other: &Self) -> bool {
        self.overrides == other.overrides && self.connector.is_none() && other.connector.is_none()
    }
}

impl DialMap {
    /// Dial member `id` at `addr` for every `(id, addr)` in `overrides`.
    pub fn new(overrides: BTreeMap<NodeId, String>) -> Self {
        Self {
            overrides: Arc::new(overrides),
            connector: None,
        }
    }

    /// Opens every channel with `connector` instead of TCP.
    pub fn with_connector(mut self, connector: Connector) -> Self {
        self.connector = Some(connector);
        self
    }

    /// Where to dial member `id`, which advertises `advertised`.
    pub fn resolve<'a>(&'a self, id: NodeId, advertised: &'a str) -> &'a str {
        self.overrides
            .get(&id)
            .map(String::as_str)
            .unwrap_or(advertised)
    }

    /// Whether any member is dialled at another address.
    pub fn is_empty(&self) -> bool {
        self.overrides.is_empty()
    }

    /// A lazily connected channel to `addr`, over TCP or the connector.
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        match &self.connector {
            Some(connect) => connect(addr),
            None => channel_to(addr),
        }
    }
}

/// Creates connections to peers for openraft.
///
/// openraft asks for a new client per replication stream and per
/// leadership check; channels are cached per address so all of them share
/// one HTTP/2 connection instead of paying a TCP handshake each time.
pub struct NetworkFactory {
    identity: Arc<ClusterIdentity>,
    health: Arc<PeerHealth>,
    dial: DialMap,
    channels: HashMap<String, InternalClient<Channel>>,
}

impl NetworkFactory {
    /// A factory whose connections stamp `identity`, record into `health`
    /// and reach members where `dial` says.
    pub fn new(identity: Arc<ClusterIdentity>, health: Arc<PeerHealth>, dial: DialMap) -> Self {
        Self {
            identity,
            health,
            dial,
            channels: HashMap::new(),
        }
    }

    fn client(&mut self, addr: &str) -> Result<InternalClient<Channel>, String> {
        if let Some(client) = self.channels.get(addr) {
            return Ok(client.clone());
        }
        let client = internal_client(self.dial.channel(addr)?);
        self.channels.insert(addr.to_string(), client.clone());
        Ok(client)
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        let addr = self.dial.resolve(target, &node.addr).to_string();
        PeerConnection {
            target,
            client: self.client(&addr),
            addr,
            identity: self.identity.clone(),
            health: self.health.clone(),
        }
    }
}

/// One peer as openraft sees it.
pub struct PeerConnection {
    target: NodeId,
    addr: String,
    client: Result<InternalClient<Channel>, String>,
    identity: Arc<ClusterIdentity>,
    health: Arc<PeerHealth>,
}

#[derive(Clone, Copy)]
enum Method {
    Append,
    Vote,
    Snapshot,
}

impl PeerConnection {
    async fn send<Req, Resp, E>(
        &mut self,
        method: Method,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(client) => client,
            Err(message) => {
                return Err(RPCError::Unreachable(Unreachable::new(
                    &std::io::Error::other(message.clone()),
                )))
            }
        };
        let payload =
            codec::encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut envelope = tonic::Request::new(RaftEnvelope {
            cluster_id: self.identity.cluster_id().unwrap_or_default(),
            target_id: self.target,
            payload,
        });
        envelope.set_timeout(option.hard_ttl());
        let reply = match method {
            Method::Append => client.append_entries(envelope).await,
            Method::Vote => client.vote(envelope).await,
            Method::Snapshot => client.install_snapshot(envelope).await,
        };
        let reply = match reply {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                let error = std::io::Error::other(format!("{} ({})", status.message(), self.addr));
                return Err(match status.code() {
                    tonic::Code::FailedPrecondition => {
                        tracing::warn!(peer = self.target, addr = %self.addr, reason = status.message(), "peer refused raft message");
                        RPCError::Unreachable(Unreachable::new(&error))
                    }
                    tonic::Code::Unavailable | tonic::Code::Unknown => {
                        RPCError::Unreachable(Unreachable::new(&error))
                    }
                    _ => RPCError::Network(NetworkError::new(&error)),
                });
            }
        };
        let result: Result<Resp, E> = codec::decode(&reply.payload, "raft reply")
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.health.record_ok(self.target);
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(Method::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(Method::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(Method::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // Retry an unreachable peer quickly: a restarted coordinator should
        // catch up within a heartbeat or two, not after seconds.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
