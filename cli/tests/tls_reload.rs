//! Renewing certificates without a restart: a coordinator and an agent
//! under mutual TLS are given new certificates of the same identity on
//! disk and sent SIGHUP; new handshakes (gRPC and HTTPS) then present the
//! new certificates and `/metrics` exports the new expiry, while the
//! processes go on serving. Revoking the agent's old certificate afterwards
//! does not cut the agent off: its connections made with the old one were
//! made again with the new one after the renewal, so the node never goes
//! down. A reload that would change the process's identity is refused and
//! the process keeps the certificate it had; new files are picked up
//! without a signal too.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::tls::{must_have_ready_over_tls, rustls_connector, tls_cli, tls_json};
use common::*;
use herd_chaos::agents::AgentSet;
use herd_chaos::ports::free_loopback_port;
use herd_chaos::process_cluster::{ClusterSetup, ProcessCluster};
use herd_chaos::tls::ClusterTls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The leaf certificate (DER) the server at `addr` presents to a client
/// holding `tls`'s client certificate `probe`, the server checked against
/// the CA for `server`; None if the handshake fails.
async fn presented(tls: &ClusterTls, addr: &str, server: &str) -> Option<Vec<u8>> {
    let (cert, key) = tls.issue("client", "probe").expect("client certificate");
    let connector = rustls_connector(&tls.ca(), Some((&cert, &key)));
    let name = ServerName::try_from(server.to_string()).expect("server name");
    let handshake = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let mut tls = connector.connect(name, tcp).await.ok()?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()?
            .first()?
            .as_ref()
            .to_vec();
        // Say something, so that the server's end of the handshake
        // completes too (TLS 1.3 sends the client's certificate last).
        let _ = tls.write_all(b"\r\n").await;
        let _ = tls.shutdown().await;
        Some(leaf)
    };
    tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .ok()
        .flatten()
}

/// The certificate (DER) in the PEM file `path`.
fn der_of(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).expect("certificate file");
    CertificateDer::from_pem_slice(&pem)
        .expect("PEM certificate")
        .as_ref()
        .to_vec()
}

/// When the certificate in `path` expires (Unix seconds).
fn not_after(path: &Path) -> i64 {
    let der = der_of(path);
    x509_parser::parse_x509_certificate(&der)
        .expect("X.509")
        .1
        .validity()
        .not_after
        .timestamp()
}

/// A new certificate for `role` `name`, valid `days`, issued into `dir`
/// as an operator renewing it would (`herd tls cert create`).
fn renew(tls: &ClusterTls, role: &str, name: &str, days: u32, dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("renewal dir");
    let out = herd_command()
        .env("HERD_LOG", "error")
        .args(["tls", "cert", "create", "--for", role, name, "--days"])
        .arg(days.to_string())
        .arg("--ca")
        .arg(tls.ca())
        .arg("--ca-key")
        .arg(tls.ca_key())
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run herd tls cert create");
    assert!(out.status.success(), "{out:?}");
    (
        dir.join(format!("herd-{role}-{name}.pem")),
        dir.join(format!("herd-{role}-{name}-key.pem")),
    )
}

/// Puts `from` in place of `to` as a careful operator does: a copy beside
/// it, then a rename, so that the process never reads half a file.
fn put_in_place(from: &Path, to: &Path) {
    let beside = to.with_extension("new");
    std::fs::copy(from, &beside).expect("copy");
    std::fs::rename(&beside, to).expect("rename");
}

/// Sends SIGHUP to `pid`.
fn hang_up(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -HUP {pid}");
}

