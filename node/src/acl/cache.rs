//! The agent's copy of the cluster's token table, and the judgement of a
//! presented token against it.
//!
//! The table holds what the coordinators hold (accessor, SHA-256 digest of
//! the secret, role, expiry, revoked), never a secret. It is saved in the
//! data directory (`acl-table.json`) each time it changes, so an agent that
//! restarts while every coordinator is away keeps checking tokens rather
//! than serving everyone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use herd_api::acl::secret::SecretHash;
use herd_api::acl::{check, secret, Denied, Role, TokenView};
use herd_api::proto::agent::AclTableReply;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use super::table;

/// The file the last table is saved in, in the agent's data directory.
pub const TABLE_FILE: &str = "acl-table.json";

/// How long a request with a token the table does not know (or any request
/// before the agent's first fetch) waits for a fresh table.
pub const UNKNOWN_WAIT: Duration = Duration::from_secs(2);

/// One token, as the coordinators keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// What it may do.
    pub role: Role,
    /// SHA-256 of its secret.
    pub secret_hash: SecretHash,
    /// When it stops being accepted, ms since the epoch; None: never.
    pub expires_at_ms: Option<u64>,
    /// Revoked tokens are refused.
    pub revoked: bool,
}

/// A table as fetched from a coordinator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    /// Whether requests need a token.
    pub bootstrapped: bool,
    /// Tokens by accessor.
    pub tokens: HashMap<String, Entry>,
    /// The coordinator's applied index it was read at (0: not read from a
    /// coordinator's state, see [`AgentAcl::mark_closed`]).
    pub index: u64,
    /// Fingerprints of revoked TLS certificates
    /// (`herd_api::tls::revocation`): this agent's gates refuse them, also
    /// while the coordinators are away. Absent from tables saved before.
    #[serde(default)]
    pub revoked_certificates: Vec<String>,
    /// CRLs kept with those revocations (`herd_api::tls::crl`), for the
    /// QEMUs of moving VMs, which check certificates themselves. Absent
    /// from tables saved before.
    #[serde(default)]
    pub revocation_lists: Vec<String>,
}

impl Known {
    /// Reads a reply; a token with a role or digest this agent cannot read
    /// (a newer coordinator's) is left out, so it is refused here.
    pub fn from_reply(reply: AclTableReply) -> Self {
        let mut tokens = HashMap::with_capacity(reply.tokens.len());
        for token in reply.tokens {
            let role = Role::parse(&token.role);
            let hash = SecretHash::try_from(token.secret_sha256.as_slice());
            match (role, hash) {
                (Ok(role), Ok(secret_hash)) => {
                    tokens.insert(
                        token.accessor,
                        Entry {
                            role,
                            secret_hash,
                            expires_at_ms: (token.expires_at_ms != 0)
                                .then_some(token.expires_at_ms),
                            revoked: token.revoked,
                        },
                    );
                }
                _ => tracing::warn!(
                    accessor = %token.accessor,
                    role = %token.role,
                    "token table: a token with an unknown role or a malformed digest is refused here"
                ),
            }
        }
        let revoked_certificates = reply
            .revoked_certificates
            .iter()
            .filter_map(|f| herd_api::tls::revocation::parse_fingerprint(f).ok())
            .collect();
        Self {
            bootstrapped: reply.bootstrapped,
            tokens,
            index: reply.index,
            revoked_certificates,
            revocation_lists: checked_lists(reply.revocation_lists),
        }
    }
}

/// The CRLs of a reply that this agent's CA signed (the coordinator checked
/// them as it took them; a reply is network input all the same): one that
/// fails is left out with a warning, since QEMU would refuse every peer
/// against a CRL past its next update. Without TLS there is no QEMU stream
/// to give them to, and none is kept.
fn checked_lists(lists: Vec<String>) -> Vec<String> {
    use herd_api::tls::crl::{check_for_cluster, ClusterCrlError};
    let mut kept = Vec::with_capacity(lists.len());
    for pem in lists {
        match check_for_cluster(&pem) {
            Ok(_) => kept.push(pem),
            Err(ClusterCrlError::NoTls) => return Vec::new(),
            Err(e) => tracing::warn!(error = %e, "token table: a revocation list is left out"),
        }
    }
    kept
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Pass,
    /// Refuse it with this reason.
    Refuse(Denied),
    /// The table may be behind: fetch it (or wait for the first one), then
    /// judge again, finally.
    Unknown,
}

