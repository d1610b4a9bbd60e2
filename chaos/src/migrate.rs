//! Live migrations under faults: a training job that can move
//! ([`train_spec`]), a migration client that keeps moving its allocations
//! between agents through the `Migrations` gRPC API while the nemesis acts,
//! and the final read of migrations, allocations and node capacities that
//! [`crate::check::migrations`] judges.
//!
//! The client records every `Migrations.Start` it sends as a
//! [`MigrationAttempt`]: how the start was answered (started, refused, or
//! unknown when the answer was lost), then every phase it saw while
//! following the migration, with its deadline and this host's wall clock,
//! until the migration ended. A start is one call to one coordinator,
//! never retried behind the client's back, like every operation of the
//! harness.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herd_api::client::{is_connect_failure, ClientError, HerdClient};
use herd_api::proto::v1::allocs_client::AllocsClient;
use herd_api::proto::v1::migrations_client::MigrationsClient;
use herd_api::proto::v1::nodes_client::NodesClient;
use herd_api::proto::v1::{
    GetMigrationRequest, JobSpec, ListAllocsRequest, ListMigrationsRequest, ListNodesRequest,
    MigrationInfo, Resources, StartMigrationRequest, TaskSpec,
};
use herd_api::retry::{ErrorMarks, Reason};

use crate::history::{
    AllocState, FinalMigrationState, MigrationAttempt, NodeRoom, Outcome, PhaseSeen, Record,
    SeenMigration,
};
use crate::nemesis::rng::Rng;
use crate::workload::{member_id, ClientContext, Recorder, OP_TIMEOUT};

/// The training job a run that migrates keeps running and moving.
pub const TRAIN_JOB: &str = "chaos-train";
/// How many trainers it runs (each its own allocation, not a gang: a gang
/// member cannot be moved alone).
pub const TRAIN_COUNT: u32 = 2;
/// How often a followed migration is looked at.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

