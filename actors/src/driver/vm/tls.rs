//! QEMU's live-migration streams under mutual TLS, with the agent's own
//! node certificate (docs/vm.md, "What travels in the clear";
//! docs/security.md).
//!
//! When the agent runs with TLS, both QEMUs of a move get a
//! `tls-creds-x509` object made from the agent's CA, certificate and key:
//! the target's as `endpoint=server` (its node certificate serves), the
//! source's as `endpoint=client` (its node certificate is the client
//! certificate; node certificates carry both `serverAuth` and
//! `clientAuth`), both `verify-peer=on`. The source checks that the target
//! holds the certificate of the node the move goes to (`tls-hostname`
//! `<target>.node.herd`, the DNS name only that node's certificate
//! carries), the target named by the source's agent from the migration
//! assignment ([`IncomingEndpoints::target_node`]); a driver used outside
//! an agent, which knows no target node, checks only for some node
//! certificate of the cluster's CA (`node.herd`);
//! the target, that the source holds the certificate of the node the move
//! comes from (`tls-authz`: an `authz-simple` naming its subject,
//! `CN=node NAME`, as `herd tls cert create` writes it), since
//! `verify-peer` alone would admit any certificate of the CA, a client's
//! included. Without the source's name (a driver used outside an agent)
//! the target admits any node of the cluster (`authz-list`, glob
//! `CN=node *`).
//!
//! QEMU reads the files from a directory: they are written to a private
//! one in the allocation directory (0700, the files 0600), and removed as
//! soon as `object-add` returned, since QEMU loads them when it makes the
//! object; the allocation directory's removal would catch a leftover.
//!
//! [`IncomingEndpoints::target_node`]: crate::driver::live::IncomingEndpoints::target_node

use std::io::Write;
use std::path::{Path, PathBuf};

use herd_api::tls::identity::node_dns_name;
use herd_api::tls::{PeerRole, Transport};
use serde_json::{json, Value};

/// The id of the `tls-creds-x509` object in a moving VM's QEMU.
pub const CREDS_ID: &str = "herd-migration-tls";
/// The id of the target's `authz-simple` / `authz-list` object.
pub const AUTHZ_ID: &str = "herd-migration-authz";
/// The per-VM directory QEMU reads the credentials from, in the
/// allocation directory (removed once QEMU has read it).
pub const CREDS_DIR: &str = "migration-tls";

/// The agent's TLS identity, as the VM driver hands it to QEMU: the
/// cluster's CA, the node's certificate and key (PEM).
#[derive(Clone)]
pub struct MigrationTls(Source);

/// Where a move's credentials come from.
#[derive(Clone)]
enum Source {
    /// Bytes given once (tests, a driver outside an agent).
    Fixed {
        ca_pem: Vec<u8>,
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
    },
    /// The agent's own TLS material, read at each move: a certificate
    /// renewed on SIGHUP is the one the next move presents.
    Process(std::sync::Arc<herd_api::tls::TlsMaterial>),
}

impl std::fmt::Debug for MigrationTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key, not even in a debug print of the driver.
        f.debug_struct("MigrationTls").finish_non_exhaustive()
    }
}

/// Which side of the move a QEMU is: which files its directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The target: it listens, its certificate serves.
    Server,
    /// The source: it connects, its certificate is the client's.
    Client,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }
}

impl MigrationTls {
    /// The identity from PEM bytes: the CA, the node's certificate, its key.
    pub fn new(ca_pem: Vec<u8>, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Self {
        Self(Source::Fixed {
            ca_pem,
            cert_pem,
            key_pem,
        })
    }

    /// The CA, certificate and key a move uses now (PEM).
    fn pem(&self) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        match &self.0 {
            Source::Fixed {
                ca_pem,
                cert_pem,
                key_pem,
            } => (ca_pem.clone(), cert_pem.clone(), key_pem.clone()),
            Source::Process(material) => material.pem(),
        }
    }

    /// The process's own identity when it runs with TLS (a node agent
    /// started with `--tls-*`); None when it is plaintext.
    pub fn from_transport(transport: &Transport) -> Option<Self> {
        match transport {
            Transport::Plaintext => None,
            Transport::Tls(material) => Some(Self(Source::Process(material.clone()))),
        }
    }

    /// Writes the directory a `tls-creds-x509` object of `side` reads:
    /// `ca-cert.pem` and `SIDE-cert.pem`/`SIDE-key.pem`, the directory 0700
    /// and the files 0600, anything left there by an earlier run replaced.
    pub fn write_dir(&self, alloc_dir: &Path, side: Side) -> std::io::Result<PathBuf> {
        let dir = alloc_dir.join(CREDS_DIR);
        remove_dir(&dir)?;
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir)?;
        let role = side.as_str();
        let (ca_pem, cert_pem, key_pem) = self.pem();
        for (name, bytes) in [
            ("ca-cert.pem".to_string(), &ca_pem),
            (format!("{role}-cert.pem"), &cert_pem),
            (format!("{role}-key.pem"), &key_pem),
        ] {
            write_private(&dir.join(name), bytes)?;
        }
        // The revocations QEMU can check (the cluster's one CRL, naming
        // every revocation made with the CA's key, `herd_api::tls::crl`),
        // read now: a move started
        // after a revocation reached this agent refuses that certificate,
        // whichever side presents it.
        if let Some(lists) = herd_api::tls::crl::bundle() {
            write_private(&dir.join(CRL_FILE), lists.as_bytes())?;
        }
        Ok(dir)
    }
}

