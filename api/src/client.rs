//! A client for the coordinators' API that tries each given address in turn.
//!
//! Used by the CLI, the chaos harness, benchmarks and node agents. Whether a
//! failed request goes to the next coordinator is decided on what the
//! coordinator said ([`crate::retry`]): a status marked "not applied" goes
//! on whatever the request, one that may have been applied goes on only
//! when the request may run twice ([`Repeat::Safe`]); a connection that was
//! never made delivered nothing and goes on too. Any other outcome is final:
//! an answer (a rejection, a not-found), and a connection lost after the
//! request left, which may have carried a write that was applied. So a
//! write is never sent twice. Statuses of older coordinators, which carry
//! no marks, are judged as before: by code, and by whether the transport
//! rather than the coordinator produced them.

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;
// The runtime's clock: the deterministic simulation drives it.
use tokio::time::Instant;

use thiserror::Error;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::proto::v1::cluster_client::ClusterClient;
use crate::proto::v1::{ClusterStatusRequest, MemberStatusRequest};
use crate::retry::{ErrorMarks, LeaderHint};

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

/// A token that cannot travel as gRPC metadata.
#[derive(Debug, Error)]
#[error("invalid token: {0}")]
pub struct InvalidToken(String);

/// Sends the client's bearer token, if it has one, as
/// `authorization: Bearer TOKEN` metadata on every request: the credential
/// a bootstrapped cluster asks for (docs/security.md).
#[derive(Debug, Clone, Default)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl BearerToken {
    /// The metadata for `token`; an empty token sends nothing.
    pub fn new(token: &str) -> Result<Self, InvalidToken> {
        let token = token.trim();
        if token.is_empty() {
            return Ok(Self(None));
        }
        format!("Bearer {token}")
            .parse::<AsciiMetadataValue>()
            .map(|value| Self(Some(value)))
            .map_err(|_| InvalidToken("it must be printable ASCII without spaces".into()))
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// What a [`HerdClient`] sends with every call: its bearer token and the
/// request id of the action it serves ([`crate::request_id`]), so that the
/// logs of every process the action reaches carry the same id.
#[derive(Debug, Clone, Default)]
pub struct CallMetadata {
    token: BearerToken,
    request_id: Option<AsciiMetadataValue>,
}

impl tonic::service::Interceptor for CallMetadata {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let mut request = tonic::service::Interceptor::call(&mut self.token, request)?;
        if let Some(id) = &self.request_id {
            request
                .metadata_mut()
                .insert(crate::request_id::HEADER, id.clone());
        }
        Ok(request)
    }
}

/// What each call of a [`HerdClient`] is given: a channel to one
/// coordinator that carries the client's token and request id. Generated
/// clients take it as they take a plain channel (`JobsClient::new(channel)`).
pub type HerdChannel = InterceptedService<Channel, CallMetadata>;

/// Opens a lazily connected channel to `HOST:PORT` over a transport other
/// than the operating system's TCP: the deterministic simulation's network.
/// Coordinators dial each other through one (`DialMap`), agents their
/// coordinators ([`HerdClient::with_connector`]).
pub type Connector = Arc<dyn Fn(&str) -> Result<Channel, String> + Send + Sync>;

/// A lazily connected TCP channel to `addr`, with the client's timeouts.
fn tcp_channel(addr: &str) -> Result<Channel, String> {
    let endpoint = crate::tls::endpoint(addr, crate::tls::PeerRole::Coordinator)?;
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
    /// How to reach an address none of `endpoints` names (a leader learned
    /// from the cluster status or a hint): the same transport as theirs.
    /// None for channels made elsewhere, whose transport is not known here.
    connector: Option<Connector>,
    /// Set by [`HerdClient::with_leader_routing`].
    leader: Option<Arc<tokio::sync::Mutex<LeaderCache>>>,
    /// Set by [`HerdClient::with_token`] and
    /// [`HerdClient::with_request_id`]; sent on every call.
    metadata: CallMetadata,
}

