//! Clients of a chaos run: register readers/writers and a job client, each
//! recording every operation's invocation and completion into a shared
//! [`Recorder`].
//!
//! Every operation is one gRPC call to one coordinator (picked at random),
//! never retried behind the client's back: a retried write could be applied
//! twice, and the history would then lie about what the client did. Any
//! error on a write makes its outcome unknown; only answers that say the
//! write was refused make it a failure.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herd_api::client::{ClientError, HerdClient};
use herd_api::proto::v1::jobs_client::JobsClient;
use herd_api::proto::v1::nodes_client::NodesClient;
use herd_api::proto::v1::variables_client::VariablesClient;
use herd_api::proto::v1::{
    DrainNodeRequest, GetJobRequest, GetVariableRequest, JobSpec, NodeUpdateReply,
    PutVariableRequest, Resources, SetEligibilityRequest, StopJobRequest, SubmitJobRequest,
    TaskSpec,
};

use crate::history::{Op, OpKind, Outcome, Record};
use crate::nemesis::rng::Rng;

/// How long a client waits for one answer before calling the outcome unknown.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Collects the records of a run, stamped against one start instant.
pub struct Recorder {
    t0: Instant,
    /// Another clock than real time (the simulation's), ns.
    clock: Option<fn() -> u64>,
    next_id: AtomicU64,
    records: Mutex<Vec<Record>>,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Self {
            t0: Instant::now(),
            clock: None,
            next_id: AtomicU64::new(1),
            records: Mutex::new(Vec::new()),
        }
    }

    /// A recorder stamping with `clock` (ns) instead of real time: the
    /// simulation's clock, so that recorded times are simulated times.
    pub fn with_clock(clock: fn() -> u64) -> Self {
        Self {
            clock: Some(clock),
            ..Self::new()
        }
    }

    /// Nanoseconds since the recorder was made (or on its clock).
    pub fn now_ns(&self) -> u64 {
        match self.clock {
            Some(clock) => clock(),
            None => self.t0.elapsed().as_nanos() as u64,
        }
    }

    /// A fresh operation id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Appends a record.
    pub fn push(&self, record: Record) {
        // A poisoned lock only means another client panicked mid-push; the
        // records themselves are still whole.
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.push(record);
    }

    /// Everything recorded so far.
    pub fn take(&self) -> Vec<Record> {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *records)
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// What one call returned, classified.
struct Answer {
    outcome: Outcome,
    value: Option<String>,
    version: Option<u64>,
    error: Option<String>,
}

fn unknown(error: String) -> Answer {
    Answer {
        outcome: Outcome::Unknown,
        value: None,
        version: None,
        error: Some(error),
    }
}

fn failed(error: String) -> Answer {
    Answer {
        outcome: Outcome::Fail,
        value: None,
        version: None,
        error: Some(error),
    }
}

/// Whether an error means the request never left this client: no TCP
/// connection could be made, so no coordinator can have applied it.
fn never_sent(error: &str) -> bool {
    error.contains("tcp connect error")
}

/// Runs `call` with [`OP_TIMEOUT`]; Err is the error text.
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, (Option<tonic::Code>, String)> {
    match tokio::time::timeout(OP_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err((e.code(), e.to_string())),
        Err(_) => Err((None, format!("no answer within {OP_TIMEOUT:?}"))),
    }
}

/// What a register operation observed: outcome, value, version, error.
pub type RegisterAnswer = (Outcome, Option<String>, Option<u64>, Option<String>);

/// One register operation against coordinator `member`.
pub async fn register_op(
    client: &HerdClient,
    member: usize,
    kind: OpKind,
    key: &str,
    value: Option<String>,
    expected: Option<u64>,
) -> RegisterAnswer {
    register_op_reading(client, member, kind, key, value, expected, false).await
}

