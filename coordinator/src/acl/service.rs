//! `herd acl ...`: the `Acl` gRPC service. Secrets are made here, on the
//! member that took the request, and leave it only in the reply: the log
//! and the state hold their digests.

use std::sync::Arc;

use herd_api::proto::v1 as pb;
use herd_api::proto::v1::acl_server::Acl;
use herd_api::retry::{ErrorMarks, Reason};
use tonic::{Request, Response, Status};

use super::secret;
use super::state::{check_grant, TokenGrant, TokenRecord, TokenWritten};
use super::Role;
use crate::coordinator::{Coordinator, ReadConsistency};
use crate::error::{self, CoordinatorError};
use crate::machine::command::{Command, CommandResult, Rejection};

/// Name of the token `herd acl bootstrap` makes.
pub const BOOTSTRAP_TOKEN_NAME: &str = "bootstrap";

/// Serves [`Acl`].
pub struct AclService {
    coordinator: Arc<Coordinator>,
}

impl AclService {
    /// Serves `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }

    /// Proposes a bootstrap or creation of `grant` and answers with the
    /// secret `bearer`.
    async fn grant(
        &self,
        command: Command,
        grant: &TokenGrant,
        bearer: String,
    ) -> Result<Response<pb::AclTokenSecret>, Status> {
        let written = self.coordinator.write(command).await.map_err(acl_error)?;
        let CommandResult::AclToken(token) = written.result else {
            return Err(CoordinatorError::Internal(format!(
                "unexpected result {:?}",
                written.result
            ))
            .into());
        };
        Ok(Response::new(pb::AclTokenSecret {
            token: Some(written_to_proto(&token, grant)),
            secret: bearer,
            log_index: written.log_index,
        }))
    }
}

/// A refusal by apply as the caller should see it: `FAILED_PRECONDITION`
/// for a cluster already bootstrapped, `NOT_FOUND` for an unknown
/// accessor, final either way.
fn acl_error(e: CoordinatorError) -> Status {
    match e {
        CoordinatorError::Rejected(Rejection::Acl(reason)) => {
            let status = if reason.starts_with("no token") {
                Status::not_found(reason)
            } else if reason.contains("already bootstrapped") {
                Status::failed_precondition(reason)
            } else {
                Status::invalid_argument(reason)
            };
            ErrorMarks {
                reason: Some(Reason::Rejected),
                not_applied: true,
                leader: None,
            }
            .on(status)
        }
        other => other.into(),
    }
}

fn written_to_proto(token: &TokenWritten, grant: &TokenGrant) -> pb::AclToken {
    pb::AclToken {
        accessor: token.accessor.clone(),
        name: grant.name.clone(),
        role: grant.role.as_str().to_string(),
        created_at_ms: token.created_at_ms,
        expires_at_ms: token.expires_at_ms,
        revoked: false,
    }
}

fn record_to_proto(accessor: &str, token: &TokenRecord) -> pb::AclToken {
    pb::AclToken {
        accessor: accessor.to_string(),
        name: token.name.clone(),
        role: token.role.as_str().to_string(),
        created_at_ms: token.created_at_ms,
        expires_at_ms: token.expires_at_ms,
        revoked: token.revoked,
    }
}

/// A fresh secret, or an internal error naming the generator's failure.
fn fresh() -> Result<secret::NewSecret, Status> {
    secret::generate().map_err(|e| error::internal(e.to_string()))
}