/// Waits until the server at `addr` presents `want`.
async fn until_presented(tls: &ClusterTls, addr: &str, server: &str, want: &[u8]) {
    let started = Instant::now();
    loop {
        let seen = presented(tls, addr, server).await;
        if seen.as_deref() == Some(want) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{server} at {addr} never presented the renewed certificate (handshake ok: {})",
            seen.is_some()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `herd_tls_certificate_expiry_timestamp_seconds` scraped over HTTPS
/// from `addr` (its certificate checked for `server`).
async fn expiry_gauge(tls: &ClusterTls, addr: &str) -> Option<i64> {
    let connector = rustls_connector(&tls.ca(), None);
    let scrape = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let name = ServerName::try_from("coordinator.herd").ok()?;
        let mut stream = connector.connect(name, tcp).await.ok()?;
        let request = "GET /metrics HTTP/1.1\r\nHost: herd\r\nConnection: close\r\n\r\n";
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        String::from_utf8_lossy(&answer)
            .lines()
            .find_map(|l| l.strip_prefix("herd_tls_certificate_expiry_timestamp_seconds "))
            .and_then(|v| v.trim().parse().ok())
    };
    tokio::time::timeout(Duration::from_secs(5), scrape)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_renews_certificates_and_the_old_one_can_be_revoked() {
    let dir = tempfile::tempdir().expect("dir");
    let tls = ClusterTls::create(herd_bin(), &dir.path().join("tls")).expect("CA");
    let metrics = format!("127.0.0.1:{}", free_loopback_port().expect("port"));
    let addrs = ProcessCluster::pick_addrs(1).expect("addresses");
    let setup = ClusterSetup {
        extra_args: vec!["--node-ttl-ms".into(), "3000".into()],
        own_args: BTreeMap::from([(1, vec!["--metrics-listen".to_string(), metrics.clone()])]),
        tls: Some(tls.clone()),
        ..ClusterSetup::default()
    };
    let cluster = ProcessCluster::start_at(herd_bin(), &addrs, setup).expect("start cluster");
    let addr = cluster.addr_list();
    let mut agents = AgentSet::new(herd_bin(), &addr)
        .expect("agents")
        .with_tls(tls.clone());
    agents.start("h1", &[]).expect("start agent");
    must_have_ready_over_tls(&tls, &addr, 1, Duration::from_secs(30)).await;
    let coordinator = cluster.member(1).expect("member 1");
    let (coordinator_cert, coordinator_key) = tls.issue("coordinator", "1").expect("paths");

    // At start: the certificate made with the cluster, its expiry exported.
    let first = der_of(&coordinator_cert);
    let first_expiry = not_after(&coordinator_cert);
    until_presented(&tls, &coordinator.addr, "coordinator.herd", &first).await;
    assert_eq!(expiry_gauge(&tls, &metrics).await, Some(first_expiry));

    // The coordinator: a certificate of 30 days in place of the 365-day
    // one, then SIGHUP. gRPC and HTTPS present it, /metrics says so.
    let (cert, key) = renew(&tls, "coordinator", "1", 30, &dir.path().join("renewed"));
    let renewed = der_of(&cert);
    assert_ne!(renewed, first);
    put_in_place(&cert, &coordinator_cert);
    put_in_place(&key, &coordinator_key);
    hang_up(coordinator.pid().expect("coordinator pid"));
    until_presented(&tls, &coordinator.addr, "coordinator.herd", &renewed).await;
    until_presented(&tls, &metrics, "coordinator.herd", &renewed).await;
    let renewed_expiry = not_after(&cert);
    assert!(renewed_expiry < first_expiry, "30 days, not 365");
    assert_eq!(expiry_gauge(&tls, &metrics).await, Some(renewed_expiry));
    assert!(
        std::fs::read_to_string(&coordinator.log_path)
            .expect("coordinator log")
            .contains("TLS certificate reloaded"),
        "the reload is logged"
    );
    // The agent, which dials it, and the CLI go on.
    must_have_ready_over_tls(&tls, &addr, 1, Duration::from_secs(10)).await;

    // The agent: renewed the same way.
    let agent = agents.agent("h1").expect("agent h1");
    let (agent_cert, agent_key) = tls.issue("node", "h1").expect("paths");
    let old_agent_cert = dir.path().join("h1-old.pem");
    std::fs::copy(&agent_cert, &old_agent_cert).expect("keep the old certificate");
    let (cert, key) = renew(&tls, "node", "h1", 30, &dir.path().join("renewed-h1"));
    let renewed_agent = der_of(&cert);
    put_in_place(&cert, &agent_cert);
    put_in_place(&key, &agent_key);
    hang_up(agent.pid().expect("agent pid"));
    until_presented(&tls, &agent.addr, "h1.node.herd", &renewed_agent).await;

    // Revoking the agent's old certificate: the connections it made with
    // it to the coordinator were made again with the new one after the
    // renewal, so heartbeats keep coming and h1 never goes down (a node
    // whose heartbeats are refused is down after the 3 s TTL).
    let old_path = old_agent_cert.display().to_string();
    let out = tls_cli(
        &tls,
        "ops",
        &["--addr", &addr, "tls", "cert", "revoke", &old_path],
    );
    assert!(out.status.success(), "{out:?}");
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(10) {
        if let Some(nodes) = tls_json(&tls, &addr, &["node", "list"]) {
            let status = nodes
                .as_array()
                .and_then(|n| n.iter().find(|n| n["name"] == "h1"))
                .map(|n| n["status"].clone());
            assert_eq!(
                status,
                Some(serde_json::json!("ready")),
                "h1 after its old certificate was revoked"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A reload that would make the coordinator someone else (a client's
    // certificate) is refused; it keeps presenting the renewed one.
    let (client_cert, client_key) = tls.issue("client", "probe").expect("client certificate");
    put_in_place(&client_cert, &coordinator_cert);
    put_in_place(&client_key, &coordinator_key);
    hang_up(coordinator.pid().expect("coordinator pid"));
    until("the refusal logged", Duration::from_secs(10), || {
        std::fs::read_to_string(&coordinator.log_path)
            .ok()?
            .contains("TLS certificate reload refused")
            .then_some(())
    })
    .await;
    assert_eq!(
        presented(&tls, &coordinator.addr, "coordinator.herd").await,
        Some(renewed.clone())
    );
    must_have_ready_over_tls(&tls, &addr, 1, Duration::from_secs(10)).await;

    // Without SIGHUP: files replaced in place are noticed within the 10 s
    // between looks, and the process recovers from the refused reload
    // above. An operator's renewal, `herd tls cert renew` of the renewed
    // coordinator certificate (put back first: the files hold the client
    // certificate of the refused reload), as a certificate agent would.
    put_in_place(
        &dir.path().join("renewed").join("herd-coordinator-1.pem"),
        &coordinator_cert,
    );
    let out = herd_command()
        .env("HERD_LOG", "error")
        .args(["tls", "cert", "renew"])
        .arg(&coordinator_cert)
        .arg("--key")
        .arg(&coordinator_key)
        .arg("--ca")
        .arg(tls.ca())
        .arg("--ca-key")
        .arg(tls.ca_key())
        .args(["--days", "20"])
        .output()
        .expect("run herd tls cert renew");
    assert!(out.status.success(), "{out:?}");
    let watched = der_of(&coordinator_cert);
    assert_eq!(
        herd_api::tls::identity::certificate_identity(&watched)
            .expect("identity")
            .to_string(),
        herd_api::tls::identity::certificate_identity(&renewed)
            .expect("identity")
            .to_string()
    );
    until_presented(&tls, &coordinator.addr, "coordinator.herd", &watched).await;
    let log = std::fs::read_to_string(&coordinator.log_path).expect("coordinator log");
    assert!(
        log.contains("trigger=\"SIGHUP\"") && log.contains("trigger=\"the files changed\""),
        "each reload names what asked for it"
    );
    assert_eq!(
        expiry_gauge(&tls, &metrics).await,
        Some(not_after(&coordinator_cert))
    );
    drop(agents);
}