/// [`register_op`], with reads served `stale` when asked (a planted bug).
async fn register_op_reading(
    client: &HerdClient,
    member: usize,
    kind: OpKind,
    key: &str,
    value: Option<String>,
    expected: Option<u64>,
    stale: bool,
) -> RegisterAnswer {
    let answer = match kind {
        OpKind::Read => {
            let request = GetVariableRequest {
                key: key.to_string(),
                stale,
            };
            let call = client.call_one(member, |ch| async move {
                VariablesClient::new(ch)
                    .get(request)
                    .await
                    .map(|r| r.into_inner())
            });
            match bounded(call).await {
                Ok(reply) => Answer {
                    outcome: Outcome::Ok,
                    value: reply
                        .found
                        .then(|| String::from_utf8_lossy(&reply.value).into_owned()),
                    version: Some(if reply.found { reply.version } else { 0 }),
                    error: None,
                },
                // A read that failed changed nothing.
                Err((_, e)) => failed(e),
            }
        }
        _ => {
            let request = PutVariableRequest {
                key: key.to_string(),
                value: value.clone().unwrap_or_default().into_bytes(),
                expected_version: expected,
            };
            let call = client.call_one(member, |ch| async move {
                VariablesClient::new(ch)
                    .put(request)
                    .await
                    .map(|r| r.into_inner())
            });
            match bounded(call).await {
                Ok(reply) if reply.ok => Answer {
                    outcome: Outcome::Ok,
                    value: value.clone(),
                    version: Some(reply.version),
                    error: None,
                },
                Ok(reply) => Answer {
                    outcome: Outcome::Fail,
                    value: value.clone(),
                    version: Some(reply.version),
                    error: Some("compare-and-set refused".into()),
                },
                Err((Some(tonic::Code::InvalidArgument), e)) => failed(e),
                Err((_, e)) if never_sent(&e) => failed(e),
                Err((_, e)) => unknown(e),
            }
        }
    };
    let value = if kind == OpKind::Read {
        answer.value
    } else {
        value
    };
    (answer.outcome, value, answer.version, answer.error)
}

/// Shared by every client of a run.
#[derive(Clone)]
pub struct ClientContext {
    /// Coordinator addresses.
    pub addrs: Vec<String>,
    /// Where operations go.
    pub recorder: Arc<Recorder>,
    /// Set when the run is over.
    pub stop: Arc<AtomicBool>,
    /// A client to use instead of one over TCP to `addrs` (the
    /// deterministic simulation's, over its own network).
    pub client: Option<HerdClient>,
    /// Reads ask for `stale: true`: a planted bug the linearizability
    /// checker must catch (the simulation's self-test), never set by runs.
    pub stale_reads: bool,
}

impl ClientContext {
    /// Clients of `addrs` recording into `recorder` until `stop` is set.
    pub fn new(addrs: Vec<String>, recorder: Arc<Recorder>, stop: Arc<AtomicBool>) -> Self {
        Self {
            addrs,
            recorder,
            stop,
            client: None,
            stale_reads: false,
        }
    }

    fn client(&self) -> Option<HerdClient> {
        match &self.client {
            Some(client) => Some(client.clone()),
            None => HerdClient::new(&self.addrs).ok(),
        }
    }
}

/// The member id recorded for a request sent to the coordinator at
/// `member` (an index into the clients' address list, ordered by id).
pub fn member_id(member: usize) -> Option<u64> {
    Some(member as u64 + 1)
}

/// Records one finished operation, sent to coordinator `member` (an index).
#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &ClientContext,
    process: u64,
    member: usize,
    kind: OpKind,
    key: &str,
    expected: Option<u64>,
    invoke_ns: u64,
    (outcome, value, version, error): (Outcome, Option<String>, Option<u64>, Option<String>),
) {
    ctx.recorder.push(Record::Op(Op {
        id: ctx.recorder.next_id(),
        process,
        kind,
        key: key.to_string(),
        value,
        expected,
        version,
        invoke_ns,
        complete_ns: ctx.recorder.now_ns(),
        outcome,
        error,
        member: member_id(member),
    }));
}

/// The register keys a run uses.
pub fn register_keys(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("chaos-r{i}")).collect()
}

