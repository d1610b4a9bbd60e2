//! `Variables.PutStream` on three coordinator processes: puts through a
//! follower's stream and the leader's are each their own write, bad puts
//! fail alone, and a stream whose member dies fails its puts instead of
//! leaving them waiting.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures::future::join_all;
use herd_api::client::HerdClient;
use herd_api::proto::v1::variables_client::VariablesClient;
use herd_api::proto::v1::{PutVariableBatch, PutVariableRequest, TaggedPut};
use herd_api::put_stream::PutStream;
use herd_api::retry::{ErrorMarks, Reason};
use herd_chaos::process_cluster::ProcessCluster;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

fn channel_to(cluster: &ProcessCluster, id: u64) -> Channel {
    let addr = &cluster.member(id).expect("member").addr;
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy()
}

fn put(key: &str, value: &str, expected_version: Option<u64>) -> PutVariableRequest {
    PutVariableRequest {
        key: key.to_string(),
        value: value.as_bytes().to_vec(),
        expected_version,
    }
}

/// Puts `key` through `stream`, trying again while the cluster elects a
/// leader (on a loaded machine an election can start at any moment, and a
/// put caught in one is answered "unavailable" or "outcome unknown", never
/// wrongly). Returns the reply and whether an earlier try's outcome was
/// unknown. Any other error fails the test.
async fn put_through_elections(
    stream: &PutStream,
    key: &str,
    value: &str,
) -> (herd_api::proto::v1::PutVariableReply, bool) {
    let mut unknown_before = false;
    for _ in 0..50 {
        match stream.put(put(key, value, None)).await {
            Ok(reply) => return (reply, unknown_before),
            Err(status) => {
                let reason = ErrorMarks::read(&status).and_then(|m| m.reason);
                match reason {
                    Some(r) if r.elsewhere() => {
                        unknown_before |= r == Reason::OutcomeUnknown;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ => panic!("put {key}: {status}"),
                }
            }
        }
    }
    panic!("put {key}: no leader answered in 50 tries")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_puts_are_separate_writes_and_fail_when_their_member_dies() {
    let mut cluster = ProcessCluster::start(herd_bin(), 3, &[]).expect("start");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let via_leader = PutStream::open(channel_to(&cluster, leader))
        .await
        .expect("stream to the leader");
    let via_follower = PutStream::open(channel_to(&cluster, follower))
        .await
        .expect("stream to a follower");

    // 400 concurrent puts over both streams, each to its own key.
    let puts = (0..400).map(|i| {
        let stream = if i % 2 == 0 {
            &via_leader
        } else {
            &via_follower
        };
        async move {
            let key = format!("s/{i}");
            let (reply, unknown_before) =
                put_through_elections(stream, &key, &format!("v{i}")).await;
            // A put whose first try's outcome was unknown (an election
            // while it was in flight) may have been written by that try.
            let versions = if unknown_before { 1..=2 } else { 1..=1 };
            assert!(
                reply.ok && versions.contains(&reply.version),
                "{key}: {reply:?}"
            );
            assert!(reply.log_index > 0, "{key}: no log index");
            key
        }
    });
    let written = tokio::time::timeout(Duration::from_secs(60), join_all(puts))
        .await
        .expect("400 streamed puts must be answered");
    let client = cluster.client().expect("client");
    for (i, key) in written.iter().enumerate() {
        let value = get(&client, key, false).await.expect("read");
        assert_eq!(value.as_deref(), Some(format!("v{i}").as_str()), "{key}");
    }

    // Compare-and-set through a stream: a stale version is an answer, not an error.
    let second = via_follower
        .put(put("s/0", "again", Some(1)))
        .await
        .expect("cas");
    assert!(second.ok && second.version == 2, "{second:?}");
    let stale = via_leader
        .put(put("s/0", "stale", Some(1)))
        .await
        .expect("cas answer");
    assert!(!stale.ok && stale.version == 2, "{stale:?}");

    // A bad put fails alone; the one beside it in flight is written.
    let (bad, good) = tokio::join!(
        via_leader.put(put("", "x", None)),
        via_leader.put(put("s/beside", "ok", None))
    );
    let bad = bad.expect_err("an empty key is refused");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("variable key"), "{}", bad.message());
    assert!(good.expect("the other put").ok);

    // A message from an untrusted client: a tagged put without its put is
    // answered with an error for that tag only.
    let raw = tokio_stream::iter(vec![PutVariableBatch {
        puts: vec![
            TaggedPut { tag: 7, put: None },
            TaggedPut {
                tag: 8,
                put: Some(put("s/raw", "r", None)),
            },
        ],
    }]);
    let mut answers = VariablesClient::new(channel_to(&cluster, follower))
        .put_stream(raw)
        .await
        .expect("raw stream")
        .into_inner();
    let mut results = Vec::new();
    while let Some(message) = answers.message().await.expect("answers") {
        results.extend(message.results);
    }
    results.sort_by_key(|r| r.tag);
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results[0].tag, 7);
    assert_eq!(results[0].error_code, Code::InvalidArgument as i32);
    assert!(results[0].error_message.contains("`put` is missing"));
    assert!(
        results[1].reply.as_ref().is_some_and(|r| r.ok),
        "{results:?}"
    );

    // The follower dies: puts on its stream fail rather than wait, and so
    // does every later put on it.
    cluster.kill(follower).expect("kill follower");
    let failed = tokio::time::timeout(
        Duration::from_secs(10),
        via_follower.put(put("s/after", "x", None)),
    )
    .await
    .expect("a put on a dead member's stream must not hang")
    .expect_err("a put on a dead member's stream fails");
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    let later = via_follower
        .put(put("s/later", "x", None))
        .await
        .expect_err("the stream stays closed");
    assert_eq!(later.code(), Code::Unavailable, "{later:?}");

    // The leader's stream still writes with two of three members up.
    let survivor =
        HerdClient::new(&[cluster.member(leader).expect("leader").addr.clone()]).expect("client");
    let reply = via_leader
        .put(put("s/quorum", "q", None))
        .await
        .expect("quorum write");
    assert!(reply.ok);
    assert_eq!(
        get(&survivor, "s/quorum", false).await.expect("read"),
        Some("q".to_string())
    );
}
