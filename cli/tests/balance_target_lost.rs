//! An offline balancing move whose target died after the commit was asked,
//! on real processes (docs/balancing.md, "Moves with the coordinators
//! away"): the source's copy is paused and its move `switching`, and the
//! target never answers again. Once the coordinators answer, the source
//! reports the move unsettled; the target being down, the coordinators keep
//! the allocation on the source (one Raft entry, recorded as an aborted
//! migration under the move's id) and the source resumes its copy, once.
//! Then the target comes back with the move journalled `switched`: its
//! report is refused and the copy it started gives way.
//!
//! Where a VM runs, and whether it runs or is paused, is read from /proc
//! and the VM's own control socket, not from what an agent or coordinator
//! says.

// Test code: an unwrap/expect failing here fails the test at its line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::balance::{crowded_on_first, journal, print_log_tail, sees_alive};
use common::vms::{one_copy_each, sim_vms};
use common::*;
use herd_actors::driver::simvm::control::{self, GuestMode};

const NODES: [&str; 2] = ["t1", "t2"];

const VMS: &str = "name = \"vms\"\ntype = \"service\"\ncount = 2\n[balance]\nmovable = true\n[task]\ndriver = \"simvm\"\n[task.config]\ndirty_rate = \"1MiB\"\nseed = 5\n[task.resources]\ncpu = 300\nmemory = \"32MiB\"\n";

/// Within this long of the target's death (with the coordinators back
/// meanwhile) the move must be settled: the source keeps asking for the
/// commit for 30 s (`COMMIT_BUDGET`), reports it, hears "wait" until the
/// restarted coordinators mark the target down (its TTL, 2 s here), then
/// "source". 30 s of margin on 2 shared cores.
const SETTLED_WITHIN: Duration = Duration::from_secs(75);

/// Allocation to (node, generation) of the running `vms`, as the
/// coordinators list them (empty while they do not answer).
fn listed(addr: &str) -> BTreeMap<String, (String, u64)> {
    common::balance::listed(addr, "vms")
}

/// The control socket of the `herd sim-vm` process of `alloc` on `node`.
fn control_socket(root: &Path, node: &str, alloc: &str) -> Option<PathBuf> {
    let prefix = root.join(format!("node-{node}")).join("allocs").join(alloc);
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.iter().any(|a| a == "sim-vm") {
            continue;
        }
        let control = args.iter().skip_while(|a| *a != "--control").nth(1);
        if let Some(control) = control.filter(|c| Path::new(c).starts_with(&prefix)) {
            return Some(PathBuf::from(control));
        }
    }
    None
}

