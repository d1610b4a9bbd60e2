//! A process's certificate, key and CA, read from PEM files and checked
//! before anything listens, so that a wrong file is a clear error at start
//! rather than a handshake failure on the first call; and read again when
//! the operator renews the certificate ([`TlsMaterial::reload`]), checked
//! the same way and more, since a bad reload must leave the process
//! serving with what it had.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use thiserror::Error;

use super::current::{certified_key, CurrentKey};
use super::identity::{
    check_own_dns_name, parse_certificate, PeerIdentity, PeerRole, TlsIdentityError,
};

/// Where a process's TLS files are (`--tls-ca`, `--tls-cert`, `--tls-key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster's CA certificate (PEM): peers must chain to it.
    pub ca: PathBuf,
    /// This process's certificate (PEM), signed by the CA.
    pub cert: PathBuf,
    /// The certificate's private key (PEM).
    pub key: PathBuf,
}

/// Why TLS could not be set up.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {message}")]
    Read {
        /// Which file (`--tls-ca`...).
        what: &'static str,
        /// Its path.
        path: String,
        /// The operating system's reason.
        message: String,
    },
    /// A file is not what it should be.
    #[error("{what} {path}: {message}")]
    Invalid {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The certificate does not name a herd identity, or names another role.
    #[error("--tls-cert {path}: {source}")]
    Identity {
        /// The certificate's path.
        path: String,
        /// What is wrong.
        source: TlsIdentityError,
    },
    /// rustls refused the settings (a key that does not match the certificate...).
    #[error("TLS settings refused: {0}")]
    Config(String),
    /// A reload found files this process cannot take without a restart.
    #[error("not reloaded, still serving with the certificate it had: {0}")]
    Reload(String),
}

/// A process's TLS identity and trust, loaded and checked.
///
/// The CA and the identity (role and name) are fixed for the life of the
/// process; the certificate and key may be renewed ([`Self::reload`]).
pub struct TlsMaterial {
    files: TlsFiles,
    role: Option<PeerRole>,
    ca_pem: Vec<u8>,
    identity: PeerIdentity,
    issued: RwLock<Arc<Issued>>,
    /// What every handshake of this process presents, renewed in place.
    key: Arc<CurrentKey>,
    /// The settings of every dial (`super::dial`), made once.
    dialer: Arc<rustls::ClientConfig>,
    /// The settings of every gRPC server (`super::serve`), made once.
    server: Arc<rustls::ServerConfig>,
}

/// One certificate and its key as read from the files.
struct Issued {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    /// When the certificate expires (Unix seconds).
    not_after: i64,
}

/// What a reload changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The files hold the certificate and key already in use.
    Unchanged,
    /// New handshakes present the new certificate.
    Renewed {
        /// When the previous certificate expires (Unix seconds).
        previous_not_after: i64,
        /// When the new one does.
        not_after: i64,
    },
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Whom it names only: never the key, nor settings that hold it.
        f.debug_struct("TlsMaterial")
            .field("identity", &self.identity)
            .field("not_after", &self.not_after())
            .finish_non_exhaustive()
    }
}

/// Reads `path` for `what`, refusing an empty or oversized file.
fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    const MAX_PEM_BYTES: u64 = 1024 * 1024;
    let read_error = |message: String| TlsError::Read {
        what,
        path: path.display().to_string(),
        message,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| read_error(e.to_string()))?
        .len();
    if size > MAX_PEM_BYTES {
        return Err(TlsError::Invalid {
            what,
            path: path.display().to_string(),
            message: format!("{size} bytes, more than a PEM file of {MAX_PEM_BYTES} bytes"),
        });
    }
    std::fs::read(path).map_err(|e| read_error(e.to_string()))
}

/// The DER bytes of the first PEM block labelled `label` in `pem`.
pub(crate) fn first_pem_block(pem: &[u8], label: &str) -> Option<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .map_while(Result::ok)
        .find(|block| block.label == label)
        .map(|block| block.contents)
}

