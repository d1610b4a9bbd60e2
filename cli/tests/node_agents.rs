//! Node agents end to end on real processes: 3 coordinators and 3 `herd
//! node` agents on loopback run a service job as real processes; a node
//! killed with its processes has its instances running elsewhere within
//! 10 s; an agent killed alone (its processes left running) has its work
//! replaced, and when it comes back it stops the stale copies, so no
//! instance ever ends up running twice. Also: priority preemption on real
//! agents, and `herd alloc logs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::*;
use herd_chaos::agents::{AgentSet, WorkloadProcess};
use serde_json::Value;

/// The liveness TTL the tests run coordinators with.
const TTL_MS: &str = "2000";

fn sleep_spec(name: &str, kind: &str, count: u32, priority: u32, cpu: u32) -> String {
    format!(
        "name = \"{name}\"\ntype = \"{kind}\"\ncount = {count}\npriority = {priority}\n[task]\ndriver = \"exec\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"echo hello from $HERD_ALLOC_ID; exec sleep 600\"]\n[task.resources]\ncpu = {cpu}\nmemory = \"32MiB\"\n"
    )
}

fn processes_of(agents: &AgentSet, job: &str) -> Vec<WorkloadProcess> {
    agents
        .workloads()
        .into_iter()
        .filter(|w| w.job == job)
        .collect()
}

/// The process ids of `job`'s workloads on every agent.
fn pids_of(agents: &AgentSet, job: &str) -> BTreeSet<u32> {
    processes_of(agents, job).iter().map(|p| p.pid).collect()
}

/// Instances of `job` by number, with the processes running each.
fn by_instance(processes: &[WorkloadProcess]) -> BTreeMap<u32, Vec<&WorkloadProcess>> {
    let mut map: BTreeMap<u32, Vec<&WorkloadProcess>> = BTreeMap::new();
    for p in processes {
        map.entry(p.instance.unwrap_or(u32::MAX))
            .or_default()
            .push(p);
    }
    map
}

