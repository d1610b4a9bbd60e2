//! The simulated VM's migration stream under mutual TLS, with the agent's
//! own node certificate (docs/vm.md, "What travels in the clear";
//! docs/security.md).
//!
//! When the agent runs with TLS, every `herd sim-vm` it starts gets the
//! cluster's CA, the node's certificate and its key: the driver writes them
//! to a private directory of the allocation ([`write_creds`]: 0700, the
//! files 0600, the layout QEMU's credentials use, see
//! [`crate::driver::vm::tls`]) and names them with `--migration-tls-ca`,
//! `--migration-tls-cert` and `--migration-tls-key` ([`args`]); the process
//! reads them at start and removes them at once ([`StreamTls::load_and_remove`]),
//! so the key lives on in its memory only. A source needs them long after
//! it started (the move comes when the scheduler wants it), hence at start
//! and not with the `migrate` command.
//!
//! Both sides check the exact node on the other end, which QEMU cannot:
//!
//! - **Target** ([`StreamTls::accept`]): the handshake requires a client
//!   certificate of the CA (rustls's `WebPkiClientVerifier`), then the
//!   certificate's identity (URI SAN, `herd_api::tls::parse_certificate`)
//!   must be `spiffe://herd/node/SOURCE`, SOURCE being the node the move
//!   comes from (`--migration-source-node`, from the spec's
//!   `HERD_MIGRATION_SOURCE_NODE`); without it, any node of the cluster.
//!   A client's or a coordinator's certificate of the same CA is refused.
//! - **Source** ([`StreamTls::connect`]): the target's certificate must
//!   chain to the CA and carry `node.herd` (every node certificate does),
//!   then name `spiffe://herd/node/TARGET`, TARGET being the node the
//!   source's agent assigned the move to (the migration assignment, never
//!   the target's own answer).
//!
//! Both sides also refuse a peer whose certificate the cluster revoked
//! (`herd tls cert revoke`): the process starts with the agent's revoked
//! set (`--migration-tls-revoked`, a file of fingerprints read and removed
//! like the others), and a source is handed the set again with each
//! `migrate` command, since it may have run for months before its move.
//!
//! Without TLS (tests, `herd dev`) the stream is plain TCP, as before.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herd_api::tls::identity::parse_certificate;
use herd_api::tls::revocation::{fingerprint, parse_fingerprint};
use herd_api::tls::{PeerIdentity, PeerRole};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::driver::vm::tls::{write_private, MigrationTls, Side, CREDS_DIR};

/// How long a TLS handshake on the stream may take, either side: a peer
/// that connects and says nothing is dropped after this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest credentials file the process reads.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Where the driver writes one VM's credentials in its allocation
/// directory, as the `herd sim-vm` flags name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredsPaths {
    /// The cluster's CA certificate (`--migration-tls-ca`).
    pub ca: PathBuf,
    /// The node's certificate (`--migration-tls-cert`).
    pub cert: PathBuf,
    /// The node's key (`--migration-tls-key`).
    pub key: PathBuf,
    /// The revoked certificates' fingerprints, one a line
    /// (`--migration-tls-revoked`).
    pub revoked: PathBuf,
}

impl CredsPaths {
    /// The files in `alloc_dir`'s credentials directory; the names are
    /// those [`MigrationTls::write_dir`] gives a client (node certificates
    /// serve and dial both, so one pair does for either side of a move).
    pub fn in_alloc_dir(alloc_dir: &Path) -> Self {
        let dir = alloc_dir.join(CREDS_DIR);
        Self {
            ca: dir.join("ca-cert.pem"),
            cert: dir.join("client-cert.pem"),
            key: dir.join("client-key.pem"),
            revoked: dir.join("revoked.txt"),
        }
    }
}

/// The `herd sim-vm` arguments naming the credentials in `alloc_dir`.
pub fn args(alloc_dir: &Path) -> Vec<String> {
    let paths = CredsPaths::in_alloc_dir(alloc_dir);
    vec![
        "--migration-tls-ca".into(),
        paths.ca.display().to_string(),
        "--migration-tls-cert".into(),
        paths.cert.display().to_string(),
        "--migration-tls-key".into(),
        paths.key.display().to_string(),
        "--migration-tls-revoked".into(),
        paths.revoked.display().to_string(),
    ]
}

