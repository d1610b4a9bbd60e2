//! Simulated VMs (the `simvm` driver) end to end: a job of several runs as
//! `herd sim-vm` processes writing their memory at the set rate, reports
//! through the allocation logs, and stops with the job.

mod common;

use std::time::Duration;

use common::*;
use herd_chaos::agents::AgentSet;

fn writes(log: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.split("): ").nth(1)?.split(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_vms_run_dirty_their_memory_and_stop() {
    let cluster = must_start_one_member(&[]).await;
    let addr = cluster.addr_list();
    let mut agents = AgentSet::new(herd_bin(), &addr).expect("agents");
    agents.start("s1", &[]).expect("agent");
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("sim.toml");
    std::fs::write(
        &spec,
        "name = \"fleet\"\ntype = \"service\"\ncount = 3\n[task]\ndriver = \"simvm\"\n[task.config]\ndirty_rate = \"4MiB\"\nseed = 5\n[task.resources]\ncpu = 100\nmemory = \"32MiB\"\n",
    )
    .expect("spec");
    must_cli_ok(&["--addr", &addr, "job", "run", &spec.display().to_string()]);

    let ids: Vec<String> = until("3 simulated VMs running", Duration::from_secs(20), || {
        let allocs = json(&addr, &["alloc", "list", "--job", "fleet"]);
        let running: Vec<String> = allocs
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["status"] == "running")
            .filter_map(|a| a["id"].as_str().map(str::to_string))
            .collect();
        (running.len() == 3).then_some(running)
    })
    .await;
    assert_eq!(
        agents
            .workloads()
            .iter()
            .filter(|w| w.job == "fleet")
            .count(),
        3
    );
    // Each writes its memory at about 1,024 pages a second, and says so.
    let id = &ids[0];
    let log = |id: &str| {
        String::from_utf8_lossy(&must_cli_ok(&["--addr", &addr, "alloc", "logs", id]).into_bytes())
            .into_owned()
    };
    let first = until(
        "a report of writes in the log",
        Duration::from_secs(30),
        || writes(&log(id)),
    )
    .await;
    assert!(log(id).contains("simulated VM"), "named as simulated");
    until(
        "the simulated guest to report more writes",
        Duration::from_secs(30),
        || writes(&log(id)).filter(|later| *later > first),
    )
    .await;

    must_cli_ok(&["--addr", &addr, "job", "stop", "fleet"]);
    until(
        "no simulated VM left running",
        Duration::from_secs(20),
        || {
            agents
                .workloads()
                .iter()
                .all(|w| w.job != "fleet")
                .then_some(())
        },
    )
    .await;
}