/// Exactly `count` instances of `job` run, each as one process, and each
/// process belongs to an allocation the cluster says is running there.
fn settled(addr: &str, agents: &AgentSet, job: &str, count: usize) -> Option<Vec<Value>> {
    let allocs = running_allocs(addr, job);
    let processes = processes_of(agents, job);
    let instances = by_instance(&processes);
    let wanted: BTreeSet<(String, String)> = allocs
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap_or("").to_string(),
                a["node"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let seen: BTreeSet<(String, String)> = processes
        .iter()
        .map(|p| (p.alloc_id.clone(), p.node.clone()))
        .collect();
    (allocs.len() == count
        && processes.len() == count
        && instances.len() == count
        && instances.values().all(|ps| ps.len() == 1)
        && wanted == seen)
        .then_some(allocs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_instances_survive_node_loss_without_duplicates() {
    let (cluster, addr, mut agents) = cluster_with_agents(3, TTL_MS).await;
    for name in ["a", "b", "c"] {
        agents.start(name, &[]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &["a", "b", "c"]).await;

    // Each agent declared its drivers when it registered: how each moves.
    let out = must_cli_ok(&["--addr", &addr, "node", "list", "-o", "json"]);
    let nodes: Value = serde_json::from_str(&out).expect("json");
    for node in nodes.as_array().expect("array") {
        let drivers = &node["drivers"];
        assert_eq!(drivers["exec"]["migration"], "none", "{out}");
        assert_eq!(drivers["vm"]["migration"], "live", "{out}");
        assert_eq!(drivers["vm"]["pause"], true, "{out}");
        assert_eq!(drivers["dljob"]["migration"], "checkpoint", "{out}");
        for (name, caps) in drivers.as_object().expect("drivers known") {
            assert!(caps["migration"].is_string(), "{name}: {out}");
        }
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let spec = write_spec(dir.path(), "web", &sleep_spec("web", "service", 4, 50, 100));
    must_cli_ok(&["--addr", &addr, "job", "run", &spec]);
    let allocs = until("4 web instances running", Duration::from_secs(20), || {
        settled(&addr, &agents, "web", 4)
    })
    .await;

    // Its output is captured and served by the node's agent.
    let first = allocs[0]["id"].as_str().expect("id").to_string();
    let logs = until("the instance's stdout", Duration::from_secs(10), || {
        let out = must_run_cli(&["--addr", &addr, "alloc", "logs", &first]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.contains(&first)).then_some(text)
    })
    .await;
    assert_eq!(logs.trim(), format!("hello from {first}"));

    // 0. The leading coordinator dies: the new leader grants every node a
    //    fresh TTL, agents follow it, and nothing is marked down or moved.
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let mut cluster = cluster;
    cluster.kill(leader).expect("kill leader");
    let survivors: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let addr_left = survivors
        .iter()
        .map(|id| cluster.member(*id).expect("member").addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    tokio::time::sleep(Duration::from_millis(
        3 * TTL_MS.parse::<u64>().expect("ttl"),
    ))
    .await;
    must_have_ready_nodes(&addr_left, &["a", "b", "c"]).await;
    let after_failover = settled(&addr_left, &agents, "web", 4).expect("same 4 instances");
    let ids = |allocs: &[Value]| -> BTreeSet<String> {
        allocs
            .iter()
            .filter_map(|a| a["id"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(ids(&after_failover), ids(&allocs), "a failover moved work");
    cluster.restart(leader).expect("restart old leader");

    // 1. A whole node dies: agent and processes, SIGKILL.
    let victim = allocs[0]["node"].as_str().expect("node").to_string();
    agents.kill_node(&victim).expect("kill node");
    let killed_at = Instant::now();
    let moved = until(
        "instances running elsewhere after the node died",
        Duration::from_secs(15),
        || {
            settled(&addr, &agents, "web", 4)
                .filter(|allocs| allocs.iter().all(|a| a["node"] != victim.as_str()))
        },
    )
    .await;
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "rescheduling took {took:?}, over the 10 s promise: {moved:#?}"
    );
    let nodes = json(&addr, &["node", "list"]);
    let status = nodes
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == victim.as_str()))
        .map(|n| n["status"].clone());
    assert_eq!(status, Some(Value::from("down")), "{nodes:#}");

    // 2. Only an agent dies: its processes run on while their instances are
    //    placed again elsewhere (two copies for a while, as with any
    //    partitioned node); when it comes back it must stop its stale copies.
    let survivor = moved
        .iter()
        .map(|a| a["node"].as_str().unwrap_or("").to_string())
        .next()
        .expect("a node with work");
    let orphaned: Vec<WorkloadProcess> = processes_of(&agents, "web")
        .into_iter()
        .filter(|p| p.node == survivor)
        .collect();
    assert!(!orphaned.is_empty());
    agents.kill_agent(&survivor).expect("kill agent");
    until(
        "the orphaned instances replaced",
        Duration::from_secs(15),
        || {
            let allocs = running_allocs(&addr, "web");
            (allocs.len() == 4 && allocs.iter().all(|a| a["node"] != survivor.as_str()))
                .then_some(())
        },
    )
    .await;
    assert!(
        orphaned
            .iter()
            .all(|p| processes_of(&agents, "web").iter().any(|q| q.pid == p.pid)),
        "the agent's processes outlive the agent"
    );

    // Both nodes come back.
    agents.restart(&survivor).expect("restart agent");
    agents.restart(&victim).expect("restart node");
    must_have_ready_nodes(&addr, &["a", "b", "c"]).await;
    until(
        "one copy of every instance after the nodes returned",
        Duration::from_secs(15),
        || settled(&addr, &agents, "web", 4),
    )
    .await;
    // And it stays that way.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let processes = processes_of(&agents, "web");
    assert!(
        settled(&addr, &agents, "web", 4).is_some(),
        "duplicates or missing instances: {processes:#?}"
    );
    assert!(
        orphaned
            .iter()
            .all(|p| !processes.iter().any(|q| q.pid == p.pid)),
        "the returning agent stopped its stale copies"
    );

    // Stopping the job stops every process.
    must_cli_ok(&["--addr", &addr, "job", "stop", "web"]);
    until("no web process left", Duration::from_secs(15), || {
        processes_of(&agents, "web").is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_job_evicts_only_what_it_needs_on_real_agents() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, TTL_MS).await;
    // Two nodes of exactly 2 CPUs each, whatever this host has.
    for name in ["p1", "p2"] {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let reserve = (cpus * 1000).saturating_sub(2000).to_string();
        agents
            .start(name, &["--reserved-cpu", &reserve])
            .expect("start agent");
    }
    must_have_ready_nodes(&addr, &["p1", "p2"]).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let low = write_spec(dir.path(), "low", &sleep_spec("low", "batch", 4, 10, 1000));
    must_cli_ok(&["--addr", &addr, "job", "run", &low]);
    let before = until(
        "the cluster full of low-priority work",
        Duration::from_secs(20),
        || settled(&addr, &agents, "low", 4),
    )
    .await;

    let high = write_spec(
        dir.path(),
        "high",
        &sleep_spec("high", "service", 1, 80, 1000),
    );
    must_cli_ok(&["--addr", &addr, "job", "run", &high]);
    until(
        "the high-priority job running",
        Duration::from_secs(20),
        || settled(&addr, &agents, "high", 1),
    )
    .await;
    let after = until(
        "three low instances left running",
        Duration::from_secs(20),
        || settled(&addr, &agents, "low", 3),
    )
    .await;
    // Nothing else touched: the three survivors are the same allocations.
    let before_ids: BTreeSet<&str> = before.iter().filter_map(|a| a["id"].as_str()).collect();
    for alloc in &after {
        assert!(
            before_ids.contains(alloc["id"].as_str().unwrap_or("")),
            "{alloc:#}"
        );
    }
    let all = json(&addr, &["alloc", "list", "--job", "low"]);
    let preempted: Vec<&Value> = all
        .as_array()
        .expect("list")
        .iter()
        .filter(|a| a["status"] == "preempted")
        .collect();
    assert_eq!(preempted.len(), 1, "{all:#}");
    // The evicted instance is requeued: the job waits for room, saying so.
    let job = json(&addr, &["job", "status", "low"]);
    assert_eq!(job["status"], "running", "{job:#}");
    assert!(
        job["blocked"].as_str().is_some_and(|b| !b.is_empty()),
        "the requeued instance says why it waits: {job:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_jobs_complete_or_fail_after_their_attempts() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, TTL_MS).await;
    agents.start("b1", &[]).expect("start agent");
    must_have_ready_nodes(&addr, &["b1"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = |name: &str, count: u32, code: i32| {
        format!(
            "name = \"{name}\"\ntype = \"batch\"\ncount = {count}\n[task]\ndriver = \"exec\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"echo run; exit {code}\"]\n[task.resources]\ncpu = 100\nmemory = \"16MiB\"\n"
        )
    };
    let ok = write_spec(dir.path(), "ok", &script("ok", 2, 0));
    let bad = write_spec(dir.path(), "bad", &script("bad", 1, 3));
    must_cli_ok(&["--addr", &addr, "job", "run", &ok]);
    // Detached: following a job whose every attempt fails could end in its
    // failure (exit 1) before this test looks.
    must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &bad]);

    until("job ok complete", Duration::from_secs(20), || {
        let job = json(&addr, &["job", "status", "ok"]);
        (job["status"] == "complete").then_some(())
    })
    .await;
    let allocs = json(&addr, &["alloc", "list", "--job", "ok"]);
    let allocs = allocs.as_array().expect("list");
    assert_eq!(allocs.len(), 2, "each instance ran once: {allocs:#?}");
    assert!(
        allocs.iter().all(|a| a["status"] == "complete"),
        "{allocs:#?}"
    );

    // Each attempt is restarted in place by the agent, then failed; the
    // coordinator gives the instance three attempts, then fails the job.
    until("job bad failed", Duration::from_secs(60), || {
        let job = json(&addr, &["job", "status", "bad"]);
        (job["status"] == "failed").then_some(())
    })
    .await;
    let allocs = json(&addr, &["alloc", "list", "--job", "bad"]);
    let allocs = allocs.as_array().expect("list");
    assert_eq!(allocs.len(), 3, "three attempts: {allocs:#?}");
    assert!(
        allocs.iter().all(|a| a["status"] == "failed"),
        "{allocs:#?}"
    );
    let first = allocs[0]["id"].as_str().expect("id");
    let status = json(&addr, &["alloc", "status", first]);
    let kinds: Vec<&str> = status["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"restarted"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"failed"), "{kinds:?}");
    assert!(
        status["events"]
            .as_array()
            .and_then(|e| e.last())
            .and_then(|e| e["detail"].as_str())
            .is_some_and(|d| d.contains('3')),
        "the exit code is in the failure: {status:#}"
    );
    assert!(processes_of(&agents, "bad").is_empty());
    assert!(processes_of(&agents, "ok").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_waits_whole_until_a_node_joins_then_starts_whole() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, TTL_MS).await;
    let sim = ["--sim-gpus", "2", "--sim-gpu-model", "h100"];
    for name in ["g1", "g2", "g3"] {
        agents.start(name, &sim).expect("start agent");
    }
    must_have_ready_nodes(&addr, &["g1", "g2", "g3"]).await;
    let nodes = json(&addr, &["node", "list"]);
    for node in nodes.as_array().expect("nodes") {
        assert_eq!(node["capacity"]["gpus"], 2, "{node:#}");
        assert_eq!(node["capacity"]["gpu_model"], "h100", "{node:#}");
    }

    // 4 learners of 2 GPUs each; 3 nodes of 2 GPUs hold only 3.
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = write_spec(
        dir.path(),
        "train",
        "name = \"train\"\ntype = \"batch\"\ncount = 4\ngang = true\n[task]\ndriver = \"exec\"\ncommand = \"/bin/sleep\"\nargs = [\"600\"]\n[task.resources]\ncpu = 100\nmemory = \"32MiB\"\ngpus = 2\ngpu_model = \"h100\"\n",
    );
    // Detached: the gang cannot be placed yet, so following it would time out.
    must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &spec]);
    let job = until("the gang's blocked reason", Duration::from_secs(20), || {
        let job = json(&addr, &["job", "status", "train"]);
        job["blocked"]
            .as_str()
            .is_some_and(|b| !b.is_empty())
            .then_some(job)
    })
    .await;
    let reason = job["blocked"].as_str().unwrap_or_default();
    assert!(reason.contains("gpu") || reason.contains("GPU"), "{reason}");
    assert_eq!(job["status"], "pending", "{job:#}");
    // Never partially placed, and it stays so.
    for _ in 0..5 {
        let allocs = json(&addr, &["alloc", "list", "--job", "train"]);
        assert_eq!(allocs.as_array().map(Vec::len), Some(0), "{allocs:#}");
        assert!(processes_of(&agents, "train").is_empty());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A fourth node joins: all four learners start.
    agents.start("g4", &sim).expect("start agent");
    let allocs = until("4 learners running", Duration::from_secs(20), || {
        settled(&addr, &agents, "train", 4)
    })
    .await;
    let nodes: BTreeSet<&str> = allocs.iter().filter_map(|a| a["node"].as_str()).collect();
    assert_eq!(nodes.len(), 4, "one learner per node: {allocs:#?}");
    // Each learner knows its rank, the gang's size and where the others run.
    let mut ranks = BTreeSet::new();
    for learner in processes_of(&agents, "train") {
        let environ = std::fs::read(format!("/proc/{}/environ", learner.pid)).expect("environ");
        let env: BTreeMap<String, String> = environ
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        assert_eq!(
            env.get("HERD_GANG_SIZE").map(String::as_str),
            Some("4"),
            "{env:?}"
        );
        assert_eq!(
            env.get("HERD_GANG_PEERS").map(|p| p.split(',').count()),
            Some(4),
            "{env:?}"
        );
        assert_eq!(
            env.get("HERD_GANG_MASTER").map(String::as_str),
            Some("127.0.0.1")
        );
        ranks.insert(env.get("HERD_GANG_RANK").cloned().unwrap_or_default());
    }
    assert_eq!(
        ranks,
        BTreeSet::from(["0", "1", "2", "3"].map(String::from))
    );
    let job = json(&addr, &["job", "status", "train"]);
    assert_eq!(job["status"], "running", "{job:#}");
    // Heartbeats carry what each node measures; the GPUs say they are simulated.
    until(
        "every node reporting one running learner",
        Duration::from_secs(10),
        || {
            let nodes = json(&addr, &["node", "list"]);
            nodes
                .as_array()?
                .iter()
                .all(|n| {
                    n["usage"]["running_allocs"] == 1
                        && n["usage"]["gpus_simulated"] == true
                        && n["usage"]["memory_available_bytes"]
                            .as_u64()
                            .is_some_and(|m| m > 0)
                })
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_with_a_deadline_moves_services_now_and_batch_work_by_the_deadline() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, TTL_MS).await;
    agents.start("d1", &[]).expect("start agent");
    must_have_ready_nodes(&addr, &["d1"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, kind) in [("web", "service"), ("train", "batch")] {
        let spec = write_spec(dir.path(), name, &sleep_spec(name, kind, 1, 50, 100));
        must_cli_ok(&["--addr", &addr, "job", "run", &spec]);
        until(
            &format!("{name} running on d1"),
            Duration::from_secs(20),
            || settled(&addr, &agents, name, 1),
        )
        .await;
    }
    agents.start("d2", &[]).expect("start agent");
    must_have_ready_nodes(&addr, &["d1", "d2"]).await;

    must_cli_ok(&["--addr", &addr, "node", "drain", "d1", "--deadline", "4s"]);
    let drained_at = Instant::now();
    let nodes = json(&addr, &["node", "list"]);
    let d1 = nodes
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == "d1"))
        .cloned()
        .expect("d1");
    assert_eq!(d1["status"], "draining", "{d1:#}");
    assert!(d1["drain_deadline_ms"].as_u64().is_some(), "{d1:#}");

    until("web moved to d2", Duration::from_secs(10), || {
        settled(&addr, &agents, "web", 1).filter(|a| a[0]["node"] == "d2")
    })
    .await;
    let train = settled(&addr, &agents, "train", 1).expect("train still runs");
    assert_eq!(
        train[0]["node"], "d1",
        "batch work stays until the deadline"
    );
    assert!(
        drained_at.elapsed() < Duration::from_secs(4),
        "checked before the deadline"
    );

    until(
        "train moved to d2 after the deadline",
        Duration::from_secs(15),
        || settled(&addr, &agents, "train", 1).filter(|a| a[0]["node"] == "d2"),
    )
    .await;
    assert!(
        drained_at.elapsed() >= Duration::from_secs(4),
        "not before the deadline"
    );
    let on_d1: Vec<_> = agents
        .workloads()
        .into_iter()
        .filter(|w| w.node == "d1")
        .collect();
    assert!(on_d1.is_empty(), "{on_d1:#?}");
    let nodes = json(&addr, &["node", "list"]);
    let d1 = nodes
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == "d1"))
        .cloned()
        .expect("d1");
    assert!(d1["drain_deadline_ms"].is_null(), "the drain ended: {d1:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_keeps_running_while_no_coordinator_answers() {
    let (mut cluster, addr, mut agents) = cluster_with_agents(1, TTL_MS).await;
    agents.start("o1", &[]).expect("start agent");
    must_have_ready_nodes(&addr, &["o1"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = write_spec(dir.path(), "web", &sleep_spec("web", "service", 2, 50, 100));
    must_cli_ok(&["--addr", &addr, "job", "run", &spec]);
    let before = until("2 instances running", Duration::from_secs(20), || {
        settled(&addr, &agents, "web", 2)
    })
    .await;
    let pids: BTreeSet<u32> = processes_of(&agents, "web").iter().map(|p| p.pid).collect();

    // The only coordinator is gone for several TTLs: the node carries on.
    cluster.kill(1).expect("kill coordinator");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during: BTreeSet<u32> = processes_of(&agents, "web").iter().map(|p| p.pid).collect();
    assert_eq!(
        during, pids,
        "the same processes run while coordinators are away"
    );

    // It returns: nothing is marked down, nothing restarted or duplicated.
    cluster.restart(1).expect("restart coordinator");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader again");
    tokio::time::sleep(Duration::from_millis(
        3 * TTL_MS.parse::<u64>().expect("ttl"),
    ))
    .await;
    must_have_ready_nodes(&addr, &["o1"]).await;
    let after = settled(&addr, &agents, "web", 2).expect("still 2 instances");
    let ids = |allocs: &[Value]| -> BTreeSet<String> {
        allocs
            .iter()
            .filter_map(|a| a["id"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(ids(&after), ids(&before));
    let now: BTreeSet<u32> = processes_of(&agents, "web").iter().map(|p| p.pid).collect();
    assert_eq!(now, pids, "no process was restarted");
}

/// The parent of `pid`, and whether it is still running (not a zombie).
fn parent_and_running(pid: u32) -> Option<(u32, bool)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .map(str::to_string)
    };
    let parent = field("PPid:")?.parse().ok()?;
    let running = !field("State:")?.starts_with('Z');
    Some((parent, running))
}

/// The agent's running children started as standby executors (`herd
/// executor --standby`): the one waiting, and those a start took, which
/// keep that command line.
fn standbys_of(agent: u32) -> BTreeSet<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let standby = String::from_utf8_lossy(&cmdline).contains("--standby");
            (standby && parent_and_running(pid) == Some((agent, true))).then_some(pid)
        })
        .collect()
}

/// An agent keeps one executor waiting: its next workload runs under it,
/// and one left waiting ends with the agent, while the workloads it runs
/// live on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_standby_executor_runs_its_next_workload_and_ends_with_the_agent() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, TTL_MS).await;
    agents.start("s1", &[]).expect("start agent");
    must_have_ready_nodes(&addr, &["s1"]).await;
    let agent = agents.agent("s1").expect("agent").pid().expect("its pid");
    let waiting = until(
        "the agent's standby executor",
        Duration::from_secs(20),
        || standbys_of(agent).first().copied(),
    )
    .await;

    let dir = tempfile::tempdir().expect("tempdir");
    let spec = write_spec(dir.path(), "web", &sleep_spec("web", "service", 1, 50, 100));
    must_cli_ok(&["--addr", &addr, "job", "run", &spec]);
    until("1 instance running", Duration::from_secs(20), || {
        settled(&addr, &agents, "web", 1)
    })
    .await;
    let task = *pids_of(&agents, "web").first().expect("the task");
    let (executor, _) = parent_and_running(task).expect("the task's parent");
    assert_eq!(executor, waiting, "the waiting executor runs the workload");

    // Another is made for the next start; killed, the agent takes it along.
    let next = until("a new standby executor", Duration::from_secs(20), || {
        standbys_of(agent).into_iter().find(|pid| *pid != waiting)
    })
    .await;
    agents.kill_agent("s1").expect("kill the agent");
    until(
        "the standby to end with its agent",
        Duration::from_secs(10),
        || (!parent_and_running(next).is_some_and(|(_, running)| running)).then_some(()),
    )
    .await;
    assert!(
        parent_and_running(task).is_some_and(|(_, running)| running),
        "the workload outlives its agent"
    );
    assert!(
        parent_and_running(waiting).is_some_and(|(_, running)| running),
        "and so does its executor"
    );
}

/// A job with `stop_after_disconnect` is stopped on a node the coordinators
/// cannot hear, before the node would be declared lost; work without it
/// runs on. Back in touch, the stopped instance is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_asks_stops_while_no_coordinator_answers() {
    let (mut cluster, addr, mut agents) = cluster_with_agents(1, TTL_MS).await;
    agents.start("o1", &[]).expect("start agent");
    must_have_ready_nodes(&addr, &["o1"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let careful = sleep_spec("careful", "service", 1, 50, 100).replacen(
        "\n[task]",
        "\nstop_after_disconnect = \"1s\"\n[task]",
        1,
    );
    let careful = write_spec(dir.path(), "careful", &careful);
    let carefree = write_spec(
        dir.path(),
        "carefree",
        &sleep_spec("carefree", "service", 1, 50, 100),
    );
    must_cli_ok(&["--addr", &addr, "job", "run", &careful]);
    must_cli_ok(&["--addr", &addr, "job", "run", &carefree]);
    let status = json(&addr, &["job", "status", "careful"]);
    assert_eq!(status["stop_after_disconnect_ms"], 1000, "{status:#}");
    let text = must_cli_ok(&["--addr", &addr, "job", "status", "careful"]);
    assert!(
        text.contains("stopped after 1s without a coordinator"),
        "{text}"
    );
    let before = until("both jobs running", Duration::from_secs(20), || {
        let careful = settled(&addr, &agents, "careful", 1)?;
        settled(&addr, &agents, "carefree", 1)?;
        Some(careful)
    })
    .await;
    let carefree_pids = pids_of(&agents, "carefree");

    // A setting as long as the node TTL is refused: it could not stop the
    // work before its replacement starts.
    let too_long = sleep_spec("late", "service", 1, 50, 100).replacen(
        "\n[task]",
        "\nstop_after_disconnect = \"2s\"\n[task]",
        1,
    );
    let too_long = write_spec(dir.path(), "late", &too_long);
    let refused = must_run_cli(&["--addr", &addr, "job", "run", &too_long]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("stop_after_disconnect"), "{stderr}");

    cluster.kill(1).expect("kill coordinator");
    until(
        "the careful job's process stopped",
        Duration::from_secs(10),
        || processes_of(&agents, "careful").is_empty().then_some(()),
    )
    .await;
    let during = pids_of(&agents, "carefree");
    assert_eq!(during, carefree_pids, "the job without the setting runs on");

    cluster.restart(1).expect("restart coordinator");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader again");
    let old_id = before[0]["id"].as_str().expect("alloc id").to_string();
    let after = until("the careful job replaced", Duration::from_secs(30), || {
        settled(&addr, &agents, "careful", 1)
    })
    .await;
    assert_ne!(after[0]["id"].as_str(), Some(old_id.as_str()));
    let old = json(&addr, &["alloc", "list", "--job", "careful"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .find(|a| a["id"].as_str() == Some(old_id.as_str()))
        .expect("the stopped allocation is listed");
    assert_eq!(old["status"], "lost", "{old:#}");
    let now = pids_of(&agents, "carefree");
    assert_eq!(
        now, carefree_pids,
        "the job without the setting was never restarted"
    );
}
