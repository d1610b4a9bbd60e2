//! Mutual TLS end to end: a three-member cluster and two agents holding
//! certificates of one CA (made with `herd tls`) place and live-migrate a
//! simulated VM (coordinator-to-coordinator, agent-to-coordinator and
//! agent-to-agent traffic all over TLS), while callers without a
//! certificate, with another CA's, with the wrong role or with another
//! node's certificate are refused, and a dialer expecting one node refuses
//! another node's agent.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::tls::{
    as_identity, channel_as, must_have_ready_over_tls, must_tls_cli, running_over_tls, tls_cli,
    tls_cluster_with_agents, tls_json, TlsCluster,
};
use common::*;
use herd_api::proto::agent::agent_client::AgentClient;
use herd_api::proto::agent::agent_peer_client::AgentPeerClient;
use herd_api::proto::agent::{GossipPacket, HeartbeatRequest, RegisterNodeRequest};
use herd_api::proto::internal::internal_client::InternalClient;
use herd_api::proto::internal::RaftEnvelope;
use herd_chaos::agents::AgentSet;
use herd_chaos::tls::ClusterTls;
use tonic::Code;

fn register(name: &str) -> RegisterNodeRequest {
    RegisterNodeRequest {
        name: name.into(),
        addr: "127.0.0.1:1".into(),
        ..RegisterNodeRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_certified_peers_only() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let TlsCluster {
        tls,
        addrs,
        cluster: _cluster,
        addr,
        mut agents,
    } = tls_cluster_with_agents(dir.path(), 3);
    let member = addrs[&1].clone();
    for name in ["t1", "t2"] {
        agents.start(name, &[]).expect("start agent");
    }

    // Agents register over TLS; a client with a certificate reads it.
    must_have_ready_over_tls(&tls, &addr, 2, Duration::from_secs(30)).await;

    // A simulated VM placed and live-migrated: agent-to-agent over TLS.
    let spec = write_spec(
        dir.path(),
        "vm",
        "name = \"vm\"\ntype = \"service\"\n[task]\ndriver = \"simvm\"\n[task.config]\ndirty_rate = \"1MiB\"\nseed = 3\n[task.resources]\ncpu = 100\nmemory = \"16MiB\"\n",
    );
    must_tls_cli(&tls, &["--addr", &addr, "job", "run", "--detach", &spec]);
    let (alloc, source) = running_over_tls(&tls, &addr, "vm", Duration::from_secs(30)).await;
    let target = if source == "t1" { "t2" } else { "t1" };
    let moved = tls_cli(
        &tls,
        "admin",
        &[
            "--addr", &addr, "alloc", "migrate", &alloc, "--to", target, "--wait",
        ],
    );
    assert!(
        moved.status.success(),
        "migrate over TLS: {}{}",
        String::from_utf8_lossy(&moved.stdout),
        String::from_utf8_lossy(&moved.stderr)
    );
    eprintln!(
        "{:?}: migrated over TLS: {}",
        started.elapsed(),
        String::from_utf8_lossy(&moved.stdout)
    );
    let status = tls_json(&tls, &addr, &["alloc", "status", &alloc]).expect("alloc status");
    assert_eq!(status["node"], target, "{status:#}");
    // The agents gossip over TLS, each dialing the other by its node name
    // (`<name>.node.herd`): t1 keeps a fresh view of t2.
    until(
        "t1 to see t2 alive over TLS gossip",
        Duration::from_secs(30),
        || {
            let view = tls_json(&tls, &addr, &["balance", "status", "--node", "t1"])?;
            view["nodes"]
                .as_array()?
                .iter()
                .any(|n| {
                    n["name"] == "t2"
                        && n["state"] == "alive"
                        && n["view_age_ms"].as_u64() < Some(3_000)
                })
                .then_some(())
        },
    )
    .await;
    // The agent's own endpoint serves a client certificate too (logs).
    let logs = must_tls_cli(&tls, &["--addr", &addr, "alloc", "logs", &alloc]);
    // The memory itself went sim-vm to sim-vm under mutual TLS: the target
    // admitted the source node's certificate, and nothing in the clear.
    let vm_log = String::from_utf8_lossy(&logs.stdout);
    assert!(
        vm_log.contains(&format!("migration stream: TLS, from node {source} at")),
        "the target's sim-vm log: {vm_log}"
    );
    assert!(!vm_log.contains("plain TCP"), "{vm_log}");

    // No certificate at all: a plaintext client gets nothing.
    let plain = must_run_cli(&["--addr", &addr, "node", "list"]);
    assert!(!plain.status.success(), "a plaintext client was served");

    // Another CA's certificate: the handshake fails.
    let stranger = ClusterTls::create(herd_bin(), &dir.path().join("other")).expect("other CA");
    let (cert, key) = stranger.issue("client", "eve").expect("foreign cert");
    // Under TLS 1.3 the server judges the client's certificate after the
    // client thinks the handshake is done: the first call shows it.
    let foreign = match channel_as(&tls.ca(), &cert, &key, &member, "coordinator").await {
        Ok(channel) => AgentClient::new(channel)
            .register(register("eve"))
            .await
            .err()
            .map(|status| format!("{status:?}")),
        Err(e) => Some(e.to_string()),
    };
    assert!(foreign.is_some(), "a certificate of another CA was served");
    eprintln!("another CA's certificate: {foreign:?}");

    // An agent may only speak for its own node.
    let as_t1 = as_identity(&tls, "node", "t1", &member, "coordinator").await;
    let mut agent_api = AgentClient::new(as_t1.clone());
    let refused = agent_api
        .register(register("t2"))
        .await
        .expect_err("t1's certificate registered t2");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("\"t1\""), "{refused:?}");
    let refused = agent_api
        .heartbeat(HeartbeatRequest {
            name: "t2".into(),
            usage: None,
        })
        .await
        .expect_err("t1's certificate reported for t2");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // A client's certificate cannot act as any agent, nor as a coordinator.
    let as_client = as_identity(&tls, "client", "admin", &member, "coordinator").await;
    let refused = AgentClient::new(as_client.clone())
        .register(register("t3"))
        .await
        .expect_err("a client certificate registered a node");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = InternalClient::new(as_t1)
        .vote(RaftEnvelope::default())
        .await
        .expect_err("a node certificate reached Raft");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = InternalClient::new(as_client)
        .vote(RaftEnvelope::default())
        .await
        .expect_err("a client certificate reached Raft");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // The agent-to-agent service serves node agents only.
    let agent_addr = agents.agent("t1").expect("t1").addr.clone();
    let as_client = as_identity(&tls, "client", "admin", &agent_addr, "node").await;
    let refused = AgentPeerClient::new(as_client)
        .gossip(GossipPacket::default())
        .await
        .expect_err("a client certificate gossiped");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // ...and each only as itself: t2's certificate cannot gossip as t1.
    let as_t2 = as_identity(&tls, "node", "t2", &agent_addr, "node").await;
    let refused = AgentPeerClient::new(as_t2)
        .gossip(GossipPacket {
            from_node: "t1".into(),
            ..GossipPacket::default()
        })
        .await
        .expect_err("t2's certificate gossiped as t1");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // A dialer of one node checks that node (`<name>.node.herd`, as agents
    // dial the target of a move): t1's agent does not pass for t2, however
    // valid its node certificate, and passes for t1.
    let (cert, key) = tls.issue("node", "t2").expect("t2's cert");
    match channel_as(&tls.ca(), &cert, &key, &agent_addr, "t2.node").await {
        Ok(_) => panic!("t1's agent passed a dial that expects node t2"),
        Err(e) => {
            let chain = format!("{e:?}");
            assert!(chain.contains("NotValidForName"), "{chain}");
        }
    }
    let as_t2 = channel_as(&tls.ca(), &cert, &key, &agent_addr, "t1.node")
        .await
        .expect("t1's agent passes a dial that expects node t1");
    let refused = AgentPeerClient::new(as_t2)
        .gossip(GossipPacket {
            from_node: "t1".into(),
            ..GossipPacket::default()
        })
        .await
        .expect_err("past the handshake, t2 still cannot gossip as t1");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // Nothing of the above registered anything.
    let nodes = tls_json(&tls, &addr, &["node", "list"]).expect("node list");
    let names: Vec<&str> = nodes
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, ["t1", "t2"], "{nodes:#}");

    // An agent started with another node's certificate refuses to start;
    // one without any certificate cannot register.
    let (cert, key) = tls.issue("node", "t1").expect("t1's cert");
    let wrong = herd_command()
        .env_remove("HERD_INSECURE")
        .args([
            "node",
            "--name",
            "t9",
            "--coordinators",
            &addr,
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--data-dir", &dir.path().join("t9").display().to_string()])
        .arg("--tls-ca")
        .arg(tls.ca())
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .output()
        .expect("run agent");
    assert_eq!(wrong.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("\"t1\""),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let mut plaintext = AgentSet::new(herd_bin(), &addr).expect("plaintext agents");
    plaintext.start("p1", &[]).expect("start plaintext agent");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let nodes = tls_json(&tls, &addr, &["node", "list"]).expect("node list");
    assert!(
        !nodes.to_string().contains("\"p1\""),
        "a plaintext agent registered: {nodes:#}"
    );
    // A daemon without TLS and without --insecure does not start.
    let bare = herd_command()
        .env_remove("HERD_INSECURE")
        .args(["coordinator", "--id", "9", "--listen", "127.0.0.1:0"])
        .args(["--data-dir", &dir.path().join("c9").display().to_string()])
        .output()
        .expect("run coordinator");
    assert_eq!(bare.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bare.stderr).contains("--insecure"));
}
