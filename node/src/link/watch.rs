//! Follows the allocations the coordinators assign to this node: one
//! server stream at a time, re-opened (on the leader first) whenever it
//! breaks or stalls.

use std::time::Duration;

use futures::StreamExt;
use herd_api::client::{HerdClient, Repeat};
use herd_api::proto::agent::agent_client::AgentClient;
use herd_api::proto::agent::WatchAllocationsRequest;
use ractor::ActorRef;

use super::LinkMsg;

/// A stream silent this long is taken for dead (coordinators resend every 5 s).
const STALL: Duration = Duration::from_secs(15);
/// Longest opening a stream may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs until the link stops (its messages fail to send).
pub async fn run(node: String, client: HerdClient, link: ActorRef<LinkMsg>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let request = WatchAllocationsRequest { node: node.clone() };
        let opened = tokio::time::timeout(
            OPEN_TIMEOUT,
            // Opening a watch changes nothing: any coordinator may take it.
            client.call_leader_as(Repeat::Safe, |channel| {
                let request = request.clone();
                async move {
                    AgentClient::new(channel)
                        .watch_allocations(request)
                        .await
                        .map(|r| r.into_inner())
                }
            }),
        )
        .await;
        let mut stream = match opened {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot watch allocations; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(_) => {
                tracing::debug!("opening the allocation watch timed out; retrying");
                continue;
            }
        };
        loop {
            match tokio::time::timeout(STALL, stream.next()).await {
                Ok(Some(Ok(assigned))) => {
                    backoff = Duration::from_millis(200);
                    if link.cast(LinkMsg::Assigned(assigned)).is_err() {
                        return;
                    }
                }
                Ok(Some(Err(e))) => {
                    tracing::debug!(error = %e, "allocation watch broke; reopening");
                    break;
                }
                Ok(None) => {
                    tracing::debug!("allocation watch ended; reopening");
                    break;
                }
                Err(_) => {
                    tracing::debug!("allocation watch stalled; reopening");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}