/// A register client: reads, writes and compare-and-sets on `keys` until
/// stopped. Written values are unique (`c{process}-{n}`).
pub async fn register_client(ctx: ClientContext, process: u64, keys: Vec<String>, mut rng: Rng) {
    let Some(client) = ctx.client() else {
        return;
    };
    let members = ctx.addrs.len() as u64;
    let mut last_version = vec![0u64; keys.len()];
    let mut n = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        let k = rng.below(keys.len() as u64) as usize;
        let key = &keys[k];
        let member = rng.below(members) as usize;
        let roll = rng.below(10);
        let (kind, value, expected) = match roll {
            0..=3 => (OpKind::Read, None, None),
            4..=6 => {
                n += 1;
                (OpKind::Write, Some(format!("c{process}-{n}")), None)
            }
            _ => {
                n += 1;
                (
                    OpKind::Cas,
                    Some(format!("c{process}-{n}")),
                    Some(last_version[k]),
                )
            }
        };
        let invoke_ns = ctx.recorder.now_ns();
        let answer =
            register_op_reading(&client, member, kind, key, value, expected, ctx.stale_reads).await;
        if answer.0 != Outcome::Unknown {
            if let Some(version) = answer.2 {
                last_version[k] = version;
            }
        }
        record(
            &ctx, process, member, kind, key, expected, invoke_ns, answer,
        );
        tokio::time::sleep(Duration::from_millis(10 + rng.below(20))).await;
    }
}

/// The environment variable a job client's specs carry their marker in:
/// unique per submit or update, so a query names the write it saw.
pub const MARK_ENV: &str = "HERD_CHAOS_MARK";

/// What a query of a stopped job is recorded as having seen (a job is
/// stopped at most once per run, so the marker is unique per job).
pub const STOPPED_MARK: &str = "stopped";

/// [`sleeper_spec`] with one instance, marked with `mark`.
pub fn marked_spec(name: &str, mark: &str) -> JobSpec {
    let mut spec = sleeper_spec(name, 1);
    if let Some(task) = spec.task.as_mut() {
        task.env.insert(MARK_ENV.to_string(), mark.to_string());
    }
    spec
}

