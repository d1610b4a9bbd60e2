//! Revoked TLS certificates, as the replicated state keeps them (one
//! variable per fingerprint under `herd/tls/revoked/`, written by
//! `Acl.RevokeCertificate`), handed to this process's gates
//! (`herd_api::tls::revocation`) and to the agents with their token table.
//!
//! Why a watch that polls the applied state: the gates judge each request
//! from a set in the process, and the state changes by replication, not
//! through this member's own calls; reading a `BTreeMap` range twice a
//! second is cheaper than anything that would notify.

use std::sync::Arc;
use std::time::Duration;

use herd_api::proto::v1 as pb;
use herd_api::tls::revocation::VARIABLE_PREFIX;
use serde::{Deserialize, Serialize};

use crate::coordinator::Coordinator;
use crate::state::ClusterState;

/// How often the applied state is read for revocations.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);

/// What a revocation's variable holds beside its fingerprint (the key).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RevocationRecord {
    /// What the operator said, or whom the revoked file named.
    #[serde(default)]
    pub note: String,
    /// When the member that took it wrote it.
    #[serde(default)]
    pub revoked_at_ms: u64,
    /// The certificate's serial (lower-case hex) as the cluster's
    /// revocation list ([`list_in`]) names it, for QEMU's streams; empty
    /// when the operator revoked without the CA's key. Absent from records
    /// written before.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub crl_serial: String,
}

impl RevocationRecord {
    /// The variable's value.
    pub fn to_value(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The revocation variables in `state`, in fingerprint order: only
/// well-formed fingerprints under the prefix count.
fn revocations(
    state: &ClusterState,
) -> impl Iterator<Item = (String, &crate::state::Variable)> + '_ {
    state
        .variables
        .range(VARIABLE_PREFIX.to_string()..)
        .take_while(|(key, _)| key.starts_with(VARIABLE_PREFIX))
        .filter_map(|(key, variable)| {
            let fingerprint =
                herd_api::tls::revocation::parse_fingerprint(&key[VARIABLE_PREFIX.len()..]).ok()?;
            Some((fingerprint, variable))
        })
}

/// The revoked fingerprints in `state`, in order.
pub fn revoked_in(state: &ClusterState) -> Vec<String> {
    revocations(state)
        .map(|(fingerprint, _)| fingerprint)
        .collect()
}

/// The cluster's revocation list in `state` (PEM): one CRL naming every
/// certificate revoked with the CA's key, what agents hand QEMU
/// (`Agent.AclTable`). Why one list, replaced each time, and not one CRL
/// per revocation: GnuTLS (QEMU's TLS library) keeps one CRL per issuer,
/// the newest, so of several CRLs of one CA only one would count.
pub fn list_in(state: &ClusterState) -> Option<String> {
    let variable = state.variables.get(herd_api::tls::crl::LIST_VARIABLE)?;
    String::from_utf8(variable.value.clone()).ok()
}

/// The serials the cluster's revocation list in `state` names, and the
/// version of its variable (0: no list yet), which the next list replaces
/// only at that version. A list that does not parse names nothing: it
/// was checked when taken, so that is damage, and the next list replaces
/// it.
pub fn listed_serials(state: &ClusterState) -> (Vec<String>, u64) {
    match state.variables.get(herd_api::tls::crl::LIST_VARIABLE) {
        None => (Vec::new(), 0),
        Some(variable) => {
            let serials = std::str::from_utf8(&variable.value)
                .ok()
                .and_then(|pem| herd_api::tls::crl::serials(pem).ok())
                .unwrap_or_default();
            (serials, variable.version)
        }
    }
}

/// Every revocation in `state` with its note and time, in fingerprint
/// order (`herd tls cert revoked`). A value that does not parse (damaged,
/// or from another version) lists the fingerprint alone: it is revoked all
/// the same.
pub fn revocations_listed(state: &ClusterState) -> Vec<pb::RevokedCertificate> {
    revocations(state)
        .map(|(fingerprint, variable)| {
            let record: RevocationRecord =
                serde_json::from_slice(&variable.value).unwrap_or_default();
            pb::RevokedCertificate {
                fingerprint_sha256: fingerprint,
                crl: !record.crl_serial.is_empty(),
                note: record.note,
                revoked_at_ms: record.revoked_at_ms,
            }
        })
        .collect()
}

/// Keeps this process's revoked set equal to `coordinator`'s applied state.
pub async fn watch(coordinator: Arc<Coordinator>) {
    loop {
        let revoked = coordinator.read_state(revoked_in);
        herd_api::tls::revocation::replace(revoked);
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_fingerprints_under_the_prefix_count() {
        let mut state = ClusterState::default();
        let good = herd_api::tls::revocation::fingerprint(b"cert");
        for key in [
            format!("{VARIABLE_PREFIX}{good}"),
            format!("{VARIABLE_PREFIX}not-a-fingerprint"),
            "herd/tls/revokedX".to_string(),
            "herd/tls/other".to_string(),
            "zzz".to_string(),
        ] {
            let variable = crate::state::Variable {
                value: Vec::new(),
                version: 1,
                modify_index: 1,
            };
            state.variables.insert(key, variable);
        }
        assert_eq!(revoked_in(&state), vec![good]);
    }

    #[test]
    fn listed_revocations_carry_their_note_and_time_when_readable() {
        let mut state = ClusterState::default();
        let (a, b) = (
            herd_api::tls::revocation::fingerprint(b"a"),
            herd_api::tls::revocation::fingerprint(b"b"),
        );
        let record = RevocationRecord {
            note: "laptop stolen".into(),
            revoked_at_ms: 42,
            crl_serial: "12ab".into(),
        };
        for (fingerprint, value) in [(&a, record.to_value()), (&b, b"not json".to_vec())] {
            let variable = crate::state::Variable {
                value,
                version: 1,
                modify_index: 1,
            };
            state
                .variables
                .insert(format!("{VARIABLE_PREFIX}{fingerprint}"), variable);
        }
        let listed = revocations_listed(&state);
        let by_fingerprint = |fp: &str| listed.iter().find(|r| r.fingerprint_sha256 == fp);
        let a = by_fingerprint(&a).expect("a listed");
        assert_eq!(
            (a.note.as_str(), a.revoked_at_ms, a.crl),
            ("laptop stolen", 42, true)
        );
        let b = by_fingerprint(&b).expect("b listed, its value unreadable");
        assert_eq!((b.note.as_str(), b.revoked_at_ms, b.crl), ("", 0, false));
        assert_eq!(listed.len(), 2);
        // No list yet: none handed out, nothing the next must name.
        assert_eq!(list_in(&state), None);
        assert_eq!(listed_serials(&state), (Vec::new(), 0));
        // A record written before CRLs were kept reads without one.
        let old: RevocationRecord =
            serde_json::from_slice(br#"{"note":"n","revoked_at_ms":1}"#).expect("old record");
        assert!(old.crl_serial.is_empty());
        assert!(!String::from_utf8_lossy(&old.to_value()).contains("crl_serial"));
    }
}
