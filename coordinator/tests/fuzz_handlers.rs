//! Fuzzing the coordinator's gRPC handlers (issue 24; docs/fuzzing.md):
//! arbitrary and protobuf-shaped bytes sent as the body of every method of
//! every service the coordinator serves, to a running one-member
//! coordinator (in memory, on 127.0.0.1), through its prost decoding,
//! conversions, validation and commands. No handler may panic; every
//! refusal is an ordinary gRPC error.
//!
//! The methods come from the `.proto` files (`fuzz_support::SERVED_BY`),
//! so a method added to a served service is fuzzed without a change here.
//! Those that change the cluster as a whole (membership, the ACL
//! bootstrap, Raft's own messages) each get a fresh coordinator, so that
//! they cannot spoil the run of the others.
//!
//! Cases per method: `HERD_FUZZ_CASES` (short by default, for CI).

// Test harness code: a panic here is a test failure with its location
// (clippy.toml allows unwrap/expect in tests; helpers outside #[test] need this).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../api/tests/fuzz_support/grpc.rs"]
mod fuzz_grpc;
#[path = "../../api/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use std::time::Duration;

use herd_api::proto::agent::agent_client::AgentClient;
use herd_api::proto::agent::RegisterNodeRequest;
use herd_api::proto::v1::jobs_client::JobsClient;
use herd_api::proto::v1::{self as pb, SubmitJobRequest};
use herd_coordinator::start::RunningCoordinator;
use proptest::prelude::*;
use prost::Message;
use tonic::transport::Channel;

const TARGET: &str = "coordinator/tests/fuzz_handlers.rs";

/// Methods that change the cluster as a whole: fuzzed one per fresh
/// coordinator.
fn disruptive(path: &str) -> bool {
    path.starts_with("/herd.internal.v1.Internal/")
        || matches!(
            path,
            "/herd.v1.Cluster/AddMember"
                | "/herd.v1.Cluster/RemoveMember"
                | "/herd.v1.Cluster/ReplaceMember"
                | "/herd.v1.Acl/Bootstrap"
        )
}

async fn start_one() -> RunningCoordinator {
    let member = common::start_one().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while member.coordinator.read_state(|s| s.cluster_id.is_none()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cluster got no id"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    member
}

/// A node and a job, so that names the fuzzer guesses ("node-1",
/// "hello") reach handlers' paths past "not found".
async fn seed(channel: &Channel) {
    let mut agents = AgentClient::new(channel.clone());
    agents
        .register(RegisterNodeRequest {
            name: "node-1".into(),
            addr: "127.0.0.1:1".into(),
            capacity: Some(pb::Resources {
                cpu_millis: 4000,
                memory_bytes: 8 << 30,
                gpus: 0,
                gpu_model: String::new(),
            }),
            labels: Default::default(),
            drivers: vec![],
            http: String::new(),
        })
        .await
        .expect("register node-1");
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello.toml"),
    )
    .expect("examples/hello.toml");
    let spec = herd_api::spec_file::parse_job_spec(&source, "hello.toml").expect("valid");
    JobsClient::new(channel.clone())
        .submit(SubmitJobRequest {
            spec: Some(pb::JobSpec::from(&spec)),
        })
        .await
        .expect("submit hello");
}

