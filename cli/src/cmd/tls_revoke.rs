//! `herd tls cert revoke FILE | --fingerprint HEX`: the cluster refuses a
//! certificate from now on (`Acl.RevokeCertificate`, operator role; see
//! `herd_api::tls::revocation`); `herd tls cert revoked` lists what it
//! refuses. The only `herd tls` commands that dial the cluster; the others
//! make files.
//!
//! With `--ca-key` the revocation also carries the cluster's next
//! revocation list, for QEMU's migration streams (`herd_api::tls::crl`):
//! a CRL naming the certificate and every one the current list names,
//! signed here with the CA's key (which never leaves the operator's
//! machine). When another revocation replaced the list between the read
//! and the write, the coordinators refuse the stale one and it is signed
//! again.

use std::path::Path;

use herd_api::client::Repeat;
use herd_api::proto::v1::acl_client::AclClient;
use herd_api::proto::v1::{ListRevokedCertificatesRequest, RevokeCertificateRequest};
use herd_api::tls::identity::first_pem_certificate;
use herd_api::tls::revocation::{fingerprint_of_pem, parse_fingerprint};
use serde_json::json;

use super::Context;
use crate::exit::CliError;
use crate::output::{format_time, print_json, print_table};

/// The fingerprint of the certificate in `file` (its first PEM
/// certificate), and whom it names when it names a herd identity.
fn fingerprint_of_file(file: &Path) -> Result<(String, Option<String>), CliError> {
    let bad = |what: String| CliError::input(format!("{}: {what}", file.display()));
    let pem = std::fs::read(file).map_err(|e| bad(e.to_string()))?;
    let (fingerprint, named) = fingerprint_of_pem(&pem).map_err(bad)?;
    Ok((fingerprint, named.map(|identity| identity.uri())))
}

/// What signs the cluster's revocation lists for one revocation: the CA's
/// certificate and key, and the revoked certificate's serial.
struct ListSigner {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
    /// When the CA's validity ends: every list lasts as long.
    ca_end: time::OffsetDateTime,
    /// The revoked certificate's serial, lower-case hex.
    serial: String,
}

/// Reads the CA at `ca` with its key at `ca_key` for revoking the
/// certificate in `file`, which must be that CA's (a CRL of one CA cannot
/// revoke another's certificate).
fn list_signer(file: &Path, ca: &Path, ca_key: &Path) -> Result<ListSigner, CliError> {
    let bad = |what: String| CliError::input(format!("{}: {what}", file.display()));
    let pem = std::fs::read(file).map_err(|e| bad(e.to_string()))?;
    let der =
        first_pem_certificate(&pem).ok_or_else(|| bad("no PEM CERTIFICATE block".to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    let (ca_pem, issuer) = super::tls::load_issuer(ca, ca_key)?;
    let ca_der = first_pem_certificate(ca_pem.as_bytes()).ok_or_else(|| {
        CliError::input(format!("--ca {}: no PEM CERTIFICATE block", ca.display()))
    })?;
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der)
        .map_err(|e| CliError::input(format!("--ca {}: {e}", ca.display())))?;
    // By signature, not by name: every `herd tls ca create` names its CA
    // alike.
    if cert.issuer() != ca_cert.subject()
        || cert.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return Err(bad(format!(
            "not signed by the CA of --ca {} ({})",
            ca.display(),
            ca_cert.subject()
        )));
    }
    let ca_end =
        time::OffsetDateTime::from_unix_timestamp(ca_cert.validity().not_after.timestamp())
            .map_err(|e| {
                CliError::input(format!("--ca {}: its end of validity: {e}", ca.display()))
            })?;
    let serial = herd_api::tls::crl::certificate_serial(&der).map_err(bad)?;
    Ok(ListSigner {
        issuer,
        ca_pem,
        ca_end,
        serial,
    })
}

