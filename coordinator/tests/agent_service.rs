//! The agent API of a running (one-member) coordinator: registration and
//! every assignment set name the cluster, sets carry the index of the state
//! they were read from, and one unreadable report in a batch is refused
//! alone while the others are applied.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::start_one;
use futures::StreamExt;
use herd_api::proto::agent::agent_client::AgentClient;
use herd_api::proto::agent::{
    AllocReport, RegisterNodeRequest, ReportAllocationsRequest, WatchAllocationsRequest,
};
use herd_api::proto::v1::Resources;

fn report(id: &str, status: &str) -> AllocReport {
    AllocReport {
        id: id.into(),
        generation: 1,
        status: status.into(),
        at_ms: 1,
        event: "started".into(),
        detail: String::new(),
        exit_code: None,
        signal: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_learn_the_cluster_and_one_bad_report_costs_no_other() {
    let member = start_one().await;
    let coordinator = member.coordinator.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let cluster_id = loop {
        if let Some(id) = coordinator.read_state(|s| s.cluster_id.clone()) {
            break id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cluster got no id"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut client = AgentClient::connect(format!("http://{}", member.local_addr))
        .await
        .expect("connect");

    let registered = client
        .register(RegisterNodeRequest {
            name: "n1".into(),
            addr: "127.0.0.1:1".into(),
            capacity: Some(Resources {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                gpus: 0,
                gpu_model: String::new(),
            }),
            labels: Default::default(),
            // An agent older than driver capabilities.
            drivers: vec![],
            http: String::new(),
        })
        .await
        .expect("register")
        .into_inner();
    assert_eq!(registered.cluster_id, cluster_id);

    let mut watch = client
        .watch_allocations(WatchAllocationsRequest { node: "n1".into() })
        .await
        .expect("watch")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a first set")
        .expect("open stream")
        .expect("a set");
    assert_eq!(first.cluster_id, cluster_id);
    assert!(
        first.index >= registered.log_index,
        "the set (index {}) was read from a state older than the registration ({})",
        first.index,
        registered.log_index
    );
    let (index, _) = coordinator.read_state_at(|_| ());
    assert!(
        first.index <= index,
        "labelled {} beyond the applied {index}",
        first.index
    );

    // An allocation this coordinator does not know, then a status it does
    // not know: the first goes through apply (and is refused there, as
    // unknown), the second is refused alone; the request succeeds.
    let reply = client
        .report_allocations(ReportAllocationsRequest {
            node: "n1".into(),
            reports: vec![report("gone", "running"), report("a2", "migrating")],
        })
        .await
        .expect("a batch with one unreadable report is not refused whole")
        .into_inner();
    assert_eq!(reply.malformed.len(), 1, "{reply:?}");
    assert_eq!(reply.malformed[0].position, 1);
    assert_eq!(reply.malformed[0].id, "a2");
    assert!(reply.malformed[0].reason.contains("status"), "{reply:?}");
    assert!(
        reply
            .refused
            .iter()
            .any(|r| r.starts_with("gone: unknown allocation")),
        "the readable report was not applied: {reply:?}"
    );
    assert_eq!(reply.refused.len(), 2, "{reply:?}");

    // A request of nothing but unreadable reports: refused one by one.
    let reply = client
        .report_allocations(ReportAllocationsRequest {
            node: "n1".into(),
            reports: vec![report("a3", "migrating")],
        })
        .await
        .expect("refused per report")
        .into_inner();
    assert_eq!((reply.accepted, reply.malformed.len()), (0, 1), "{reply:?}");
}
