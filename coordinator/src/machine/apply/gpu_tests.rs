//! GPUs bound to allocations, at the state machine: indices chosen in the
//! plan and checked at apply (never one index to two live allocations of a
//! node, never past the node's count), carried in the assignment and its
//! environment, reserved on a move's target when it starts and taken at
//! the switch-over, and allocation records from before GPU indices still
//! read.

use herd_api::alloc::{AllocStatus, Allocation};
use herd_api::capabilities::{DriverCaps, MigrationMode};
use herd_api::job::{JobSpec, JobType};
use herd_api::migration::MigrationPhase;
use herd_api::resources::Resources;

use crate::machine::command::{Command, CommandResult};
use crate::planning::{plan_job, PlanCommand, PlannedPlacement};
use crate::state::assignments::assigned_to;
use crate::state::ClusterState;
use crate::testkit::{alloc_update, node, report, run, spec};

/// A ready node with `gpus` H100s.
fn gpu_node(state: &mut ClusterState, index: u64, name: &str, gpus: u32) {
    let mut info = node(name);
    info.capacity = Resources {
        gpus,
        gpu_model: Some("h100".into()),
        ..info.capacity
    };
    run(
        state,
        index,
        Command::RegisterNode {
            node: info,
            now_ms: 1,
        },
    );
}

/// A service of one instance on `gpus` GPUs, run by `driver`.
fn gpu_job(name: &str, gpus: u32, driver: &str) -> JobSpec {
    let mut job = spec(name, JobType::Service, 1);
    job.task.driver = driver.into();
    job.task.resources.gpus = gpus;
    job
}

/// Submits `job` at `index` and applies its plan at `index + 1`, through
/// the log's codec as the leader proposes it.
fn submit_and_place(state: &mut ClusterState, index: u64, job: JobSpec) -> CommandResult {
    let name = job.name.clone();
    run(
        state,
        index,
        Command::SubmitJob {
            spec: job,
            now_ms: 2,
        },
    );
    let plan = plan_job(state, &state.jobs[&name], 2).expect("a plan");
    let command = Command::apply_plan(plan, 3);
    let bytes = herd_consensus::codec::encode(&command).expect("encode");
    let logged = crate::machine::legacy::decode_command(&bytes).expect("decode");
    run(state, index + 1, logged).0
}

fn only_alloc_of<'s>(state: &'s ClusterState, job: &str) -> &'s Allocation {
    let allocs: Vec<&Allocation> = state.allocs_of_job(job).collect();
    assert_eq!(allocs.len(), 1, "{allocs:?}");
    allocs[0]
}

fn env_of(state: &ClusterState, node: &str, alloc: &str, key: &str) -> Option<String> {
    assigned_to(state, node)
        .into_iter()
        .find(|a| a.id == alloc)
        .and_then(|a| a.env.get(key).cloned())
}

#[test]
fn gpu_jobs_get_disjoint_indices_and_their_workloads_see_them() {
    let mut state = ClusterState::default();
    gpu_node(&mut state, 1, "g1", 4);
    submit_and_place(&mut state, 2, gpu_job("train", 2, "dljob"));
    submit_and_place(&mut state, 4, gpu_job("serve", 1, "inference"));
    let train = only_alloc_of(&state, "train").clone();
    let serve = only_alloc_of(&state, "serve").clone();
    assert_eq!(train.gpu_indices, [0, 1]);
    assert_eq!(serve.gpu_indices, [2]);
    assert!(train.events[0].detail.contains("GPUs 0,1"), "{train:?}");

    let assigned = assigned_to(&state, "g1");
    let of = |id: &str| assigned.iter().find(|a| a.id == id).expect("assigned");
    assert_eq!(of(&train.id).gpu_indices, [0, 1]);
    assert_eq!(of(&serve.id).gpu_indices, [2]);
    for key in crate::state::assignments::GPU_ENV {
        assert_eq!(env_of(&state, "g1", &train.id, key).as_deref(), Some("0,1"));
        assert_eq!(env_of(&state, "g1", &serve.id, key).as_deref(), Some("2"));
    }

    // One GPU is left: a job asking for two waits, one asking for one gets GPU 3.
    let blocked = submit_and_place(&mut state, 6, gpu_job("big", 2, "exec"));
    assert!(
        matches!(&blocked, CommandResult::PlanApplied { placed, .. } if placed.is_empty()),
        "{blocked:?}"
    );
    submit_and_place(&mut state, 8, gpu_job("small", 1, "exec"));
    assert_eq!(only_alloc_of(&state, "small").gpu_indices, [3]);

    // A job without GPUs gets no GPU variables.
    submit_and_place(&mut state, 10, spec("web", JobType::Service, 1));
    let web = only_alloc_of(&state, "web").clone();
    assert!(web.gpu_indices.is_empty());
    assert_eq!(env_of(&state, "g1", &web.id, "CUDA_VISIBLE_DEVICES"), None);

    // The records round-trip through storage with their indices.
    let restored = ClusterState::from_pairs(state.to_pairs()).expect("reads");
    assert_eq!(restored, state);
}