/// Writes `tls` and the `revoked` fingerprints where [`args`] names them
/// (the directory 0700, the files 0600, anything left by an earlier run
/// replaced), for the process about to start.
pub fn write_creds(
    tls: &MigrationTls,
    alloc_dir: &Path,
    revoked: &[String],
) -> std::io::Result<CredsPaths> {
    tls.write_dir(alloc_dir, Side::Client)?;
    let paths = CredsPaths::in_alloc_dir(alloc_dir);
    let mut text = revoked.join("\n");
    text.push('\n');
    write_private(&paths.revoked, text.as_bytes())?;
    Ok(paths)
}

/// The fingerprints in `text` (one a line, blank lines ignored), for
/// `what`; an unreadable line is an error naming it.
pub fn parse_revoked(what: &str, text: &str) -> Result<BTreeSet<String>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(at, line)| {
            parse_fingerprint(line).map_err(|e| format!("{what}, line {}: {e}", at + 1))
        })
        .collect()
}

/// A `herd sim-vm`'s TLS identity and trust for its migration streams,
/// built once at start: the acceptor a target listens with and the
/// connector a source dials with.
#[derive(Clone)]
pub struct StreamTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    own: PeerIdentity,
    /// Fingerprints of certificates no peer may present.
    revoked: Arc<RwLock<BTreeSet<String>>>,
}

