//! Certificate revocation end to end: a coordinator and two agents under
//! mutual TLS; `herd tls cert revoke` of node h2's certificate makes the
//! coordinator refuse h2 (it is marked down) and h1's agent refuse h2's
//! certificate on the agent-to-agent service, each naming the revocation;
//! a client certificate revoked by fingerprint stops working while the
//! operator's goes on; a second revocation changes nothing; `herd tls
//! cert revoked` lists them with their notes; revoked with the CA's key, a
//! revocation replaces the cluster's CRL for QEMU's streams with one that
//! names it too, which the agents take in (an earlier revocation added to
//! it too, two operators revoking at once both named); bad input exits
//! 2. And the
//! dialing side: herd's dial (what every agent, coordinator and CLI
//! connects with) refuses a server whose certificate is revoked, on a new
//! connection and on one already open.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::tls::{
    as_identity, must_have_ready_over_tls, tls_cli, tls_cluster_with_agents, tls_json, TlsCluster,
};
use common::*;
use herd_api::proto::agent::agent_client::AgentClient;
use herd_api::proto::agent::agent_peer_client::AgentPeerClient;
use herd_api::proto::agent::node_agent_client::NodeAgentClient;
use herd_api::proto::agent::{AclTableRequest, BalanceStatusRequest, GossipPacket};
use herd_api::tls::{TlsFiles, TlsMaterial, Transport};
use herd_chaos::tls::ClusterTls;
use serde_json::json;
use tonic::Code;

