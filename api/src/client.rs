//! A client for the coordinators' API that tries each given address in turn.
//!
//! Used by the CLI, the chaos harness and benchmarks. A coordinator that
//! refuses the connection, or answers that it cannot serve (not a member
//! yet, no leader, cut off from a majority), is skipped for the next one.
//! Any other outcome is final: an answer (a rejection, a not-found), and a
//! connection lost after the request left, which may have carried a write
//! that was applied. So a write is never sent twice.

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;
// The runtime's clock: the deterministic simulation drives it.
use tokio::time::Instant;

use thiserror::Error;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::proto::v1::cluster_client::ClusterClient;
use crate::proto::v1::{ClusterStatusRequest, MemberStatusRequest};

/// Why a call failed everywhere it was tried.
#[derive(Debug, Error)]
pub enum ClientError {
    /// No address was given.
    #[error("no coordinator address given: pass --addr HOST:PORT[,HOST:PORT...] or set HERD_ADDR")]
    NoAddress,
    /// An address could not be parsed.
    #[error("invalid coordinator address {addr:?}: {message}")]
    BadAddress {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
    /// Every coordinator was unreachable or unable to serve.
    #[error("no coordinator could serve the request: {}", .tried.iter().map(|(a, m)| format!("{a}: {m}")).collect::<Vec<_>>().join("; "))]
    Unavailable {
        /// Each address with what it answered.
        tried: Vec<(String, String)>,
    },
    /// A coordinator answered with an error.
    #[error("{}", .status.message())]
    Status {
        /// Who answered.
        addr: String,
        /// The answer.
        status: Status,
    },
}

impl ClientError {
    /// The gRPC code of a final answer, if there was one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

/// Opens a lazily connected channel to `HOST:PORT` over a transport other
/// than the operating system's TCP: the deterministic simulation's network.
/// Coordinators dial each other through one (`DialMap`), agents their
/// coordinators ([`HerdClient::with_connector`]).
pub type Connector = Arc<dyn Fn(&str) -> Result<Channel, String> + Send + Sync>;

/// A lazily connected TCP channel to `addr`, with the client's timeouts.
fn tcp_channel(addr: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(150))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// How long a leader-routing client trusts what it learned about the leader.
const LEADER_REFRESH: Duration = Duration::from_secs(5);

/// How long a given address may take to say which member it reaches.
const MEMBER_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The leader as a leader-routing client last learned it.
#[derive(Default)]
struct LeaderCache {
    leader: Option<(String, Channel)>,
    learned_at: Option<Instant>,
}

/// Connections to one or more coordinators of a cluster.
#[derive(Clone)]
pub struct HerdClient {
    endpoints: Vec<(String, Channel)>,
    /// Set by [`HerdClient::with_leader_routing`].
    leader: Option<Arc<tokio::sync::Mutex<LeaderCache>>>,
}

/// Whether a failed call certainly never reached the peer.
///
/// Only a refused or failed connection proves the request was not
/// delivered; anything else may have reached the leader and been applied,
/// so it must not be retried blindly.
pub fn is_connect_failure(status: &Status) -> bool {
    if status.code() != Code::Unavailable {
        return false;
    }
    // The transport's error chain ends, for a connection that was never
    // made, in the OS error of `connect(2)` (hyper's ConnectError wraps it).
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::NotFound
            );
        }
        source = error.source();
    }
    false
}

/// Whether a coordinator itself answered with `status`, rather than the
/// transport failing: statuses read from a response carry no source error,
/// the transport's own (a reset, a keep-alive timeout) do.
fn answered_by_coordinator(status: &Status) -> bool {
    std::error::Error::source(status).is_none()
}

/// Whether another coordinator might serve a request this one did not,
/// with no risk of running it twice: either the connection was never made,
/// so nothing was delivered, or the coordinator answered that it cannot
/// serve (no leader, not a member, cut off from a majority), which it does
/// only before proposing anything. A connection lost after the request
/// left may have carried a write that was applied: that failure is final.
/// A request that may run twice without harm ([`Repeat::Safe`]) moves on
/// after a lost connection too.
fn try_next(status: &Status, repeat: Repeat) -> bool {
    matches!(status.code(), Code::Unavailable | Code::FailedPrecondition)
        && (repeat == Repeat::Safe || answered_by_coordinator(status) || is_connect_failure(status))
}

/// Whether a request may run twice without harm, which decides when the
/// client sends it to another coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// A write: sent again only when it certainly did not run.
    Unsafe,
    /// A read, a heartbeat, a registration: sent again after a lost
    /// connection as well.
    Safe,
}