/// Judges `bearer` for an entry point `what` that needs `need`, on `table`
/// at `now_ms`. `last_try`: a fresh table was waited for already, so an
/// unknown accessor is invalid and no table at all means open.
pub fn judge(
    table: Option<&Known>,
    need: Role,
    what: &str,
    bearer: Option<&str>,
    now_ms: u64,
    last_try: bool,
) -> Verdict {
    let Some(known) = table else {
        return if last_try {
            Verdict::Pass
        } else {
            Verdict::Unknown
        };
    };
    if !known.bootstrapped {
        return Verdict::Pass;
    }
    let Some(bearer) = bearer else {
        return Verdict::Refuse(Denied::NoToken);
    };
    let checked = check::authenticate(bearer, now_ms, |accessor| {
        known.tokens.get(accessor).map(|t| TokenView {
            role: t.role,
            secret_hash: &t.secret_hash,
            expires_at_ms: t.expires_at_ms,
            revoked: t.revoked,
        })
    });
    match checked {
        Ok((_, have)) if table::allows(have, need, what) => Verdict::Pass,
        Ok((accessor, have)) => Verdict::Refuse(Denied::Role {
            accessor,
            have,
            need,
            rpc: what.to_string(),
        }),
        Err(Denied::Invalid)
            if !last_try
                && secret::parse(bearer)
                    .is_some_and(|p| !known.tokens.contains_key(p.accessor)) =>
        {
            Verdict::Unknown
        }
        Err(denied) => Verdict::Refuse(denied),
    }
}

struct Shared {
    table: RwLock<Option<Known>>,
    /// Asks the refresher for a fetch now.
    wake: Notify,
    /// Counts the refresher's fetch attempts, so a request can wait for
    /// the next one.
    attempts: watch::Sender<u64>,
    /// Where the table is saved; None: nowhere (tests).
    file: Option<PathBuf>,
}

/// The agent's token table, shared by its gRPC guard, its HTTP endpoint
/// and the refresher; cheap to clone.
#[derive(Clone)]
pub struct AgentAcl {
    shared: Arc<Shared>,
}

impl AgentAcl {
    /// A table saved in `data_dir` (loaded from there when a previous run
    /// saved one), or in memory only when `data_dir` is None.
    pub fn new(data_dir: Option<&Path>) -> Self {
        let file = data_dir.map(|d| d.join(TABLE_FILE));
        let table = file.as_deref().and_then(load);
        if let Some(known) = &table {
            herd_api::tls::revocation::replace(known.revoked_certificates.iter().cloned());
            herd_api::tls::crl::replace(known.revocation_lists.iter().cloned());
        }
        Self {
            shared: Arc::new(Shared {
                table: RwLock::new(table),
                wake: Notify::new(),
                attempts: watch::Sender::new(0),
                file,
            }),
        }
    }

