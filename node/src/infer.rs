//! `NodeAgent.Infer`: one request run on a SIMULATED inference engine, its
//! tokens relayed as the engine streams them. Inputs are checked here
//! (bounds, priority) before any engine is contacted.
//!
//! A request naming an allocation runs on that engine of this node. A
//! request naming only its service (job) is dispatched across the fleet
//! ([`crate::serve::fleet`]): to the instance with the lowest virtual
//! usage, here or, through that node's agent, on another node. Either way
//! the stream is checked to carry every position once, in order, and its
//! first token names the allocation and node that served it.
//!
//! A request migrated away while it runs ([`crate::serve::request_migration`])
//! ends its engine's stream with a `moved` message: the agent the client
//! entered at follows it to the target's agent (asking for the handoff) and
//! goes on relaying, positions still checked end to end; an agent relaying
//! for another (`pass_moves`) passes the message on instead.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use herd_actors::inference::{wire, MAX_REQUEST_TOKENS};
use herd_api::client::BearerToken;
use herd_api::proto::agent::node_agent_client::NodeAgentClient;
use herd_api::proto::agent::{InferRequest, InferToken, RequestMoved};
use herd_api::proto::inference::inference_engine_client::InferenceEngineClient;
use herd_api::proto::inference::GenerateRequest;
use tonic::Status;

use crate::engines::Engines;
use crate::serve::fleet::Fleet;
use crate::serve::request_fallback;
use crate::serve::request_migration::{agent_channel, relayed_tokens, request_id_of, RequestMoves};

/// The tokens of one request.
pub type InferStream = Pin<Box<dyn Stream<Item = Result<InferToken, Status>> + Send>>;

/// Where a request runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The allocation whose engine serves it.
    pub alloc_id: String,
    /// Its node.
    pub node: String,
}

/// What runs requests on this agent: its own engines and, when the agent
/// follows the fleet, the fleet view; cheap to clone.
#[derive(Clone)]
pub struct Inference {
    node: String,
    engines: Engines,
    fleet: Option<Fleet>,
    stats: Option<std::sync::Arc<crate::metrics::AgentStats>>,
    moves: RequestMoves,
    /// This agent's own token, sent with requests forwarded to other
    /// agents (their `NodeAgent` checks tokens once bootstrapped).
    token: BearerToken,
}

fn check(request: &InferRequest) -> Result<(), Status> {
    for (field, value) in [
        ("prompt_tokens", request.prompt_tokens),
        ("max_tokens", request.max_tokens),
    ] {
        if value == 0 || value > MAX_REQUEST_TOKENS {
            return Err(Status::invalid_argument(format!(
                "field `{field}`: must be between 1 and {MAX_REQUEST_TOKENS}, got {value}"
            )));
        }
    }
    wire::parse_priority(&request.priority).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(())
}

impl Inference {
    /// Runs requests on the engines of node `node` and, with `fleet`, on
    /// the whole fleet.
    pub fn new(node: &str, engines: Engines, fleet: Option<Fleet>) -> Self {
        Self {
            node: node.to_string(),
            engines,
            fleet,
            stats: None,
            moves: RequestMoves::default(),
            token: BearerToken::default(),
        }
    }

    /// Sends `token` (the agent's node token) with the requests this agent
    /// forwards to other agents.
    pub fn with_token(mut self, token: BearerToken) -> Self {
        self.token = token;
        self
    }

    /// This agent's node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// What this agent remembers of request migrations.
    pub fn moves(&self) -> &RequestMoves {
        &self.moves
    }