/// Whether a failed call certainly never reached the peer: the channel
/// could not connect, so no request left.
///
/// tonic wraps every error of the connecting phase, whatever the connector
/// (the operating system's TCP, the simulation's network, a connect
/// timeout), in [`tonic::ConnectError`], and keeps the transport's error as
/// the status's source; a request is only written once a connection
/// exists. A status a server sent has no source at all. So the marker is
/// looked for in the source chain, not in error kinds or messages.
pub fn is_connect_failure(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>() {
            return true;
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

/// Whether a request that failed with `status` may be sent to another
/// coordinator without risk of running it twice.
///
/// - A connection never made delivered nothing: yes.
/// - A coordinator that marks its statuses ([`crate::retry`]): when its
///   reason says another member might serve (no leader, not a member, cut
///   off, not the leader, outcome unknown...), and either it marked the
///   request "not applied" or the request may run twice ([`Repeat::Safe`]).
///   A reason this release does not know counts as "might serve" when its
///   code is `Unavailable` or `FailedPrecondition`.
/// - An unmarked status (an older coordinator, or the transport failing
///   after the request left): today's rules before the marks, by code, and
///   for a write only when the coordinator itself answered.
pub fn may_try_elsewhere(status: &Status, repeat: Repeat) -> bool {
    if is_connect_failure(status) {
        return true;
    }
    let retryable_code = matches!(status.code(), Code::Unavailable | Code::FailedPrecondition);
    match ErrorMarks::read(status) {
        Some(marks) => {
            let elsewhere = marks.reason.map_or(retryable_code, |r| r.elsewhere());
            elsewhere && (marks.not_applied || repeat == Repeat::Safe)
        }
        None => retryable_code && (repeat == Repeat::Safe || answered_by_coordinator(status)),
    }
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
    /// Every other address the client learns (the leader's) is reached
    /// through `connect` too.
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
        let mut client = Self::from_channels(endpoints)?;
        client.connector = Some(connect.clone());
        Ok(client)
    }

    /// A client over channels made elsewhere (`(address, channel)` each):
    /// the deterministic simulation's, whose network is not the operating
    /// system's. Such a client reaches no address beyond these.
    pub fn from_channels(endpoints: Vec<(String, Channel)>) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::NoAddress);
        }
        Ok(Self {
            endpoints,
            connector: None,
            leader: None,
            metadata: CallMetadata::default(),
        })
    }

    /// Sends `token` (`--token`, `HERD_TOKEN`) with every request, as a
    /// bootstrapped cluster requires; an empty token sends none.
    pub fn with_token(mut self, token: &str) -> Result<Self, InvalidToken> {
        self.metadata.token = BearerToken::new(token)?;
        Ok(self)
    }

    /// Sends `id` as the request id of every call (`herd --request-id`,
    /// else one per CLI command): the coordinators log it, keep it with a
    /// job it submits, and hand it to the agents that run the job.
    pub fn with_request_id(mut self, id: &crate::request_id::RequestId) -> Self {
        self.metadata.request_id = id.to_metadata();
        self
    }

    /// `channel` with this client's token and request id on every request.
    fn authed(&self, channel: Channel) -> HerdChannel {
        InterceptedService::new(channel, self.metadata.clone())
    }

    /// Sends [`HerdClient::call_leader`] requests straight to the leader,
    /// learned from the cluster status (or from the leader hint of a member
    /// that is not it) and refreshed every few seconds, so writes skip the
    /// hop through a follower. Any coordinator still serves them when the
    /// leader moved; the client then learns the new one.
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
        let leader = self
            .channel_for(&LeaderHint {
                id: Some(status.leader),
                addr,
            })
            .await?;
        cache.leader = Some(leader);
        cache.leader.clone()
    }

    /// A channel to the leader `hint` names: the given address that is it
    /// (by address, or by asking each which member it is), else a new
    /// channel through the client's connector; None when neither works.
    async fn channel_for(&self, hint: &LeaderHint) -> Option<(String, Channel)> {
        if let Some(endpoint) = self.endpoints.iter().find(|(a, _)| *a == hint.addr) {
            return Some(endpoint.clone());
        }
        if let Some(id) = hint.id {
            if let Some(endpoint) = self.endpoint_of_member(id).await {
                return Some(endpoint);
            }
        }
        let connect = self.connector.as_ref()?;
        let channel = connect(&hint.addr).ok()?;
        Some((hint.addr.clone(), channel))
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
            let answered = ClusterClient::new(self.authed(channel.clone()))
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

    /// After the presumed leader at `addr` failed with `status`: takes the
    /// leader it names as the new one and returns it, when it names another;
    /// otherwise forgets the leader when `status` says it could not serve
    /// or the connection broke, so it is learned afresh next time.
    async fn learn_from(
        &self,
        addr: &str,
        status: &Status,
        moved_on: bool,
    ) -> Option<(String, Channel)> {
        let cache = self.leader.as_ref()?;
        let hint = ErrorMarks::read(status)
            .and_then(|marks| marks.leader)
            .filter(|hint| hint.addr != addr);
        let hinted = match hint {
            Some(hint) => self.channel_for(&hint).await,
            None => None,
        };
        let mut cache = cache.lock().await;
        match &hinted {
            Some(leader) => {
                cache.leader = Some(leader.clone());
                cache.learned_at = Some(Instant::now());
            }
            None if moved_on || !answered_by_coordinator(status) => {
                cache.leader = None;
                cache.learned_at = None;
            }
            None => {}
        }
        hinted
    }

    /// Like [`HerdClient::call`], but tries the leader first when leader
    /// routing is on.
    pub async fn call_leader<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(HerdChannel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_leader_as(Repeat::Unsafe, call).await
    }

    /// [`HerdClient::call_leader`] for a request that may run twice
    /// without harm: see [`Repeat`].
    pub async fn call_leader_as<T, F, Fut>(&self, repeat: Repeat, call: F) -> Result<T, ClientError>
    where
        F: Fn(HerdChannel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        if let Some((addr, channel)) = self.leader_channel().await {
            let status = match call(self.authed(channel)).await {
                Ok(value) => return Ok(value),
                Err(status) => status,
            };
            let moved_on = may_try_elsewhere(&status, repeat);
            let hinted = self.learn_from(&addr, &status, moved_on).await;
            if !moved_on {
                return Err(ClientError::Status { addr, status });
            }
            // The member that is not the leader named it: go there first.
            if let Some((addr, channel)) = hinted {
                match call(self.authed(channel)).await {
                    Ok(value) => return Ok(value),
                    Err(status) if may_try_elsewhere(&status, repeat) => self.forget_leader().await,
                    Err(status) => {
                        if !answered_by_coordinator(&status) {
                            self.forget_leader().await;
                        }
                        return Err(ClientError::Status { addr, status });
                    }
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
        F: Fn(HerdChannel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_as(Repeat::Unsafe, call).await
    }

    /// [`HerdClient::call`] for a request that may run twice without harm:
    /// see [`Repeat`].
    pub async fn call_as<T, F, Fut>(&self, repeat: Repeat, call: F) -> Result<T, ClientError>
    where
        F: Fn(HerdChannel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut tried = Vec::new();
        for (addr, channel) in &self.endpoints {
            match call(self.authed(channel.clone())).await {
                Ok(value) => return Ok(value),
                Err(status) if may_try_elsewhere(&status, repeat) => {
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

    /// [`HerdClient::call_as`] again while no coordinator can serve (an
    /// election, members restarting), for up to `patience`: what an operator
    /// would do by hand after "no coordinator could serve", done for them.
    /// Only requests that may run twice ([`Repeat::Safe`]) are worth it: a
    /// write that may have run is never sent again anyway, so its first
    /// "outcome unknown" is final. Waits 50 ms between rounds at first,
    /// doubling to a second; the last round's error is returned.
    pub async fn call_patiently<T, F, Fut>(
        &self,
        repeat: Repeat,
        patience: Duration,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(HerdChannel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let give_up = Instant::now() + patience;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.call_as(repeat, &call).await {
                Err(ClientError::Unavailable { tried }) if Instant::now() + pause < give_up => {
                    tracing::debug!(?tried, ?pause, "no coordinator could serve; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    /// Runs `call` against one coordinator only (by position), for member-local questions.
    pub async fn call_one<T, F, Fut>(&self, index: usize, call: F) -> Result<T, ClientError>
    where
        F: FnOnce(HerdChannel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let Some((addr, channel)) = self.endpoints.get(index) else {
            return Err(ClientError::NoAddress);
        };
        call(self.authed(channel.clone())).await.map_err(|status| {
            if may_try_elsewhere(&status, Repeat::Unsafe) {
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

    use crate::retry::Reason;

    fn marked(status: Status, reason: Reason, not_applied: bool) -> Status {
        ErrorMarks {
            reason: Some(reason),
            not_applied,
            leader: None,
        }
        .on(status)
    }

    #[tokio::test]
    async fn a_connection_never_made_is_told_apart_from_one_lost() {
        // A port nothing listens on: bind, learn it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let channel = tcp_channel(&format!("127.0.0.1:{port}")).expect("channel");
        let refused = ClusterClient::new(channel)
            .status(ClusterStatusRequest { stale: true })
            .await
            .expect_err("nothing listens");
        assert!(is_connect_failure(&refused), "{refused:?}");
        assert!(may_try_elsewhere(&refused, Repeat::Unsafe), "{refused:?}");
        // Any connector's failure, as tonic wraps it.
        let mut wrapped = Status::unavailable("connect");
        wrapped.set_source(Arc::new(tonic::ConnectError(Box::new(
            std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        ))));
        assert!(is_connect_failure(&wrapped));
        // A coordinator's own answer, even one naming a refused connection,
        // proves nothing about connections.
        assert!(!is_connect_failure(&Status::unavailable(
            "connection refused"
        )));
        // The transport failing after the request left (here a reset),
        // with an OS error of the same family as a refusal: not a connect
        // failure, so a write is not sent again.
        let mut reset = Status::unavailable("transport error");
        reset.set_source(Arc::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )));
        assert!(!is_connect_failure(&reset));
        assert!(!may_try_elsewhere(&reset, Repeat::Unsafe), "{reset:?}");
        // A heartbeat or a read may go to another coordinator all the same.
        assert!(may_try_elsewhere(&reset, Repeat::Safe), "{reset:?}");
    }

    #[test]
    fn marked_statuses_are_classified_on_their_marks() {
        use Repeat::{Safe, Unsafe};
        // Not applied: any request goes on, even under a code an unmarked
        // status would stop at.
        for reason in [Reason::NotLeader, Reason::NoLeader, Reason::CutOff] {
            let status = marked(Status::unavailable("x"), reason, true);
            assert!(may_try_elsewhere(&status, Unsafe), "{reason:?}");
            assert!(may_try_elsewhere(&status, Safe), "{reason:?}");
        }
        let not_member = marked(Status::failed_precondition("x"), Reason::NotMember, true);
        assert!(may_try_elsewhere(&not_member, Unsafe));
        // May have been applied: only a request that may run twice goes on.
        let unknown = marked(
            Status::deadline_exceeded("outcome unknown"),
            Reason::OutcomeUnknown,
            false,
        );
        assert!(!may_try_elsewhere(&unknown, Unsafe));
        assert!(may_try_elsewhere(&unknown, Safe));
        // The same code without the mark: the mark, not the code, decides.
        let unmarked_unavailable = marked(Status::unavailable("x"), Reason::Unavailable, false);
        assert!(!may_try_elsewhere(&unmarked_unavailable, Unsafe));
        assert!(may_try_elsewhere(&unmarked_unavailable, Safe));
        // Answers any member would give alike are final, applied or not.
        for reason in [
            Reason::Rejected,
            Reason::NotFound,
            Reason::Conflict,
            Reason::Invalid,
            Reason::Membership,
            Reason::Internal,
        ] {
            let status = marked(Status::unavailable("x"), reason, true);
            assert!(!may_try_elsewhere(&status, Safe), "{reason:?}");
        }
        // A reason from a newer coordinator: judged by its code, and by the mark.
        let mut future = Status::unavailable("x");
        future.metadata_mut().insert(
            crate::retry::REASON_KEY,
            tonic::metadata::MetadataValue::from_static("something-new"),
        );
        assert!(!may_try_elsewhere(&future, Unsafe));
        assert!(may_try_elsewhere(&future, Safe));
        future.metadata_mut().insert(
            crate::retry::APPLIED_KEY,
            tonic::metadata::MetadataValue::from_static(crate::retry::NOT_APPLIED),
        );
        assert!(may_try_elsewhere(&future, Unsafe));
        let mut future_answer = Status::invalid_argument("x");
        future_answer.metadata_mut().insert(
            crate::retry::REASON_KEY,
            tonic::metadata::MetadataValue::from_static("something-new"),
        );
        assert!(!may_try_elsewhere(&future_answer, Safe));
    }

    #[test]
    fn unmarked_statuses_of_older_coordinators_keep_the_old_rules() {
        // A coordinator's own answer that it cannot serve: it did nothing.
        assert!(may_try_elsewhere(
            &Status::unavailable("no leader"),
            Repeat::Unsafe
        ));
        assert!(may_try_elsewhere(
            &Status::failed_precondition("not a member"),
            Repeat::Unsafe
        ));
        // Outcome unknown and answers: final, whatever the request.
        assert!(!may_try_elsewhere(
            &Status::deadline_exceeded("outcome unknown"),
            Repeat::Safe
        ));
        assert!(!may_try_elsewhere(
            &Status::invalid_argument("bad spec"),
            Repeat::Safe
        ));
    }

    /// A client of two coordinators whose every call is answered by
    /// `answers` in turn (the channel is never dialled), and the count of
    /// calls made.
    async fn answered<T: Clone>(
        repeat: Repeat,
        patience: Duration,
        answers: Vec<Result<T, Status>>,
    ) -> (Result<T, ClientError>, usize) {
        let client = HerdClient::new(&["127.0.0.1:1", "127.0.0.1:2"]).expect("client");
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let result = client
            .call_patiently(repeat, patience, |_channel| {
                let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = answers[n.min(answers.len() - 1)].clone();
                async move { answer }
            })
            .await;
        (result, calls.into_inner())
    }

    fn outcome_unknown() -> Status {
        marked(
            Status::deadline_exceeded("outcome unknown"),
            Reason::OutcomeUnknown,
            false,
        )
    }

    #[tokio::test]
    async fn a_request_safe_to_repeat_rides_out_an_election() {
        let patience = Duration::from_secs(10);
        // Both members in doubt for a round, then one serves.
        let answers = vec![
            Err(outcome_unknown()),
            Err(outcome_unknown()),
            Err(outcome_unknown()),
            Ok(7),
        ];
        let (result, calls) = answered(Repeat::Safe, patience, answers.clone()).await;
        assert_eq!(result.expect("served after the election"), 7);
        assert_eq!(calls, 4);
        // A write that may have run is never sent again: its first doubt is final.
        let (result, calls) = answered(Repeat::Unsafe, patience, answers).await;
        assert!(
            matches!(result, Err(ClientError::Status { .. })),
            "{result:?}"
        );
        assert_eq!(calls, 1);
        // Patience runs out: the last round's error, after a few rounds.
        let started = Instant::now();
        let no_leader = marked(Status::unavailable("no leader"), Reason::NoLeader, true);
        let (result, calls) = answered::<u32>(
            Repeat::Unsafe,
            Duration::from_millis(400),
            vec![Err(no_leader)],
        )
        .await;
        assert!(
            matches!(&result, Err(ClientError::Unavailable { tried }) if tried.len() == 2),
            "{result:?}"
        );
        assert!(calls >= 4 && calls % 2 == 0, "{calls} calls");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "patience bounds the wait"
        );
    }

    #[tokio::test]
    async fn a_learned_leader_is_dialled_through_the_clients_connector() {
        let dialled = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = dialled.clone();
        let connect: Connector = Arc::new(move |addr: &str| {
            seen.lock().expect("lock").push(addr.to_string());
            tcp_channel(addr)
        });
        let client = HerdClient::with_connector(&["127.0.0.1:1"], &connect)
            .expect("client")
            .with_leader_routing();
        let hint = LeaderHint {
            id: Some(2),
            addr: "127.0.0.1:2".into(),
        };
        let (addr, _) = client.channel_for(&hint).await.expect("a channel");
        assert_eq!(addr, "127.0.0.1:2");
        assert_eq!(
            *dialled.lock().expect("lock"),
            vec!["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()]
        );
        // A given address is reused, not dialled again.
        let given = LeaderHint {
            id: None,
            addr: "127.0.0.1:1".into(),
        };
        assert!(client.channel_for(&given).await.is_some());
        assert_eq!(dialled.lock().expect("lock").len(), 2);
        // Channels made elsewhere: no transport to reach other addresses with.
        let channel = tcp_channel("127.0.0.1:1").expect("channel");
        let foreign =
            HerdClient::from_channels(vec![("127.0.0.1:1".into(), channel)]).expect("client");
        assert!(foreign.channel_for(&hint).await.is_none());
    }

    #[test]
    fn the_token_travels_as_bearer_metadata() {
        use tonic::service::Interceptor;
        let mut token = BearerToken::new(" abc.def ").expect("valid");
        let request = token.call(tonic::Request::new(())).expect("intercepted");
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .map(|v| v.to_str().ok()),
            Some(Some("Bearer abc.def"))
        );
        let mut none = BearerToken::new("").expect("empty is none");
        let request = none.call(tonic::Request::new(())).expect("intercepted");
        assert!(request.metadata().get("authorization").is_none());
        assert!(BearerToken::new("line\nbreak").is_err());
    }

    #[tokio::test]
    async fn the_request_id_travels_beside_the_token() {
        use tonic::service::Interceptor;
        let id = crate::request_id::RequestId::parse("cli-test-1").expect("valid");
        let client = HerdClient::from_list("127.0.0.1:1")
            .expect("client")
            .with_token("abc.def")
            .expect("token")
            .with_request_id(&id);
        let mut metadata = client.metadata.clone();
        let request = metadata.call(tonic::Request::new(())).expect("intercepted");
        assert_eq!(
            crate::request_id::RequestId::from_metadata(request.metadata()),
            Some(id)
        );
        assert!(request.metadata().get("authorization").is_some());
        let mut plain = CallMetadata::default();
        let request = plain.call(tonic::Request::new(())).expect("intercepted");
        assert!(request.metadata().get(crate::request_id::HEADER).is_none());
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
