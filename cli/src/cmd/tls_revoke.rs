//! `herd tls cert revoke FILE | --fingerprint HEX`: the cluster refuses a
//! certificate from now on (`Acl.RevokeCertificate`, operator role; see
//! `herd_api::tls::revocation`); `herd tls cert revoked` lists what it
//! refuses. The only `herd tls` commands that dial the cluster; the others
//! make files.

use std::path::Path;

use herd_api::client::Repeat;
use herd_api::proto::v1::acl_client::AclClient;
use herd_api::proto::v1::{ListRevokedCertificatesRequest, RevokeCertificateRequest};
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

/// Revokes the certificate in `file`, or the one with `fingerprint`.
pub async fn run(
    ctx: &Context,
    file: Option<&Path>,
    given: Option<&str>,
    note: Option<String>,
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
    let request = RevokeCertificateRequest {
        fingerprint_sha256: fingerprint,
        note,
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
        }));
    } else if reply.already {
        println!(
            "certificate SHA-256 {} was revoked already",
            reply.fingerprint_sha256
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
                    c.note.clone(),
                ]
            })
            .collect();
        print_table(&["FINGERPRINT (SHA-256)", "REVOKED (UTC)", "NOTE"], &rows);
    }
    Ok(())
}
