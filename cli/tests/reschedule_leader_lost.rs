//! The leader's defragmenting loop loses its leadership in the middle of a
//! run: three coordinators, three node agents, seven SIMULATED VMs
//! (`simvm`, real `herd sim-vm` processes that move live) on a fragmented
//! layout, the loop on with one move at a time. The test kills the leader
//! while one of its moves is in flight. What must hold: the move in flight
//! ends (completed or aborted) under the new leader's watch, the new leader
//! runs the loop on its own schedule (its run recorded with its own member
//! id and a later term), no allocation is ever in two migrations, every VM
//! runs exactly once (one process each), and the fragment rate did not
//! rise.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::agents::running_allocs;
use common::vms::{
    fragmented_for_the_loop, live_fr, migrations, restart_with_config, sim_vm_pids_mentioning,
    Fragmented,
};
use common::*;
use serde_json::Value;

const NODES: [&str; 3] = ["r1", "r2", "r3"];
const VMS: usize = 7;

fn terminal(m: &Value) -> bool {
    m["phase"] == "completed" || m["phase"] == "aborted"
}

/// The migrations, after checking that no allocation is in two unfinished
/// migrations at once (the leaders' fencing must make that impossible).
fn migrations_checked(addr: &str) -> Vec<Value> {
    let list = migrations(addr);
    let mut moving: BTreeMap<&str, &str> = BTreeMap::new();
    for m in list.iter().filter(|m| !terminal(m)) {
        let alloc = m["alloc"].as_str().unwrap_or_default();
        let id = m["id"].as_str().unwrap_or_default();
        if let Some(other) = moving.insert(alloc, id) {
            panic!("allocation {alloc} in two migrations at once ({other}, {id}): {list:#?}");
        }
    }
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_by_a_leader_change_ends_cleanly_and_the_new_leader_takes_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Off while the layout is built; on once every member is restarted.
    let Fragmented {
        mut cluster,
        addr,
        agents,
        config,
        target,
        fr: before,
        placed,
    } = fragmented_for_the_loop(dir.path(), 3, "8000", Duration::from_secs(20), &NODES).await;
    assert_eq!(placed, VMS);

    // The loop on, one move at a time, each capped at 8 MiB/s so that it
    // lasts a few seconds (a 32 MiB VM): the test sees it in flight.
    restart_with_config(
        &mut cluster,
        &config,
        &format!(
            "[reschedule]\nevery = \"2s\"\nfr_threshold = 0.1\nmax_migrations = 5\ndeadline = \"300ms\"\nconcurrency = 1\nbandwidth = \"8MiB\"\ntarget_cpu = \"{target}\"\n"
        ),
        Duration::from_secs(30),
    )
    .await;

    // The leader's run starts a move; the leader dies with it in flight.
    let in_flight = until_or_none(Duration::from_secs(60), || {
        migrations_checked(&addr).into_iter().find(|m| !terminal(m))
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no move of the loop seen in flight within 60 s; status {:#}, migrations {:#?}",
            json(&addr, &["reschedule", "status"]),
            migrations(&addr)
        )
    });
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let leader_term = cluster
        .member_report(leader)
        .await
        .expect("the leader reports")
        .term;
    cluster.kill(leader).expect("kill the leader");
    let survivors: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
    let survivors_addr = survivors
        .iter()
        .map(|i| cluster.member(*i).expect("member").addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let next = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a new leader");
    assert_ne!(next, leader, "the killed member cannot lead");

    // The move in flight ends under the new leader's watch.
    let id = in_flight["id"].as_str().expect("migration id").to_string();
    until(
        "the interrupted move ended",
        Duration::from_secs(60),
        || {
            migrations_checked(&survivors_addr)
                .into_iter()
                .find(|m| m["id"] == id.as_str() && terminal(m))
        },
    )
    .await;

    // The new leader runs the loop itself: a record with its id and a later
    // term than any run of the killed leader.
    let run = until(
        "a run of the new leader recorded",
        Duration::from_secs(90),
        || {
            let run = json(&survivors_addr, &["reschedule", "status"])["last_run"].clone();
            (run["member"].as_u64().is_some_and(|m| m != leader)).then_some(run)
        },
    )
    .await;
    assert_eq!(run["member"].as_u64(), Some(next), "{run:#}");
    assert!(
        run["term"].as_u64().expect("term") > leader_term,
        "the run is the new leader's, of a later term than {leader_term}: {run:#}"
    );
    assert!(
        ["applied", "nothing-to-gain", "below-threshold"]
            .contains(&run["outcome"].as_str().unwrap_or("")),
        "{run:#}"
    );

    // Everything settled: every migration ended, none overlapped another of
    // the same allocation, and each VM runs once, as its record says.
    let all = until("every migration ended", Duration::from_secs(90), || {
        let all = migrations_checked(&survivors_addr);
        all.iter().all(terminal).then_some(all)
    })
    .await;
    assert!(all.iter().any(|m| m["id"] == id.as_str()), "{all:#?}");
    for vm in 1..=VMS {
        let allocs = running_allocs(&survivors_addr, &format!("v{vm}"));
        assert_eq!(allocs.len(), 1, "v{vm}: {allocs:#?}");
    }
    let root = agents.root().display().to_string();
    until(
        "exactly one sim-vm process per VM",
        Duration::from_secs(30),
        || (sim_vm_pids_mentioning(&root).len() == VMS).then_some(()),
    )
    .await;
    let now = live_fr(&survivors_addr, &target);
    assert!(now <= before + 1e-9, "FR {before} -> {now}");

    // The killed member comes back as a follower and does not take its old
    // run up again: no migration starts that nobody's run accounts for.
    cluster.restart(leader).expect("restart the old leader");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = migrations_checked(&addr);
    for vm in 1..=VMS {
        assert_eq!(
            running_allocs(&addr, &format!("v{vm}")).len(),
            1,
            "{after:#?}"
        );
    }
    drop(agents);
}
