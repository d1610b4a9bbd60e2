//! Fetching the token table from the coordinators (`Agent.AclTable`, role
//! `node`): every [`REFRESH_EVERY`], and at once when a request names an
//! accessor the table does not know, but never more often than
//! [`MIN_GAP`] (a caller spraying invented accessors costs the
//! coordinators one fetch a second per agent at most).
//!
//! While no coordinator answers, the agent keeps the last table it got:
//! balancing and serving go on without the coordinators, and so does the
//! token check. A revocation therefore reaches an agent within
//! [`REFRESH_EVERY`] (plus one fetch) while a coordinator answers, and
//! only once one does again otherwise (docs/security.md).

use std::time::Duration;

use herd_api::client::{HerdClient, Repeat};
use herd_api::proto::agent::agent_client::AgentClient;
use herd_api::proto::agent::AclTableRequest;
use tokio::task::JoinHandle;
use tonic::Code;

use super::cache::{AgentAcl, Known};

/// How often the table is fetched.
pub const REFRESH_EVERY: Duration = Duration::from_secs(3);

/// The shortest time between two fetches.
pub const MIN_GAP: Duration = Duration::from_secs(1);

/// One fetch: the table, or why there is none.
pub async fn fetch(
    client: &HerdClient,
    node: &str,
) -> Result<Known, herd_api::client::ClientError> {
    let reply = client
        .call_as(Repeat::Safe, |channel| {
            let node = node.to_string();
            async move {
                AgentClient::new(channel)
                    .acl_table(AclTableRequest { node })
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await?;
    Ok(Known::from_reply(reply))
}

/// Keeps `acl` fresh from `client` (the coordinators, with this agent's
/// node token) until the task is aborted.
pub fn spawn(acl: AgentAcl, client: HerdClient, node: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut refused_before = false;
        loop {
            let started = tokio::time::Instant::now();
            match fetch(&client, &node).await {
                Ok(known) => {
                    refused_before = false;
                    acl.install(known);
                }
                Err(e)
                    if matches!(
                        e.code(),
                        Some(Code::Unauthenticated | Code::PermissionDenied)
                    ) =>
                {
                    // The cluster is bootstrapped and this agent's token
                    // is not a valid node token.
                    if !refused_before {
                        tracing::warn!(error = %e, "the coordinators refused this agent's token for the token table: keeping the last table (or refusing every caller without one); pass a node token with --token");
                    }
                    refused_before = true;
                    acl.mark_closed();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "token table not fetched; keeping the last one");
                }
            }
            acl.attempted();
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
                _ = acl.asked() => tokio::time::sleep_until(started + MIN_GAP).await,
            }
        }
    })
}
