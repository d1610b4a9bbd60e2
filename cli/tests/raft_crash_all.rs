//! All three coordinators killed with SIGKILL during writes, then restarted:
//! no acknowledged write is lost and the members converge to equal states.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use herd_chaos::process_cluster::ProcessCluster;
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_every_member_mid_write_loses_no_acknowledged_write() {
    let mut cluster = ProcessCluster::start(herd_bin(), 3, &[]).expect("start");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let client = cluster.client().expect("client");

    // Writers record a write only once it is acknowledged, and keep going
    // past errors (an election at start-up) until the cluster is killed.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let client = client.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let key = format!("w{w}-{i}");
                let value = format!("v{i}");
                match put(&client, &key, &value).await {
                    Ok(_) => acked.lock().await.push((key, value)),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    // Let writes flow, then kill everyone at once.
    while acked.lock().await.len() < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for id in [1, 2, 3] {
        cluster.kill(id).expect("kill");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    let acked = acked.lock().await.clone();
    assert!(acked.len() >= 300);

    for id in [1, 2, 3] {
        cluster.restart(id).expect("restart");
    }
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader after restart");
    must_read_all(&client, &acked, false).await;
    // A write after recovery, then all members agree on one state.
    put(&client, "after", "restart")
        .await
        .expect("write after restart");
    must_converge(&cluster, &[1, 2, 3], Duration::from_secs(20)).await;
}