    /// The table as it stands (None: never fetched nor saved).
    pub fn snapshot(&self) -> Option<Known> {
        self.shared
            .table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the table with `known`, saving it when it changed.
    pub fn install(&self, known: Known) {
        let mut table = self.shared.table.write().unwrap_or_else(|p| p.into_inner());
        herd_api::tls::revocation::replace(known.revoked_certificates.iter().cloned());
        herd_api::tls::crl::replace(known.revocation_lists.iter().cloned());
        let changed = table.as_ref().is_none_or(|t| {
            t.bootstrapped != known.bootstrapped
                || t.tokens != known.tokens
                || t.revoked_certificates != known.revoked_certificates
                || t.revocation_lists != known.revocation_lists
        });
        if changed {
            tracing::info!(
                bootstrapped = known.bootstrapped,
                tokens = known.tokens.len(),
                revoked_certificates = known.revoked_certificates.len(),
                revocation_lists = known.revocation_lists.len(),
                listed_serials = known
                    .revocation_lists
                    .iter()
                    .filter_map(|pem| herd_api::tls::crl::serials(pem).ok())
                    .map(|serials| serials.len())
                    .sum::<usize>(),
                index = known.index,
                "token table updated"
            );
            if let Some(file) = &self.shared.file {
                save(file, &known);
            }
        }
        *table = Some(known);
    }

    /// A coordinator refused this agent's own token: the cluster is
    /// bootstrapped. With no table yet, every request is refused (rather
    /// than served as if the cluster were open) until one comes.
    pub fn mark_closed(&self) {
        let mut table = self.shared.table.write().unwrap_or_else(|p| p.into_inner());
        if table.is_none() {
            *table = Some(Known {
                bootstrapped: true,
                ..Known::default()
            });
        }
    }

    /// Records that the refresher tried a fetch (whatever came of it).
    pub fn attempted(&self) {
        self.shared.attempts.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Resolves when someone asked for a fetch now.
    pub async fn asked(&self) {
        self.shared.wake.notified().await;
    }

    /// Checks `bearer` for an entry point `what` needing `need`: at once
    /// when the table decides, else after asking for a fresh table and
    /// waiting for it (up to [`UNKNOWN_WAIT`]).
    pub async fn check(&self, need: Role, what: &str, bearer: Option<&str>) -> Result<(), Denied> {
        let first = judge(
            self.snapshot().as_ref(),
            need,
            what,
            bearer,
            herd_api::clock::now_ms(),
            false,
        );
        let verdict = match first {
            Verdict::Unknown => {
                let mut attempts = self.shared.attempts.subscribe();
                let tried = *attempts.borrow_and_update();
                let table = self.snapshot();
                // Before the first table: once a fetch was tried and none
                // came, the agent serves as an open cluster would.
                if table.is_some() || tried == 0 {
                    self.shared.wake.notify_one();
                    let _ = tokio::time::timeout(UNKNOWN_WAIT, attempts.changed()).await;
                }
                judge(
                    self.snapshot().as_ref(),
                    need,
                    what,
                    bearer,
                    herd_api::clock::now_ms(),
                    true,
                )
            }
            decided => decided,
        };
        match verdict {
            Verdict::Refuse(denied) => {
                tracing::debug!(what, reason = %denied, "request refused");
                Err(denied)
            }
            Verdict::Pass | Verdict::Unknown => Ok(()),
        }
    }
}

fn load(file: &Path) -> Option<Known> {
    let text = match std::fs::read(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "the saved token table cannot be read; waiting for the coordinators' one");
            return None;
        }
    };
    match serde_json::from_slice(&text) {
        Ok(known) => Some(known),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "the saved token table is malformed; waiting for the coordinators' one");
            None
        }
    }
}

fn save(file: &Path, known: &Known) {
    let written = serde_json::to_vec(known)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            let tmp = file.with_extension("json.tmp");
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, file))
                .map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        tracing::warn!(file = %file.display(), error = %e, "the token table could not be saved");
    }
}

#[cfg(test)]
mod tests {
    use herd_api::acl::secret::{encode, hash};
    use herd_api::proto::agent::AclTableToken;

    use super::*;

    fn reply(bootstrapped: bool) -> (AclTableReply, String, String) {
        let token = |accessor: &str, seed: u8, role: &str, expires_at_ms, revoked| {
            (
                AclTableToken {
                    accessor: accessor.into(),
                    secret_sha256: hash(&[seed; 32]).to_vec(),
                    role: role.into(),
                    expires_at_ms,
                    revoked,
                },
                format!("{accessor}.{}", encode(&[seed; 32])),
            )
        };
        let (reader, reader_bearer) = token("r", 1, "read", 0, false);
        let (submit, submit_bearer) = token("s", 2, "submit", 100, false);
        let (gone, _) = token("g", 3, "operator", 0, true);
        let (odd, _) = token("o", 4, "admin", 0, false);
        (
            AclTableReply {
                bootstrapped,
                tokens: vec![reader, submit, gone, odd],
                index: 9,
                revoked_certificates: vec![
                    herd_api::tls::revocation::fingerprint(b"certificate"),
                    "not a fingerprint".into(),
                ],
                revocation_lists: vec!["not a CRL".into()],
            },
            reader_bearer,
            submit_bearer,
        )
    }

