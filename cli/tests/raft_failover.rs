//! Three coordinators as OS processes: leader failover without losing an
//! acknowledged write, and a far-behind member catching up by snapshot.

mod common;

use std::time::{Duration, Instant};

use common::*;
use herd_api::client::HerdClient;
use herd_api::proto::v1::variables_client::VariablesClient;
use herd_api::proto::v1::PutVariableRequest;
use herd_chaos::process_cluster::ProcessCluster;

async fn must_put_via_leader(client: &HerdClient, key: &str, value: &str) {
    let request = PutVariableRequest {
        key: key.to_string(),
        value: value.as_bytes().to_vec(),
        expected_version: None,
    };
    client
        .call_leader(|ch| {
            let request = request.clone();
            async move { VariablesClient::new(ch).put(request).await }
        })
        .await
        .unwrap_or_else(|e| panic!("leader-routed write {key}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_keeps_every_acknowledged_write_and_old_leader_catches_up_by_snapshot() {
    // Small snapshot thresholds so the old leader falls behind the purged log.
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.2}s] {what}", t0.elapsed().as_secs_f64());
    let mut cluster = ProcessCluster::start(
        herd_bin(),
        3,
        &["--snapshot-every", "200", "--keep-logs", "20"],
    )
    .expect("start");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");

    phase("leader elected");
    let mut acked = must_write_many(&cluster, &[1, 2, 3], "k", 1000, 24).await;
    assert_eq!(acked.len(), 1000);

    phase("1000 writes acknowledged");
    // A leader-routing client learns the leader now and must survive its death.
    let routed = cluster.client().expect("client").with_leader_routing();
    must_put_via_leader(&routed, "routed-before", "1").await;
    let leader_log_end = cluster
        .member_report(leader)
        .await
        .and_then(|r| r.last_log_index)
        .expect("the leader reports its log");
    cluster.kill(leader).expect("kill leader");
    let killed_at = Instant::now();
    let survivors: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let new_leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("new leader");
    let failover = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(
        failover < Duration::from_secs(3),
        "failover took {failover:?}"
    );

    phase(&format!("new leader {new_leader} after {failover:?}"));
    let client = cluster.client_for(&survivors).expect("client");
    must_read_all(&client, &acked, false).await;
    must_put_via_leader(&routed, "routed-after", "2").await;
    // The new leader reports the killed member as unhealthy.
    let started = Instant::now();
    loop {
        let status = cluster.status().await.expect("status");
        let dead = status
            .members
            .iter()
            .find(|m| m.id == leader)
            .expect("still a member");
        if !dead.healthy {
            assert!(
                status
                    .members
                    .iter()
                    .filter(|m| m.id != leader)
                    .all(|m| m.healthy),
                "{status:?}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "killed member still healthy: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    acked.push(("routed-before".into(), "1".into()));
    acked.push(("routed-after".into(), "2".into()));
    phase("every acknowledged write read back");

    // Far behind: writes while the old leader is down until the survivors
    // have purged their logs past its end (writes are batched into Raft
    // entries, so how many entries a number of writes makes varies).
    let mut round = 0;
    loop {
        let purged =
            futures::future::join_all(survivors.iter().map(|id| cluster.member_report(*id)))
                .await
                .into_iter()
                .map(|r| r.and_then(|r| r.purged_index).unwrap_or(0))
                .min()
                .unwrap_or(0);
        if purged > leader_log_end {
            break;
        }
        assert!(round < 20, "logs never purged past {leader_log_end}");
        round += 1;
        let prefix = format!("late{round}-");
        acked.extend(must_write_many(&cluster, &survivors, &prefix, 300, 16).await);
    }
    let status = cluster.status().await.expect("status");

    phase("the survivors purged their logs past the old leader's end");
    cluster.restart(leader).expect("restart old leader");
    let report = cluster
        .wait_applied(leader, status.commit_index, Duration::from_secs(30))
        .await
        .expect("old leader catches up");
    phase("old leader caught up");
    assert!(
        report.snapshots_installed >= 1,
        "expected catch-up through a snapshot: {report:?}"
    );
    // Its own state, read without the leader, holds every acknowledged write.
    let local = cluster.client_for(&[leader]).expect("client");
    must_read_all(&local, &acked, true).await;
    phase("old leader's own state checked");
    must_converge(&cluster, &[1, 2, 3], Duration::from_secs(20)).await;
    phase("members converged");
}
