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

/// The version of `key` a linearizable read on the one member `client`
/// talks to returns (0 when absent).
async fn read_version(client: &herd_api::client::HerdClient, key: &str) -> Result<u64, String> {
    use herd_api::proto::v1::variables_client::VariablesClient;
    use herd_api::proto::v1::GetVariableRequest;
    client
        .call(|ch| {
            let request = GetVariableRequest {
                key: key.to_string(),
                stale: false,
            };
            async move { VariablesClient::new(ch).get(request).await }
        })
        .await
        .map(|r| r.into_inner().version)
        .map_err(|e| e.to_string())
}

/// Every member killed at once right after a write to one key was
/// acknowledged, then restarted, round after round; the first linearizable read each member
/// answers must see every write acknowledged before the kill.
///
/// This is the stale read the chaos harness found in restart-all: openraft
/// restored the member that led before the kill as leader of its old term,
/// and such a leader's read index is its persisted commit point, which the
/// last writes acknowledged before a crash can be ahead of (it is written
/// without a sync). Members now forget leadership when they start
/// (`LogStore::forget_leadership`), so reads wait for a new term's entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_reads_after_every_member_restarts_see_every_acknowledged_write() {
    const ROUNDS: usize = 4;
    let mut cluster = ProcessCluster::start(herd_bin(), 3, &[]).expect("start");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let writer = cluster.client().expect("client");
    // One client per member, with no other member to fall back on, so that
    // each read is answered by the member it was sent to.
    let per_member: Vec<(u64, herd_api::client::HerdClient)> = [1, 2, 3]
        .into_iter()
        .map(|id| (id, cluster.client_for(&[id]).expect("member client")))
        .collect();

    for round in 0..ROUNDS {
        let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..8 {
            let (writer, acked, count, stop) =
                (writer.clone(), acked.clone(), count.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    match put(&writer, "register", &format!("r{round}-w{w}-{i}")).await {
                        Ok(version) => {
                            acked.fetch_max(version, std::sync::atomic::Ordering::SeqCst);
                            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            }));
        }
        until("writes acknowledged", Duration::from_secs(30), || {
            (count.load(std::sync::atomic::Ordering::SeqCst) >= 200).then_some(())
        })
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for writer in writers {
            writer.await.expect("writer");
        }
        // One last write into a quiet cluster, and every member killed the
        // moment it is acknowledged: its commit has reached no member's disk
        // as a commit point (only a following append would have synced it).
        let last = put(&writer, "register", &format!("r{round}-last"))
            .await
            .expect("the last write");
        for id in [1, 2, 3] {
            cluster.kill(id).expect("kill");
        }
        let last_acked = acked.load(std::sync::atomic::Ordering::SeqCst).max(last);
        for id in [1, 2, 3] {
            cluster.restart(id).expect("restart");
        }

        // Every member is read in a tight loop until it answers, so the
        // first answers come the moment a leader can serve them.
        let mut readers = Vec::new();
        for (id, client) in per_member.clone() {
            readers.push(tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                loop {
                    match read_version(&client, "register").await {
                        Ok(version) => return Ok((id, version)),
                        Err(e) if tokio::time::Instant::now() > deadline => {
                            return Err(format!("member {id} answered no read: {e}"))
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                    }
                }
            }));
        }
        for reader in readers {
            let (id, version) = reader.await.expect("reader").expect("a read");
            assert!(
                version >= last_acked,
                "round {round}: member {id}'s first read after the restart saw version \
                 {version}, but version {last_acked} was acknowledged before the kill"
            );
        }
    }
}
