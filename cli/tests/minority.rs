//! A coordinator cut off from a majority says so at once instead of
//! holding requests for a leader that cannot be elected, and serves again
//! once a majority is back.

mod common;

use std::time::{Duration, Instant};

use common::*;
use herd_api::client::HerdClient;
use herd_chaos::process_cluster::ProcessCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_a_majority_refuses_at_once_and_serves_when_one_returns() {
    let mut cluster = ProcessCluster::start(herd_bin(), 3, &[]).expect("start");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let client = cluster.client().expect("client");
    put(&client, "before", "1")
        .await
        .expect("write with all up");
    let ids = cluster.ids();
    let survivor = *ids.iter().find(|id| **id != leader).expect("a follower");
    let other = *ids
        .iter()
        .find(|id| **id != leader && **id != survivor)
        .expect("another follower");
    let alone = HerdClient::new(&[cluster.member(survivor).expect("survivor").addr.clone()])
        .expect("client of the survivor");
    // The write is acknowledged once a majority holds it; the survivor
    // applies it when it next hears the commit point. Wait for that, so the
    // stale read below has something to show.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&alone, "before", true).await.ok().flatten().as_deref() != Some("1") {
        assert!(
            Instant::now() < deadline,
            "the survivor never applied the write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    cluster.kill(leader).expect("kill the leader");
    cluster.kill(other).expect("kill a follower");
    // Without the check the write would wait for a leader for 10 s and then
    // fail with "no leader elected"; it must be refused as cut off instead.
    let refused = tokio::time::timeout(Duration::from_secs(8), put(&alone, "during", "2"))
        .await
        .expect("refused well before the 10 s leader wait")
        .expect_err("no majority, no write");
    assert!(refused.contains("cut off from a majority"), "{refused}");
    assert!(refused.contains("1 of the 3 voters"), "{refused}");
    let read = get(&alone, "before", false)
        .await
        .expect_err("no linearizable read without a majority");
    assert!(read.contains("cut off from a majority"), "{read}");
    // What it holds can still be read, stale.
    assert_eq!(
        get(&alone, "before", true).await.expect("stale read"),
        Some("1".to_string())
    );

    // A majority again: the same member serves writes.
    cluster.restart(other).expect("restart a follower");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match put(&alone, "after", "3").await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no write 30 s after a majority returned: {e}"),
        }
    }
    assert_eq!(
        get(&alone, "after", false).await.expect("read"),
        Some("3".to_string())
    );
}
