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

    /// A certificate revoked before (its record at `key`): when `record`
    /// brings a serial for the revocation list and the kept record has
    /// none, adds it, keeping the first note and time (only over the
    /// version read, so a serial added meanwhile is not overwritten).
    /// Returns the write's log index (0: none) and whether the kept record
    /// is listed.
    async fn mark_listed(
        &self,
        key: &str,
        fingerprint: &str,
        record: &super::revoked::RevocationRecord,
    ) -> Result<(u64, bool), Status> {
        // This member may be a follower behind the leader that refused
        // it: read what that leader holds.
        self.coordinator
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        let Some(kept) = self
            .coordinator
            .read_state(|s| s.variables.get(key).cloned())
        else {
            return Err(error::internal(format!(
                "revocation of {fingerprint}: refused as existing, then not found"
            )));
        };
        // A record this member cannot read is left as it is (it is
        // revoked all the same): rewriting it would lose it.
        let Ok(mut earlier) =
            serde_json::from_slice::<super::revoked::RevocationRecord>(&kept.value)
        else {
            return Ok((0, false));
        };
        if !earlier.crl_serial.is_empty() || record.crl_serial.is_empty() {
            return Ok((0, !earlier.crl_serial.is_empty()));
        }
        earlier.crl_serial = record.crl_serial.clone();
        let command = crate::machine::next_format::put_variable(
            key.to_string(),
            earlier.to_value(),
            Some(kept.version),
        );
        let written = self.coordinator.write(command).await?;
        tracing::warn!(%fingerprint, serial = %record.crl_serial, "revoked certificate: named by the revocation list");
        Ok((written.log_index, true))
    }

    /// Makes `given` the cluster's revocation list, if it names every
    /// serial the current one names, and only over the version of the list
    /// it was checked against: two operators revoking at once cannot drop
    /// each other's entry (the second is told to sign again). Returns the
    /// write's log index.
    async fn replace_list(&self, given: GivenList) -> Result<u64, Status> {
        self.coordinator
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        let (listed, version) = self.coordinator.read_state(super::revoked::listed_serials);
        let missing: Vec<&String> = listed
            .iter()
            .filter(|serial| !given.serials.contains(serial))
            .collect();
        let sign_again = |why: String| {
            Status::aborted(format!(
                "{why}; the certificate's fingerprint is refused all the same: run the command again to sign a list that names every revoked serial"
            ))
        };
        if let Some(first) = missing.first() {
            return Err(sign_again(format!(
                "field `crl_pem`: the cluster's revocation list names {} serial(s) this one does not (first {first}): another revocation came first",
                missing.len()
            )));
        }
        let command = crate::machine::next_format::put_variable(
            herd_api::tls::crl::LIST_VARIABLE.to_string(),
            given.pem.into_bytes(),
            Some(version),
        );
        match self.coordinator.write(command).await {
            Ok(written) => {
                tracing::warn!(serials = given.serials.len(), serial = %given.serial, "the cluster's revocation list replaced");
                Ok(written.log_index)
            }
            Err(CoordinatorError::Rejected(Rejection::VersionMismatch { .. })) => Err(sign_again(
                "the cluster's revocation list changed meanwhile (another revocation)".into(),
            )),
            Err(e) => Err(e.into()),
        }
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
        let crl = checked_crl(&request.crl_pem, &request.serial)?;
        let crl_serial = crl.as_ref().map(|c| c.serial.clone()).unwrap_or_default();
        let key = format!(
            "{}{fingerprint}",
            herd_api::tls::revocation::VARIABLE_PREFIX
        );
        let record = super::revoked::RevocationRecord {
            note: request.note.clone(),
            revoked_at_ms: herd_api::clock::now_ms(),
            crl_serial,
        };
        // Only if new: a second revocation keeps the first's note and time.
        let command =
            crate::machine::next_format::put_variable(key.clone(), record.to_value(), Some(0));
        let (already, mut log_index, mut listed) = match self.coordinator.write(command).await {
            Ok(written) => {
                tracing::warn!(%fingerprint, note = %request.note, crl = crl.is_some(), "certificate revoked");
                (false, written.log_index, !record.crl_serial.is_empty())
            }
            Err(CoordinatorError::Rejected(Rejection::VersionMismatch { .. })) => {
                let (index, listed) = self.mark_listed(&key, &fingerprint, &record).await?;
                (true, index, listed)
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(crl) = crl {
            log_index = self.replace_list(crl).await?.max(log_index);
            listed = true;
        }
        Ok(Response::new(pb::RevokeCertificateReply {
            fingerprint_sha256: fingerprint,
            already,
            log_index,
            crl: listed,
        }))
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
        let (certificates, (listed_serials, _)) = self.coordinator.read_state(|s| {
            (
                super::revoked::revocations_listed(s),
                super::revoked::listed_serials(s),
            )
        });
        Ok(Response::new(pb::ListRevokedCertificatesReply {
            certificates,
            listed_serials,
        }))
    }
}

/// A revocation list a request brought, checked.
struct GivenList {
    /// Its PEM, trimmed, newline-ended.
    pem: String,
    /// The serials it names.
    serials: Vec<String>,
    /// The revoked certificate's serial, which it names.
    serial: String,
}

/// `crl_pem` of a revocation request checked against the cluster's CA
/// (`herd_api::tls::crl::check_for_cluster`), naming `serial`; None when no
/// list was given.
fn checked_crl(crl_pem: &str, serial: &str) -> Result<Option<GivenList>, Status> {
    let crl_pem = crl_pem.trim();
    if crl_pem.is_empty() {
        return Ok(None);
    }
    let checked = herd_api::tls::crl::check_for_cluster(crl_pem)
        .map_err(|e| error::invalid_argument(format!("field `crl_pem`: {e}")))?;
    let serial = serial.trim().to_ascii_lowercase();
    if serial.is_empty() || !checked.serials.contains(&serial) {
        return Err(error::invalid_argument(format!(
            "field `serial`: {:?} is not among the serials the list names ({})",
            serial,
            checked.serials.len()
        )));
    }
    Ok(Some(GivenList {
        pem: format!("{crl_pem}\n"),
        serials: checked.serials,
        serial,
    }))
}

/// Longest note kept with a revoked certificate.
const MAX_NOTE_BYTES: usize = 256;