    /// Counts each request's outcome into `stats` (the agent's metrics).
    pub fn counted(mut self, stats: std::sync::Arc<crate::metrics::AgentStats>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// This node's engines.
    pub fn engines(&self) -> &Engines {
        &self.engines
    }

    /// The fleet view, when the agent follows the fleet.
    pub fn fleet(&self) -> Option<&Fleet> {
        self.fleet.as_ref()
    }

    /// Runs `request` (see the module documentation) and streams its tokens.
    pub async fn infer(&self, request: InferRequest) -> Result<InferStream, Status> {
        self.dispatch(request).await.map(|(_, stream)| stream)
    }

    /// [`Inference::infer`], saying where the request runs before its
    /// first token.
    pub async fn dispatch(&self, request: InferRequest) -> Result<(Served, InferStream), Status> {
        let (pass_moves, resuming) = (
            request.pass_moves,
            !request.resume.is_empty() || !request.recover_alloc_id.is_empty(),
        );
        let result = self.route(request).await.map(|(served, stream)| {
            let stream = if pass_moves {
                stream
            } else {
                self.follow(stream, &served.alloc_id)
            };
            if resuming {
                // Starts where the source stopped: the entry checks it,
                // and learns where it runs now.
                let stream = named_first(stream, &served);
                (served, stream)
            } else {
                (served.clone(), in_order(stream, served))
            }
        });
        if let Some(stats) = &self.stats {
            stats.inference(match &result {
                Ok((served, _)) if served.node == self.node => "local",
                Ok(_) => "relayed",
                Err(_) => "refused",
            });
        }
        result
    }

    /// [`Inference::dispatch`], uncounted.
    async fn route(&self, request: InferRequest) -> Result<(Served, InferStream), Status> {
        if !request.recover_alloc_id.is_empty() {
            let (alloc_id, stream) = self
                .recoverable(
                    &request.recover_alloc_id,
                    request.recover_request_id,
                    request.recover_from_index,
                )
                .await?
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "no request {} of allocation {:?} was resumed or kept here",
                        request.recover_request_id, request.recover_alloc_id
                    ))
                })?;
            let served = Served {
                alloc_id,
                node: self.node.clone(),
            };
            return Ok((served, stream));
        }
        if !request.resume.is_empty() {
            let stream = self
                .moves
                .take_handoff(&request.resume, &request.alloc_id)
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "no migrated request {:?} of allocation {:?} waits here",
                        request.resume, request.alloc_id
                    ))
                })?;
            let served = Served {
                alloc_id: request.alloc_id,
                node: self.node.clone(),
            };
            return Ok((served, stream));
        }
        check(&request)?;
        if !request.alloc_id.is_empty() {
            return self.local(request).await;
        }
        if request.job.is_empty() {
            return Err(Status::invalid_argument(
                "give `alloc_id` or `job` to choose the engine",
            ));
        }
        let Some(fleet) = &self.fleet else {
            return self.local(request).await;
        };
        let instance = fleet.choose(&request.job, request.prompt_tokens, request.max_tokens)?;
        let request = InferRequest {
            alloc_id: instance.alloc_id.clone(),
            pass_moves: true,
            ..request
        };
        if instance.node == self.node {
            return self.local(request).await;
        }
        let served = Served {
            alloc_id: instance.alloc_id,
            node: instance.node,
        };
        let agent = instance.agent;
        let channel = fleet.channel(&served.node, &agent)?;
        let tokens = NodeAgentClient::with_interceptor(channel, self.token.clone())
            .infer(request)
            .await
            .map_err(|s| relayed(&served.node, &agent, s))?
            .into_inner();
        let (node, agent_addr) = (served.node.clone(), agent.clone());
        let stream = tokens.map(move |t| t.map_err(|s| relayed(&node, &agent_addr, s)));
        Ok((served, Box::pin(stream)))
    }

    /// Runs `request` on an engine of this node: the one of its
    /// `alloc_id`, else the least loaded of its `job`.
    async fn local(&self, request: InferRequest) -> Result<(Served, InferStream), Status> {
        let engine = self.engines.find(&request.alloc_id, &request.job)?;
        let channel = crate::engines::connect_lazy(&engine.addr)?;
        let tokens = InferenceEngineClient::new(channel)
            .generate(GenerateRequest {
                prompt_tokens: request.prompt_tokens,
                max_tokens: request.max_tokens,
                priority: request.priority,
            })
            .await
            .map_err(|s| {
                let message = format!("inference engine of {}: {}", engine.alloc_id, s.message());
                match s.code() {
                    tonic::Code::InvalidArgument => Status::invalid_argument(message),
                    tonic::Code::Unavailable => Status::unavailable(message),
                    _ => Status::internal(message),
                }
            })?;
        let id = request_id_of(tokens.metadata());
        let served = Served {
            alloc_id: engine.alloc_id,
            node: self.node.clone(),
        };
        let stream = relayed_tokens(
            tokens.into_inner(),
            served.alloc_id.clone(),
            self.moves.clone(),
            id,
        );
        Ok((served, stream))
    }

    /// `tokens` followed across request migrations: a `moved` message is
    /// replaced by the rest of the request, asked of the target's agent.
    /// A relay that breaks off (`UNAVAILABLE`: the agent relaying from the
    /// engine died) may have died between the target's resume and its
    /// commit, the `moved` message lost with it: the rest of the request
    /// is then looked for on the fleet's agents ([`Inference::recover`])
    /// before the error is passed on; a source's copy serves a target lost
    /// after it streamed too (it is resumed at the position the client
    /// needs, [`crate::serve::request_fallback`]). Positions are checked
    /// end to end after this, so a recovered stream that does not continue
    /// exactly where the client is ends the request with an error, never a
    /// gap.
    fn follow(&self, tokens: InferStream, alloc_id: &str) -> InferStream {
        let following = Following {
            current: tokens,
            this: self.clone(),
            // Its engine id comes with its first token (or `moved`).
            request: Some((alloc_id.to_string(), 0)),
            handed_over_by: None,
            next: 0,
            done: false,
        };
        Box::pin(futures::stream::unfold(following, |mut f| async move {
            if f.done {
                return None;
            }
            loop {
                match f.current.next().await? {
                    Ok(InferToken {
                        moved: Some(moved),
                        request_id,
                        ..
                    }) => {
                        // A request moved before its first token is named
                        // by this message only.
                        f.handed_over_by = f
                            .request
                            .take()
                            .map(|(alloc, id)| (alloc, if id == 0 { request_id } else { id }));
                        match f.this.resume(&moved).await {
                            Ok(rest) => {
                                // Its engine id there comes with its next token.
                                f.request = Some((moved.alloc_id.clone(), 0));
                                f.current = rest;
                            }
                            // The target's agent is gone (or restarted):
                            // the source may still hold what it sent.
                            Err(e) => {
                                let found = match f.handed_over_by.take() {
                                    Some((alloc, id)) => {
                                        f.this.recover(&alloc, id, Some(f.next)).await
                                    }
                                    None => None,
                                };
                                let Some(rest) = found else {
                                    f.done = true;
                                    return Some((Err(e), f));
                                };
                                // Taken back by its source, under a new
                                // id its first token names.
                                f.current = rest;
                            }
                        }
                    }
                    Ok(mut token) => {
                        if !token.alloc_id.is_empty() {
                            f.request = Some((token.alloc_id.clone(), token.request_id));
                            if token.index > 0 {
                                // Named for this relay by a recovered
                                // stream; the client's stream names where
                                // it runs on its first token only.
                                token.alloc_id.clear();
                                token.node.clear();
                            }
                        } else if let Some((_, id)) = f.request.as_mut() {
                            *id = token.request_id;
                        }
                        f.next = token.index + 1;
                        // `handed_over_by` stays: the source's copy can
                        // still take the request back if this target is
                        // lost, from where the client is then.
                        return Some((Ok(token), f));
                    }
                    Err(e) if e.code() == tonic::Code::Unavailable => {
                        // Where it ran, once its id there is known;
                        // after a hand-over, its source's copy too.
                        let mut found = None;
                        let asks = f.request.iter().filter(|(_, id)| *id != 0);
                        for (alloc, id) in asks.chain(&f.handed_over_by) {
                            found = f.this.recover(alloc, *id, Some(f.next)).await;
                            if found.is_some() {
                                break;
                            }
                        }
                        match found {
                            Some(rest) => {
                                // Where it runs now, its first token names
                                // (so that a second loss is looked for
                                // there and at its source's copy).
                                f.request = None;
                                f.handed_over_by = None;
                                f.current = rest;
                            }
                            None => {
                                f.done = true;
                                return Some((Err(e), f));
                            }
                        }
                    }
                    Err(e) => {
                        f.done = true;
                        return Some((Err(e), f));
                    }
                }
            }
        }))
    }

    /// What this agent holds of request `request_id` of `alloc_id` for a
    /// relay that lost it: the request resumed here by a migration (its
    /// handoff), else, when the relay's client needs position `from` next,
    /// the copy this agent kept of it as its source and resumes now
    /// ([`crate::serve::request_fallback`]); with the allocation it runs on.
    async fn recoverable(
        &self,
        alloc_id: &str,
        request_id: u64,
        from: Option<u32>,
    ) -> Result<Option<(String, InferStream)>, Status> {
        if let Some(found) = self.moves.take_handoff_of(alloc_id, request_id) {
            return Ok(Some(found));
        }
        let Some((fallback, from)) = from.and_then(|from| {
            let fallback = self.moves.fallbacks().take(alloc_id, request_id, from)?;
            Some((fallback, from))
        }) else {
            return Ok(None);
        };
        let stream =
            request_fallback::resume_here(self, alloc_id, request_id, fallback, from).await?;
        Ok(Some((alloc_id.to_string(), stream)))
    }

    /// The rest of request `request_id` of `alloc_id`, from position
    /// `from` when given, if an agent of the fleet holds it (see
    /// [`Inference::follow`] and [`Inference::recoverable`]): this agent,
    /// then every agent of the fleet's instances, a few times over about a
    /// second (the target may resume it just after the source's agent
    /// died); the first that has it answers. None when none holds it.
    async fn recover(
        &self,
        alloc_id: &str,
        request_id: u64,
        from: Option<u32>,
    ) -> Option<InferStream> {
        for attempt in 0..RECOVER_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(RECOVER_PAUSE).await;
            }
            match self.recoverable(alloc_id, request_id, from).await {
                Ok(Some((alloc_id, stream))) => {
                    let here = Served {
                        alloc_id,
                        node: self.node.clone(),
                    };
                    return Some(named_first(stream, &here));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(alloc = alloc_id, request_id, error = %e, "recovering a lost request");
                }
            }
            let fleet = self.fleet.as_ref()?;
            let mut agents: Vec<(String, String)> = fleet
                .fresh_remote()
                .into_iter()
                .map(|(i, _)| (i.node, i.agent))
                .collect();
            agents.sort();
            agents.dedup();
            let asks = agents.into_iter().map(|(node, agent)| {
                Box::pin(async move {
                    let channel = fleet.channel(&node, &agent).map_err(|_| ())?;
                    let request = InferRequest {
                        recover_alloc_id: alloc_id.to_string(),
                        recover_request_id: request_id,
                        recover_from_index: from,
                        pass_moves: true,
                        ..Default::default()
                    };
                    let answer = tokio::time::timeout(
                        RECOVER_CALL_TIMEOUT,
                        NodeAgentClient::with_interceptor(channel, self.token.clone())
                            .infer(request),
                    )
                    .await
                    .map_err(|_| ())?
                    .map_err(|_| ())?;
                    Ok::<_, ()>((node, agent, answer.into_inner()))
                })
            });
            let asks: Vec<_> = asks.collect();
            if asks.is_empty() {
                continue;
            }
            if let Ok(((node, agent, tokens), _)) = futures::future::select_ok(asks).await {
                tracing::info!(
                    alloc = alloc_id,
                    request_id,
                    %node,
                    "relay lost mid-migration: the request goes on where it was resumed"
                );
                let stream = tokens.map(move |t| t.map_err(|s| relayed(&node, &agent, s)));
                return Some(Box::pin(stream));
            }
        }
        None
    }

    /// The rest of a migrated request, from its target's agent.
    async fn resume(&self, moved: &RequestMoved) -> Result<InferStream, Status> {
        let request = InferRequest {
            alloc_id: moved.alloc_id.clone(),
            resume: moved.handoff.clone(),
            pass_moves: true,
            ..Default::default()
        };
        let (node, agent) = (moved.node.clone(), moved.agent.clone());
        let tokens = NodeAgentClient::with_interceptor(
            agent_channel(self, Some(&moved.node), &moved.agent)?,
            self.token.clone(),
        )
        .infer(request)
        .await
        .map_err(|s| relayed(&node, &agent, s))?
        .into_inner();
        Ok(Box::pin(
            tokens.map(move |t| t.map_err(|s| relayed(&node, &agent, s))),
        ))
    }
}

