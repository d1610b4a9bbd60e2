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

use herd_api::tls::revocation::VARIABLE_PREFIX;

use crate::coordinator::Coordinator;
use crate::state::ClusterState;

/// How often the applied state is read for revocations.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The revoked fingerprints in `state`, in order.
pub fn revoked_in(state: &ClusterState) -> Vec<String> {
    state
        .variables
        .range(VARIABLE_PREFIX.to_string()..)
        .map(|(key, _)| key)
        .take_while(|key| key.starts_with(VARIABLE_PREFIX))
        .filter_map(|key| {
            herd_api::tls::revocation::parse_fingerprint(&key[VARIABLE_PREFIX.len()..]).ok()
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
}
