//! Certificate revocation lists (CRLs) for the programs that check TLS
//! certificates themselves: QEMU, whose migration and NBD streams run
//! mutual TLS with the node certificates (docs/security.md, "QEMU's
//! streams and revocation").
//!
//! herd's own processes refuse a revoked certificate by its fingerprint
//! (`super::revocation`). QEMU cannot be told fingerprints: its
//! `tls-creds-x509` takes revocations only as CRLs signed by the CA, read
//! from `ca-crl.pem` beside the CA's certificate. The CA's key stays with
//! the operator, so an operator who revokes with it at hand
//! (`herd tls cert revoke FILE --ca-key KEY`) signs the cluster's next
//! revocation list, naming that certificate's serial and every serial the
//! current list names; the coordinators check it against the cluster's CA
//! and make it the list ([`LIST_VARIABLE`], replaced by compare-and-set),
//! agents receive it with their token table ([`replace`]), and the VM
//! driver hands it ([`bundle`]) to each moving VM's QEMU.
//!
//! Why one list re-signed each time rather than one CRL per revocation:
//! GnuTLS (QEMU's TLS library) keeps one CRL per issuing CA, the newest,
//! of all a file holds, so of several CRLs of the cluster's CA only one
//! would count (`cli/tests/vm_migration_tls.rs` revokes two certificates
//! and probes with each). Two operators revoking at once cannot drop each
//! other's entry: a list that does not name every serial of the current
//! one, or that was signed from a list replaced meanwhile, is refused and
//! signed again.

use std::sync::{Arc, Mutex, RwLock};

use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

/// Largest CRL accepted: under the 64 KiB a replicated variable holds
/// ([`LIST_VARIABLE`] keeps it as is), and each certificate it names costs
/// some 55 bytes of PEM, so room for about 1,100 revocations made with the
/// CA's key.
pub const MAX_CRL_BYTES: usize = 60 * 1024;

/// The replicated variable that holds the cluster's revocation list: one
/// CRL naming every certificate revoked with the CA's key, replaced by a
/// longer one with each such revocation (compare-and-set on its version).
pub const LIST_VARIABLE: &str = "herd/tls/crl";

/// The CRLs this process holds, as PEM texts (None before the first
/// [`replace`]).
static LISTS: RwLock<Option<Arc<Vec<String>>>> = RwLock::new(None);

/// What a CRL that passed [`check`] revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCrl {
    /// The serial numbers it lists, lower-case hex, as `openssl x509
    /// -serial` prints them (less the colons).
    pub serials: Vec<String>,
    /// Its next update, in seconds since the epoch: past it, QEMU would
    /// refuse every peer checked against it.
    pub next_update_s: i64,
}

/// Checks that `pem` is a CRL QEMU can use for this cluster: one PEM
/// `X509 CRL` block of at most [`MAX_CRL_BYTES`], listing at least one
/// serial, valid until after `now_s` (seconds since the epoch; GnuTLS
/// fails a peer checked against a CRL past its next update), and issued
/// and signed by a certificate of `ca_pem` (the cluster's CA, PEM). A
/// wrong one must not reach QEMU: it would take a move's credentials
/// down with it, or revoke nothing while seeming to.
pub fn check(pem: &str, ca_pem: &[u8], now_s: i64) -> Result<CheckedCrl, String> {
    if pem.len() > MAX_CRL_BYTES {
        return Err(format!(
            "{} bytes, at most {MAX_CRL_BYTES} accepted",
            pem.len()
        ));
    }
    let der = crl_der(pem)?;
    let (rest, crl) = CertificateRevocationList::from_der(&der)
        .map_err(|e| format!("not a certificate revocation list: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the revocation list", rest.len()));
    }
    let serials = listed(&crl);
    if serials.is_empty() {
        return Err("it lists no certificate".to_string());
    }
    let next_update_s = match crl.next_update() {
        None => return Err("it has no next update (GnuTLS needs one)".to_string()),
        Some(next) if next.timestamp() <= now_s => return Err(past_next_update(&next)),
        Some(next) => next.timestamp(),
    };
    let issuer = crl.issuer();
    let mut named_issuer = false;
    for block in x509_parser::pem::Pem::iter_from_buffer(ca_pem).map_while(Result::ok) {
        if block.label != "CERTIFICATE" {
            continue;
        }
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(&block.contents) else {
            continue;
        };
        if ca.subject() != issuer {
            continue;
        }
        named_issuer = true;
        if crl.verify_signature(ca.public_key()).is_ok() {
            return Ok(CheckedCrl {
                serials,
                next_update_s,
            });
        }
    }
    Err(if named_issuer {
        "its signature is not the cluster CA's (signed with another key)".to_string()
    } else {
        format!("issued by {issuer}, not by the cluster's CA")
    })
}