/// Prints what each agent logged of its balancing, to see why a test
/// failed before its directory goes.
fn print_logs(root: &Path) {
    for node in NODES {
        print_log_tail(root, node, 60);
        eprintln!("journal: {:?}", journal(root, node));
    }
    eprintln!("sim-vm processes: {:?}", sim_vms(root));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_target_died_after_the_commit_is_kept_by_the_source_and_the_target_gives_way()
{
    // The target holds its answer to a commit (a FAULT-INJECTION hook), so
    // that the test kills it after it journalled the commit and before the
    // source heard it.
    let (mut cluster, addr, mut agents) = crowded_on_first(
        "2000",
        &NODES,
        &[("HERD_FAULT_OFFLINE_COMMIT_HOLD_MS", "120000")],
        VMS,
    )
    .await;
    let root = agents.root().to_path_buf();
    let before: BTreeMap<String, u64> =
        until("two VMs running on t1", Duration::from_secs(60), || {
            let placed = listed(&addr);
            let real = one_copy_each(&root)?;
            (placed.len() == 2
                && placed.values().all(|(n, _)| n == "t1")
                && real.len() == 2
                && real.values().all(|n| n == "t1"))
            .then(|| placed.into_iter().map(|(id, (_, g))| (id, g)).collect())
        })
        .await;

    // t1 knows t2 before the coordinators go.
    if !sees_alive(&agents, "t1", &NODES).await {
        print_logs(&root);
        panic!("t1 never saw t2 alive in its balancing view");
    }
    cluster.kill(1).expect("kill the only coordinator");

    // t1 moves one VM to t2; t2 journals the commit and holds its answer.
    let committed = until_or_none(Duration::from_secs(120), || {
        journal(&root, "t2")
            .into_iter()
            .find(|e| e["role"] == "target" && e["phase"] == "switched")
    })
    .await;
    let Some(committed) = committed else {
        print_logs(&root);
        panic!("t2 never journalled the commit of an offline move within 120 s");
    };
    // The target dies for good: its agent and its workloads, kill -9.
    agents.kill_node("t2").expect("kill t2");
    let died = Instant::now();
    let move_id = committed["move_id"].as_str().expect("move_id").to_string();
    let moved = committed["alloc_id"]
        .as_str()
        .expect("alloc_id")
        .to_string();
    eprintln!("t2 killed after committing {move_id} ({moved})");
    let source_phase = journal(&root, "t1")
        .into_iter()
        .find(|e| e["move_id"] == move_id.as_str())
        .map(|e| e["phase"].clone());
    assert_eq!(
        source_phase,
        Some(serde_json::json!("switching")),
        "the source never heard the commit's answer"
    );

    cluster.restart(1).expect("restart the coordinator");
    // Settled: the coordinators list both VMs on t1 at the generations
    // they had, t1 runs exactly one copy of each, its journal is closed,
    // and the moved VM's guest runs (not paused forever).
    let settled = until_or_none(SETTLED_WITHIN.saturating_sub(died.elapsed()), || {
        let placed = listed(&addr);
        let real = one_copy_each(&root)?;
        let ok = placed.len() == 2
            && real.len() == 2
            && placed.iter().all(|(id, (node, g))| {
                node == "t1" && real.get(id) == Some(node) && before.get(id) == Some(g)
            })
            && journal(&root, "t1").is_empty();
        ok.then_some(placed)
    })
    .await;
    let Some(settled) = settled else {
        print_logs(&root);
        panic!(
            "the move was not settled for the source within {} s of the target's death",
            SETTLED_WITHIN.as_secs()
        );
    };
    eprintln!(
        "settled for the source {} s after the target died: {settled:?}",
        died.elapsed().as_secs()
    );
    let socket = control_socket(&root, "t1", &moved).expect("the moved VM's control socket");
    let first = control::status(&socket).await.expect("VM status");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let then = control::status(&socket).await.expect("VM status");
    assert_eq!(then.guest, GuestMode::Running, "the kept copy resumed");
    assert!(
        then.writes > first.writes,
        "the kept copy makes progress: {} then {} writes",
        first.writes,
        then.writes
    );
    // The coordinators recorded their decision under the move's id.
    let record = json(&addr, &["migration", "list"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .find(|m| m["id"] == move_id.as_str());
    let record = record.expect("a record of the settled move");
    assert_eq!(record["phase"], "aborted", "{record}");
    assert_eq!(record["alloc"], moved.as_str(), "{record}");

    // The target comes back with the move journalled `switched`: it runs
    // what it holds until the coordinators refuse its report, then gives
    // way; the coordinators' view does not change.
    agents.restart("t2").expect("restart t2");
    let gave_way = until_or_none(Duration::from_secs(60), || {
        let real = one_copy_each(&root)?;
        let placed = listed(&addr);
        let ok = real.len() == 2
            && real.values().all(|n| n == "t1")
            && placed == settled
            && journal(&root, "t2").is_empty()
            && journal(&root, "t1").is_empty();
        ok.then_some(())
    })
    .await;
    if gave_way.is_none() {
        print_logs(&root);
        panic!("the returning target did not give way within 60 s");
    }
    // And it stays so.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let real = one_copy_each(&root).expect("one copy each");
    assert_eq!(real.len(), 2);
    assert!(real.values().all(|n| n == "t1"), "{real:?}");
    assert_eq!(listed(&addr), settled);
}
