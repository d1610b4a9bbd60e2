//! Membership changes on real processes: grow 1 → 3 → 5, shrink to 3, and
//! replace a member whose disk was wiped, never losing a committed write.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use herd_chaos::process_cluster::{Launch, ProcessCluster};

async fn must_have_voters(cluster: &ProcessCluster, want: &[u64]) {
    let want: BTreeSet<u64> = want.iter().copied().collect();
    let started = Instant::now();
    loop {
        if let Some(status) = cluster.status().await {
            let voters: BTreeSet<u64> = status
                .members
                .iter()
                .filter(|m| m.voter)
                .map(|m| m.id)
                .collect();
            let healthy = status.members.iter().filter(|m| m.voter).all(|m| m.healthy);
            if voters == want && healthy {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "voters never became {want:?}: {:?}",
            cluster.status().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grow_shrink_and_replace_a_wiped_member() {
    let mut cluster = must_start_one_member(&[]).await;
    let first = cluster.member(1).expect("member 1").addr.clone();
    let mut acked = must_write_many(&cluster, &[1], "one-", 50, 8).await;

    // 1 → 3: members that join by themselves.
    cluster
        .spawn_member(2, Launch::Join(first.clone()))
        .expect("spawn 2");
    cluster
        .spawn_member(3, Launch::Join(first.clone()))
        .expect("spawn 3");
    must_have_voters(&cluster, &[1, 2, 3]).await;
    acked.extend(must_write_many(&cluster, &[1, 2, 3], "three-", 100, 8).await);

    // 3 → 5: one added by an operator with the CLI, one joining.
    let addr4 = cluster.spawn_member(4, Launch::Wait).expect("spawn 4");
    must_cli_ok(&[
        "--addr",
        &cluster.addr_list(),
        "cluster",
        "add",
        "4",
        &addr4,
    ]);
    cluster
        .spawn_member(5, Launch::Join(first.clone()))
        .expect("spawn 5");
    must_have_voters(&cluster, &[1, 2, 3, 4, 5]).await;
    acked.extend(must_write_many(&cluster, &[1, 2, 3, 4, 5], "five-", 100, 8).await);
    must_read_all(&cluster.client_for(&[5]).expect("client"), &acked, false).await;

    // 5 → 3.
    must_cli_ok(&["--addr", &cluster.addr_list(), "cluster", "remove", "4"]);
    must_cli_ok(&["--addr", &cluster.addr_list(), "cluster", "remove", "5"]);
    cluster.forget(4).expect("stop 4");
    cluster.forget(5).expect("stop 5");
    must_have_voters(&cluster, &[1, 2, 3]).await;
    acked.extend(must_write_many(&cluster, &[1, 2, 3], "back-", 50, 8).await);

    // Member 3 loses its disk; member 6 takes its place in one change.
    cluster.kill(3).expect("kill 3");
    cluster.wipe(3).expect("wipe 3");
    let addr6 = cluster.spawn_member(6, Launch::Wait).expect("spawn 6");
    let out = must_cli_ok(&[
        "--addr",
        &cluster.addr_list(),
        "cluster",
        "replace",
        "3",
        "6",
        &addr6,
    ]);
    assert!(out.contains("replaced"), "{out}");
    cluster.forget(3).expect("forget 3");
    must_have_voters(&cluster, &[1, 2, 6]).await;

    // The replacement holds every committed write (once it has applied them:
    // a stale read answers from what the member applied), and the cluster
    // still takes writes.
    let commit = cluster.status().await.expect("status").commit_index;
    cluster
        .wait_applied(6, commit, Duration::from_secs(20))
        .await
        .expect("member 6 applies the log");
    must_read_all(&cluster.client_for(&[6]).expect("client"), &acked, true).await;
    must_read_all(&cluster.client().expect("client"), &acked, false).await;
    put(&cluster.client().expect("client"), "final", "write")
        .await
        .expect("write after replace");
    must_converge(&cluster, &[1, 2, 6], Duration::from_secs(20)).await;

    // Reusing the wiped member's id is refused: it could vote twice in a term.
    let out = must_run_cli(&[
        "--addr",
        &cluster.addr_list(),
        "cluster",
        "replace",
        "6",
        "6",
        &addr6,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("new member id"));
}
