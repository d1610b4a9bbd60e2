//! Sends the supervisor's allocation reports to the coordinators, batched,
//! in order, retried until they are taken: a report is never dropped while
//! coordinators are away, only delayed.

use std::sync::Arc;
use std::time::Duration;

use herd_actors::workload::AllocReport;
use herd_api::client::HerdClient;
use herd_api::proto::agent::agent_client::AgentClient;
use herd_api::proto::agent::{AllocReport as ProtoReport, ReportAllocationsRequest};
use tokio::sync::{mpsc, Mutex};

/// Most reports sent in one request (the coordinators accept 1024).
const BATCH: usize = 256;
/// Longest a report request may take before it is tried again.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The wire form of a report.
pub fn to_proto(report: &AllocReport) -> ProtoReport {
    ProtoReport {
        id: report.alloc_id.clone(),
        generation: report.generation,
        status: report.status.as_str().to_string(),
        at_ms: report.at_ms,
        event: report.event.clone(),
        detail: report.detail.clone(),
        exit_code: report.exit.as_ref().and_then(|e| e.code),
        signal: report.exit.as_ref().and_then(|e| e.signal),
    }
}

/// Runs until the channel closes: takes reports as they come and delivers
/// them. Holds the receiver's lock for its whole life, so a restarted link
/// picks up exactly where this one stopped.
pub async fn run(
    node: String,
    client: HerdClient,
    reports: Arc<Mutex<mpsc::UnboundedReceiver<AllocReport>>>,
) {
    let mut reports = reports.lock().await;
    let mut batch: Vec<ProtoReport> = Vec::new();
    let mut backoff = Duration::from_millis(250);
    loop {
        if batch.is_empty() {
            match reports.recv().await {
                Some(report) => batch.push(to_proto(&report)),
                None => return,
            }
        }
        while batch.len() < BATCH {
            match reports.try_recv() {
                Ok(report) => batch.push(to_proto(&report)),
                Err(_) => break,
            }
        }
        let request = ReportAllocationsRequest {
            node: node.clone(),
            reports: batch.clone(),
        };
        let sent = tokio::time::timeout(
            CALL_TIMEOUT,
            client.call(|channel| {
                let request = request.clone();
                async move {
                    AgentClient::new(channel)
                        .report_allocations(request)
                        .await
                        .map(|r| r.into_inner())
                }
            }),
        )
        .await;
        match sent {
            Ok(Ok(reply)) => {
                for refused in &reply.refused {
                    tracing::debug!(%refused, "coordinators refused an allocation report");
                }
                tracing::debug!(accepted = reply.accepted, "allocation reports delivered");
                batch.clear();
                backoff = Duration::from_millis(250);
            }
            Ok(Err(e)) if e.code() == Some(tonic::Code::InvalidArgument) => {
                tracing::warn!(error = %e, "coordinators refused a report batch; dropping it");
                batch.clear();
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot deliver allocation reports; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(_) => {
                tracing::debug!("allocation reports timed out; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