/// The state of [`Inference::follow`]'s stream.
struct Following {
    /// Where tokens come from now.
    current: InferStream,
    this: Inference,
    /// The allocation and engine request id tokens of `current` named
    /// last: what a lost relay's recovery asks for.
    request: Option<(String, u64)>,
    /// The request as its last source knew it, after a `moved` message:
    /// the source keeps a copy (its KV bytes for 10 s, its state for 30
    /// minutes), which a relay that loses the target asks for.
    handed_over_by: Option<(String, u64)>,
    /// The position the client needs next.
    next: u32,
    /// The stream has ended (after an error).
    done: bool,
}

/// How often a lost relay's request is looked for ([`Inference::recover`]).
const RECOVER_ATTEMPTS: u32 = 4;
/// Between two looks.
const RECOVER_PAUSE: std::time::Duration = std::time::Duration::from_millis(300);
/// How long one agent may take to answer a look.
const RECOVER_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A failure of another node's agent, relayed.
fn relayed(node: &str, agent: &str, s: Status) -> Status {
    let message = format!("node {node} (agent {agent}): {}", s.message());
    match s.code() {
        tonic::Code::InvalidArgument => Status::invalid_argument(message),
        tonic::Code::NotFound => Status::not_found(message),
        _ => Status::unavailable(message),
    }
}