#[tonic::async_trait]
impl Acl for AclService {
    async fn bootstrap(
        &self,
        _request: Request<pb::AclBootstrapRequest>,
    ) -> Result<Response<pb::AclTokenSecret>, Status> {
        if self.coordinator.read_state(|s| s.acl.enforced()) {
            return Err(acl_error(CoordinatorError::Rejected(Rejection::Acl(
                "ACLs are already bootstrapped; ask an operator for a token".into(),
            ))));
        }
        let made = fresh()?;
        let grant = TokenGrant {
            accessor: made.accessor,
            name: BOOTSTRAP_TOKEN_NAME.into(),
            role: Role::Operator,
            secret_hash: made.hash,
            ttl_ms: None,
        };
        let command = Command::BootstrapAcl {
            grant: grant.clone(),
            now_ms: 0,
        };
        let reply = self.grant(command, &grant, made.bearer).await?;
        tracing::info!(accessor = %grant.accessor, "ACLs bootstrapped: requests now need a token");
        Ok(reply)
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateAclTokenRequest>,
    ) -> Result<Response<pb::AclTokenSecret>, Status> {
        let request = request.into_inner();
        let role = Role::parse(&request.role)
            .map_err(|e| error::invalid_argument(format!("field `role`: {e}")))?;
        let made = fresh()?;
        let grant = TokenGrant {
            accessor: made.accessor,
            name: request.name,
            role,
            secret_hash: made.hash,
            ttl_ms: (request.ttl_ms > 0).then_some(request.ttl_ms),
        };
        check_grant(&grant).map_err(error::invalid_argument)?;
        let command = Command::CreateToken {
            grant: grant.clone(),
            now_ms: 0,
        };
        self.grant(command, &grant, made.bearer).await
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListAclTokensRequest>,
    ) -> Result<Response<pb::ListAclTokensReply>, Status> {
        let consistency = if request.into_inner().stale {
            ReadConsistency::Stale
        } else {
            ReadConsistency::Linearizable
        };
        self.coordinator.read_barrier(consistency).await?;
        let tokens = self.coordinator.read_state(|s| {
            s.acl
                .tokens
                .iter()
                .map(|(accessor, token)| record_to_proto(accessor, token))
                .collect()
        });
        Ok(Response::new(pb::ListAclTokensReply { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeAclTokenRequest>,
    ) -> Result<Response<pb::RevokeAclTokenReply>, Status> {
        let accessor = request.into_inner().accessor;
        if accessor.is_empty() {
            return Err(error::invalid_argument("field `accessor` is empty"));
        }
        let written = self
            .coordinator
            .write(Command::RevokeToken { accessor })
            .await
            .map_err(acl_error)?;
        Ok(Response::new(pb::RevokeAclTokenReply {
            log_index: written.log_index,
        }))
    }

    async fn revoke_certificate(
        &self,
        request: Request<pb::RevokeCertificateRequest>,
    ) -> Result<Response<pb::RevokeCertificateReply>, Status> {
        let request = request.into_inner();
        let fingerprint = herd_api::tls::revocation::parse_fingerprint(&request.fingerprint_sha256)
            .map_err(|e| error::invalid_argument(format!("field `fingerprint_sha256`: {e}")))?;
        if request.note.len() > MAX_NOTE_BYTES {
            return Err(error::invalid_argument(format!(
                "field `note`: at most {MAX_NOTE_BYTES} bytes, got {}",
                request.note.len()
            )));
        }
        let crl_pem = checked_crl(&request.crl_pem)?;
        let key = format!(
            "{}{fingerprint}",
            herd_api::tls::revocation::VARIABLE_PREFIX
        );
        let record = super::revoked::RevocationRecord {
            note: request.note.clone(),
            revoked_at_ms: herd_api::clock::now_ms(),
            crl_pem,
        };
        let answer = |already: bool, log_index: u64, crl: bool| {
            Ok(Response::new(pb::RevokeCertificateReply {
                fingerprint_sha256: fingerprint.clone(),
                already,
                log_index,
                crl,
            }))
        };
        // Only if new: a second revocation keeps the first's note and time.
        let command =
            crate::machine::next_format::put_variable(key.clone(), record.to_value(), Some(0));
        match self.coordinator.write(command).await {
            Ok(written) => {
                tracing::warn!(%fingerprint, note = %request.note, crl = !record.crl_pem.is_empty(), "certificate revoked");
                answer(false, written.log_index, !record.crl_pem.is_empty())
            }
            Err(CoordinatorError::Rejected(Rejection::VersionMismatch { .. })) => {
                // This member may be a follower behind the leader that
                // refused it: read what that leader holds.
                self.coordinator
                    .read_barrier(ReadConsistency::Linearizable)
                    .await?;
                let kept = self
                    .coordinator
                    .read_state(|s| s.variables.get(&key).cloned());
                let Some(kept) = kept else {
                    return Err(error::internal(format!(
                        "revocation of {fingerprint}: refused as existing, then not found"
                    )));
                };
                // A record this member cannot read is left as it is (it
                // is revoked all the same): rewriting it would lose it.
                let Ok(mut earlier) =
                    serde_json::from_slice::<super::revoked::RevocationRecord>(&kept.value)
                else {
                    return answer(true, 0, false);
                };
                if !earlier.crl_pem.is_empty() || record.crl_pem.is_empty() {
                    return answer(true, 0, !earlier.crl_pem.is_empty());
                }
                // Revoked before without a CRL: add this one, keeping the
                // first note and time (only over the version read, so a
                // CRL added meanwhile is not overwritten).
                earlier.crl_pem = record.crl_pem;
                let command = crate::machine::next_format::put_variable(
                    key,
                    earlier.to_value(),
                    Some(kept.version),
                );
                let written = self.coordinator.write(command).await?;
                tracing::warn!(%fingerprint, "revoked certificate: CRL added");
                answer(true, written.log_index, true)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn list_revoked_certificates(
        &self,
        request: Request<pb::ListRevokedCertificatesRequest>,
    ) -> Result<Response<pb::ListRevokedCertificatesReply>, Status> {
        let consistency = if request.into_inner().stale {
            ReadConsistency::Stale
        } else {
            ReadConsistency::Linearizable
        };
        self.coordinator.read_barrier(consistency).await?;
        let certificates = self
            .coordinator
            .read_state(super::revoked::revocations_listed);
        Ok(Response::new(pb::ListRevokedCertificatesReply {
            certificates,
        }))
    }
}

/// `crl_pem` of a revocation request, trimmed, checked against the
/// cluster's CA (`herd_api::tls::crl::check`); empty when none was given.
fn checked_crl(crl_pem: &str) -> Result<String, Status> {
    let crl_pem = crl_pem.trim();
    if crl_pem.is_empty() {
        return Ok(String::new());
    }
    let herd_api::tls::Transport::Tls(material) = herd_api::tls::transport() else {
        return Err(error::invalid_argument(
            "field `crl_pem`: this cluster runs without TLS, so there is no CA to check it against and no QEMU stream it would apply to",
        ));
    };
    let (ca_pem, _, _) = material.pem();
    let now_s = i64::try_from(herd_api::clock::now_ms() / 1000).unwrap_or(i64::MAX);
    herd_api::tls::crl::check(crl_pem, ca_pem, now_s)
        .map_err(|e| error::invalid_argument(format!("field `crl_pem`: {e}")))?;
    Ok(format!("{crl_pem}\n"))
}

/// Longest note kept with a revoked certificate.
const MAX_NOTE_BYTES: usize = 256;