impl HerdClient {
    /// Connects lazily to `addrs` (`HOST:PORT` each).
    pub fn new<S: AsRef<str>>(addrs: &[S]) -> Result<Self, ClientError> {
        let tcp: Connector = Arc::new(tcp_channel);
        Self::with_connector(addrs, &tcp)
    }

    /// Connects lazily to `addrs` through `connect` instead of the operating
    /// system's TCP: how a node agent in the deterministic simulation
    /// reaches its coordinators with the same link code as on a real host.
    pub fn with_connector<S: AsRef<str>>(
        addrs: &[S],
        connect: &Connector,
    ) -> Result<Self, ClientError> {
        let mut endpoints = Vec::new();
        for addr in addrs
            .iter()
            .map(|a| a.as_ref().trim())
            .filter(|a| !a.is_empty())
        {
            let channel = connect(addr).map_err(|message| ClientError::BadAddress {
                addr: addr.to_string(),
                message,
            })?;
            endpoints.push((addr.to_string(), channel));
        }
        Self::from_channels(endpoints)
    }

    /// A client over channels made elsewhere (`(address, channel)` each):
    /// the deterministic simulation's, whose network is not the operating
    /// system's.
    pub fn from_channels(endpoints: Vec<(String, Channel)>) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::NoAddress);
        }
        Ok(Self {
            endpoints,
            leader: None,
        })
    }

    /// Sends [`HerdClient::call_leader`] requests straight to the leader,
    /// learned from the cluster status and refreshed every few seconds, so
    /// writes skip the hop through a follower. Any coordinator still serves
    /// them when the leader moved; the client then learns the new one.
    pub fn with_leader_routing(mut self) -> Self {
        self.leader = Some(Arc::new(tokio::sync::Mutex::new(LeaderCache::default())));
        self
    }

    async fn leader_channel(&self) -> Option<(String, Channel)> {
        let cache = self.leader.as_ref()?;
        let mut cache = cache.lock().await;
        if let (Some(leader), Some(at)) = (&cache.leader, cache.learned_at) {
            if at.elapsed() < LEADER_REFRESH {
                return Some(leader.clone());
            }
        }
        cache.learned_at = Some(Instant::now());
        let status = self
            .call(|ch| async move {
                ClusterClient::new(ch)
                    .status(ClusterStatusRequest { stale: false })
                    .await
                    .map(|r| r.into_inner())
            })
            .await
            .ok()?;
        let addr = status
            .members
            .iter()
            .find(|m| m.id == status.leader)?
            .addr
            .clone();
        let leader = match self.endpoints.iter().find(|(a, _)| *a == addr) {
            Some(endpoint) => endpoint.clone(),
            None => match self.endpoint_of_member(status.leader).await {
                Some(endpoint) => endpoint,
                None => (
                    addr.clone(),
                    Endpoint::from_shared(format!("http://{addr}"))
                        .ok()?
                        .connect_timeout(Duration::from_secs(2))
                        .tcp_nodelay(true)
                        .connect_lazy(),
                ),
            },
        };
        cache.leader = Some(leader);
        cache.leader.clone()
    }

    /// The given address that reaches member `id`, when the members are
    /// given at other addresses than they advertise (behind address
    /// translation or proxies): each is asked who it is. Only the
    /// operator's addresses are used then, so the leader is reached the way
    /// the operator said to reach it. None with a single address (a seed,
    /// not a list of the members) or when no address answers as `id`.
    async fn endpoint_of_member(&self, id: u64) -> Option<(String, Channel)> {
        if self.endpoints.len() < 2 {
            return None;
        }
        for (addr, channel) in &self.endpoints {
            let mut request = tonic::Request::new(MemberStatusRequest { with_digest: false });
            request.set_timeout(MEMBER_PROBE_TIMEOUT);
            let answered = ClusterClient::new(channel.clone())
                .member_status(request)
                .await;
            if answered.is_ok_and(|report| report.into_inner().id == id) {
                return Some((addr.clone(), channel.clone()));
            }
        }
        None
    }

    async fn forget_leader(&self) {
        if let Some(cache) = &self.leader {
            let mut cache = cache.lock().await;
            cache.leader = None;
            cache.learned_at = None;
        }
    }

    /// Like [`HerdClient::call`], but tries the leader first when leader
    /// routing is on.
    pub async fn call_leader<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_leader_as(Repeat::Unsafe, call).await
    }

    /// [`HerdClient::call_leader`] for a request that may run twice
    /// without harm: see [`Repeat`].
    pub async fn call_leader_as<T, F, Fut>(&self, repeat: Repeat, call: F) -> Result<T, ClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        if let Some((addr, channel)) = self.leader_channel().await {
            match call(channel).await {
                Ok(value) => return Ok(value),
                Err(status) if try_next(&status, repeat) => self.forget_leader().await,
                Err(status) => {
                    if !answered_by_coordinator(&status) {
                        // The connection broke: learn the leader afresh next time.
                        self.forget_leader().await;
                    }
                    return Err(ClientError::Status { addr, status });
                }
            }
        }
        self.call_as(repeat, call).await
    }

    /// Parses a comma-separated address list, as `--addr` and `HERD_ADDR` take it.
    pub fn from_list(list: &str) -> Result<Self, ClientError> {
        Self::new(&list.split(',').collect::<Vec<_>>())
    }

    /// The addresses, in the order they are tried.
    pub fn addrs(&self) -> Vec<String> {
        self.endpoints.iter().map(|(a, _)| a.clone()).collect()
    }

    /// Runs `call` against each coordinator in turn until one serves it,
    /// never sending it twice when it may have run ([`Repeat::Unsafe`]).
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_as(Repeat::Unsafe, call).await
    }

    /// [`HerdClient::call`] for a request that may run twice without harm:
    /// see [`Repeat`].
    pub async fn call_as<T, F, Fut>(&self, repeat: Repeat, call: F) -> Result<T, ClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut tried = Vec::new();
        for (addr, channel) in &self.endpoints {
            match call(channel.clone()).await {
                Ok(value) => return Ok(value),
                Err(status) if try_next(&status, repeat) => {
                    tried.push((addr.clone(), status.message().to_string()))
                }
                Err(status) => {
                    return Err(ClientError::Status {
                        addr: addr.clone(),
                        status,
                    })
                }
            }
        }
        Err(ClientError::Unavailable { tried })
    }

    /// Runs `call` against one coordinator only (by position), for member-local questions.
    pub async fn call_one<T, F, Fut>(&self, index: usize, call: F) -> Result<T, ClientError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let Some((addr, channel)) = self.endpoints.get(index) else {
            return Err(ClientError::NoAddress);
        };
        call(channel.clone()).await.map_err(|status| {
            if try_next(&status, Repeat::Unsafe) {
                // Name the coordinator that could not serve, as `call` does.
                ClientError::Unavailable {
                    tried: vec![(addr.clone(), status.message().to_string())],
                }
            } else {
                ClientError::Status {
                    addr: addr.clone(),
                    status,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_answers_and_refused_connections_are_tried_elsewhere() {
        // A port nothing listens on: bind, learn it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .connect_lazy();
        let refused = ClusterClient::new(channel)
            .status(ClusterStatusRequest { stale: true })
            .await
            .expect_err("nothing listens");
        assert!(is_connect_failure(&refused), "{refused:?}");
        assert!(try_next(&refused, Repeat::Unsafe), "{refused:?}");
        // A coordinator's own answer, even one naming a refused connection,
        // proves nothing about connections; it is tried elsewhere because
        // the coordinator says it did nothing.
        let answered = Status::unavailable("connection refused");
        assert!(!is_connect_failure(&answered));
        assert!(try_next(&answered, Repeat::Unsafe));
        assert!(try_next(
            &Status::failed_precondition("not a member"),
            Repeat::Unsafe
        ));
        assert!(!try_next(
            &Status::deadline_exceeded("outcome unknown"),
            Repeat::Safe
        ));
        // The transport failing after the request left (here a reset):
        // the write may have been applied, so it is not sent again.
        // tonic reports it as Unavailable with the transport's error as source.
        let mut reset = Status::unavailable("transport error");
        reset.set_source(Arc::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )));
        assert!(!try_next(&reset, Repeat::Unsafe), "{reset:?}");
        // A heartbeat or a read may go to another coordinator all the same.
        assert!(try_next(&reset, Repeat::Safe), "{reset:?}");
    }

    #[tokio::test]
    async fn address_lists_parse() {
        let client = HerdClient::from_list("127.0.0.1:1, 127.0.0.1:2,").expect("parse");
        assert_eq!(client.addrs(), vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert!(matches!(
            HerdClient::from_list(" , "),
            Err(ClientError::NoAddress)
        ));
    }
}