/// `tokens` (a recovered or claimed stream, which starts mid-request) with
/// its first token naming `served`, where the request runs now: the relay
/// that asked learns it, to look there (and at the copy its source keeps)
/// if it loses the request again.
fn named_first(tokens: InferStream, served: &Served) -> InferStream {
    let (alloc_id, node) = (served.alloc_id.clone(), served.node.clone());
    let mut named = false;
    Box::pin(tokens.map(move |token| {
        token.map(|mut t| {
            if !named && t.moved.is_none() {
                named = true;
                if t.alloc_id.is_empty() {
                    t.alloc_id = alloc_id.clone();
                    t.node = node.clone();
                }
            }
            t
        })
    }))
}

/// `tokens` checked to carry positions 0, 1, 2... once each, in order
/// (ending the stream with an error otherwise), the first naming where the
/// request runs.
pub fn in_order(tokens: InferStream, served: Served) -> InferStream {
    let mut next: u32 = 0;
    let mut failed = false;
    Box::pin(tokens.scan((), move |(), token| {
        if failed {
            return futures::future::ready(None);
        }
        futures::future::ready(Some(match token {
            // Not a token: passed on to the relay that follows it.
            Ok(t) if t.moved.is_some() => Ok(t),
            Ok(mut t) if t.index == next => {
                if next == 0 {
                    t.alloc_id = served.alloc_id.clone();
                    t.node = served.node.clone();
                }
                next += 1;
                Ok(t)
            }
            Ok(t) => {
                failed = true;
                Err(Status::internal(format!(
                    "allocation {} sent token {} where token {next} was due",
                    served.alloc_id, t.index
                )))
            }
            Err(e) => {
                failed = true;
                Err(e)
            }
        }))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(index: u32) -> Result<InferToken, Status> {
        Ok(InferToken {
            index,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_stream_in_order_passes_and_names_where_it_runs_on_the_first_token() {
        let served = Served {
            alloc_id: "a1".into(),
            node: "n1".into(),
        };
        let stream = futures::stream::iter(vec![token(0), token(1), token(2)]);
        let out: Vec<_> = in_order(Box::pin(stream), served).collect().await;
        let out: Vec<InferToken> = out.into_iter().map(|t| t.expect("token")).collect();
        assert_eq!(out.iter().map(|t| t.index).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(
            (out[0].alloc_id.as_str(), out[0].node.as_str()),
            ("a1", "n1")
        );
        assert!(out[1].alloc_id.is_empty());
    }

    #[tokio::test]
    async fn a_moved_message_passes_without_taking_a_position() {
        let served = Served {
            alloc_id: "a1".into(),
            node: "n1".into(),
        };
        let moved = Ok(InferToken {
            index: 2,
            moved: Some(RequestMoved {
                alloc_id: "a2".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let stream = futures::stream::iter(vec![token(0), token(1), moved, token(2)]);
        let out: Vec<_> = in_order(Box::pin(stream), served).collect().await;
        let out: Vec<InferToken> = out.into_iter().map(|t| t.expect("token")).collect();
        assert_eq!(out.len(), 4);
        assert!(out[2].moved.is_some());
        assert_eq!(out[3].index, 2);
    }

    #[tokio::test]
    async fn a_gap_or_a_duplicate_ends_the_stream_with_an_error() {
        for indexes in [vec![0, 2, 3], vec![0, 1, 1, 2]] {
            let served = Served {
                alloc_id: "a1".into(),
                node: "n1".into(),
            };
            let stream = futures::stream::iter(indexes.into_iter().map(token).collect::<Vec<_>>());
            let out: Vec<_> = in_order(Box::pin(stream), served).collect().await;
            let errors = out.iter().filter(|t| t.is_err()).count();
            assert_eq!(errors, 1, "{out:?}");
            assert!(out.last().is_some_and(|t| t.is_err()), "{out:?}");
        }
    }
}