/// The spec of a small service job whose instances sleep.
pub fn sleeper_spec(name: &str, count: u32) -> JobSpec {
    JobSpec {
        name: name.to_string(),
        r#type: "service".into(),
        count,
        priority: 50,
        task: Some(TaskSpec {
            driver: "exec".into(),
            command: "/bin/sh".into(),
            args: vec!["-c".into(), "exec sleep 600".into()],
            resources: Some(Resources {
                cpu_millis: 10,
                memory_bytes: 8 << 20,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A sleeper service whose instances must never run twice at once: it sets
/// `stop_after_disconnect`, so a node cut off from the coordinators stops
/// it, and herd starts no replacement before the copy it replaces ended.
pub fn careful_spec(name: &str, count: u32, stop_after: Duration) -> JobSpec {
    JobSpec {
        stop_after_disconnect_ms: herd_api::duration::to_wire_ms(Some(stop_after)),
        ..sleeper_spec(name, count)
    }
}

/// Submits `spec` through coordinator `member`, classified.
pub async fn submit(
    client: &HerdClient,
    member: usize,
    spec: JobSpec,
) -> (Outcome, Option<String>) {
    let (outcome, _, error) = submit_versioned(client, member, spec).await;
    (outcome, error)
}

/// Submits `spec`, returning also the job version the answer names.
async fn submit_versioned(
    client: &HerdClient,
    member: usize,
    spec: JobSpec,
) -> (Outcome, Option<u64>, Option<String>) {
    let call = client.call_one(member, |ch| async move {
        JobsClient::new(ch)
            .submit(SubmitJobRequest { spec: Some(spec) })
            .await
            .map(|r| r.into_inner())
    });
    match bounded(call).await {
        Ok(reply) => (Outcome::Ok, Some(reply.version), None),
        Err((Some(tonic::Code::InvalidArgument), e)) => (Outcome::Fail, None, Some(e)),
        Err((_, e)) if never_sent(&e) => (Outcome::Fail, None, Some(e)),
        Err((_, e)) => (Outcome::Unknown, None, Some(e)),
    }
}

/// Submits one of the jobs a run starts with. A member elected moments ago
/// may not know yet that it belongs to the cluster, so the submit goes
/// round the `members` until one takes it (resubmitting the same spec
/// changes nothing), each attempt recorded as an operation of process 0
/// (without a marker, so the job-version checker leaves it out). Gives up
/// with the last error after `limit`.
pub async fn submit_setup(
    client: &HerdClient,
    members: usize,
    spec: JobSpec,
    recorder: &Recorder,
    limit: Duration,
) -> Result<(), String> {
    // The runtime's clock: the simulation drives it.
    let started = tokio::time::Instant::now();
    for attempt in 0usize.. {
        let member = attempt % members.max(1);
        let invoke_ns = recorder.now_ns();
        let (outcome, error) = submit(client, member, spec.clone()).await;
        recorder.push(Record::Op(Op {
            id: recorder.next_id(),
            process: 0,
            kind: OpKind::Submit,
            key: spec.name.clone(),
            value: None,
            expected: None,
            version: None,
            invoke_ns,
            complete_ns: recorder.now_ns(),
            outcome,
            error: error.clone(),
            member: member_id(member),
        }));
        match error {
            None => return Ok(()),
            Some(error) if started.elapsed() > limit => return Err(error),
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    Err("no attempt was made".into())
}

/// A job client: submits small sleeper jobs, updates some (a changed spec,
/// so a new version), stops some, queries others, until stopped. Every
/// submit and update carries a unique marker ([`MARK_ENV`]) and every
/// answer a version, so each job's history is a versioned register the
/// register checkers can judge.
pub async fn job_client(ctx: ClientContext, process: u64, mut rng: Rng) {
    let Some(client) = ctx.client() else {
        return;
    };
    let members = ctx.addrs.len() as u64;
    let mut submitted: Vec<String> = Vec::new();
    let mut n = 0u64;
    let mut marks = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        let member = rng.below(members) as usize;
        let roll = rng.below(10);
        let invoke_ns = ctx.recorder.now_ns();
        if roll < 3 || submitted.is_empty() {
            n += 1;
            marks += 1;
            let name = format!("chaos-j{process}-{n}");
            let mark = format!("m{marks}");
            let (outcome, version, error) =
                submit_versioned(&client, member, marked_spec(&name, &mark)).await;
            submitted.push(name.clone());
            record(
                &ctx,
                process,
                member,
                OpKind::Submit,
                &name,
                None,
                invoke_ns,
                (outcome, Some(mark), version, error),
            );
        } else if roll < 5 {
            marks += 1;
            let name = rng.pick(&submitted).cloned().unwrap_or_default();
            let mark = format!("m{marks}");
            let (outcome, version, error) =
                submit_versioned(&client, member, marked_spec(&name, &mark)).await;
            record(
                &ctx,
                process,
                member,
                OpKind::Update,
                &name,
                None,
                invoke_ns,
                (outcome, Some(mark), version, error),
            );
        } else if roll < 6 {
            let index = rng.below(submitted.len() as u64) as usize;
            let name = submitted.swap_remove(index);
            let request = StopJobRequest { name: name.clone() };
            let call = client.call_one(member, |ch| async move {
                JobsClient::new(ch)
                    .stop(request)
                    .await
                    .map(|r| r.into_inner())
            });
            let (outcome, version, error) = match bounded(call).await {
                Ok(reply) => (Outcome::Ok, Some(reply.version), None),
                Err((Some(tonic::Code::NotFound | tonic::Code::InvalidArgument), e)) => {
                    (Outcome::Fail, None, Some(e))
                }
                Err((_, e)) if never_sent(&e) => (Outcome::Fail, None, Some(e)),
                Err((_, e)) => (Outcome::Unknown, None, Some(e)),
            };
            record(
                &ctx,
                process,
                member,
                OpKind::Stop,
                &name,
                None,
                invoke_ns,
                (outcome, Some(STOPPED_MARK.to_string()), version, error),
            );
        } else {
            let name = rng.pick(&submitted).cloned().unwrap_or_default();
            let request = GetJobRequest {
                name: name.clone(),
                stale: false,
            };
            let call = client.call_one(member, |ch| async move {
                JobsClient::new(ch)
                    .get(request)
                    .await
                    .map(|r| r.into_inner())
            });
            let answer = match bounded(call).await {
                Ok(job) => {
                    let mark = if job.status == "stopped" {
                        Some(STOPPED_MARK.to_string())
                    } else {
                        job.spec
                            .and_then(|s| s.task)
                            .and_then(|t| t.env.get(MARK_ENV).cloned())
                    };
                    (Outcome::Ok, mark, Some(job.version), None)
                }
                // Answered after the read barrier: the job did not exist,
                // an observation of absence (version 0) as much as a found
                // job is one of presence, and checked as such.
                Err((Some(tonic::Code::NotFound), _)) => (Outcome::Ok, None, Some(0), None),
                Err((_, e)) => (Outcome::Fail, None, None, Some(e)),
            };
            record(
                &ctx,
                process,
                member,
                OpKind::Query,
                &name,
                None,
                invoke_ns,
                answer,
            );
        }
        tokio::time::sleep(Duration::from_millis(150 + rng.below(200))).await;
    }
}

/// A node client: drains a random node (no deadline), keeps it drained a
/// few seconds, then makes it eligible again, retrying that until it is
/// acknowledged (it is idempotent), so no node stays drained past the run.
/// Runs until `ctx.stop`; always ends with every node it drained undrained
/// or the attempt recorded.
pub async fn node_client(ctx: ClientContext, process: u64, nodes: Vec<String>, mut rng: Rng) {
    let Some(client) = ctx.client() else {
        return;
    };
    let members = ctx.addrs.len() as u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(1000 + rng.below(2000))).await;
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let Some(node) = rng.pick(&nodes).cloned() else {
            return;
        };
        let invoke_ns = ctx.recorder.now_ns();
        let request = DrainNodeRequest {
            name: node.clone(),
            deadline_ms: 0,
            no_migrate: false,
        };
        let member = rng.below(members) as usize;
        let call = client.call_one(member, |ch| async move {
            NodesClient::new(ch)
                .drain(request)
                .await
                .map(|r| r.into_inner())
        });
        let answer = node_answer(bounded(call).await);
        let drained = answer.0 != Outcome::Fail;
        record(
            &ctx,
            process,
            member,
            OpKind::Drain,
            &node,
            None,
            invoke_ns,
            answer,
        );
        if !drained {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(2000 + rng.below(2000))).await;
        // Undrain until acknowledged, even after the run is told to stop.
        for _ in 0..60 {
            let invoke_ns = ctx.recorder.now_ns();
            let request = SetEligibilityRequest {
                name: node.clone(),
                eligible: true,
            };
            let member = rng.below(members) as usize;
            let call = client.call_one(member, |ch| async move {
                NodesClient::new(ch)
                    .set_eligibility(request)
                    .await
                    .map(|r| r.into_inner())
            });
            let answer = node_answer(bounded(call).await);
            let done = answer.0 == Outcome::Ok;
            record(
                &ctx,
                process,
                member,
                OpKind::Undrain,
                &node,
                None,
                invoke_ns,
                answer,
            );
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Classifies a node update's answer; the version is the command's log index.
fn node_answer(
    result: Result<NodeUpdateReply, (Option<tonic::Code>, String)>,
) -> (Outcome, Option<String>, Option<u64>, Option<String>) {
    match result {
        Ok(reply) => (Outcome::Ok, None, Some(reply.log_index), None),
        Err((Some(tonic::Code::NotFound | tonic::Code::InvalidArgument), e)) => {
            (Outcome::Fail, None, None, Some(e))
        }
        Err((_, e)) if never_sent(&e) => (Outcome::Fail, None, None, Some(e)),
        Err((_, e)) => (Outcome::Unknown, None, None, Some(e)),
    }
}