    #[test]
    fn a_table_keeps_the_well_formed_revoked_certificates() {
        let (reply, _, _) = reply(true);
        let known = Known::from_reply(reply);
        assert_eq!(
            known.revoked_certificates,
            vec![herd_api::tls::revocation::fingerprint(b"certificate")]
        );
        // A CRL this agent cannot check against its CA (here: no TLS, no
        // CA) never reaches QEMU.
        assert!(known.revocation_lists.is_empty());
    }

    #[test]
    fn tokens_are_judged_on_the_fetched_table() {
        let infer = "/herd.agent.v1.NodeAgent/Infer";
        let (open, reader, submit) = reply(false);
        let open = Known::from_reply(open);
        assert_eq!(
            judge(Some(&open), Role::Submit, infer, None, 0, false),
            Verdict::Pass
        );
        let (closed, ..) = reply(true);
        let known = Known::from_reply(closed);
        assert_eq!(known.tokens.len(), 3, "the unknown role is left out");
        let at = |bearer: Option<&str>, now, last| {
            judge(Some(&known), Role::Submit, infer, bearer, now, last)
        };
        assert_eq!(at(None, 0, false), Verdict::Refuse(Denied::NoToken));
        assert_eq!(at(Some(&submit), 99, false), Verdict::Pass);
        assert!(matches!(
            at(Some(&submit), 100, false),
            Verdict::Refuse(Denied::Expired { .. })
        ));
        assert!(matches!(
            at(Some(&reader), 0, false),
            Verdict::Refuse(Denied::Role {
                need: Role::Submit,
                have: Role::Read,
                ..
            })
        ));
        let revoked = format!("g.{}", encode(&[3; 32]));
        assert_eq!(
            at(Some(&revoked), 0, false),
            Verdict::Refuse(Denied::Revoked("g".into()))
        );
        let stranger = format!("new.{}", encode(&[7; 32]));
        assert_eq!(at(Some(&stranger), 0, false), Verdict::Unknown);
        assert_eq!(
            at(Some(&stranger), 0, true),
            Verdict::Refuse(Denied::Invalid)
        );
        let forged = format!("r.{}", encode(&[7; 32]));
        assert_eq!(
            at(Some(&forged), 0, false),
            Verdict::Refuse(Denied::Invalid),
            "a known accessor with the wrong secret fetches nothing"
        );
        assert_eq!(
            judge(None, Role::Submit, infer, None, 0, false),
            Verdict::Unknown
        );
        assert_eq!(
            judge(None, Role::Submit, infer, None, 0, true),
            Verdict::Pass
        );
    }

    #[tokio::test]
    async fn the_table_is_saved_and_a_new_agent_starts_from_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let acl = AgentAcl::new(Some(dir.path()));
        assert!(acl.snapshot().is_none());
        let (closed, reader, _) = reply(true);
        acl.install(Known::from_reply(closed));
        let again = AgentAcl::new(Some(dir.path()));
        assert_eq!(again.snapshot(), acl.snapshot());
        let logs = "/herd.agent.v1.NodeAgent/AllocLogs";
        assert_eq!(again.check(Role::Read, logs, Some(&reader)).await, Ok(()));
        assert_eq!(
            again.check(Role::Read, logs, None).await,
            Err(Denied::NoToken)
        );
        std::fs::write(dir.path().join(TABLE_FILE), b"{not json").expect("write");
        assert!(AgentAcl::new(Some(dir.path())).snapshot().is_none());
    }

    #[tokio::test]
    async fn a_refused_agent_token_closes_an_agent_without_a_table() {
        let acl = AgentAcl::new(None);
        acl.attempted();
        let logs = "/herd.agent.v1.NodeAgent/AllocLogs";
        assert_eq!(
            acl.check(Role::Read, logs, None).await,
            Ok(()),
            "no table after a fetch was tried: open"
        );
        acl.mark_closed();
        assert_eq!(
            acl.check(Role::Read, logs, None).await,
            Err(Denied::NoToken)
        );
    }
}