/// A `dljob` training job (`herd toy-train`) long enough to outlast any
/// run: a million steps of 20 ms, so it is still training whenever the
/// client picks it. Small, so that a move is quick and any node has room.
pub fn train_spec() -> JobSpec {
    let args = [
        "--steps",
        "1000000",
        "--seed",
        "7",
        "--step-ms",
        "20",
        "--checkpoint-every",
        "100",
    ];
    JobSpec {
        name: TRAIN_JOB.to_string(),
        r#type: "batch".into(),
        count: TRAIN_COUNT,
        priority: 50,
        task: Some(TaskSpec {
            driver: "dljob".into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            resources: Some(Resources {
                cpu_millis: 50,
                memory_bytes: 32 << 20,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The simulated VM service a run that migrates keeps running and moving
/// live beside the trainers: a move with two copies of one allocation,
/// only one of which may run its guest (judged from each copy's own
/// answer, `crate::history::GuestSeen`).
pub const VM_JOB: &str = "chaos-vm";
/// How many VMs it runs.
pub const VM_COUNT: u32 = 1;

/// A `simvm` service ([`VM_JOB`]): 16 MiB whose guest dirties 1 MiB/s, so
/// a move takes a few pre-copy rounds of well under a second.
pub fn vm_spec() -> JobSpec {
    simvm_service(VM_JOB, VM_COUNT, 16, "1MiB")
}

/// A service of `count` simulated VMs (`simvm`) of `memory_mib` whose
/// guests dirty `dirty_rate` (`1MiB`: per second), which can move live:
/// what the harness and the simulation move.
pub fn simvm_service(name: &str, count: u32, memory_mib: u64, dirty_rate: &str) -> JobSpec {
    JobSpec {
        name: name.to_string(),
        r#type: "service".into(),
        count,
        priority: 50,
        task: Some(TaskSpec {
            driver: "simvm".into(),
            config: [("dirty_rate".to_string(), dirty_rate.to_string())].into(),
            resources: Some(Resources {
                cpu_millis: 50,
                memory_bytes: memory_mib << 20,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The training job of a balancing run: [`train_spec`] marked `[balance]
/// movable`, each trainer asking for a share of a node large enough that
/// two on one node put it clearly above its neighbours' mean, so the
/// agents move one away by themselves.
pub fn movable_train_spec() -> JobSpec {
    let mut spec = train_spec();
    spec.balance_movable = true;
    if let Some(resources) = spec.task.as_mut().and_then(|t| t.resources.as_mut()) {
        resources.cpu_millis = MOVABLE_TRAINER_CPU_MILLIS;
    }
    spec
}

/// CPU each trainer of a balancing run asks for.
const MOVABLE_TRAINER_CPU_MILLIS: u64 = 400;

/// This host's wall clock, ms since the epoch: the clock the leader stamps
/// deadlines with (`herd_api::clock`, which the simulation turns into
/// simulated time), the harness running on the same host.
fn wall_ms() -> u64 {
    herd_api::clock::now_ms()
}

/// `call` with [`OP_TIMEOUT`]; a timeout is None.
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Option<Result<T, ClientError>> {
    tokio::time::timeout(OP_TIMEOUT, call).await.ok()
}

/// Whether a failed start certainly changed nothing: the coordinator
/// refused it (bad input, the state machine said no) or said it was not
/// applied, or it never left this client.
fn refused(error: &ClientError) -> bool {
    match error {
        // `call_one` turns "try elsewhere" answers of a write into this:
        // only those that certainly did not apply.
        ClientError::Unavailable { .. }
        | ClientError::NoAddress
        | ClientError::BadAddress { .. } => true,
        ClientError::Status { status, .. } => {
            if is_connect_failure(status) || status.code() == tonic::Code::InvalidArgument {
                return true;
            }
            ErrorMarks::read(status).is_some_and(|marks| {
                marks.not_applied
                    || matches!(
                        marks.reason,
                        Some(Reason::Rejected | Reason::NotFound | Reason::Invalid)
                    )
            })
        }
    }
}

/// The API's record in the history's terms.
pub fn seen(m: &MigrationInfo) -> SeenMigration {
    SeenMigration {
        id: m.id.clone(),
        alloc_id: m.alloc_id.clone(),
        kind: m.kind.clone(),
        source: m.source.clone(),
        target: m.target.clone(),
        phase: m.phase.clone(),
        phase_deadline_ms: m.phase_deadline_ms,
        started_at_ms: m.started_at_ms,
        ended_at_ms: m.ended_at_ms,
        from_generation: m.from_generation,
        create_index: m.create_index,
        bytes: m.bytes,
        downtime_ms: m.downtime_ms,
        error: (!m.error.is_empty()).then(|| m.error.clone()),
    }
}

/// Adds `m` to `attempt`: a phase change is appended to its phases, the
/// record kept as the last seen, and the first sight of its end stamped.
fn observe(attempt: &mut MigrationAttempt, m: &MigrationInfo, recorder: &Recorder) {
    let now = recorder.now_ns();
    let record = seen(m);
    if attempt.phases.last().map(|p| p.phase.as_str()) != Some(m.phase.as_str()) {
        attempt.phases.push(PhaseSeen {
            at_ns: now,
            wall_ms: wall_ms(),
            phase: m.phase.clone(),
            deadline_ms: m.phase_deadline_ms,
        });
    }
    if record.is_final() && attempt.ended_ns.is_none() {
        attempt.ended_ns = Some(now);
    }
    attempt.last = Some(record);
}

/// A running allocation of `job` and the node it runs on, picked at
/// random; None when none runs or the list could not be read.
async fn pick_alloc(
    client: &HerdClient,
    member: usize,
    job: &str,
    rng: &mut Rng,
) -> Option<(String, String)> {
    let call = client.call_one(member, |ch| {
        let job = job.to_string();
        async move {
            AllocsClient::new(ch)
                .list(ListAllocsRequest { job, stale: false })
                .await
                .map(|r| r.into_inner())
        }
    });
    let allocs = bounded(call).await?.ok()?;
    let running: Vec<(String, String)> = allocs
        .allocs
        .into_iter()
        .filter(|a| a.status == "running" && a.desired == "run")
        .map(|a| (a.id, a.node))
        .collect();
    rng.pick(&running).cloned()
}

/// A ready, eligible node among `nodes` other than `source`, picked at
/// random; None when there is none or the list could not be read.
async fn pick_target(
    client: &HerdClient,
    member: usize,
    nodes: &[String],
    source: &str,
    rng: &mut Rng,
) -> Option<String> {
    let call = client.call_one(member, |ch| async move {
        NodesClient::new(ch)
            .list(ListNodesRequest { stale: false })
            .await
            .map(|r| r.into_inner())
    });
    let listed = bounded(call).await?.ok()?;
    let ready: Vec<String> = listed
        .nodes
        .into_iter()
        .filter(|n| n.status == "ready" && n.eligible && n.name != source)
        .filter(|n| nodes.contains(&n.name))
        .map(|n| n.name)
        .collect();
    rng.pick(&ready).cloned()
}

/// How long a migration client follows the migration in flight once told
/// to stop: the run's quiet period for migrations. Every phase deadline of
/// herd is longer, but a migration whose agents are both up ends in
/// seconds; one still running after this is reported by the checker.
pub const FOLLOW_AFTER_STOP: Duration = Duration::from_secs(30);

/// A migration client: until `ctx.stop`, every 0.5-1.5 s picks a running
/// allocation of `job` ([`TRAIN_JOB`], [`VM_JOB`], the simulation's
/// live-moving VMs) and a ready node among `nodes` other than its own, asks
/// to move it there, and follows the migration until it ends (past the
/// stop by at most [`FOLLOW_AFTER_STOP`]), recording each attempt.
pub async fn migration_client(
    ctx: ClientContext,
    process: u64,
    job: &str,
    nodes: Vec<String>,
    mut rng: Rng,
) {
    let client = match &ctx.client {
        Some(client) => client.clone(),
        None => match HerdClient::new(&ctx.addrs) {
            Ok(client) => client,
            Err(_) => return,
        },
    };
    let members = ctx.addrs.len().max(1) as u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1000))).await;
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let member = rng.below(members) as usize;
        let Some((alloc_id, source)) = pick_alloc(&client, member, job, &mut rng).await else {
            continue;
        };
        let Some(target) = pick_target(&client, member, &nodes, &source, &mut rng).await else {
            continue;
        };
        let member = rng.below(members) as usize;
        let attempt = start_and_follow(
            &client, &ctx, process, member, alloc_id, source, target, &mut rng,
        )
        .await;
        ctx.recorder.push(Record::Migration(Box::new(attempt)));
    }
}

/// Sends one start to coordinator `member` and follows what it started.
#[allow(clippy::too_many_arguments)]
async fn start_and_follow(
    client: &HerdClient,
    ctx: &ClientContext,
    process: u64,
    member: usize,
    alloc_id: String,
    source: String,
    target: String,
    rng: &mut Rng,
) -> MigrationAttempt {
    let request = StartMigrationRequest {
        alloc_id: alloc_id.clone(),
        target: target.clone(),
        downtime_limit_ms: 0,
        bandwidth_bytes_per_sec: 0,
    };
    let invoke_ns = ctx.recorder.now_ns();
    let call = client.call_one(member, |ch| async move {
        MigrationsClient::new(ch)
            .start(request)
            .await
            .map(|r| r.into_inner())
    });
    let answer = bounded(call).await;
    let mut attempt = MigrationAttempt {
        id: ctx.recorder.next_id(),
        process,
        alloc_id,
        source,
        target,
        invoke_ns,
        complete_ns: ctx.recorder.now_ns(),
        outcome: Outcome::Unknown,
        member: member_id(member),
        error: None,
        phases: Vec::new(),
        last: None,
        ended_ns: None,
    };
    let started = match answer {
        Some(Ok(info)) => info,
        Some(Err(e)) => {
            attempt.outcome = if refused(&e) {
                Outcome::Fail
            } else {
                Outcome::Unknown
            };
            attempt.error = Some(e.to_string());
            return attempt;
        }
        None => {
            attempt.error = Some(format!("no answer within {OP_TIMEOUT:?}"));
            return attempt;
        }
    };
    attempt.outcome = Outcome::Ok;
    observe(&mut attempt, &started, &ctx.recorder);
    follow(client, ctx, &started.id, &mut attempt, rng).await;
    attempt
}

/// Looks at migration `id` every [`FOLLOW_EVERY`] through a random member
/// until it ends, or [`FOLLOW_AFTER_STOP`] after the run told the client
/// to stop.
async fn follow(
    client: &HerdClient,
    ctx: &ClientContext,
    id: &str,
    attempt: &mut MigrationAttempt,
    rng: &mut Rng,
) {
    let members = ctx.addrs.len().max(1) as u64;
    let mut stopped_at: Option<tokio::time::Instant> = None;
    while attempt.ended_ns.is_none() {
        if ctx.stop.load(Ordering::Relaxed) {
            let since = *stopped_at.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= FOLLOW_AFTER_STOP {
                return;
            }
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
        let member = rng.below(members) as usize;
        let request = GetMigrationRequest {
            id: id.to_string(),
            stale: false,
        };
        let call = client.call_one(member, |ch| async move {
            MigrationsClient::new(ch)
                .get(request)
                .await
                .map(|r| r.into_inner())
        });
        // A read that failed (a member down or cut off) is tried again.
        if let Some(Ok(info)) = bounded(call).await {
            observe(attempt, &info, &ctx.recorder);
        }
    }
}

/// Waits until [`TRAIN_JOB`] runs all its allocations, up to `limit`.
pub async fn until_training(client: &HerdClient, limit: Duration) -> bool {
    until_running(client, TRAIN_JOB, TRAIN_COUNT, limit).await
}

/// Waits until `job` runs `count` allocations, up to `limit`.
pub async fn until_running(client: &HerdClient, job: &str, count: u32, limit: Duration) -> bool {
    let started = tokio::time::Instant::now();
    while started.elapsed() < limit {
        let call = client.call(|ch| async move {
            AllocsClient::new(ch)
                .list(ListAllocsRequest {
                    job: job.into(),
                    stale: false,
                })
                .await
                .map(|r| r.into_inner())
        });
        if let Some(Ok(reply)) = bounded(call).await {
            let running = reply
                .allocs
                .iter()
                .filter(|a| a.status == "running" && a.desired == "run")
                .count();
            if running >= count as usize {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Spawns migration clients over `nodes`, numbered from `process`,
/// stopped by `stop`: one per job of `jobs` (a job named twice gets two).
pub fn spawn_clients(
    ctx: &ClientContext,
    stop: Arc<AtomicBool>,
    process: u64,
    jobs: &[&str],
    nodes: &[String],
    rng: &mut Rng,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0u64..)
        .zip(jobs)
        .map(|(i, job)| {
            let client_ctx = ClientContext {
                stop: stop.clone(),
                ..ctx.clone()
            };
            let (job, nodes, rng) = (job.to_string(), nodes.to_vec(), rng.fork());
            tokio::spawn(async move {
                migration_client(client_ctx, process + i, &job, nodes, rng).await
            })
        })
        .collect()
}

/// Reads every migration, allocation and node through `client` and
/// records them (a list that cannot be read is recorded as None, and the
/// checks that need it are undecided).
pub async fn record_final(client: &HerdClient, recorder: &Recorder) {
    let migrations = bounded(client.call(|ch| async move {
        MigrationsClient::new(ch)
            .list(ListMigrationsRequest {
                alloc_id: String::new(),
                stale: false,
            })
            .await
            .map(|r| r.into_inner())
    }))
    .await
    .and_then(Result::ok)
    .map(|reply| reply.migrations.iter().map(seen).collect());
    let allocs = bounded(client.call(|ch| async move {
        AllocsClient::new(ch)
            .list(ListAllocsRequest {
                job: String::new(),
                stale: false,
            })
            .await
            .map(|r| r.into_inner())
    }))
    .await
    .and_then(Result::ok)
    .map(|reply| {
        reply
            .allocs
            .into_iter()
            .map(|a| {
                let r = a.resources.unwrap_or_default();
                AllocState {
                    id: a.id,
                    job: a.job,
                    node: a.node,
                    status: a.status,
                    generation: a.generation,
                    cpu_millis: r.cpu_millis,
                    memory_bytes: r.memory_bytes,
                    gpus: r.gpus,
                }
            })
            .collect()
    });
    let nodes = bounded(client.call(|ch| async move {
        NodesClient::new(ch)
            .list(ListNodesRequest { stale: false })
            .await
            .map(|r| r.into_inner())
    }))
    .await
    .and_then(Result::ok)
    .map(|reply| {
        reply
            .nodes
            .into_iter()
            .map(|n| {
                let c = n.capacity.unwrap_or_default();
                NodeRoom {
                    name: n.name,
                    cpu_millis: c.cpu_millis,
                    memory_bytes: c.memory_bytes,
                    gpus: c.gpus,
                }
            })
            .collect()
    });
    recorder.push(Record::FinalMigrations(FinalMigrationState {
        migrations,
        allocs,
        nodes,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn a_start_refused_or_never_sent_is_a_failure_and_a_lost_answer_unknown() {
        let status = |s: Status| ClientError::Status {
            addr: "a".into(),
            status: s,
        };
        assert!(refused(&ClientError::Unavailable { tried: vec![] }));
        assert!(refused(&status(Status::invalid_argument("same node"))));
        let rejected = ErrorMarks {
            reason: Some(Reason::Rejected),
            not_applied: true,
            leader: None,
        }
        .on(Status::failed_precondition("already moving"));
        assert!(refused(&status(rejected)));
        let unknown = ErrorMarks {
            reason: Some(Reason::OutcomeUnknown),
            not_applied: false,
            leader: None,
        }
        .on(Status::unavailable("leader lost"));
        assert!(!refused(&status(unknown)));
        assert!(!refused(&status(Status::cancelled("connection reset"))));
    }

    #[test]
    fn following_keeps_each_phase_once_and_stamps_the_end() {
        let recorder = Recorder::new();
        let mut attempt = MigrationAttempt {
            id: 1,
            process: 1,
            alloc_id: "a".into(),
            source: "n1".into(),
            target: "n2".into(),
            invoke_ns: 0,
            complete_ns: 1,
            outcome: Outcome::Ok,
            member: None,
            error: None,
            phases: Vec::new(),
            last: None,
            ended_ns: None,
        };
        let mut info = MigrationInfo {
            id: "mig-1".into(),
            phase: "planned".into(),
            ..Default::default()
        };
        for phase in [
            "planned",
            "planned",
            "transferring",
            "completed",
            "completed",
        ] {
            info.phase = phase.into();
            observe(&mut attempt, &info, &recorder);
        }
        let phases: Vec<&str> = attempt.phases.iter().map(|p| p.phase.as_str()).collect();
        assert_eq!(phases, ["planned", "transferring", "completed"]);
        assert!(attempt.ended_ns.is_some());
        assert_eq!(attempt.last.map(|l| l.phase), Some("completed".into()));
    }
}