/// Asks `call` until it is refused as revoked (within `limit`).
async fn until_revoked<F, Fut, T>(what: &str, limit: Duration, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let started = Instant::now();
    loop {
        match call().await {
            Err(status) if status.message().contains("revoked") => {
                assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
                return;
            }
            other => {
                let seen = other.map(|_| "served").map_err(|s| s.to_string());
                assert!(
                    started.elapsed() < limit,
                    "{what}: not refused as revoked within {limit:?}, last {seen:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_by_coordinators_and_agents() {
    let dir = tempfile::tempdir().expect("dir");
    let TlsCluster {
        tls,
        addrs,
        cluster: _cluster,
        addr,
        mut agents,
    } = tls_cluster_with_agents(dir.path(), 1);
    for name in ["h1", "h2"] {
        agents.start(name, &[]).expect("start agent");
    }
    must_have_ready_over_tls(&tls, &addr, 2, Duration::from_secs(30)).await;
    let member = addrs.values().next().expect("a member").clone();
    let h1_agent = agents.agent("h1").expect("h1").addr.clone();

    // Before: h2's certificate is served by the coordinator and by h1.
    let as_h2 = as_identity(&tls, "node", "h2", &member, "coordinator").await;
    AgentClient::new(as_h2.clone())
        .acl_table(AclTableRequest { node: "h2".into() })
        .await
        .expect("h2's certificate is served before the revocation");
    let h2_at_h1 = as_identity(&tls, "node", "h2", &h1_agent, "node").await;
    let before = AgentPeerClient::new(h2_at_h1.clone())
        .gossip(GossipPacket {
            from_node: "h2".into(),
            ..GossipPacket::default()
        })
        .await;
    assert!(
        before
            .as_ref()
            .err()
            .is_none_or(|s| !s.message().contains("revoked")),
        "{before:?}"
    );

    // Revoke h2's node certificate by its file, as the operator, with the
    // CA's key at hand: a revocation list for QEMU's streams goes with it.
    let (h2_cert, _) = tls.issue("node", "h2").expect("h2's certificate");
    let h2_path = h2_cert.display().to_string();
    let (ca, ca_key) = (
        tls.ca().display().to_string(),
        tls.ca_key().display().to_string(),
    );
    let out = tls_cli(
        &tls,
        "ops",
        &[
            "--addr", &addr, "tls", "cert", "revoke", &h2_path, "--ca-key", &ca_key, "--ca", &ca,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("revoked") && stdout(&out).contains("spiffe://herd/node/h2"),
        "{}",
        stdout(&out)
    );
    assert!(
        !stdout(&out).contains("no revocation list"),
        "{}",
        stdout(&out)
    );
    // h1's agent takes the list into its token table, for its QEMUs.
    let h1_log = agents.agent("h1").expect("h1").log_path.clone();
    until(
        "h1's agent holding the revocation list",
        Duration::from_secs(15),
        || {
            let log = std::fs::read_to_string(&h1_log).ok()?;
            log.lines()
                .any(|l| l.contains("token table updated") && l.contains("revocation_lists=1"))
                .then_some(())
        },
    )
    .await;

    // The coordinator refuses it at once (its watch reads the state twice a
    // second), h1's agent once its token table brings it (every 3 s).
    until_revoked("the coordinator", Duration::from_secs(5), || {
        let mut client = AgentClient::new(as_h2.clone());
        async move {
            client
                .acl_table(AclTableRequest { node: "h2".into() })
                .await
        }
    })
    .await;
    until_revoked("h1's agent", Duration::from_secs(15), || {
        let mut client = AgentPeerClient::new(h2_at_h1.clone());
        async move {
            client
                .gossip(GossipPacket {
                    from_node: "h2".into(),
                    ..GossipPacket::default()
                })
                .await
        }
    })
    .await;
    // h2's heartbeats are refused: the leader marks it down; h1 stays.
    until("h2 marked down, h1 ready", Duration::from_secs(30), || {
        let nodes = tls_json(&tls, &addr, &["node", "list"])?;
        let status = |name: &str| {
            nodes
                .as_array()?
                .iter()
                .find(|n| n["name"] == name)
                .map(|n| n["status"].clone())
        };
        (status("h2")? == "down" && status("h1")? == "ready").then_some(())
    })
    .await;

    // A client certificate, revoked by its fingerprint.
    let listed = tls_cli(&tls, "eve", &["--addr", &addr, "node", "list"]);
    assert!(listed.status.success(), "{listed:?}");
    let (eve_cert, _) = tls.issue("client", "eve").expect("eve's certificate");
    let (fingerprint, named) = herd_api::tls::revocation::fingerprint_of_pem(
        &std::fs::read(&eve_cert).expect("read eve's certificate"),
    )
    .expect("a certificate");
    assert_eq!(named.expect("a herd identity").name, "eve");
    let colons = fingerprint
        .as_bytes()
        .chunks(2)
        .map(|p| String::from_utf8_lossy(p).to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    let revoke_eve = [
        "--addr",
        &addr,
        "-o",
        "json",
        "tls",
        "cert",
        "revoke",
        "--fingerprint",
        &colons,
        "--note",
        "laptop stolen",
    ];
    let out = tls_cli(&tls, "ops", &revoke_eve);
    assert!(out.status.success(), "{out:?}");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(answer["fingerprint_sha256"], fingerprint.as_str());
    assert_eq!(answer["already"], false);
    assert_eq!(answer["crl"], false, "no CA key, no list: {answer}");
    let started = Instant::now();
    loop {
        let refused = tls_cli(&tls, "eve", &["--addr", &addr, "node", "list"]);
        if !refused.status.success() {
            let stderr = String::from_utf8_lossy(&refused.stderr);
            assert!(stderr.contains("revoked"), "{stderr}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "eve still served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let still = tls_cli(&tls, "ops", &["--addr", &addr, "node", "list"]);
    assert!(still.status.success(), "the operator goes on: {still:?}");
    // Again: nothing changes; the record keeps the first note.
    let out = tls_cli(&tls, "ops", &revoke_eve);
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(again["already"], true, "{again}");
    let key = format!("herd/tls/revoked/{fingerprint}");
    let kept = tls_cli(&tls, "ops", &["--addr", &addr, "var", "get", &key]);
    assert!(stdout(&kept).contains("laptop stolen"), "{}", stdout(&kept));
    assert!(!stdout(&kept).contains("crl_serial"), "{}", stdout(&kept));
    // Again by its file with the CA's key: the list is added to the
    // revocation, which keeps its first note.
    let eve_path = eve_cert.display().to_string();
    let out = tls_cli(
        &tls,
        "ops",
        &[
            "--addr", &addr, "-o", "json", "tls", "cert", "revoke", &eve_path, "--ca-key", &ca_key,
            "--ca", &ca,
        ],
    );
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (&added["already"], &added["crl"]),
        (&json!(true), &json!(true)),
        "{added}"
    );
    let kept = tls_cli(&tls, "ops", &["--addr", &addr, "var", "get", &key]);
    assert!(
        stdout(&kept).contains("laptop stolen") && stdout(&kept).contains("crl_serial"),
        "{}",
        stdout(&kept)
    );
    // The cluster's one revocation list now names both certificates: the
    // second list signed with h2's serial read from the first (GnuTLS,
    // QEMU's TLS library, keeps one list per CA).
    let serial_of = |path: &std::path::Path| {
        let pem = std::fs::read(path).expect("read the certificate");
        let der = herd_api::tls::identity::first_pem_certificate(&pem).expect("a certificate");
        herd_api::tls::crl::certificate_serial(&der).expect("a serial")
    };
    // The serials the cluster's list names, sorted.
    let listed = || {
        let list = tls_cli(
            &tls,
            "ops",
            &[
                "--addr",
                &addr,
                "var",
                "get",
                herd_api::tls::crl::LIST_VARIABLE,
            ],
        );
        let mut named = herd_api::tls::crl::serials(&stdout(&list)).expect("a CRL");
        named.sort();
        named
    };
    let mut both = vec![serial_of(&h2_cert), serial_of(&eve_cert)];
    both.sort();
    assert_eq!(listed(), both);
    // Two operators revoking at once: each signs a list from what it read,
    // the coordinators take one and refuse the other as stale, which signs
    // again; no entry is dropped.
    let racers: Vec<std::path::PathBuf> = ["r1", "r2"]
        .iter()
        .map(|name| tls.issue("client", name).expect("a certificate").0)
        .collect();
    let runs: Vec<_> = racers
        .iter()
        .map(|cert| {
            let (tls, addr, ca, ca_key) = (tls.clone(), addr.clone(), ca.clone(), ca_key.clone());
            let cert = cert.display().to_string();
            std::thread::spawn(move || {
                tls_cli(
                    &tls,
                    "ops",
                    &[
                        "--addr", &addr, "tls", "cert", "revoke", &cert, "--ca-key", &ca_key,
                        "--ca", &ca,
                    ],
                )
            })
        })
        .collect();
    for run in runs {
        let out = run.join().expect("revoke thread");
        assert!(out.status.success(), "{out:?}");
    }
    both.extend(racers.iter().map(|cert| serial_of(cert)));
    both.sort();
    assert_eq!(listed(), both);

    // Both are listed, with their notes, to any client (the read role);
    // the one revoked by its file is noted with whom it named.
    let (h2_fingerprint, _) = herd_api::tls::revocation::fingerprint_of_pem(
        &std::fs::read(&h2_cert).expect("read h2's certificate"),
    )
    .expect("a certificate");
    let listed = tls_json(&tls, &addr, &["tls", "cert", "revoked"]).expect("the list");
    let notes: std::collections::BTreeMap<String, String> = listed
        .as_array()
        .expect("an array")
        .iter()
        .map(|c| {
            assert!(c["revoked_at_ms"].as_u64() > Some(0), "{c}");
            assert_eq!(c["crl"], true, "the cluster's list names each now: {c}");
            (
                c["fingerprint_sha256"]
                    .as_str()
                    .expect("fingerprint")
                    .into(),
                c["note"].as_str().expect("note").into(),
            )
        })
        .collect();
    assert_eq!(
        notes,
        [
            (fingerprint.clone(), "laptop stolen".to_string()),
            (h2_fingerprint.clone(), "spiffe://herd/node/h2".to_string()),
        ]
        .into_iter()
        .chain(racers.iter().zip(["r1", "r2"]).map(|(cert, name)| {
            let (fp, _) = herd_api::tls::revocation::fingerprint_of_pem(
                &std::fs::read(cert).expect("read the certificate"),
            )
            .expect("a certificate");
            (fp, format!("spiffe://herd/client/{name}"))
        }))
        .collect(),
        "{listed}"
    );
    let table = tls_cli(&tls, "ops", &["--addr", &addr, "tls", "cert", "revoked"]);
    assert!(table.status.success(), "{table:?}");
    assert!(
        stdout(&table).contains(&h2_fingerprint) && stdout(&table).contains("laptop stolen"),
        "{}",
        stdout(&table)
    );

    // Bad input: exit 2, nothing revoked.
    for args in [
        vec!["tls", "cert", "revoke", "--fingerprint", "abc"],
        vec!["tls", "cert", "revoke"],
        vec![
            "tls",
            "cert",
            "revoke",
            &h2_path,
            "--fingerprint",
            &fingerprint,
        ],
    ] {
        let mut all = vec!["--addr", addr.as_str()];
        all.extend(args.iter().copied());
        let out = tls_cli(&tls, "ops", &all);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {out:?}");
    }
    // A revocation list needs the certificate (its serial), and a
    // certificate of this CA: exit 2, naming why.
    let (stranger, _) = ClusterTls::create(herd_bin(), &dir.path().join("other-ca"))
        .and_then(|other| other.issue("node", "h9"))
        .expect("another CA's certificate");
    let stranger = stranger.display().to_string();
    for (args, why) in [
        (
            vec![
                "tls",
                "cert",
                "revoke",
                "--fingerprint",
                &fingerprint,
                "--ca-key",
                &ca_key,
            ],
            "--ca-key",
        ),
        (
            vec![
                "tls", "cert", "revoke", &stranger, "--ca-key", &ca_key, "--ca", &ca,
            ],
            "not signed by the CA",
        ),
    ] {
        let mut all = vec!["--addr", addr.as_str()];
        all.extend(args.iter().copied());
        let out = tls_cli(&tls, "ops", &all);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{all:?}: {out:?}"
        );
    }
    let missing = dir.path().join("nothing.pem").display().to_string();
    let out = tls_cli(
        &tls,
        "ops",
        &["--addr", &addr, "tls", "cert", "revoke", &missing],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing.pem"),
        "{out:?}"
    );
}

/// Herd's dial as a process that has learned a revocation: a client
/// certificate's material dials h1's agent (checked for `h1.node.herd`),
/// then h1's certificate is revoked in this process's set, as agents and
/// coordinators learn it. The open connection fails at its next call,
/// naming the revocation, and a new one fails its handshake; the
/// coordinator, not revoked, is still dialed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_refuses_a_server_whose_certificate_is_revoked() {
    let dir = tempfile::tempdir().expect("dir");
    let TlsCluster {
        tls,
        cluster: _cluster,
        addr,
        mut agents,
        ..
    } = tls_cluster_with_agents(dir.path(), 1);
    agents.start("h1", &[]).expect("start agent");
    must_have_ready_over_tls(&tls, &addr, 1, Duration::from_secs(30)).await;
    let h1 = agents.agent("h1").expect("h1").addr.clone();
    let (cert, key) = tls.issue("client", "ops").expect("ops's certificate");
    let files = TlsFiles {
        ca: tls.ca(),
        cert,
        key,
    };
    let transport = Transport::Tls(std::sync::Arc::new(
        TlsMaterial::load(&files, None).expect("ops's TLS material"),
    ));
    let dial_h1 = || async {
        transport
            .node_endpoint(&h1, "h1")
            .expect("a dial")
            .connect_timeout(Duration::from_secs(3))
            .connect()
            .await
    };
    let status = |channel: tonic::transport::Channel| async move {
        NodeAgentClient::new(channel)
            .balance_status(BalanceStatusRequest {})
            .await
    };
    let open = dial_h1().await.expect("h1's agent, not revoked");
    status(open.clone()).await.expect("served before");

    let (h1_cert, _) = tls.issue("node", "h1").expect("h1's certificate");
    let (fingerprint, _) = herd_api::tls::revocation::fingerprint_of_pem(
        &std::fs::read(&h1_cert).expect("read h1's certificate"),
    )
    .expect("a certificate");
    herd_api::tls::revocation::replace([fingerprint]);

    // Which of the connection's reader and this call meets the refusal
    // first decides whether the call's error names it.
    status(open)
        .await
        .expect_err("the open connection fails once the server is revoked");
    let refused = dial_h1().await.expect_err("a new connection");
    assert!(
        format!("{refused:?}").to_lowercase().contains("revoked"),
        "{refused:?}"
    );
    let coordinator = addr.split(',').next().expect("a coordinator");
    let dialed = transport
        .endpoint(coordinator, herd_api::tls::PeerRole::Coordinator)
        .expect("a dial")
        .connect()
        .await;
    dialed.expect("the coordinator's certificate is not revoked");
}
