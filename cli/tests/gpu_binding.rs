//! GPUs bound to allocations end to end on real processes (issue 20): a
//! real agent with SIMULATED GPUs runs GPU jobs; each workload sees only
//! its own GPUs (`CUDA_VISIBLE_DEVICES`, `NVIDIA_VISIBLE_DEVICES`,
//! `HERD_GPU_INDICES` in its environment), `herd alloc status` shows
//! disjoint indices, and the node's PowerGovernor, told which work holds
//! which GPU, caps a training job's GPU before an inference job's.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::*;
use herd_chaos::agents::AgentSet;
use serde_json::Value;

/// A job of one instance on `gpus` GPUs: `sh -c 'exec sleep 600'`.
fn sleeper(name: &str, kind: &str, gpus: u32) -> String {
    format!(
        "name = \"{name}\"\ntype = \"{kind}\"\npriority = 50\n[task]\ndriver = \"exec\"\n\
         command = \"/bin/sh\"\nargs = [\"-c\", \"echo gpus $CUDA_VISIBLE_DEVICES; exec sleep 600\"]\n\
         [task.resources]\ncpu = 100\nmemory = \"32MiB\"\ngpus = {gpus}\n"
    )
}

/// The environment of process `pid`.
fn environ(pid: u32) -> BTreeMap<String, String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The pid of `job`'s one workload on the agents, once it runs.
fn pid_of(agents: &AgentSet, job: &str) -> Option<u32> {
    match agents
        .workloads()
        .into_iter()
        .filter(|w| w.job == job)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [one] => Some(one.pid),
        _ => None,
    }
}

/// `job`'s one running allocation as `herd alloc status -o json` shows it.
fn status_of(addr: &str, job: &str) -> Option<Value> {
    let allocs = running_allocs(addr, job);
    let [alloc] = allocs.as_slice() else {
        return None;
    };
    Some(json(addr, &["alloc", "status", alloc["id"].as_str()?]))
}

