//! Certificates the cluster no longer accepts, whatever they chain to.
//!
//! A certificate is named by the SHA-256 of its DER encoding (its
//! fingerprint, as `openssl x509 -fingerprint -sha256` prints it, in
//! lower-case hex without colons). An operator revokes one with
//! `herd tls cert revoke FILE`; the coordinators keep the fingerprints in
//! the replicated state (the variables under [`VARIABLE_PREFIX`], readable
//! by every client, written only through `Acl.RevokeCertificate`), and
//! agents receive them with their token table (`Agent.AclTable`) and keep
//! them while the coordinators are away.
//!
//! Each process holds the set it last learned ([`replace`]); every gRPC
//! service behind a [`crate::gate`] refuses a peer whose certificate is in
//! it ([`refusal`]), before any other check. Why a set in the process and
//! not a CRL handed to rustls: herd's own CA makes the certificates, the
//! set must follow the replicated state within seconds without rebuilding
//! the TLS servers (tonic fixes their settings at start), and a refusal
//! that names the revocation is clearer than a failed handshake. The
//! handshake still succeeds for a revoked certificate; no RPC does.
//!
//! Dialers check the server's certificate against the same set, at the
//! handshake and again on an open connection once the set changes
//! (`super::dial`).
//!
//! QEMU's migration streams and the simulated VM's stream check TLS in
//! the programs themselves: the simulated VM is handed this set
//! ([`listed`]), QEMU the CRLs of `super::crl`. Not covered: HTTPS
//! endpoints, which ask for no client certificate.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use super::identity::PeerIdentity;

/// Where the replicated state keeps revoked fingerprints: one variable per
/// certificate, `herd/tls/revoked/<fingerprint>`.
pub const VARIABLE_PREFIX: &str = "herd/tls/revoked/";

static REVOKED: RwLock<Option<Arc<BTreeSet<String>>>> = RwLock::new(None);
/// Bumped at every change of [`REVOKED`]: a long-lived connection checks
/// its peer again only when this moved (`super::dial`).
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The fingerprint of the DER certificate `der`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fingerprint of the first certificate in `pem` (a PEM file's
/// bytes), and the herd identity it names if it names one.
pub fn fingerprint_of_pem(pem: &[u8]) -> Result<(String, Option<PeerIdentity>), String> {
    let der = super::material::first_pem_block(pem, "CERTIFICATE")
        .ok_or_else(|| "no PEM CERTIFICATE block".to_string())?;
    let named = super::identity::certificate_identity(&der).ok();
    Ok((fingerprint(&der), named))
}

/// `text` as a fingerprint: 64 hex digits, colons allowed between pairs
/// (as openssl prints them), any case; lower-case hex without colons.
pub fn parse_fingerprint(text: &str) -> Result<String, String> {
    let hex: String = text
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{:?} is not a SHA-256 certificate fingerprint (64 hex digits)",
            text.chars().take(80).collect::<String>()
        ));
    }
    Ok(hex)
}

/// Makes `fingerprints` the revoked set of this process.
pub fn replace(fingerprints: impl IntoIterator<Item = String>) {
    let set: BTreeSet<String> = fingerprints.into_iter().collect();
    if let Ok(mut revoked) = REVOKED.write() {
        let changed = revoked.as_deref() != Some(&set);
        if changed {
            tracing::info!(certificates = set.len(), "revoked certificates updated");
            *revoked = Some(Arc::new(set));
            GENERATION.fetch_add(1, Ordering::Release);
        }
    }
}

/// The revoked set of this process (None before the first [`replace`]).
fn current() -> Option<Arc<BTreeSet<String>>> {
    REVOKED.read().ok().and_then(|r| r.clone())
}

/// The revoked fingerprints this process knows, in order: what it hands
/// a program that checks certificates itself (the simulated VM's stream).
pub fn listed() -> Vec<String> {
    current().map_or_else(Vec::new, |set| set.iter().cloned().collect())
}

/// How many times the revoked set changed in this process.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Whether the DER certificate `der` is revoked (not hashed while nothing
/// is).
pub fn is_revoked(der: &[u8]) -> bool {
    current().is_some_and(|revoked| !revoked.is_empty() && revoked.contains(&fingerprint(der)))
}

/// The refusal of a request whose peer presented a revoked certificate;
/// None for any other (no TLS, no certificate, or one not revoked).
pub fn refusal(extensions: &http::Extensions) -> Option<Status> {
    // Nothing revoked (the common case): no certificate to hash.
    let revoked = current()?;
    if revoked.is_empty() {
        return None;
    }
    let certs = extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())?;
    let leaf = certs.first()?;
    let fingerprint = fingerprint(leaf.as_ref());
    revoked.contains(&fingerprint).then(|| {
        Status::unauthenticated(format!(
            "the certificate presented (SHA-256 {fingerprint}) was revoked (`herd tls cert revoke`)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_as_openssl_prints_them() {
        let hex = fingerprint(b"certificate");
        assert_eq!(hex.len(), 64);
        let colons: String = hex
            .as_bytes()
            .chunks(2)
            .map(|p| String::from_utf8_lossy(p).to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_fingerprint(&colons), Ok(hex.clone()));
        assert_eq!(parse_fingerprint(&format!(" {hex}\n")), Ok(hex));
        assert!(parse_fingerprint("abc").is_err());
        assert!(parse_fingerprint(&"g".repeat(64)).is_err());
    }

    #[test]
    fn a_certificate_is_revoked_by_its_fingerprint_and_each_change_is_counted() {
        let (a, b) = (b"certificate a".as_slice(), b"certificate b".as_slice());
        replace([fingerprint(a)]);
        let at = generation();
        assert!(is_revoked(a) && !is_revoked(b));
        replace([fingerprint(a)]);
        assert_eq!(generation(), at, "the same set: no change to look at");
        replace([fingerprint(b)]);
        assert!(generation() > at);
        assert!(!is_revoked(a) && is_revoked(b));
        replace([]);
        assert!(!is_revoked(b));
    }

    #[test]
    fn the_set_is_replaced_whole() {
        let (a, b) = (fingerprint(b"a"), fingerprint(b"b"));
        let holds = |f: &str| current().is_some_and(|set| set.contains(f));
        replace([a.clone(), b.clone()]);
        assert!(holds(&a) && holds(&b));
        replace([b.clone()]);
        assert!(!holds(&a) && holds(&b));
        let listed: Option<Vec<String>> = current().map(|set| set.iter().cloned().collect());
        assert_eq!(listed, Some(vec![b]));
        replace([]);
        assert!(current().is_some_and(|set| set.is_empty()));
    }
}
