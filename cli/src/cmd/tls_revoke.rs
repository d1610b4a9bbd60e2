//! `herd tls cert revoke FILE | --fingerprint HEX`: the cluster refuses a
//! certificate from now on (`Acl.RevokeCertificate`, operator role; see
//! `herd_api::tls::revocation`); `herd tls cert revoked` lists what it
//! refuses. The only `herd tls` commands that dial the cluster; the others
//! make files.
//!
//! With `--ca-key` the revocation also carries a CRL naming the
//! certificate, signed here with the CA's key (which never leaves the
//! operator's machine), for QEMU's migration streams
//! (`herd_api::tls::crl`).

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

/// A CRL naming the certificate in `file`, signed by the CA at `ca` with
/// the key at `ca_key`, valid as long as the CA: the certificate must be
/// that CA's (a CRL of one CA cannot revoke another's certificate).
fn signed_crl(file: &Path, ca: &Path, ca_key: &Path) -> Result<String, CliError> {
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
    let now = time::OffsetDateTime::now_utc();
    let ca_end =
        time::OffsetDateTime::from_unix_timestamp(ca_cert.validity().not_after.timestamp())
            .map_err(|e| {
                CliError::input(format!("--ca {}: its end of validity: {e}", ca.display()))
            })?;
    let params = rcgen::CertificateRevocationListParams {
        // An hour back, for peers whose clocks are a little behind.
        this_update: now - time::Duration::hours(1),
        // As long as the CA: every certificate this one could be is dead
        // by then, and a CRL past its next update fails every peer.
        next_update: ca_end,
        // Increasing for each list this CA signs.
        crl_number: rcgen::SerialNumber::from(herd_api::clock::now_ms()),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(cert.raw_serial()),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&issuer)
        .and_then(|crl| crl.pem())
        .map_err(|e| CliError::runtime(format!("signing the revocation list: {e}")))?;
    // What the coordinators will check, checked first here.
    herd_api::tls::crl::check(&crl, ca_pem.as_bytes(), now.unix_timestamp())
        .map_err(|e| CliError::runtime(format!("the revocation list just signed: {e}")))?;
    Ok(crl)
}

/// Revokes the certificate in `file`, or the one with `fingerprint`; with
/// `signer` (the CA's certificate and key), with a CRL naming it.
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
    let crl_pem = match (signer, file) {
        (Some((ca, ca_key)), Some(file)) => signed_crl(file, ca, ca_key)?,
        (Some(_), None) => {
            return Err(CliError::input(
                "--ca-key needs the certificate's FILE: a revocation list names its serial, which a fingerprint does not give",
            ))
        }
        (None, _) => String::new(),
    };
    let request = RevokeCertificateRequest {
        fingerprint_sha256: fingerprint,
        note,
        crl_pem,
    };
    let client = ctx.client()?;
    let reply = client
        .call_as(Repeat::Safe, |channel| {
            let request = request.clone();
            async move {
                AclClient::new(channel)
                    .revoke_certificate(request)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await?;
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
            if reply.crl && !request.crl_pem.is_empty() && reply.log_index != 0 {
                "; its revocation list is added"
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