#[test]
fn a_plan_that_gives_an_index_twice_or_past_the_count_is_refused_at_apply() {
    let mut state = ClusterState::default();
    gpu_node(&mut state, 1, "g1", 4);
    submit_and_place(&mut state, 2, gpu_job("train", 2, "dljob"));
    run(
        &mut state,
        4,
        Command::SubmitJob {
            spec: gpu_job("serve", 2, "exec"),
            now_ms: 4,
        },
    );
    let version = state.jobs["serve"].version;
    let plan_on = |gpus: &[u32]| PlanCommand {
        job: "serve".into(),
        job_version: version,
        placements: vec![PlannedPlacement {
            gpu_indices: gpus.to_vec(),
            ..PlannedPlacement::new(0, "g1")
        }],
        evictions: Vec::new(),
        blocked: None,
    };
    for (index, gpus, why) in [
        (5, &[1, 2][..], "GPU 1 of node g1 is already held"),
        (6, &[2, 4][..], "GPU index 4 is past node g1's 4 GPUs"),
        (7, &[3, 3][..], "GPU index 3 is given twice"),
        (8, &[3][..], "gives 1 GPU indices for 2 GPUs"),
    ] {
        match run(&mut state, index, Command::apply_plan(plan_on(gpus), 5)).0 {
            CommandResult::PlanApplied {
                placed, rejected, ..
            } => {
                assert!(placed.is_empty(), "{gpus:?}: {placed:?}");
                assert!(rejected[0].contains(why), "{gpus:?}: {rejected:?}");
            }
            other => panic!("{gpus:?}: {other:?}"),
        }
    }
    assert_eq!(state.allocs_of_job("serve").count(), 0);
    assert!(state.jobs["serve"]
        .blocked
        .as_deref()
        .is_some_and(|b| b.contains("refused at apply")));
    // The free ones, in any order, are accepted as given.
    run(&mut state, 9, Command::apply_plan(plan_on(&[3, 2]), 9));
    assert_eq!(only_alloc_of(&state, "serve").gpu_indices, [3, 2]);
}