fn past_next_update(next: &impl std::fmt::Display) -> String {
    format!("its next update ({next}) is past: QEMU would refuse every peer checked against it")
}

/// Why [`check_for_cluster`] refused a CRL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterCrlError {
    /// This process runs without TLS: there is no CA to check it against
    /// and no QEMU stream it would apply to.
    #[error("this process runs without TLS: there is no CA to check it against and no QEMU stream it would apply to")]
    NoTls,
    /// [`check`] refused it.
    #[error("{0}")]
    Refused(String),
}

/// The last CRL [`check_for_cluster`] verified, under which CA: agents
/// receive the cluster's one list again with every token table.
struct Verified {
    ca_pem: Vec<u8>,
    pem: String,
    checked: CheckedCrl,
}

static VERIFIED: Mutex<Option<Verified>> = Mutex::new(None);

/// [`check`] against this process's CA (its TLS material) at the current
/// time. An agent checks the cluster's list again with each token table
/// it fetches (every few seconds, network input all the same): the list
/// verified last under the same CA is not verified again, only its next
/// update is.
pub fn check_for_cluster(pem: &str) -> Result<CheckedCrl, ClusterCrlError> {
    let super::Transport::Tls(material) = super::transport() else {
        return Err(ClusterCrlError::NoTls);
    };
    let now_s = i64::try_from(crate::clock::now_ms() / 1000).unwrap_or(i64::MAX);
    let mut verified = VERIFIED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    check_remembering(&mut verified, pem, material.ca_pem(), now_s)
        .map_err(ClusterCrlError::Refused)
}

/// [`check`], skipping the signature when `last` is this very CRL
/// verified under `ca_pem`; remembers what passed.
fn check_remembering(
    last: &mut Option<Verified>,
    pem: &str,
    ca_pem: &[u8],
    now_s: i64,
) -> Result<CheckedCrl, String> {
    if let Some(known) = last
        .as_ref()
        .filter(|v| v.pem == pem && v.ca_pem == ca_pem && v.checked.next_update_s > now_s)
    {
        return Ok(known.checked.clone());
    }
    let checked = check(pem, ca_pem, now_s)?;
    *last = Some(Verified {
        ca_pem: ca_pem.to_vec(),
        pem: pem.to_string(),
        checked: checked.clone(),
    });
    Ok(checked)
}

/// The serials `pem` (a CRL kept before, so already checked) lists,
/// lower-case hex; an error when it does not parse.
pub fn serials(pem: &str) -> Result<Vec<String>, String> {
    let der = crl_der(pem)?;
    let (_, crl) = CertificateRevocationList::from_der(&der)
        .map_err(|e| format!("not a certificate revocation list: {e}"))?;
    Ok(listed(&crl))
}

/// The DER bytes of the first CRL of `pem`.
fn crl_der(pem: &str) -> Result<Vec<u8>, String> {
    super::material::first_pem_block(pem.as_bytes(), "X509 CRL")
        .ok_or_else(|| "no PEM X509 CRL block".to_string())
}

/// The serials `crl` names, lower-case hex.
fn listed(crl: &CertificateRevocationList<'_>) -> Vec<String> {
    crl.iter_revoked_certificates()
        .map(|revoked| hex(revoked.raw_serial()))
        .collect()
}