/// The file of a credentials directory QEMU reads CRLs from.
pub const CRL_FILE: &str = "ca-crl.pem";

/// Writes `bytes` to `path`, readable by its owner only (0600), replacing
/// what was there: keys and the files that go with them.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

/// Removes the credentials directory `dir`, if there is one.
pub fn remove_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `object-add`'s arguments for the credentials of `side` in `dir`.
pub fn creds_object(dir: &Path, side: Side) -> Value {
    json!({
        "qom-type": "tls-creds-x509",
        "id": CREDS_ID,
        "dir": dir.display().to_string(),
        "endpoint": side.as_str(),
        "verify-peer": true,
    })
}

/// The name the target's certificate must carry, as the source checks it
/// (`tls-hostname`): `<target>.node.herd` when the source's agent named
/// the node the move goes to, which only that node's certificate carries;
/// else every node certificate's DNS SAN, `node.herd`. A target name that
/// cannot be a DNS name is refused (no node by that name holds a
/// certificate), never widened to `node.herd`.
pub fn peer_hostname(target: Option<&str>) -> Result<String, String> {
    match target {
        Some(node) => {
            node_dns_name(node).map_err(|e| format!("cannot check the target's certificate: {e}"))
        }
        None => Ok(PeerRole::Node.dns_name()),
    }
}

/// The subject `herd tls cert create` gives node `name`'s certificate, as
/// QEMU reads it (RFC 4514): `CN=node NAME`.
pub fn node_subject(name: &str) -> String {
    format!("CN={} {name}", PeerRole::Node)
}

/// `object-add`'s arguments for the target's check of the source: only
/// node `source`'s certificate, or any node's when the source is unknown.
pub fn authz_object(source: Option<&str>) -> Value {
    match source {
        Some(name) => json!({
            "qom-type": "authz-simple",
            "id": AUTHZ_ID,
            "identity": node_subject(name),
        }),
        None => json!({
            "qom-type": "authz-list",
            "id": AUTHZ_ID,
            "policy": "deny",
            "rules": [{
                "match": format!("CN={} *", PeerRole::Node),
                "policy": "allow",
                "format": "glob",
            }],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> MigrationTls {
        MigrationTls::new(b"CA".to_vec(), b"CERT".to_vec(), b"KEY".to_vec())
    }

    #[test]
    fn the_directory_is_private_and_holds_the_files_qemu_reads() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        for (side, role) in [(Side::Server, "server"), (Side::Client, "client")] {
            let dir = tls().write_dir(root.path(), side).expect("written");
            let mode =
                |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(std::fs::read(dir.join("ca-cert.pem")).expect("ca"), b"CA");
            let cert = dir.join(format!("{role}-cert.pem"));
            let key = dir.join(format!("{role}-key.pem"));
            assert_eq!(std::fs::read(&cert).expect("cert"), b"CERT");
            assert_eq!(std::fs::read(&key).expect("key"), b"KEY");
            assert_eq!(mode(&key), 0o600);
            assert_eq!(creds_object(&dir, side)["endpoint"], role);
        }
        // Only the last side's files: the directory was made afresh.
        let names: Vec<_> = std::fs::read_dir(root.path().join(CREDS_DIR))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.starts_with("server")), "{names:?}");
        remove_dir(&root.path().join(CREDS_DIR)).expect("removed");
        assert!(!root.path().join(CREDS_DIR).exists());
        remove_dir(&root.path().join(CREDS_DIR)).expect("removing nothing is fine");
    }

    #[test]
    fn the_target_admits_the_source_node_only_or_any_node() {
        let one = authz_object(Some("gpu-07"));
        assert_eq!(one["qom-type"], "authz-simple");
        assert_eq!(one["identity"], "CN=node gpu-07");
        let any = authz_object(None);
        assert_eq!(any["qom-type"], "authz-list");
        assert_eq!(any["policy"], "deny");
        assert_eq!(any["rules"][0]["match"], "CN=node *");
    }

    #[test]
    fn the_source_checks_the_target_node_when_it_is_named() {
        assert_eq!(
            peer_hostname(Some("gpu-07")).as_deref(),
            Ok("gpu-07.node.herd")
        );
        assert_eq!(peer_hostname(None).as_deref(), Ok("node.herd"));
        let error = peer_hostname(Some("a..b")).expect_err("not a DNS name");
        assert!(error.contains("\"a..b\""), "{error}");
    }

    #[test]
    fn a_debug_print_shows_no_key() {
        assert!(!format!("{:?}", tls()).contains("KEY"));
    }
}