impl ListSigner {
    /// The cluster's next revocation list: every serial of `listed` (what
    /// the current list names) and this certificate's, signed now.
    fn sign(&self, listed: &[String]) -> Result<String, CliError> {
        let now = time::OffsetDateTime::now_utc();
        let mut serials: Vec<&String> = listed.iter().collect();
        if !serials.contains(&&self.serial) {
            serials.push(&self.serial);
        }
        let revoked_certs = serials
            .into_iter()
            .map(|hex| {
                let bytes = serial_bytes(hex).ok_or_else(|| {
                    CliError::runtime(format!(
                        "the cluster's revocation list names a serial that is not hex: {hex:?}"
                    ))
                })?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&bytes),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, CliError>>()?;
        let params = rcgen::CertificateRevocationListParams {
            // An hour back, for peers whose clocks are a little behind.
            this_update: now - time::Duration::hours(1),
            // As long as the CA: every certificate this one could be is
            // dead by then, and a CRL past its next update fails every peer.
            next_update: self.ca_end,
            // Increasing for each list this CA signs.
            crl_number: rcgen::SerialNumber::from(herd_api::clock::now_ms()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .and_then(|crl| crl.pem())
            .map_err(|e| CliError::runtime(format!("signing the revocation list: {e}")))?;
        // What the coordinators will check, checked first here.
        herd_api::tls::crl::check(&crl, self.ca_pem.as_bytes(), now.unix_timestamp())
            .map_err(|e| CliError::runtime(format!("the revocation list just signed: {e}")))?;
        Ok(crl)
    }
}

/// The bytes of a serial written in hex (as `herd_api::tls::crl` writes
/// them); None when it is not.
fn serial_bytes(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// How many times a revocation with the CA's key signs the list again when
/// another revocation replaced the cluster's list meanwhile.
const SIGN_TRIES: usize = 5;

/// Revokes the certificate in `file`, or the one with `fingerprint`; with
/// `signer` (the CA's certificate and key), the cluster's revocation list
/// is replaced by one naming it too.
pub async fn run(
    ctx: &Context,
    file: Option<&Path>,
    given: Option<&str>,
    note: Option<String>,
    signer: Option<(&Path, &Path)>,
) -> Result<(), CliError> {
    let (fingerprint, named) = match (file, given) {
        (Some(file), None) => fingerprint_of_file(file)?,
        (None, Some(text)) => (
            parse_fingerprint(text).map_err(|e| CliError::input(format!("--fingerprint: {e}")))?,
            None,
        ),
        _ => {
            return Err(CliError::input(
                "give the certificate's file or --fingerprint HEX (one of them)",
            ))
        }
    };
    let note = note.or(named).unwrap_or_default();
    let signer = match (signer, file) {
        (Some((ca, ca_key)), Some(file)) => Some(list_signer(file, ca, ca_key)?),
        (Some(_), None) => {
            return Err(CliError::input(
                "--ca-key needs the certificate's FILE: a revocation list names its serial, which a fingerprint does not give",
            ))
        }
        (None, _) => None,
    };
    let client = ctx.client()?;
    let mut tries = 0;
    let (request, reply) = loop {
        tries += 1;
        let (crl_pem, serial) = match &signer {
            Some(signer) => (
                signer.sign(&listed_serials(&client).await?)?,
                signer.serial.clone(),
            ),
            None => (String::new(), String::new()),
        };
        let request = RevokeCertificateRequest {
            fingerprint_sha256: fingerprint.clone(),
            note: note.clone(),
            crl_pem,
            serial,
        };
        let sent = request.clone();
        let answer = client
            .call_as(Repeat::Safe, |channel| {
                let request = sent.clone();
                async move {
                    AclClient::new(channel)
                        .revoke_certificate(request)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await;
        match answer {
            // Another revocation replaced the list between our read and our
            // write: read it again and sign a list naming both.
            Err(herd_api::client::ClientError::Status { status, .. })
                if status.code() == tonic::Code::Aborted && tries < SIGN_TRIES =>
            {
                tracing::info!(reason = %status.message(), "the revocation list changed meanwhile; signing again");
            }
            answer => break (request, answer?),
        }
    };
    if ctx.json() {
        print_json(&json!({
            "fingerprint_sha256": reply.fingerprint_sha256,
            "note": request.note,
            "already": reply.already,
            "crl": reply.crl,
        }));
        return Ok(());
    }
    if reply.already {
        println!(
            "certificate SHA-256 {} was revoked already{}",
            reply.fingerprint_sha256,
            if reply.crl && !request.crl_pem.is_empty() {
                "; the cluster's revocation list names it"
            } else {
                ""
            }
        );
    } else {
        println!(
            "certificate SHA-256 {} revoked{}: coordinators refuse it now, agents within seconds",
            reply.fingerprint_sha256,
            if request.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", request.note)
            }
        );
    }
    if !reply.crl {
        println!(
            "note: no revocation list is kept for it, so the QEMUs of moving VMs still accept it; run again with the certificate's file and --ca-key to add one"
        );
    }
    Ok(())
}

/// The serials the cluster's revocation list names now (a linearizable
/// read): what the next list must name too.
async fn listed_serials(client: &herd_api::client::HerdClient) -> Result<Vec<String>, CliError> {
    let listed = client
        .call_as(Repeat::Safe, |channel| async move {
            AclClient::new(channel)
                .list_revoked_certificates(ListRevokedCertificatesRequest { stale: false })
                .await
                .map(|r| r.into_inner().listed_serials)
        })
        .await?;
    Ok(listed)
}

/// Lists every revoked certificate (`herd tls cert revoked`).
pub async fn list(ctx: &Context, stale: bool) -> Result<(), CliError> {
    let certificates = ctx
        .client()?
        .call_as(Repeat::Safe, |channel| async move {
            AclClient::new(channel)
                .list_revoked_certificates(ListRevokedCertificatesRequest { stale })
                .await
                .map(|r| r.into_inner().certificates)
        })
        .await?;
    if ctx.json() {
        let listed: Vec<_> = certificates
            .iter()
            .map(|c| {
                json!({
                    "fingerprint_sha256": c.fingerprint_sha256,
                    "note": c.note,
                    "revoked_at_ms": c.revoked_at_ms,
                    "crl": c.crl,
                })
            })
            .collect();
        print_json(&json!(listed));
    } else {
        let rows: Vec<Vec<String>> = certificates
            .iter()
            .map(|c| {
                vec![
                    c.fingerprint_sha256.clone(),
                    format_time(c.revoked_at_ms),
                    if c.crl { "yes" } else { "no" }.to_string(),
                    c.note.clone(),
                ]
            })
            .collect();
        print_table(
            &["FINGERPRINT (SHA-256)", "REVOKED (UTC)", "CRL", "NOTE"],
            &rows,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_read_back_as_the_lists_write_them_and_junk_is_refused() {
        assert_eq!(serial_bytes("00ff1a"), Some(vec![0x00, 0xff, 0x1a]));
        for junk in ["", "abc", "zz", "0g", "é1"] {
            assert_eq!(serial_bytes(junk), None, "{junk:?}");
        }
    }
}