impl std::fmt::Debug for StreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The identity only: never key material, not even in a debug print.
        f.debug_struct("StreamTls")
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Reads one credentials file (bounded), for `flag`.
fn read_file(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?
        .len();
    if size > MAX_PEM_BYTES {
        return Err(format!(
            "{flag} {}: {size} bytes, more than a PEM file of {MAX_PEM_BYTES} bytes",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

impl StreamTls {
    /// Reads the CA, certificate, key and revoked-set files (the last
    /// optional), then removes them (and their directory, once empty)
    /// whatever came of the reading, so that the key stays on disk no
    /// longer than the start of the process.
    pub fn load_and_remove(
        ca: &Path,
        cert: &Path,
        key: &Path,
        revoked: Option<&Path>,
    ) -> Result<Self, String> {
        let revoked_file = revoked.map(|path| {
            let read = read_file("--migration-tls-revoked", path);
            let _ = std::fs::remove_file(path);
            read.and_then(|bytes| {
                parse_revoked(
                    &format!("--migration-tls-revoked {}", path.display()),
                    &String::from_utf8_lossy(&bytes),
                )
            })
        });
        let files = [
            ("--migration-tls-ca", ca),
            ("--migration-tls-cert", cert),
            ("--migration-tls-key", key),
        ];
        let [ca_pem, cert_pem, key_pem] = files.map(|(flag, path)| read_file(flag, path));
        let mut removal = Ok(());
        for (flag, path) in files {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound && removal.is_ok() => {
                    removal = Err(format!("{flag} {}: cannot remove it: {e}", path.display()));
                }
                _ => {}
            }
        }
        // The driver's private directory, if nothing else is left in it.
        for (_, path) in files {
            if let Some(parent) = path.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        let tls = Self::from_pem(&ca_pem?, &cert_pem?, &key_pem?)?;
        removal?;
        if let Some(set) = revoked_file.transpose()? {
            tls.set_revoked(set);
        }
        Ok(tls)
    }

    /// Makes `set` the certificates refused from now on (the agent's
    /// revoked set, at start and with each `migrate`).
    pub fn set_revoked(&self, set: BTreeSet<String>) {
        if let Ok(mut revoked) = self.revoked.write() {
            *revoked = set;
        }
    }

    /// The refusal of a peer whose certificate `leaf` (DER) is revoked.
    fn check_not_revoked(&self, leaf: Option<&CertificateDer<'_>>) -> Result<(), String> {
        let revoked = self
            .revoked
            .read()
            .map_err(|_| "the revoked set is unreadable")?;
        if revoked.is_empty() {
            return Ok(());
        }
        match leaf.map(|leaf| fingerprint(leaf.as_ref())) {
            Some(fp) if revoked.contains(&fp) => Err(format!(
                "the peer's certificate (SHA-256 {fp}) was revoked (`herd tls cert revoke`)"
            )),
            _ => Ok(()),
        }
    }

    /// The identity from PEM bytes: the cluster's CA, this node's
    /// certificate (chain) and its key. Errors name what is wrong, never
    /// the key's bytes.
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem) {
            let ca = ca.map_err(|e| format!("--migration-tls-ca: not PEM certificates: {e}"))?;
            roots
                .add(ca)
                .map_err(|e| format!("--migration-tls-ca: not a usable CA certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err("--migration-tls-ca: no PEM CERTIFICATE block".into());
        }
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--migration-tls-cert: not PEM certificates: {e}"))?;
        let leaf = chain
            .first()
            .ok_or("--migration-tls-cert: no PEM CERTIFICATE block")?;
        let own = parse_certificate(leaf.as_ref(), now_unix())
            .map_err(|e| format!("--migration-tls-cert: the certificate {e}"))?;
        // No detail from the parser: it might quote what it read.
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|_| "--migration-tls-key: not a PEM private key".to_string())?;
        let roots = Arc::new(roots);
        // ring, as tonic's `tls-ring` uses for every other channel (no
        // aws-lc: no cmake/NASM); rustls deprecates it only because ring
        // has no post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("the migration stream's client check: {e}"))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("the migration stream's TLS settings: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("--migration-tls-cert/--migration-tls-key: {e}"))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("the migration stream's TLS settings: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("--migration-tls-cert/--migration-tls-key: {e}"))?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            own,
            revoked: Arc::default(),
        })
    }

    /// Who this process is, as its certificate says.
    pub fn identity(&self) -> &PeerIdentity {
        &self.own
    }

    /// The target's side of a connection: the handshake (a client
    /// certificate of the CA required), then the client's identity, which
    /// must be node `source` (any node when None). Err says why the peer
    /// was refused, naming it when its certificate was good enough to read.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        source: Option<&str>,
    ) -> Result<(server::TlsStream<TcpStream>, PeerIdentity), String> {
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp))
            .await
            .map_err(|_| format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"))?
            .map_err(|e| format!("the TLS handshake failed: {e}"))?;
        let certs = stream.get_ref().1.peer_certificates();
        self.check_not_revoked(certs.and_then(|c| c.first()))?;
        let identity = check_peer(certs, source, "source")?;
        Ok((stream, identity))
    }

    /// The source's side: the handshake against `node.herd` and the CA,
    /// then the server's identity, which must be node `target` (any node
    /// when None). Err says what was wrong.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        target: Option<&str>,
    ) -> Result<(client::TlsStream<TcpStream>, PeerIdentity), String> {
        let name = ServerName::try_from(PeerRole::Node.dns_name())
            .map_err(|e| format!("the name {:?}: {e}", PeerRole::Node.dns_name()))?;
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector.connect(name, tcp))
            .await
            .map_err(|_| format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"))?
            .map_err(|e| format!("the TLS handshake failed: {e}"))?;
        let certs = stream.get_ref().1.peer_certificates();
        self.check_not_revoked(certs.and_then(|c| c.first()))?;
        let identity = check_peer(certs, target, "target")?;
        Ok((stream, identity))
    }
}

/// The identity of the peer whose (already verified) chain is `certs`: it
/// must be a node, and node `want` when given. `side` names the role the
/// peer plays in the move, for the error.
fn check_peer(
    certs: Option<&[CertificateDer<'_>]>,
    want: Option<&str>,
    side: &str,
) -> Result<PeerIdentity, String> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or("the peer showed no certificate")?;
    let identity = parse_certificate(leaf.as_ref(), now_unix())
        .map_err(|e| format!("the peer's certificate {e}"))?;
    let wanted = match want {
        Some(name) => format!("node {name:?} (the move's {side})"),
        None => format!("a node (the move's {side})"),
    };
    let is_wanted =
        identity.role == PeerRole::Node && want.is_none_or(|name| name == identity.name);
    if !is_wanted {
        return Err(format!(
            "the peer is {identity} ({}), not {wanted}",
            identity.uri()
        ));
    }
    Ok(identity)
}