fn indices(status: &Value) -> Vec<u64> {
    status["gpu_indices"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

fn joined(indices: &[u64]) -> String {
    indices
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_jobs_see_only_their_own_gpus_and_alloc_status_shows_disjoint_indices() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "3000").await;
    agents
        .start("g1", &["--sim-gpus", "4", "--sim-gpu-model", "h100"])
        .expect("start agent");
    must_have_ready_nodes(&addr, &["g1"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, kind, gpus) in [("train", "batch", 2), ("serve", "service", 1)] {
        let spec = write_spec(dir.path(), name, &sleeper(name, kind, gpus));
        must_cli_ok(&["--addr", &addr, "job", "run", &spec]);
    }

    let mut seen: BTreeSet<u64> = BTreeSet::new();
    for (job, gpus) in [("train", 2), ("serve", 1)] {
        let (status, pid) = until(
            &format!("{job} running on its GPUs"),
            Duration::from_secs(20),
            || Some((status_of(&addr, job)?, pid_of(&agents, job)?)),
        )
        .await;
        let mine = indices(&status);
        assert_eq!(mine.len(), gpus, "{status:#}");
        assert!(mine.iter().all(|i| *i < 4), "{status:#}");
        for i in &mine {
            assert!(seen.insert(*i), "GPU {i} given twice: {status:#}");
        }
        let env = environ(pid);
        for key in [
            "CUDA_VISIBLE_DEVICES",
            "NVIDIA_VISIBLE_DEVICES",
            "HERD_GPU_INDICES",
        ] {
            assert_eq!(
                env.get(key),
                Some(&joined(&mine)),
                "{job}: {key} in {env:?}"
            );
        }
        // The text form says the same.
        let id = status["id"].as_str().expect("id");
        let text = must_cli_ok(&["--addr", &addr, "alloc", "status", id]);
        assert!(
            text.contains(&format!("gpu indices {}", joined(&mine))),
            "{text}"
        );
    }
    assert_eq!(seen.len(), 3);
}

/// A group's power status (the only group).
fn power(addr: &str) -> Option<Value> {
    json(addr, &["power", "status"])
        .as_array()?
        .first()
        .cloned()
}

/// The GPU indices a governor event's detail names as lowered
/// (`... (0: 452→392 W, 3: 514→500 W)`).
fn lowered(detail: &str) -> BTreeSet<u64> {
    let Some((_, list)) = detail.rsplit_once('(') else {
        return BTreeSet::new();
    };
    list.trim_end_matches(')')
        .split(", ")
        .filter_map(|change| {
            let (index, watts) = change.split_once(": ")?;
            let (from, to) = watts.trim_end_matches(" W").split_once('→')?;
            let (from, to): (u64, u64) = (from.parse().ok()?, to.parse().ok()?);
            (to < from).then_some(index.parse().ok()?)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_governor_caps_a_training_jobs_gpu_before_an_inference_jobs() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "3000").await;
    // 2 SIMULATED H100s, their activities pinned (60 %, 70 %) so that the
    // draw is known before the work reports any.
    agents
        .start(
            "p1",
            &[
                "--sim-gpus",
                "2",
                "--sim-gpu-model",
                "h100",
                "--sim-gpu-activity",
                "0.6,0.7",
            ],
        )
        .expect("start agent");
    must_have_ready_nodes(&addr, &["p1"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Training: the dljob driver (herd toy-train), class "training".
    let train = "name = \"train\"\ntype = \"batch\"\npriority = 50\n[task]\ndriver = \"dljob\"\n\
                 args = [\"--steps\", \"100000\", \"--step-ms\", \"50\"]\n\
                 [task.resources]\ncpu = 100\nmemory = \"64MiB\"\ngpus = 1\n";
    let train = write_spec(dir.path(), "train", train);
    // Serving: a service job, class "inference".
    let serve = write_spec(dir.path(), "serve", &sleeper("serve", "service", 1));
    for spec in [&train, &serve] {
        must_cli_ok(&["--addr", &addr, "job", "run", spec]);
    }
    let (train_gpu, serve_gpu) = until("both jobs running", Duration::from_secs(30), || {
        let train = indices(&status_of(&addr, "train")?);
        let serve = indices(&status_of(&addr, "serve")?);
        pid_of(&agents, "train")?;
        pid_of(&agents, "serve")?;
        match (train.as_slice(), serve.as_slice()) {
            ([t], [s]) if t != s => Some((*t, *s)),
            _ => None,
        }
    })
    .await;

    // A budget far above the draw, to read the draw.
    must_cli_ok(&[
        "--addr", &addr, "power", "budget", "set", "cluster", "--watts", "100000",
    ]);
    let draw = until("the node's GPU draw", Duration::from_secs(20), || {
        let draw = power(&addr)?["draw_watts"].as_f64()?;
        (draw > 0.0).then_some(draw)
    })
    .await;
    // The draw at 93.5 % of the budget: past the first threshold (90 %),
    // under the second (97 %): low-priority work is capped, serving not.
    let budget = (draw / 0.935).round() as u64;
    must_cli_ok(&[
        "--addr",
        &addr,
        "power",
        "budget",
        "set",
        "cluster",
        "--watts",
        &budget.to_string(),
    ]);
    let capped = until("the training GPU capped", Duration::from_secs(30), || {
        let group = power(&addr)?;
        let events = group["events"].as_array()?.clone();
        events
            .iter()
            .any(|e| e["kind"] == "cap")
            .then_some((group, events))
    })
    .await;
    let (group, events) = capped;
    let mut lowered_gpus = BTreeSet::new();
    for event in &events {
        let detail = event["detail"].as_str().unwrap_or_default();
        lowered_gpus.extend(lowered(detail));
        assert_ne!(event["kind"], "cap_all", "{group:#}");
    }
    assert!(lowered_gpus.contains(&train_gpu), "{group:#}");
    assert!(
        !lowered_gpus.contains(&serve_gpu),
        "inference GPU {serve_gpu} capped before training GPU {train_gpu} was: {group:#}"
    );
    assert_eq!(group["capped_gpus"], 1, "{group:#}");
}