fn invalid(what: &'static str, path: &Path, message: &str) -> TlsError {
    TlsError::Invalid {
        what,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Reads and checks the CA file.
fn read_ca(files: &TlsFiles) -> Result<Vec<u8>, TlsError> {
    let ca_pem = read_pem("--tls-ca", &files.ca)?;
    let ca_der = first_pem_block(&ca_pem, "CERTIFICATE")
        .ok_or_else(|| invalid("--tls-ca", &files.ca, "no PEM CERTIFICATE block"))?;
    let ca_is_ca = super::identity::is_ca_certificate(&ca_der)
        .map_err(|e| invalid("--tls-ca", &files.ca, &e.to_string()))?;
    if !ca_is_ca {
        return Err(invalid(
            "--tls-ca",
            &files.ca,
            "not a CA certificate (make one with `herd tls ca create`)",
        ));
    }
    Ok(ca_pem)
}

/// Reads and checks the certificate and key files for a process of role
/// `role` (see [`TlsMaterial::load`]).
fn read_issued(
    files: &TlsFiles,
    role: Option<PeerRole>,
) -> Result<(PeerIdentity, Issued, Arc<rustls::sign::CertifiedKey>), TlsError> {
    let cert_pem = read_pem("--tls-cert", &files.cert)?;
    let key_pem = read_pem("--tls-key", &files.key)?;
    let cert_der = first_pem_block(&cert_pem, "CERTIFICATE")
        .ok_or_else(|| invalid("--tls-cert", &files.cert, "no PEM CERTIFICATE block"))?;
    if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY-----") {
        return Err(invalid("--tls-key", &files.key, "no PEM PRIVATE KEY block"));
    }
    let identity_error = |source| TlsError::Identity {
        path: files.cert.display().to_string(),
        source,
    };
    let identity = parse_certificate(&cert_der, now_unix()).map_err(identity_error)?;
    let not_after = super::identity::not_after(&cert_der).map_err(identity_error)?;
    if let Some(want) = role.filter(|want| *want != identity.role) {
        return Err(identity_error(TlsIdentityError::WrongRole {
            want,
            have: identity.role,
        }));
    }
    // A process serving as a node (not a client borrowing a node's
    // certificate for a health check) is dialed as that node.
    if role == Some(PeerRole::Node) {
        check_own_dns_name(&cert_der, &identity).map_err(identity_error)?;
    }
    // rustls checks the key against the certificate here, not at the
    // first handshake.
    let key = certified_key(&cert_pem, &key_pem).map_err(TlsError::Config)?;
    let issued = Issued {
        cert_pem,
        key_pem,
        not_after,
    };
    Ok((identity, issued, key))
}

impl TlsMaterial {
    /// Reads and checks `files` for a process of role `role` (None: any
    /// role, for clients: a daemon's own certificate may run a health
    /// check): each file is PEM of the right kind, the certificate names a
    /// herd identity of that role and is within its validity, a node's
    /// certificate carries its own DNS name `<name>.node.herd` (which every
    /// dialer of that node checks: a certificate made before that is
    /// refused here, with how to re-issue it, rather than at every
    /// handshake), the key matches it, and the CA file holds a CA
    /// certificate. Signatures are rustls's to check, at each handshake.
    pub fn load(files: &TlsFiles, role: Option<PeerRole>) -> Result<Self, TlsError> {
        let ca_pem = read_ca(files)?;
        let (identity, issued, certified) = read_issued(files, role)?;
        let key = Arc::new(CurrentKey::new(certified));
        let dialer = super::dial::client_config(&ca_pem, key.clone()).map_err(TlsError::Config)?;
        let server = super::serve::server_config(&ca_pem, key.clone()).map_err(TlsError::Config)?;
        Ok(Self {
            files: files.clone(),
            role,
            ca_pem,
            identity,
            issued: RwLock::new(Arc::new(issued)),
            key,
            dialer,
            server,
        })
    }

    /// Reads the certificate and key files again and, if they hold a new
    /// certificate, makes every new handshake of this process (its gRPC
    /// servers, its dials, its HTTPS endpoints) present it; connections
    /// made to it keep the one they were made with, connections it dialed
    /// are made again (`super::dial`). What the daemon does on SIGHUP and
    /// when it sees its files changed, after an operator renewed the
    /// certificate (`herd tls cert renew`) before it expires.
    ///
    /// Refused, the old certificate still in use, when the new files fail
    /// any check of [`Self::load`], when they name another identity (role
    /// or name: a process does not become someone else), when the CA file
    /// changed (the trust of a running process is fixed: a new CA needs a
    /// restart), and when the certificate is not signed by the cluster's
    /// CA (every peer would refuse it).
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        let ca_pem = read_pem("--tls-ca", &self.files.ca)?;
        if ca_pem != self.ca_pem {
            return Err(TlsError::Reload(format!(
                "--tls-ca {} changed since the process started: it trusts the CA it started \
                 with until it is restarted",
                self.files.ca.display()
            )));
        }
        let (identity, issued, certified) = read_issued(&self.files, self.role)?;
        if identity != self.identity {
            return Err(TlsError::Reload(format!(
                "--tls-cert {} is for {} {:?}, but this process is {} {:?}: a reload renews \
                 the certificate of the same identity",
                self.files.cert.display(),
                identity.role,
                identity.name,
                self.identity.role,
                self.identity.name
            )));
        }
        self.check_signed_by_ca(&certified)?;
        let previous = self.issued();
        if previous.cert_pem == issued.cert_pem && previous.key_pem == issued.key_pem {
            return Ok(Reloaded::Unchanged);
        }
        let not_after = issued.not_after;
        self.key.replace(certified);
        match self.issued.write() {
            Ok(mut slot) => *slot = Arc::new(issued),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(issued),
        }
        Ok(Reloaded::Renewed {
            previous_not_after: previous.not_after,
            not_after,
        })
    }

    /// Refuses a certificate the cluster's CA did not sign: checked as a
    /// client certificate (every herd certificate is one: processes dial
    /// each other), as each peer will.
    fn check_signed_by_ca(&self, certified: &rustls::sign::CertifiedKey) -> Result<(), TlsError> {
        let refused = |message: String| {
            TlsError::Reload(format!(
                "--tls-cert {}: {message}",
                self.files.cert.display()
            ))
        };
        let roots = super::serve::roots(&self.ca_pem).map_err(refused)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots, Arc::new(super::provider()))
                .build()
                .map_err(|e| refused(e.to_string()))?;
        let (leaf, intermediates): (&CertificateDer<'_>, &[CertificateDer<'_>]) =
            match certified.cert.split_first() {
                Some(split) => split,
                None => return Err(refused("no certificate".into())),
            };
        verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| refused(format!("not accepted under the cluster's CA: {e}")))
    }

    fn issued(&self) -> Arc<Issued> {
        match self.issued.read() {
            Ok(issued) => issued.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The files it was loaded from, and is reloaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Who this process is.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// When this process's certificate expires (Unix seconds): what an
    /// operator alerts on before the process can no longer be dialled.
    pub fn not_after(&self) -> i64 {
        self.issued().not_after
    }

    /// The cluster's CA (PEM), fixed for the life of the process.
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// The CA, the current certificate and its key (PEM), for a program
    /// that speaks TLS on this process's behalf with the same identity:
    /// QEMU's live-migration streams (docs/vm.md), which read files, not
    /// rustls settings. Read again for each use: a reload renews them.
    pub fn pem(&self) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let issued = self.issued();
        (
            self.ca_pem.clone(),
            issued.cert_pem.clone(),
            issued.key_pem.clone(),
        )
    }

    /// What this process's handshakes present, renewed by [`Self::reload`]:
    /// for servers that make their own settings (HTTPS).
    pub fn current_key(&self) -> Arc<CurrentKey> {
        self.key.clone()
    }

    /// The settings of this process's gRPC servers: its current
    /// certificate, and a certificate of the cluster's CA required of
    /// every client.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// The rustls settings every dial of this process uses
    /// (`super::dial`): its current certificate, the CA as the only root,
    /// revoked servers refused.
    pub(super) fn dialer(&self) -> Arc<rustls::ClientConfig> {
        self.dialer.clone()
    }
}