/// A throwaway CA issuing certificates the way `herd tls cert create`
/// does, for the tests of the stream under TLS.
#[cfg(test)]
pub(crate) mod test_certs {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };

    use super::*;

    /// A cluster CA.
    pub struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    impl Ca {
        /// A fresh CA.
        pub fn new() -> Self {
            let key = KeyPair::generate().expect("CA key");
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, "herd cluster CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let pem = params.self_signed(&key).expect("CA").pem();
            Self {
                issuer: Issuer::new(params, key),
                pem,
            }
        }

        /// The certificate and key (PEM) of `role` `name`.
        pub fn issue(&self, role: PeerRole, name: &str) -> (String, String) {
            let identity = PeerIdentity {
                role,
                name: name.to_string(),
            };
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, format!("{role} {name}"));
            params.subject_alt_names = vec![
                SanType::URI(identity.uri().try_into().expect("uri")),
                SanType::DnsName(role.dns_name().try_into().expect("dns")),
            ];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = match role {
                PeerRole::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
                PeerRole::Coordinator | PeerRole::Node => vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
            };
            params.use_authority_key_identifier_extension = true;
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &self.issuer).expect("signed");
            (cert.pem(), key.serialize_pem())
        }

        /// `role` `name`'s identity as the agent holds it.
        pub fn migration_tls(&self, role: PeerRole, name: &str) -> MigrationTls {
            let (cert, key) = self.issue(role, name);
            MigrationTls::new(self.pem.clone().into(), cert.into(), key.into())
        }

        /// `role` `name`'s identity as a `herd sim-vm` holds it.
        pub fn stream_tls(&self, role: PeerRole, name: &str) -> StreamTls {
            self.stream_tls_and_fingerprint(role, name).0
        }

        /// [`Self::stream_tls`], and its certificate's fingerprint.
        pub fn stream_tls_and_fingerprint(
            &self,
            role: PeerRole,
            name: &str,
        ) -> (StreamTls, String) {
            let (cert, key) = self.issue(role, name);
            let tls = StreamTls::from_pem(self.pem.as_bytes(), cert.as_bytes(), key.as_bytes())
                .expect("stream TLS");
            let (fingerprint, _) =
                herd_api::tls::revocation::fingerprint_of_pem(cert.as_bytes()).expect("PEM");
            (tls, fingerprint)
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::test_certs::Ca;
    use super::*;

    /// One connection to a target of node `t2` that waits for node `s1`:
    /// what `dial` made of it, and what the target made of it.
    async fn attempt<T, F>(
        target: &StreamTls,
        dial: impl FnOnce(TcpStream) -> F,
    ) -> (T, Result<PeerIdentity, String>)
    where
        F: std::future::Future<Output = T>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let target = target.clone();
        let accepting = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let (mut stream, identity) = target.accept(tcp, Some("s1")).await?;
            // Echoes one byte, plus one: the dialler sees the stream carry
            // data both ways (or gave up on it, which the dialler reports).
            let mut byte = [0u8; 1];
            if stream.read_exact(&mut byte).await.is_ok() {
                let _ = stream.write_all(&[byte[0].wrapping_add(1)]).await;
                let _ = stream.flush().await;
            }
            Ok(identity)
        });
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let dialled = dial(tcp).await;
        (dialled, accepting.await.expect("joined"))
    }

    #[tokio::test]
    async fn the_source_node_gets_through_and_everyone_else_is_refused_naming_them() {
        let ca = Ca::new();
        let target = ca.stream_tls(PeerRole::Node, "t2");
        assert_eq!(target.identity().name, "t2");
        assert!(!format!("{target:?}").contains("PRIVATE"), "{target:?}");

        // The source node, expecting the target node: both ends agree.
        let source = ca.stream_tls(PeerRole::Node, "s1");
        let (dialled, admitted) = attempt(&target, |tcp| async move {
            let (mut stream, peer) = source.connect(tcp, Some("t2")).await?;
            stream.write_all(&[41]).await.map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            stream
                .read_exact(&mut byte)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((peer, byte[0]))
        })
        .await;
        let (peer, echoed) = dialled.expect("the source reached the target");
        assert_eq!(
            (peer.role, peer.name.as_str(), echoed),
            (PeerRole::Node, "t2", 42)
        );
        let admitted = admitted.expect("the target admitted the source");
        assert_eq!(admitted.name, "s1");

        // Another node of the same CA: refused by name.
        let other = ca.stream_tls(PeerRole::Node, "x9");
        let (_, refused) = attempt(&target, |tcp| async move {
            other.connect(tcp, Some("t2")).await.map(|_| ())
        })
        .await;
        let why = refused.expect_err("another node refused");
        assert!(
            why.contains(r#"node "x9""#) && why.contains(r#"not node "s1""#),
            "{why}"
        );

        // A client certificate of the same CA (chain fine, role not).
        let client = ca.stream_tls(PeerRole::Client, "alice");
        let (_, refused) = attempt(&target, |tcp| async move {
            client.connect(tcp, Some("t2")).await.map(|_| ())
        })
        .await;
        let why = refused.expect_err("a client refused");
        assert!(
            why.contains(r#"client "alice""#) && why.contains("spiffe://herd/client/alice"),
            "{why}"
        );

        // Plain TCP: no handshake.
        let (_, refused) = attempt(&target, |mut tcp| async move {
            let _ = tcp.write_all(b"HERDSIMVM plain pages\n").await;
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest).await;
        })
        .await;
        let why = refused.expect_err("plain TCP refused");
        assert!(why.contains("TLS handshake failed"), "{why}");

        // A node certificate of another CA: the chain fails both ways.
        let stranger = Ca::new().stream_tls(PeerRole::Node, "s1");
        let (dialled, refused) = attempt(&target, |tcp| async move {
            stranger.connect(tcp, Some("t2")).await.map(|_| ())
        })
        .await;
        assert!(refused
            .expect_err("another CA")
            .contains("TLS handshake failed"));
        assert!(dialled
            .expect_err("nor does it trust the target")
            .contains("TLS handshake failed"));
    }

    #[tokio::test]
    async fn the_source_refuses_a_target_that_is_not_the_assigned_node() {
        let ca = Ca::new();
        let target = ca.stream_tls(PeerRole::Node, "t2");
        let source = ca.stream_tls(PeerRole::Node, "s1");
        let (dialled, _) = attempt(&target, |tcp| async move {
            source.connect(tcp, Some("t3")).await.map(|_| ())
        })
        .await;
        let why = dialled.expect_err("the wrong target refused");
        assert!(
            why.contains(r#"node "t2""#) && why.contains(r#"not node "t3" (the move's target)"#),
            "{why}"
        );
        // Without a name, any node of the cluster will do.
        let source = ca.stream_tls(PeerRole::Node, "s1");
        let (dialled, admitted) = attempt(&target, |tcp| async move {
            let (mut stream, peer) = source.connect(tcp, None).await?;
            stream.write_all(&[1]).await.map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            stream
                .read_exact(&mut byte)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(peer)
        })
        .await;
        assert_eq!(dialled.expect("any node").name, "t2");
        assert_eq!(admitted.expect("admitted").name, "s1");
    }

    #[tokio::test]
    async fn a_revoked_certificate_is_refused_on_either_side() {
        let ca = Ca::new();
        // The source's certificate revoked at the target.
        let target = ca.stream_tls(PeerRole::Node, "t2");
        let (source, source_fingerprint) = ca.stream_tls_and_fingerprint(PeerRole::Node, "s1");
        target.set_revoked([source_fingerprint.clone()].into());
        let (_, admitted) = attempt(&target, |tcp| async move {
            let _ = source.connect(tcp, Some("t2")).await;
        })
        .await;
        let why = admitted.expect_err("a revoked source refused");
        assert!(
            why.contains("revoked") && why.contains(&source_fingerprint),
            "{why}"
        );
        // The target's certificate revoked at the source.
        let (target, target_fingerprint) = ca.stream_tls_and_fingerprint(PeerRole::Node, "t2");
        let source = ca.stream_tls(PeerRole::Node, "s1");
        source.set_revoked([target_fingerprint].into());
        let dialing = source.clone();
        let (dialled, _) = attempt(&target, |tcp| async move {
            dialing.connect(tcp, Some("t2")).await.map(|_| ())
        })
        .await;
        assert!(
            dialled
                .expect_err("a revoked target refused")
                .contains("revoked"),
            "named"
        );
        // Nothing revoked: the same pair passes.
        source.set_revoked(BTreeSet::new());
        let (dialled, admitted) = attempt(&target, |tcp| async move {
            source.connect(tcp, Some("t2")).await.map(|_| ())
        })
        .await;
        dialled.expect("the target admitted");
        assert_eq!(admitted.expect("the source admitted").name, "s1");
    }

    #[test]
    fn the_process_reads_its_credentials_then_removes_them() {
        use std::os::unix::fs::PermissionsExt;
        let ca = Ca::new();
        let alloc = tempfile::tempdir().expect("tempdir");
        let revoked = herd_api::tls::revocation::fingerprint(b"a revoked certificate");
        let paths = write_creds(
            &ca.migration_tls(PeerRole::Node, "s1"),
            alloc.path(),
            std::slice::from_ref(&revoked),
        )
        .expect("written");
        assert_eq!(paths, CredsPaths::in_alloc_dir(alloc.path()));
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(paths.key.parent().expect("dir")), 0o700);
        assert_eq!(mode(&paths.key), 0o600);
        assert_eq!(mode(&paths.revoked), 0o600);
        assert_eq!(
            args(alloc.path()),
            [
                "--migration-tls-ca".to_string(),
                paths.ca.display().to_string(),
                "--migration-tls-cert".into(),
                paths.cert.display().to_string(),
                "--migration-tls-key".into(),
                paths.key.display().to_string(),
                "--migration-tls-revoked".into(),
                paths.revoked.display().to_string(),
            ]
        );
        let tls =
            StreamTls::load_and_remove(&paths.ca, &paths.cert, &paths.key, Some(&paths.revoked))
                .expect("loaded");
        assert_eq!(tls.identity().name, "s1");
        assert_eq!(
            tls.revoked.read().expect("set").iter().collect::<Vec<_>>(),
            [&revoked],
            "the revoked set as written"
        );
        assert!(!paths.key.exists() && !paths.ca.exists() && !paths.cert.exists());
        assert!(!paths.revoked.exists());
        assert!(!alloc.path().join(CREDS_DIR).exists(), "the directory too");

        // A revoked-set file with a line that is no fingerprint: refused,
        // naming the flag and the line.
        let paths = write_creds(
            &ca.migration_tls(PeerRole::Node, "s1"),
            alloc.path(),
            &[revoked.clone(), "not-a-fingerprint".into()],
        )
        .expect("written");
        let err =
            StreamTls::load_and_remove(&paths.ca, &paths.cert, &paths.key, Some(&paths.revoked))
                .expect_err("a bad line");
        assert!(
            err.contains("--migration-tls-revoked") && err.contains("line 2"),
            "{err}"
        );
        assert!(!paths.revoked.exists() && !paths.key.exists());

        // A key that is not one: refused without quoting it, removed all the same.
        let paths = write_creds(
            &MigrationTls::new(
                ca.issue(PeerRole::Node, "s1").0.into(),
                ca.issue(PeerRole::Node, "s1").0.into(),
                b"SECRET-KEY-BYTES".to_vec(),
            ),
            alloc.path(),
            &[],
        )
        .expect("written");
        let err = StreamTls::load_and_remove(&paths.ca, &paths.cert, &paths.key, None)
            .expect_err("no key");
        assert!(
            err.contains("--migration-tls-key") && !err.contains("SECRET"),
            "{err}"
        );
        assert!(!paths.key.exists());
        let err =
            StreamTls::load_and_remove(&paths.ca, &paths.cert, &paths.key, None).expect_err("gone");
        assert!(err.contains("--migration-tls-ca"), "{err}");
    }
}
