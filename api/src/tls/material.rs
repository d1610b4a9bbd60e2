//! A process's certificate, key and CA, read from PEM files and checked
//! before anything listens, so that a wrong file is a clear error at start
//! rather than a handshake failure on the first call.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

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
}

/// A process's TLS identity and trust, loaded and checked.
pub struct TlsMaterial {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    /// When the certificate expires (Unix seconds).
    not_after: i64,
    key_pem: Vec<u8>,
    identity: PeerIdentity,
    /// The settings of every dial (`super::dial`), made once.
    dialer: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Whom it names only: never the key, nor settings that hold it.
        f.debug_struct("TlsMaterial")
            .field("identity", &self.identity)
            .field("not_after", &self.not_after)
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
        let ca_pem = read_pem("--tls-ca", &files.ca)?;
        let cert_pem = read_pem("--tls-cert", &files.cert)?;
        let key_pem = read_pem("--tls-key", &files.key)?;
        let invalid = |what: &'static str, path: &Path, message: &str| TlsError::Invalid {
            what,
            path: path.display().to_string(),
            message: message.to_string(),
        };
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
        let cert_der = first_pem_block(&cert_pem, "CERTIFICATE")
            .ok_or_else(|| invalid("--tls-cert", &files.cert, "no PEM CERTIFICATE block"))?;
        if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY-----") {
            return Err(invalid("--tls-key", &files.key, "no PEM PRIVATE KEY block"));
        }
        let identity =
            parse_certificate(&cert_der, now_unix()).map_err(|source| TlsError::Identity {
                path: files.cert.display().to_string(),
                source,
            })?;
        let not_after =
            super::identity::not_after(&cert_der).map_err(|source| TlsError::Identity {
                path: files.cert.display().to_string(),
                source,
            })?;
        if let Some(want) = role.filter(|want| *want != identity.role) {
            return Err(TlsError::Identity {
                path: files.cert.display().to_string(),
                source: TlsIdentityError::WrongRole {
                    want,
                    have: identity.role,
                },
            });
        }
        // A process serving as a node (not a client borrowing a node's
        // certificate for a health check) is dialed as that node.
        if role == Some(PeerRole::Node) {
            check_own_dns_name(&cert_der, &identity).map_err(|source| TlsError::Identity {
                path: files.cert.display().to_string(),
                source,
            })?;
        }
        let dialer =
            super::dial::client_config(&ca_pem, &cert_pem, &key_pem).map_err(TlsError::Config)?;
        let material = Self {
            ca_pem,
            cert_pem,
            not_after,
            key_pem,
            identity,
            dialer,
        };
        // rustls checks the key against the certificate here, not at the
        // first handshake.
        material
            .server_config()
            .identity_check()
            .map_err(TlsError::Config)?;
        Ok(material)
    }

    /// Who this process is.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// When this process's certificate expires (Unix seconds): what an
    /// operator alerts on before the process can no longer be dialled.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The CA, certificate and key as loaded and checked at start (PEM),
    /// for a program that speaks TLS on this process's behalf with the
    /// same identity: QEMU's live-migration streams (docs/vm.md), which
    /// read files, not rustls settings.
    pub fn pem(&self) -> (&[u8], &[u8], &[u8]) {
        (&self.ca_pem, &self.cert_pem, &self.key_pem)
    }

    fn own_identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    /// The settings of this process's servers: its certificate, and a
    /// certificate of the cluster's CA required of every client.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.own_identity())
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// The rustls settings every dial of this process uses
    /// (`super::dial`): its certificate, the CA as the only root, revoked
    /// servers refused.
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

/// Makes rustls parse a server config now, so that a key that does not
/// match its certificate fails at start.
trait IdentityCheck {
    fn identity_check(self) -> Result<(), String>;
}

impl IdentityCheck for ServerTlsConfig {
    fn identity_check(self) -> Result<(), String> {
        tonic::transport::Server::builder()
            .tls_config(self)
            .map(|_| ())
            .map_err(|e| {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    message.push_str(": ");
                    message.push_str(&cause.to_string());
                    source = cause.source();
                }
                message
            })
    }
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
}
