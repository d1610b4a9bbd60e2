//! The certificate and key a process presents right now, swapped in place
//! when the operator renews them (SIGHUP or new files, docs/security.md
//! "Renewing a certificate").
//!
//! Why a resolver rather than new rustls settings on reload: every server
//! and every dial holds its settings for the life of the process (the
//! acceptor of each listener, the connector of each channel), so swapping
//! the settings would mean reaching into all of them. rustls asks a
//! resolver for the certificate at each handshake instead; one resolver
//! shared by the process's servers and dials makes a reload reach every
//! new handshake at once, and connections already made keep the identity
//! they were authenticated with, as TLS intends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

/// The process's certificate chain and signing key, replaceable.
#[derive(Debug)]
pub struct CurrentKey {
    key: RwLock<Arc<CertifiedKey>>,
    /// How many times the key was replaced: what a dialed connection
    /// compares with the count it was made at (`super::dial`).
    generation: AtomicU64,
}

impl CurrentKey {
    /// Starts with `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        Self {
            key: RwLock::new(key),
            generation: AtomicU64::new(0),
        }
    }

    /// What the next handshake presents.
    pub fn get(&self) -> Arc<CertifiedKey> {
        // A poisoned lock still holds a whole `Arc`: the writer only ever
        // replaces it in one assignment.
        match self.key.read() {
            Ok(key) => key.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// How many times the key was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Makes every later handshake present `key`.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        match self.key.write() {
            Ok(mut slot) => *slot = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

impl ResolvesServerCert for CurrentKey {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for CurrentKey {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The chain and key of `cert_pem` and `key_pem` (PEM, as `--tls-cert` and
/// `--tls-key` hold them) as rustls signs with them, the key checked
/// against the certificate (a key of another certificate is refused here,
/// not at the first handshake).
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert: not PEM certificates: {e}"))?;
    if chain.is_empty() {
        return Err("--tls-cert: no PEM CERTIFICATE block".into());
    }
    // No detail from the parser: it might quote what it read.
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| "--tls-key: not a PEM private key".to_string())?;
    let key = CertifiedKey::from_der(chain, key, &super::provider())
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    // `from_der` lets a key whose public half it cannot read pass; herd's
    // keys are all ones it can, so anything else is refused.
    key.keys_match()
        .map_err(|e| format!("--tls-key does not belong to --tls-cert: {e}"))?;
    Ok(Arc::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_replaced_key_is_what_the_next_handshake_gets() {
        let (cert_a, key_a) = issue("a.herd");
        let (cert_b, key_b) = issue("b.herd");
        let a = certified_key(cert_a.as_bytes(), key_a.as_bytes()).unwrap();
        let b = certified_key(cert_b.as_bytes(), key_b.as_bytes()).unwrap();
        let current = CurrentKey::new(a.clone());
        assert_eq!(current.get().cert, a.cert);
        assert_eq!(current.generation(), 0);
        current.replace(b.clone());
        assert_eq!(current.get().cert, b.cert);
        assert_eq!(current.generation(), 1);
        assert_eq!(
            ResolvesClientCert::resolve(&current, &[], &[]).map(|k| k.cert.clone()),
            Some(b.cert.clone())
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (cert_a, _) = issue("a.herd");
        let (_, key_b) = issue("b.herd");
        let error = certified_key(cert_a.as_bytes(), key_b.as_bytes()).unwrap_err();
        assert!(error.contains("--tls-key"), "{error}");
        let error = certified_key(b"junk", key_b.as_bytes()).unwrap_err();
        assert!(error.contains("--tls-cert"), "{error}");
    }
}