/// Seconds since the Unix epoch, for validity checks.
fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_block_of_a_label_is_found() {
        let pem = b"junk\n-----BEGIN CERTIFICATE-----\naGVy\nZA==\n-----END CERTIFICATE-----\n";
        assert_eq!(
            first_pem_block(pem, "CERTIFICATE").as_deref(),
            Some(&b"herd"[..])
        );
        assert_eq!(first_pem_block(pem, "PRIVATE KEY"), None);
    }

    #[test]
    fn a_missing_file_names_its_flag_and_path() {
        let files = TlsFiles {
            ca: "/nonexistent/ca.pem".into(),
            cert: "/nonexistent/c.pem".into(),
            key: "/nonexistent/k.pem".into(),
        };
        let error = TlsMaterial::load(&files, Some(PeerRole::Node))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("--tls-ca"), "{error}");
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }

    /// A CA made with rcgen, and certificates of herd identities from it,
    /// written as files the way `herd tls` writes them.
    struct Pki {
        dir: PathBuf,
        ca_pem: String,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    impl Pki {
        fn new(test: &str) -> Self {
            use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
            let dir =
                std::env::temp_dir().join(format!("herd-material-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let ca_pem = params.self_signed(&key).unwrap().pem();
            let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, key).unwrap();
            std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
            Self {
                dir,
                ca_pem,
                issuer,
            }
        }

        fn files(&self) -> TlsFiles {
            TlsFiles {
                ca: self.dir.join("ca.pem"),
                cert: self.dir.join("cert.pem"),
                key: self.dir.join("key.pem"),
            }
        }

        /// Writes a certificate of `role` `name` from `issuer` as the
        /// process's files; returns its PEM.
        fn issue_from(
            &self,
            issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
            role: &str,
            name: &str,
        ) -> String {
            use rcgen::{CertificateParams, KeyPair, SanType};
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec![format!("{role}.herd")]).unwrap();
            params.subject_alt_names.push(SanType::URI(
                format!("spiffe://herd/{role}/{name}").try_into().unwrap(),
            ));
            let cert = params.signed_by(&key, issuer).unwrap().pem();
            std::fs::write(self.dir.join("cert.pem"), &cert).unwrap();
            std::fs::write(self.dir.join("key.pem"), key.serialize_pem()).unwrap();
            cert
        }

        fn issue(&self, role: &str, name: &str) -> String {
            self.issue_from(&self.issuer, role, name)
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn presented(material: &TlsMaterial) -> Vec<u8> {
        material.current_key().get().cert[0].as_ref().to_vec()
    }

    fn der(pem: &str) -> Vec<u8> {
        first_pem_block(pem.as_bytes(), "CERTIFICATE").unwrap()
    }

    #[test]
    fn a_reload_renews_the_certificate_of_the_same_identity() {
        let pki = Pki::new("renew");
        let first = pki.issue("coordinator", "1");
        let material = TlsMaterial::load(&pki.files(), Some(PeerRole::Coordinator)).unwrap();
        assert_eq!(presented(&material), der(&first));
        assert_eq!(material.reload().unwrap(), Reloaded::Unchanged);

        let second = pki.issue("coordinator", "1");
        assert!(matches!(
            material.reload().unwrap(),
            Reloaded::Renewed { .. }
        ));
        assert_eq!(presented(&material), der(&second));
        let (_, cert_pem, _) = material.pem();
        assert_eq!(cert_pem, second.as_bytes());
        assert_eq!(material.reload().unwrap(), Reloaded::Unchanged);
    }

    #[test]
    fn a_reload_that_would_change_who_the_process_is_or_whom_it_trusts_is_refused() {
        let pki = Pki::new("refuse");
        let first = pki.issue("node", "h1");
        // No `h1.node.herd` in these test certificates: load as a client
        // would (any role), so that the node's own DNS check is not what
        // is tested here.
        let material = TlsMaterial::load(&pki.files(), None).unwrap();
        let keeps_first = |material: &TlsMaterial, why: &str| {
            assert_eq!(presented(material), der(&first), "{why}");
        };

        // Another name of the same role.
        pki.issue("node", "h2");
        let error = material.reload().unwrap_err().to_string();
        assert!(
            error.contains("\"h2\"") && error.contains("same identity"),
            "{error}"
        );
        keeps_first(&material, "another name");

        // The right identity from another CA: every peer would refuse it.
        let other = Pki::new("refuse-other");
        pki.issue_from(&other.issuer, "node", "h1");
        let error = material.reload().unwrap_err().to_string();
        assert!(error.contains("cluster's CA"), "{error}");
        keeps_first(&material, "another CA's certificate");

        // A key that is not the certificate's.
        pki.issue("node", "h1");
        other.issue("node", "h1");
        std::fs::copy(other.dir.join("key.pem"), pki.dir.join("key.pem")).unwrap();
        let error = material.reload().unwrap_err().to_string();
        assert!(error.contains("--tls-key"), "{error}");
        keeps_first(&material, "a stray key");

        // A new CA file, with a certificate of it.
        std::fs::write(pki.dir.join("ca.pem"), &other.ca_pem).unwrap();
        pki.issue_from(&other.issuer, "node", "h1");
        let error = material.reload().unwrap_err().to_string();
        assert!(
            error.contains("--tls-ca") && error.contains("restart"),
            "{error}"
        );
        keeps_first(&material, "a new CA");

        // A file gone (the CA file as it was): named.
        std::fs::write(pki.dir.join("ca.pem"), &pki.ca_pem).unwrap();
        std::fs::remove_file(pki.dir.join("cert.pem")).unwrap();
        let error = material.reload().unwrap_err().to_string();
        assert!(error.contains("--tls-cert"), "{error}");
        keeps_first(&material, "a missing file");
        assert_eq!(material.ca_pem(), pki.ca_pem.as_bytes());
    }
}