#[test]
fn a_move_reserves_gpus_on_its_target_when_it_starts_and_takes_them_at_the_switch() {
    let mut state = ClusterState::default();
    gpu_node(&mut state, 1, "g1", 2);
    gpu_node(&mut state, 2, "g2", 2);
    let caps = DriverCaps {
        migration: MigrationMode::LivePreCopy,
        pause: true,
        power_cap: false,
    };
    for (index, name) in [(3, "g1"), (4, "g2")] {
        run(
            &mut state,
            index,
            Command::SetNodeDrivers {
                node: name.into(),
                drivers: Some([("vm".to_string(), caps)].into()),
            },
        );
    }
    // Bin-packing puts both on g1: vm on GPU 0, other on GPU 1.
    submit_and_place(&mut state, 5, gpu_job("vm", 1, "vm"));
    submit_and_place(&mut state, 7, gpu_job("other", 1, "exec"));
    let vm = only_alloc_of(&state, "vm").clone();
    assert_eq!(
        (vm.node.as_str(), vm.gpu_indices.as_slice()),
        ("g1", &[0][..])
    );
    // g1 is full: the next GPU job goes to g2, on GPU 0.
    let pinned = gpu_job("pinned", 1, "exec");
    submit_and_place(&mut state, 10, pinned);
    assert_eq!(only_alloc_of(&state, "pinned").node, "g2");
    assert_eq!(only_alloc_of(&state, "pinned").gpu_indices, [0]);

    let (accepted, refused) = report(
        &mut state,
        12,
        "g1",
        vec![alloc_update(&vm, AllocStatus::Running)],
        12,
    );
    assert_eq!(accepted, 1, "{refused:?}");
    let started = run(
        &mut state,
        13,
        Command::StartMigration {
            alloc_id: vm.id.clone(),
            target: "g2".into(),
            downtime_limit_ms: 300,
            bandwidth_bytes_per_sec: None,
            now_ms: 13,
        },
    )
    .0;
    let CommandResult::MigrationUpdated { id, .. } = started else {
        panic!("{started:?}");
    };
    assert_eq!(state.migrations[&id].target_gpu_indices, [1]);
    // The target readies it on GPU 1; the source keeps running it on GPU 0.
    assert_eq!(
        env_of(&state, "g2", &vm.id, "CUDA_VISIBLE_DEVICES").as_deref(),
        Some("1")
    );
    assert_eq!(
        env_of(&state, "g1", &vm.id, "CUDA_VISIBLE_DEVICES").as_deref(),
        Some("0")
    );
    // The reservation holds GPU 1 of g2: g2 has no GPU left for new work.
    let blocked = submit_and_place(&mut state, 14, gpu_job("late", 1, "exec"));
    assert!(
        matches!(&blocked, CommandResult::PlanApplied { placed, .. } if placed.is_empty()),
        "{blocked:?}"
    );
    for (index, phase) in [
        (16, MigrationPhase::Preparing),
        (17, MigrationPhase::Transferring),
        (18, MigrationPhase::Switching),
    ] {
        run(
            &mut state,
            index,
            Command::AdvanceMigration {
                id: id.clone(),
                phase,
                bytes: 1,
                rounds: 1,
                now_ms: index,
            },
        );
    }
    let switched = run(
        &mut state,
        19,
        Command::SwitchMigration {
            id: id.clone(),
            downtime_ms: 5,
            now_ms: 19,
        },
    )
    .0;
    assert!(
        matches!(
            switched,
            CommandResult::MigrationUpdated {
                phase: MigrationPhase::Completed,
                ..
            }
        ),
        "{switched:?}"
    );
    let moved = &state.allocations[&vm.id];
    assert_eq!(
        (moved.node.as_str(), moved.gpu_indices.as_slice()),
        ("g2", &[1][..])
    );
    assert_eq!(
        env_of(&state, "g2", &vm.id, "HERD_GPU_INDICES").as_deref(),
        Some("1")
    );
}

#[test]
fn allocation_records_from_before_gpu_indices_still_read() {
    // Format 2's allocation: the same fields, without gpu_indices.
    #[derive(serde::Serialize)]
    struct AllocationV2<'a> {
        id: &'a str,
        job: &'a str,
        job_version: u64,
        instance: u32,
        node: &'a str,
        resources: Resources,
        priority: u32,
        gang: Option<String>,
        generation: u64,
        desired: herd_api::alloc::AllocDesired,
        status: AllocStatus,
        events: Vec<herd_api::alloc::AllocEvent>,
        create_index: u64,
        modify_index: u64,
    }
    let old = AllocationV2 {
        id: "train-0-7",
        job: "train",
        job_version: 1,
        instance: 0,
        node: "g1",
        resources: Resources {
            gpus: 2,
            ..Resources::default()
        },
        priority: 50,
        gang: None,
        generation: 1,
        desired: herd_api::alloc::AllocDesired::Run,
        status: AllocStatus::Running,
        events: Vec::new(),
        create_index: 7,
        modify_index: 7,
    };
    let mut value = vec![2u8];
    value.extend(herd_consensus::codec::encode(&old).expect("encode"));
    let state = ClusterState::from_pairs(vec![(b"alloc/train-0-7".to_vec(), value)])
        .expect("a format 2 allocation reads");
    let alloc = &state.allocations["train-0-7"];
    assert_eq!((alloc.resources.gpus, alloc.generation), (2, 1));
    assert!(alloc.gpu_indices.is_empty(), "a count-only holder");
    // Written back in the current format, it reads the same.
    let again = ClusterState::from_pairs(state.to_pairs()).expect("reads");
    assert_eq!(again, state);

    // A count-only holder still counts: a new placement beside it gets
    // indices from the rest of the node.
    let mut state = again;
    gpu_node(&mut state, 8, "g1", 4);
    submit_and_place(&mut state, 9, gpu_job("serve", 2, "exec"));
    assert_eq!(only_alloc_of(&state, "serve").gpu_indices, [0, 1]);
    let third = submit_and_place(&mut state, 11, gpu_job("more", 1, "exec"));
    assert!(
        matches!(&third, CommandResult::PlanApplied { placed, .. } if placed.is_empty()),
        "4 GPUs, all counted: {third:?}"
    );
}