/// The serial number of the DER certificate `der`, lower-case hex (as
/// [`CheckedCrl::serials`] lists them).
pub fn certificate_serial(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(hex(cert.raw_serial()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes `lists` (PEM texts that passed [`check`] where they were taken
/// in) the CRLs of this process.
pub fn replace(lists: impl IntoIterator<Item = String>) {
    let lists: Vec<String> = lists.into_iter().collect();
    if let Ok(mut held) = LISTS.write() {
        if held.as_deref() != Some(&lists) {
            tracing::info!(lists = lists.len(), "certificate revocation lists updated");
            *held = Some(Arc::new(lists));
        }
    }
}

/// How many CRLs this process holds (a metric's value).
pub fn held() -> usize {
    LISTS
        .read()
        .ok()
        .and_then(|l| l.clone())
        .map_or(0, |l| l.len())
}

/// Every CRL this process holds, one after the other in one PEM text (the
/// `ca-crl.pem` QEMU reads); None when it holds none.
pub fn bundle() -> Option<String> {
    let lists = LISTS.read().ok().and_then(|l| l.clone())?;
    if lists.is_empty() {
        return None;
    }
    let mut text = String::new();
    for pem in lists.iter() {
        text.push_str(pem.trim_end());
        text.push('\n');
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };
    use time::{Duration, OffsetDateTime};

    struct Ca {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        Ca {
            issuer: Issuer::from_ca_cert_pem(&pem, key).unwrap(),
            pem,
        }
    }

    fn crl(ca: &Ca, serials: &[&[u8]], next_update: OffsetDateTime) -> String {
        let now = OffsetDateTime::now_utc();
        CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update,
            crl_number: SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }

    fn now_s() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn a_crl_of_the_cluster_ca_is_taken_with_its_serials() {
        let ca = ca("herd cluster CA");
        let later = OffsetDateTime::now_utc() + Duration::days(30);
        let pem = crl(&ca, &[&[0x12, 0xab]], later);
        let checked = check(&pem, ca.pem.as_bytes(), now_s()).unwrap();
        assert_eq!(checked.serials, vec!["12ab".to_string()]);
    }

    #[test]
    fn a_crl_of_another_ca_or_key_is_refused_saying_which() {
        let ours = ca("herd cluster CA");
        let later = OffsetDateTime::now_utc() + Duration::days(30);
        let theirs = crl(&ca("someone else"), &[&[1]], later);
        let e = check(&theirs, ours.pem.as_bytes(), now_s()).unwrap_err();
        assert!(e.contains("not by the cluster's CA"), "{e}");
        // The same name, another key: the signature gives it away.
        let impostor = crl(&ca("herd cluster CA"), &[&[1]], later);
        let e = check(&impostor, ours.pem.as_bytes(), now_s()).unwrap_err();
        assert!(e.contains("signature"), "{e}");
    }

    #[test]
    fn an_expired_empty_oversized_or_garbled_crl_is_refused() {
        let ca = ca("herd cluster CA");
        let past = OffsetDateTime::now_utc() - Duration::minutes(1);
        let e = check(&crl(&ca, &[&[1]], past), ca.pem.as_bytes(), now_s()).unwrap_err();
        assert!(e.contains("is past"), "{e}");
        let later = OffsetDateTime::now_utc() + Duration::days(1);
        let e = check(&crl(&ca, &[], later), ca.pem.as_bytes(), now_s()).unwrap_err();
        assert!(e.contains("lists no certificate"), "{e}");
        let e = check("x".repeat(MAX_CRL_BYTES + 1).as_str(), ca.pem.as_bytes(), 0).unwrap_err();
        assert!(e.contains("at most"), "{e}");
        let e = check(&ca.pem, ca.pem.as_bytes(), 0).unwrap_err();
        assert!(e.contains("no PEM X509 CRL block"), "{e}");
        let garbled = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
        let e = check(garbled, ca.pem.as_bytes(), 0).unwrap_err();
        assert!(e.contains("not a certificate revocation list"), "{e}");
    }

    #[test]
    fn a_remembered_crl_is_still_refused_past_its_next_update_or_under_another_ca() {
        let ours = ca("herd cluster CA");
        let soon = OffsetDateTime::now_utc() + Duration::hours(1);
        let pem = crl(&ours, &[&[7]], soon);
        let mut memory = None;
        let first = check_remembering(&mut memory, &pem, ours.pem.as_bytes(), now_s()).unwrap();
        assert_eq!(first.serials, vec!["07".to_string()]);
        // Remembered: taken again without its signature being checked, as
        // long as the CA is the same and its next update ahead.
        let again = check_remembering(&mut memory, &pem, ours.pem.as_bytes(), now_s()).unwrap();
        assert_eq!(again, first);
        assert_eq!(memory.as_ref().map(|m| m.pem == pem), Some(true));
        let two_hours_on = now_s() + 2 * 3600;
        let e =
            check_remembering(&mut memory, &pem, ours.pem.as_bytes(), two_hours_on).unwrap_err();
        assert!(e.contains("is past"), "{e}");
        // Under another CA (same name, other key) the memory counts for nothing.
        check_remembering(&mut memory, &pem, ours.pem.as_bytes(), now_s()).unwrap();
        let rotated = ca("herd cluster CA");
        let e = check_remembering(&mut memory, &pem, rotated.pem.as_bytes(), now_s()).unwrap_err();
        assert!(e.contains("signature"), "{e}");
    }

    #[test]
    fn the_bundle_is_every_list_held_one_after_the_other() {
        replace(["A\n".to_string(), "B".to_string()]);
        assert_eq!(bundle().as_deref(), Some("A\nB\n"));
        assert_eq!(held(), 2);
        replace([]);
        assert_eq!(bundle(), None);
        assert_eq!(held(), 0);
    }

    #[test]
    fn a_certificates_serial_reads_as_the_crl_lists_it() {
        let ca = ca("herd cluster CA");
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["x.herd".to_string()]).unwrap();
        params.serial_number = Some(SerialNumber::from_slice(&[0x7f, 0x01]));
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        assert_eq!(certificate_serial(cert.der()).unwrap(), "7f01");
        assert!(certificate_serial(b"junk").is_err());
    }
}
