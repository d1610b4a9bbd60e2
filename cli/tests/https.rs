//! HTTPS on every HTTP endpoint of a TLS cluster: a coordinator with the
//! dashboard (`--http-listen`) and `/metrics` (`--metrics-listen`, with the
//! certificate's expiry and the revocations each process holds), and a
//! node agent with its OpenAI-compatible endpoint and `/metrics`, all run
//! with certificates of one CA (made with `herd tls`). Each endpoint
//! answers over HTTPS with its process's own certificate (checked against
//! the cluster's CA for `coordinator.herd` and `<name>.node.herd`), never
//! in plain HTTP, and a client that connects and never handshakes holds no
//! one up. Each process's `/metrics` says when its certificate expires.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use herd_chaos::agents::AgentSet;
use herd_chaos::ports::free_loopback_port;
use herd_chaos::process_cluster::{ClusterSetup, ProcessCluster};
use herd_chaos::tls::ClusterTls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A TLS client trusting only the CA at `ca`.
fn connector(ca: &Path) -> tokio_rustls::TlsConnector {
    common::tls::rustls_connector(ca, None)
}

/// What a GET of `path` answers: the whole response as text.
async fn get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
) -> std::io::Result<String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: herd\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// GET `path` over HTTPS from `addr`, whose certificate must chain to the
/// CA and name `server`; retried until the endpoint is up.
async fn https_get(ca: &Path, addr: &str, server: &str, path: &str) -> String {
    let connector = connector(ca);
    let name = ServerName::try_from(server.to_string()).expect("server name");
    let started = Instant::now();
    loop {
        let attempt = async {
            let tcp = TcpStream::connect(addr).await?;
            let tls = connector.connect(name.clone(), tcp).await?;
            get(tls, path).await
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(answer)) if answer.starts_with("HTTP/1.1 200") => return answer,
            other => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "https://{addr}{path} as {server}: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

/// `herd_tls_certificate_expiry_timestamp_seconds` in a scrape.
fn certificate_expiry(metrics: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("herd_tls_certificate_expiry_timestamp_seconds "))
        .unwrap_or_else(|| panic!("no certificate expiry in {metrics}"))
        .trim()
        .parse()
        .expect("a Unix time")
}

/// A plain-HTTP GET of `addr` gets no HTTP answer (the server reads a TLS
/// handshake and drops what is not one).
async fn must_refuse_plain_http(addr: &str) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let answer = tokio::time::timeout(Duration::from_secs(15), get(tcp, "/"))
        .await
        .expect("the server closes the connection")
        .unwrap_or_default();
    assert!(
        !answer.contains("HTTP/1.1 200"),
        "plain HTTP served at {addr}: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_every_http_endpoint_over_https_only() {
    let dir = tempfile::tempdir().expect("dir");
    let tls = ClusterTls::create(herd_bin(), &dir.path().join("tls")).expect("CA");
    let port = || format!("127.0.0.1:{}", free_loopback_port().expect("port"));
    let (dashboard, coordinator_metrics) = (port(), port());
    let addrs = ProcessCluster::pick_addrs(1).expect("addresses");
    let setup = ClusterSetup {
        own_args: BTreeMap::from([(
            1,
            vec![
                "--http-listen".to_string(),
                dashboard.clone(),
                "--metrics-listen".to_string(),
                coordinator_metrics.clone(),
            ],
        )]),
        tls: Some(tls.clone()),
        ..ClusterSetup::default()
    };
    let cluster = ProcessCluster::start_at(herd_bin(), &addrs, setup).expect("start cluster");
    let (openai, agent_metrics) = (port(), port());
    let mut agents = AgentSet::new(herd_bin(), &cluster.addr_list())
        .expect("agents")
        .with_tls(tls.clone());
    agents
        .start(
            "h1",
            &["--http-listen", &openai, "--metrics-listen", &agent_metrics],
        )
        .expect("start agent");
    let ca = tls.ca();

    // The coordinator's pages and metrics, with its own certificate.
    let page = https_get(&ca, &dashboard, "coordinator.herd", "/").await;
    assert!(page.contains("<html"), "the dashboard: {page}");
    let metrics = https_get(&ca, &coordinator_metrics, "coordinator.herd", "/metrics").await;
    assert!(metrics.contains("herd_"), "coordinator metrics: {metrics}");
    let coordinator_expiry = certificate_expiry(&metrics);
    // The agent's, with its node's.
    let models = https_get(&ca, &openai, "h1.node.herd", "/v1/models").await;
    assert!(
        models.contains("\"object\""),
        "the agent's models: {models}"
    );
    let metrics = https_get(&ca, &agent_metrics, "h1.node.herd", "/metrics").await;
    assert!(metrics.contains("herd_"), "agent metrics: {metrics}");
    // Each exports its own certificate's expiry, as `herd tls` made it.
    for (expiry, role, name) in [
        (coordinator_expiry, "coordinator", "1"),
        (certificate_expiry(&metrics), "node", "h1"),
    ] {
        let (cert, _) = tls.issue(role, name).expect("certificate path");
        let pem = std::fs::read(&cert).expect("certificate");
        let der = CertificateDer::from_pem_slice(&pem).expect("PEM");
        let want = x509_parser::parse_x509_certificate(&der)
            .expect("X.509")
            .1
            .validity()
            .not_after
            .timestamp();
        assert_eq!(expiry, want, "{role} {name}");
    }

    // Revocations are counted where each process holds them: a client
    // certificate revoked with the CA's key reaches the coordinator at
    // once and the agent with its token table, the agent holding the
    // revocation list for its QEMUs too.
    let gauge = |metrics: &str, name: &str| -> Option<i64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
    };
    for metrics in [
        &metrics,
        &https_get(&ca, &coordinator_metrics, "coordinator.herd", "/metrics").await,
    ] {
        assert_eq!(
            gauge(metrics, "herd_tls_revoked_certificates"),
            Some(0),
            "{metrics}"
        );
        assert_eq!(
            gauge(metrics, "herd_tls_revocation_lists"),
            Some(0),
            "{metrics}"
        );
    }
    let (lost, _) = tls.issue("client", "lost").expect("a client certificate");
    let (lost, ca_key) = (
        lost.display().to_string(),
        tls.ca_key().display().to_string(),
    );
    let ca_path = ca.display().to_string();
    let addr = cluster.addr_list();
    common::tls::must_tls_cli(
        &tls,
        &[
            "--addr", &addr, "tls", "cert", "revoke", &lost, "--ca-key", &ca_key, "--ca", &ca_path,
        ],
    );
    let started = Instant::now();
    loop {
        let agent = https_get(&ca, &agent_metrics, "h1.node.herd", "/metrics").await;
        let coordinator =
            https_get(&ca, &coordinator_metrics, "coordinator.herd", "/metrics").await;
        let counts = (
            gauge(&agent, "herd_tls_revoked_certificates"),
            gauge(&agent, "herd_tls_revocation_lists"),
            gauge(&coordinator, "herd_tls_revoked_certificates"),
        );
        if counts == (Some(1), Some(1), Some(1)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "revocation gauges (agent: certificates, lists; coordinator: certificates): {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // No endpoint speaks plain HTTP.
    for addr in [&dashboard, &coordinator_metrics, &openai, &agent_metrics] {
        must_refuse_plain_http(addr).await;
    }

    // A client that connects and never handshakes holds no one up.
    let _silent = TcpStream::connect(&dashboard).await.expect("connect");
    let page = https_get(&ca, &dashboard, "coordinator.herd", "/").await;
    assert!(page.contains("<html"), "{page}");
}
