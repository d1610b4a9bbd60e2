//! Clusters under mutual TLS for the end-to-end tests: one CA (`herd tls`),
//! coordinators and an agent set holding its certificates, and the CLI run
//! as one of its clients; so that every TLS test starts and reads its
//! cluster the same way.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use herd_chaos::agents::AgentSet;
use herd_chaos::process_cluster::{ClusterSetup, ProcessCluster};
use herd_chaos::tls::ClusterTls;
use serde_json::Value;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{herd_bin, herd_command, until};

/// A cluster under TLS: its CA, its coordinators and an agent set whose
/// agents get certificates of that CA (none started yet).
pub struct TlsCluster {
    /// The CA every certificate comes from.
    pub tls: ClusterTls,
    /// Each coordinator's address, by member id.
    pub addrs: BTreeMap<u64, String>,
    /// The coordinators.
    pub cluster: ProcessCluster,
    /// Their address list.
    pub addr: String,
    /// The agents, started by the test.
    pub agents: AgentSet,
}

/// A CA under `dir/tls` and `members` coordinators holding its
/// certificates (marking nodes down after 3 s), with an empty agent set
/// pointed at them that gives each agent its node's certificate.
pub fn tls_cluster_with_agents(dir: &Path, members: u64) -> TlsCluster {
    let tls = ClusterTls::create(herd_bin(), &dir.join("tls")).expect("CA");
    let addrs = ProcessCluster::pick_addrs(members).expect("addresses");
    let setup = ClusterSetup {
        extra_args: vec!["--node-ttl-ms".into(), "3000".into()],
        tls: Some(tls.clone()),
        ..ClusterSetup::default()
    };
    let cluster = ProcessCluster::start_at(herd_bin(), &addrs, setup).expect("start cluster");
    let addr = cluster.addr_list();
    let agents = AgentSet::new(herd_bin(), &addr)
        .expect("agents")
        .with_tls(tls.clone());
    TlsCluster {
        tls,
        addrs,
        cluster,
        addr,
        agents,
    }
}

/// `herd ARGS` with `tls`'s client certificate `name` (made if new), TLS
/// on: the way a certified operator runs the CLI.
pub fn tls_cli(tls: &ClusterTls, name: &str, args: &[&str]) -> Output {
    tls.issue("client", name).expect("client certificate");
    herd_command()
        .env_remove("HERD_INSECURE")
        .env("HERD_LOG", "error")
        .args(tls.args("client", name))
        .args(args)
        .output()
        .expect("run herd")
}

/// [`tls_cli`] as client `admin`, which must succeed.
pub fn must_tls_cli(tls: &ClusterTls, args: &[&str]) -> Output {
    let out = tls_cli(tls, "admin", args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `herd --addr ADDR -o json ARGS` as client `admin`, parsed; None when it
/// fails (a caller waiting on a condition tries again).
pub fn tls_json(tls: &ClusterTls, addr: &str, args: &[&str]) -> Option<Value> {
    let mut all = vec!["--addr", addr, "-o", "json"];
    all.extend_from_slice(args);
    let out = tls_cli(tls, "admin", &all);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Waits (up to `limit`) until `count` nodes are listed ready, read over
/// TLS: the agents registered over TLS.
pub async fn must_have_ready_over_tls(tls: &ClusterTls, addr: &str, count: usize, limit: Duration) {
    until(&format!("{count} nodes ready over TLS"), limit, || {
        let nodes = tls_json(tls, addr, &["node", "list"])?;
        let ready = nodes
            .as_array()?
            .iter()
            .filter(|n| n["status"] == "ready")
            .count();
        (ready == count).then_some(())
    })
    .await;
}

/// Waits (up to `limit`) until an allocation of `job` runs, read over TLS;
/// returns its id and node.
pub async fn running_over_tls(
    tls: &ClusterTls,
    addr: &str,
    job: &str,
    limit: Duration,
) -> (String, String) {
    until(&format!("an allocation of {job} running"), limit, || {
        let allocs = tls_json(tls, addr, &["alloc", "list", "--job", job])?;
        let a = allocs
            .as_array()?
            .iter()
            .find(|a| a["status"] == "running")?
            .clone();
        Some((
            a["id"].as_str()?.to_string(),
            a["node"].as_str()?.to_string(),
        ))
    })
    .await
}

/// A channel to `addr` as `role` `name` of `tls`, expecting a peer of
/// `peer_role` (built by hand: this test process itself runs plaintext).
pub async fn channel_as(
    ca: &Path,
    cert: &Path,
    key: &Path,
    addr: &str,
    peer_role: &str,
) -> Result<Channel, tonic::transport::Error> {
    let read = |p: &Path| std::fs::read(p).expect("read pem");
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .identity(Identity::from_pem(read(cert), read(key)))
        .domain_name(format!("{peer_role}.herd"));
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(config)?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
}

/// [`channel_as`] with the certificate `tls` issues `role` `name` (made if
/// new), which must connect.
pub async fn as_identity(
    tls: &ClusterTls,
    role: &str,
    name: &str,
    addr: &str,
    peer: &str,
) -> Channel {
    let (cert, key) = tls.issue(role, name).expect("certificate");
    channel_as(&tls.ca(), &cert, &key, addr, peer)
        .await
        .expect("TLS connection with a certificate of the cluster's CA")
}

/// A raw TLS client (rustls) trusting only the CA at `ca`, presenting the
/// certificate and key at `identity` if given: for tests that look at the
/// handshake itself (which certificate a server presents, HTTPS).
pub fn rustls_connector(ca: &Path, identity: Option<(&Path, &Path)>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("CA");
    }
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .expect("certificate file")
                .collect::<Result<Vec<_>, _>>()
                .expect("certificate");
            let key = PrivateKeyDer::from_pem_file(key).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client identity")
        }
    };
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}