/// Keeps the addresses of membership changes on loopback (a closed
/// port): the coordinator dials new members, and a fuzzed server must
/// dial nothing but this machine. Undecodable bodies go as they are (the
/// server refuses them before any dial).
fn loopback_only(rpc: &fuzz_support::Rpc, bytes: Vec<u8>) -> Vec<u8> {
    const CLOSED: &str = "127.0.0.1:1";
    match rpc.path().as_str() {
        "/herd.v1.Cluster/AddMember" => match pb::AddMemberRequest::decode(bytes.as_slice()) {
            Ok(mut m) => {
                m.addr = CLOSED.into();
                m.encode_to_vec()
            }
            Err(_) => bytes,
        },
        "/herd.v1.Cluster/ReplaceMember" => {
            match pb::ReplaceMemberRequest::decode(bytes.as_slice()) {
                Ok(mut m) => {
                    m.new_addr = CLOSED.into();
                    m.encode_to_vec()
                }
                Err(_) => bytes,
            }
        }
        _ => bytes,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn channel(rt: &tokio::runtime::Runtime, member: &RunningCoordinator) -> Channel {
    // The channel's worker is spawned on the runtime.
    let _inside = rt.enter();
    Channel::from_shared(format!("http://{}", member.local_addr))
        .expect("a valid uri")
        .connect_lazy()
}

fn print(report: &[(String, fuzz_grpc::Tally)]) {
    for (path, t) in report {
        eprintln!(
            "{path}: {} answered, {} refused, {} timed out",
            t.answered, t.refused, t.timed_out
        );
    }
}

/// Every ordinary method, on one coordinator holding a node and a job.
#[test]
fn every_coordinator_method_survives_hostile_bodies() {
    fuzz_support::record_panics();
    let rt = runtime();
    let member = rt.block_on(start_one());
    let channel = channel(&rt, &member);
    rt.block_on(seed(&channel));
    let rpcs: Vec<_> = fuzz_grpc::rpcs_of(TARGET)
        .into_iter()
        .filter(|r| !disruptive(&r.path()))
        .collect();
    assert!(rpcs.len() > 30, "too few methods: {rpcs:?}");
    let report = fuzz_grpc::fuzz_methods(
        &rt,
        &channel,
        &rpcs,
        fuzz_support::cases(64),
        Duration::from_millis(300),
        loopback_only,
    );
    print(&report);
    // The decoder and validation refused most, yet some bodies got through
    // to an answer: the fuzzing reached past decoding.
    let answered: u32 = report.iter().map(|(_, t)| t.answered).sum();
    assert!(answered > 0, "no call was ever answered: {report:?}");
    assert!(
        fuzz_support::take_panics().is_empty(),
        "a panic outside any call"
    );
    drop(member);
}

/// Membership changes, the ACL bootstrap and Raft's messages, each on a
/// coordinator of its own.
#[test]
fn disruptive_methods_survive_hostile_bodies() {
    fuzz_support::record_panics();
    let rt = runtime();
    let rpcs: Vec<_> = fuzz_grpc::rpcs_of(TARGET)
        .into_iter()
        .filter(|r| disruptive(&r.path()))
        .collect();
    assert!(rpcs.len() >= 4, "too few methods: {rpcs:?}");
    let cases = (fuzz_support::cases(64) / 2).max(1);
    for rpc in rpcs {
        let member = rt.block_on(start_one());
        let channel = channel(&rt, &member);
        let report = fuzz_grpc::fuzz_methods(
            &rt,
            &channel,
            std::slice::from_ref(&rpc),
            cases,
            Duration::from_millis(500),
            loopback_only,
        );
        print(&report);
        rt.block_on(async { drop(member) });
    }
    assert!(
        fuzz_support::take_panics().is_empty(),
        "a panic outside any call"
    );
}

/// A panic in a server task (not the test's thread) is what the targets
/// above must catch: the record sees one.
#[test]
fn a_panic_in_a_server_task_is_recorded() {
    fuzz_support::record_panics();
    let rt = runtime();
    let joined = rt.block_on(async {
        tokio::spawn(async {
            panic!("planted panic in a spawned task");
        })
        .await
    });
    assert!(joined.is_err(), "the planted panic did not happen");
    let panics = fuzz_support::take_panics();
    assert!(
        panics.iter().any(|p| p.contains("planted panic")),
        "not recorded: {panics:?}"
    );
}

/// A job spec the file parser accepts, with values anywhere in their valid
/// ranges (and constraints, affinities, spread, gang): the scheduler and
/// the state machine get valid but extreme work, not only refusals.
fn valid_spec() -> impl Strategy<Value = pb::JobSpec> {
    (
        (
            prop::sample::select(vec!["j1", "j2", "j3", "hello"]),
            prop::sample::select(vec!["batch", "service"]),
            prop_oneof![1u32..=4, 1u32..=64],
            0u32..=100,
            any::<bool>(),
            prop::sample::select(vec!["", "node", "rack"]),
            prop::sample::select(vec!["", "low", "medium", "high", "max"]),
        ),
        (
            prop::sample::select(vec!["exec", "simvm", "dljob", "inference"]),
            prop_oneof![1u64..=100, 1u64..=64_000],
            prop_oneof![Just("64MiB"), Just("1GiB"), Just("7GiB"), Just("1MiB")],
            prop_oneof![4 => Just(0u32), 1 => 1u32..=8],
            proptest::option::of((
                prop::sample::select(vec!["rack", "gpu_gen"]),
                prop::sample::select(vec!["=", "!=", "exists"]),
                prop::sample::select(vec!["r1", "r2"]),
            )),
            proptest::option::of(
                (-100i32..=100).prop_filter("weight 0 is refused", |w| *w != 0),
            ),
        ),
    )
        .prop_filter_map(
            "the spec must parse",
            |((name, ty, count, priority, gang, spread, power), (driver, cpu, memory, gpus, constraint, affinity))| {
                let mut text = format!(
                    "name = \"{name}\"\ntype = \"{ty}\"\ncount = {count}\npriority = {priority}\ngang = {gang}\n"
                );
                if !spread.is_empty() {
                    text.push_str(&format!("spread = \"{spread}\"\n"));
                }
                if !power.is_empty() {
                    text.push_str(&format!("power_class = \"{power}\"\n"));
                }
                if let Some((label, op, value)) = constraint {
                    text.push_str(&format!("[[constraint]]\nlabel = \"{label}\"\nop = \"{op}\"\n"));
                    if op != "exists" {
                        text.push_str(&format!("value = \"{value}\"\n"));
                    }
                }
                if let Some(weight) = affinity {
                    text.push_str(&format!(
                        "[[affinity]]\nlabel = \"rack\"\nvalue = \"r1\"\nweight = {weight}\n"
                    ));
                }
                text.push_str(&format!("[task]\ndriver = \"{driver}\"\n"));
                if driver == "exec" {
                    text.push_str("command = \"/bin/sh\"\n");
                }
                text.push_str(&format!(
                    "[task.resources]\ncpu = {cpu}\nmemory = \"{memory}\"\ngpus = {gpus}\n"
                ));
                herd_api::spec_file::parse_job_spec(&text, "fuzz.toml")
                    .ok()
                    .map(|spec| pb::JobSpec::from(&spec))
            },
        )
}

/// A node agent's registration, valid, with labels the specs ask for.
fn valid_node() -> impl Strategy<Value = RegisterNodeRequest> {
    (
        prop::sample::select(vec!["node-1", "node-2", "node-3"]),
        prop_oneof![1u64..=4_000, 1u64..=128_000],
        prop_oneof![Just(1u64 << 30), Just(8u64 << 30), Just(1u64 << 40)],
        prop_oneof![3 => Just(0u32), 1 => 1u32..=8],
        prop::sample::select(vec!["r1", "r2"]),
        any::<bool>(),
    )
        .prop_map(|(name, cpu, memory, gpus, rack, hopper)| {
            let mut labels = std::collections::HashMap::new();
            labels.insert("rack".to_string(), rack.to_string());
            if hopper {
                labels.insert("gpu_gen".to_string(), "hopper".to_string());
            }
            RegisterNodeRequest {
                name: name.into(),
                addr: "127.0.0.1:1".into(),
                capacity: Some(pb::Resources {
                    cpu_millis: cpu,
                    memory_bytes: memory,
                    gpus,
                    gpu_model: if gpus > 0 {
                        "h100".into()
                    } else {
                        String::new()
                    },
                }),
                labels: labels.into_iter().collect(),
                drivers: vec![],
                http: String::new(),
            }
        })
}

/// What happens next to the work placed.
#[derive(Debug, Clone)]
enum Step {
    Register(RegisterNodeRequest),
    Submit(Box<pb::JobSpec>),
    /// Report the status of the allocation at this index.
    Report(prop::sample::Index, &'static str, u64),
    Drain(&'static str, u64, bool),
    Stop(&'static str),
    Eligible(&'static str, bool),
}

fn step() -> impl Strategy<Value = Step> {
    let node = prop::sample::select(vec!["node-1", "node-2", "node-3"]);
    prop_oneof![
        2 => valid_node().prop_map(Step::Register),
        3 => valid_spec().prop_map(|s| Step::Submit(Box::new(s))),
        3 => (
            any::<prop::sample::Index>(),
            prop::sample::select(vec!["running", "complete", "failed", "lost", "pending"]),
            0u64..4,
        )
            .prop_map(|(i, s, g)| Step::Report(i, s, g)),
        1 => (node.clone(), prop_oneof![Just(0u64), Just(1u64), Just(u64::MAX)], any::<bool>())
            .prop_map(|(n, d, m)| Step::Drain(n, d, m)),
        1 => prop::sample::select(vec!["j1", "j2", "j3", "hello"]).prop_map(Step::Stop),
        1 => (node, any::<bool>()).prop_map(|(n, e)| Step::Eligible(n, e)),
    ]
}

/// Runs `step`; true when it was a submission the coordinator accepted.
async fn run_step(channel: &Channel, step: Step) -> bool {
    use herd_api::proto::agent::{AllocReport, ReportAllocationsRequest};
    use herd_api::proto::v1::allocs_client::AllocsClient;
    use herd_api::proto::v1::nodes_client::NodesClient;
    match step {
        Step::Register(r) => {
            let _ = AgentClient::new(channel.clone()).register(r).await;
        }
        Step::Submit(spec) => {
            let accepted = JobsClient::new(channel.clone())
                .submit(SubmitJobRequest { spec: Some(*spec) })
                .await
                .is_ok();
            return accepted;
        }
        Step::Report(i, status, generation) => {
            let Ok(allocs) = AllocsClient::new(channel.clone())
                .list(pb::ListAllocsRequest::default())
                .await
            else {
                return false;
            };
            let allocs = allocs.into_inner().allocs;
            if allocs.is_empty() {
                return false;
            }
            let a = &allocs[i.index(allocs.len())];
            let _ = AgentClient::new(channel.clone())
                .report_allocations(ReportAllocationsRequest {
                    node: a.node.clone(),
                    reports: vec![AllocReport {
                        id: a.id.clone(),
                        generation: a.generation + generation.saturating_sub(1),
                        status: status.into(),
                        at_ms: 1,
                        event: "fuzz".into(),
                        detail: String::new(),
                        exit_code: (status == "failed").then_some(1),
                        signal: None,
                    }],
                })
                .await;
        }
        Step::Drain(node, deadline_ms, no_migrate) => {
            let _ = NodesClient::new(channel.clone())
                .drain(pb::DrainNodeRequest {
                    name: node.into(),
                    deadline_ms,
                    no_migrate,
                })
                .await;
        }
        Step::Stop(job) => {
            let _ = JobsClient::new(channel.clone())
                .stop(pb::StopJobRequest { name: job.into() })
                .await;
        }
        Step::Eligible(node, eligible) => {
            let _ = NodesClient::new(channel.clone())
                .set_eligibility(pb::SetEligibilityRequest {
                    name: node.into(),
                    eligible,
                })
                .await;
        }
    }
    false
}

/// Valid but extreme work in random order: nodes coming and going,
/// jobs submitted and stopped, allocations reported in every status (and
/// stale generations): the scheduler and the state machine behind the
/// handlers must not panic.
#[test]
fn random_valid_workloads_never_panic_the_coordinator() {
    fuzz_support::record_panics();
    let rt = runtime();
    let member = rt.block_on(start_one());
    let channel = channel(&rt, &member);
    let mut runner = proptest::test_runner::TestRunner::new(fuzz_support::config(48));
    let accepted = std::cell::Cell::new(0u32);
    let result = runner.run(&proptest::collection::vec(step(), 1..12), |steps| {
        rt.block_on(async {
            for s in steps {
                let run = tokio::time::timeout(Duration::from_secs(2), run_step(&channel, s));
                if let Ok(true) = run.await {
                    accepted.set(accepted.get() + 1);
                }
            }
        });
        let panics = fuzz_support::take_panics();
        if panics.is_empty() {
            Ok(())
        } else {
            Err(proptest::test_runner::TestCaseError::fail(
                panics.join("\n"),
            ))
        }
    });
    rt.block_on(async { drop(member) });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Valid work reached the state machine, not only refusals.
    assert!(accepted.get() > 0, "no generated job was accepted");
}
