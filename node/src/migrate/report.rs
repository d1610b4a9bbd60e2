//! How an agent tells the coordinators where a migration it takes part in
//! stands (`Agent.ReportMigration`): each step of the source's flow, the
//! switch-over it asks for, or an abort.

use std::time::Duration;

use herd_api::client::HerdClient;
use herd_api::migration::MigrationPhase;
use herd_api::proto::agent::agent_client::AgentClient;
use herd_api::proto::agent::{MigrationReportReply, MigrationReportRequest};

use super::offline::OfflineSource;

/// The longest one report may take, retries included: past it the flow
/// gives up and the leader's phase deadline ends the migration.
const REPORT_BUDGET: Duration = Duration::from_secs(10);
/// One call's timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Sends one node's migration reports.
#[derive(Clone)]
pub struct MigrationReporter {
    node: String,
    client: HerdClient,
    /// Set for a balancing move made with the coordinators away: its
    /// reports go to the agents' journals and the switch-over is the
    /// target's commit (see [`super::offline`]).
    offline: Option<OfflineSource>,
}

fn offline_reply(phase: &str, generation: u64) -> MigrationReportReply {
    MigrationReportReply {
        phase: phase.to_string(),
        generation,
        stop_step: None,
    }
}

impl MigrationReporter {
    /// Reports for `node` through `client` (the link's, which finds the leader).
    pub fn new(node: String, client: HerdClient) -> Self {
        Self {
            node,
            client,
            offline: None,
        }
    }

    /// Reports of the offline move `source` describes: to the journal and
    /// the target, never to the coordinators.
    pub fn offline(node: String, client: HerdClient, source: OfflineSource) -> Self {
        Self {
            node,
            client,
            offline: Some(source),
        }
    }

    /// Whether the target may still be told to drop what it received: not
    /// for an offline move whose source asked for the commit already (the
    /// target may own the allocation; [`super::offline::resolve_switching`]
    /// settles it).
    pub fn may_abort_target(&self) -> bool {
        self.offline.as_ref().is_none_or(|o| o.still_moving())
    }

    /// The migration reached `phase`, with the figures so far.
    pub async fn advance(
        &self,
        id: &str,
        phase: MigrationPhase,
        bytes: u64,
        rounds: u32,
    ) -> Result<MigrationReportReply, String> {
        if self.offline.is_some() {
            return Ok(offline_reply(phase.as_str(), 0));
        }
        self.send(MigrationReportRequest {
            node: self.node.clone(),
            id: id.to_string(),
            action: "advance".into(),
            phase: phase.as_str().into(),
            bytes,
            rounds,
            ..Default::default()
        })
        .await
    }

    /// The target holds everything and the source is stopped or paused:
    /// hand the allocation over.
    pub async fn switch(
        &self,
        id: &str,
        bytes: u64,
        rounds: u32,
        downtime_ms: u64,
    ) -> Result<MigrationReportReply, String> {
        if let Some(offline) = &self.offline {
            let generation = offline.switch().await?;
            return Ok(offline_reply(
                MigrationPhase::Completed.as_str(),
                generation,
            ));
        }
        self.send(MigrationReportRequest {
            node: self.node.clone(),
            id: id.to_string(),
            action: "switch".into(),
            bytes,
            rounds,
            downtime_ms,
            ..Default::default()
        })
        .await
    }

    /// A gang member's learner stands at `step`, going at `pace_milli`
    /// thousandths of a step per second. Repeated once taken, it only asks
    /// where the group stands: the reply's `stop_step` is set once every
    /// member reported.
    pub async fn gang_step(
        &self,
        id: &str,
        step: u64,
        pace_milli: u64,
    ) -> Result<MigrationReportReply, String> {
        if self.offline.is_some() {
            return Err("a gang does not move with the coordinators away".into());
        }
        self.send(MigrationReportRequest {
            node: self.node.clone(),
            id: id.to_string(),
            action: "gang_step".into(),
            step,
            pace_milli,
            ..Default::default()
        })
        .await
    }

    /// Gives the migration up, saying why.
    pub async fn abort(&self, id: &str, reason: &str) -> Result<MigrationReportReply, String> {
        if let Some(offline) = &self.offline {
            offline.abort(reason).await?;
            return Ok(offline_reply(MigrationPhase::Aborted.as_str(), 0));
        }
        self.send(MigrationReportRequest {
            node: self.node.clone(),
            id: id.to_string(),
            action: "abort".into(),
            reason: reason.to_string(),
            ..Default::default()
        })
        .await
    }

    /// Sends `request`, trying again while no coordinator answers; a
    /// refusal is final.
    async fn send(&self, request: MigrationReportRequest) -> Result<MigrationReportReply, String> {
        let deadline = tokio::time::Instant::now() + REPORT_BUDGET;
        let mut pause = Duration::from_millis(100);
        loop {
            let call = self.client.call_leader(|channel| {
                let request = request.clone();
                async move {
                    AgentClient::new(channel)
                        .report_migration(request)
                        .await
                        .map(|r| r.into_inner())
                }
            });
            let error = match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => match e.code() {
                    Some(
                        tonic::Code::InvalidArgument
                        | tonic::Code::FailedPrecondition
                        | tonic::Code::NotFound
                        | tonic::Code::PermissionDenied,
                    ) => return Err(e.to_string()),
                    _ => e.to_string(),
                },
                Err(_) => "timed out".to_string(),
            };
            if tokio::time::Instant::now() + pause > deadline {
                return Err(format!(
                    "no coordinator took the {} report: {error}",
                    request.action
                ));
            }
            tracing::debug!(migration = %request.id, %error, "migration report failed; trying again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}
