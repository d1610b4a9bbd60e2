//! Sends the supervisor's allocation reports to the coordinators, batched,
//! in order, retried until they are taken: a report is never dropped while
//! coordinators are away, only delayed. The one report ever dropped is one
//! a coordinator says it cannot read (sending it again could not help); the
//! others of its batch are delivered all the same.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use herd_actors::workload::AllocReport;
use herd_api::client::HerdClient;
use herd_api::proto::agent::agent_client::AgentClient;
use herd_api::proto::agent::{
    AllocReport as ProtoReport, ReportAllocationsReply, ReportAllocationsRequest,
};
use tokio::sync::{mpsc, Mutex};

/// Most reports sent in one request (the coordinators accept 1024).
const BATCH: usize = 256;
/// Longest a report request may take before it is tried again.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait before a failed request is sent again; doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between two tries of a request no coordinator answered.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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

/// How one request of reports ended.
enum Delivery {
    /// A coordinator took the request (each report applied or refused).
    Taken(ReportAllocationsReply),
    /// A coordinator refused the whole request as malformed: an older
    /// release that fails a request on one report it cannot read.
    Refused(String),
    /// No coordinator answered; try again later.
    Failed(String),
}

async fn deliver(node: &str, client: &HerdClient, batch: &[ProtoReport]) -> Delivery {
    let request = ReportAllocationsRequest {
        node: node.to_string(),
        reports: batch.to_vec(),
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
        Ok(Ok(reply)) => Delivery::Taken(reply),
        Ok(Err(e)) => match e.code() {
            Some(tonic::Code::InvalidArgument) => Delivery::Refused(e.to_string()),
            _ => Delivery::Failed(e.to_string()),
        },
        Err(_) => Delivery::Failed("timed out".to_string()),
    }
}

/// Says once what became of the reports a coordinator took: a report it
/// could not read is dropped, never sent again (it would be refused again),
/// so it is logged as a warning; reports refused as stale (an allocation
/// moved or ended meanwhile) are routine.
fn log_taken(reply: &ReportAllocationsReply) {
    for bad in &reply.malformed {
        tracing::warn!(
            alloc = %bad.id,
            generation = bad.generation,
            reason = %bad.reason,
            "the coordinators cannot read this allocation report (an older release?); dropping it"
        );
    }
    for refused in &reply.refused {
        tracing::debug!(%refused, "coordinators refused an allocation report");
    }
    tracing::debug!(accepted = reply.accepted, "allocation reports delivered");
}

/// How often reports held back are looked at again.
const HELD_RECHECK: Duration = Duration::from_secs(1);
/// The most reports held back; beyond it the oldest is dropped.
const MAX_HELD: usize = 1024;

/// Moves out of `batch` into `held` the reports the journal says must wait
/// ([`crate::migrate::offline::report_withheld`]): the report of a copy
/// that stopped because it moved away agent to agent while the coordinators
/// were away must not reach them before they decided on the move (it would
/// read as the work ending).
fn hold_back(
    journal: &crate::balance::journal::MoveJournal,
    batch: &mut Vec<ProtoReport>,
    held: &mut Vec<ProtoReport>,
) {
    let (wait, send): (Vec<_>, Vec<_>) = std::mem::take(batch)
        .into_iter()
        .partition(|r| crate::migrate::offline::report_withheld(journal, &r.id, r.generation));
    for r in &wait {
        tracing::debug!(alloc = %r.id, generation = r.generation, status = %r.status, "report of a copy moved away with the coordinators absent: held back");
    }
    held.extend(wait);
    if held.len() > MAX_HELD {
        let excess = held.len() - MAX_HELD;
        tracing::warn!(
            excess,
            "too many allocation reports held back; dropping the oldest"
        );
        held.drain(..excess);
    }
    *batch = send;
}

/// Moves back into `batch` the held reports the journal no longer holds
/// back: the coordinators refused the move (the report tells them the copy
/// here stopped) or took it (the report is then refused by its old
/// generation, harmlessly).
fn release_held(
    journal: &crate::balance::journal::MoveJournal,
    held: &mut Vec<ProtoReport>,
    batch: &mut Vec<ProtoReport>,
) {
    let (still, free): (Vec<_>, Vec<_>) = std::mem::take(held)
        .into_iter()
        .partition(|r| crate::migrate::offline::report_withheld(journal, &r.id, r.generation));
    *held = still;
    batch.extend(free);
}

/// Runs until the channel closes: takes reports as they come and delivers
/// them. Holds the receiver's lock for its whole life, so a restarted link
/// picks up exactly where this one stopped.
///
/// A request refused whole as malformed (`InvalidArgument`, how an older
/// coordinator answers one report it cannot read) is split in two and each
/// half sent again, in order, down to the single report at fault, which is
/// dropped with a warning: one report a coordinator cannot read never costs
/// the others of its batch, and is never sent forever.
///
/// With a move `journal`, a report about an allocation this node moved
/// away agent to agent while the coordinators were away is held back until
/// they decided on the move ([`hold_back`]).
pub async fn run(
    node: String,
    client: HerdClient,
    reports: Arc<Mutex<mpsc::UnboundedReceiver<AllocReport>>>,
    journal: Option<crate::balance::journal::MoveJournal>,
) {
    let mut reports = reports.lock().await;
    // Requests to send, oldest first: splitting a refused one keeps order.
    let mut queue: VecDeque<Vec<ProtoReport>> = VecDeque::new();
    // Reports held back while the journal says their copy moved away.
    let mut held: Vec<ProtoReport> = Vec::new();
    let mut backoff = FIRST_BACKOFF;
    loop {
        if queue.is_empty() {
            let mut batch = Vec::new();
            if let Some(journal) = &journal {
                release_held(journal, &mut held, &mut batch);
            }
            if batch.is_empty() {
                let next = if held.is_empty() {
                    reports.recv().await
                } else {
                    match tokio::time::timeout(HELD_RECHECK, reports.recv()).await {
                        Ok(next) => next,
                        Err(_) => continue,
                    }
                };
                match next {
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
            queue.push_back(batch);
        }
        let Some(mut batch) = queue.pop_front() else {
            continue;
        };
        if let Some(journal) = &journal {
            hold_back(journal, &mut batch, &mut held);
            if batch.is_empty() {
                continue;
            }
        }
        match deliver(&node, &client, &batch).await {
            Delivery::Taken(reply) => {
                log_taken(&reply);
                backoff = FIRST_BACKOFF;
            }
            Delivery::Refused(error) if batch.len() > 1 => {
                tracing::debug!(
                    reports = batch.len(),
                    %error,
                    "coordinators refused a report batch whole; sending it in halves"
                );
                let mut first = batch;
                let second = first.split_off(first.len() / 2);
                queue.push_front(second);
                queue.push_front(first);
            }
            Delivery::Refused(error) => {
                if let Some(report) = batch.first() {
                    tracing::warn!(
                        alloc = %report.id,
                        generation = report.generation,
                        status = %report.status,
                        event = %report.event,
                        %error,
                        "the coordinators cannot read this allocation report (an older release?); dropping it"
                    );
                }
            }
            Delivery::Failed(error) => {
                tracing::debug!(%error, "cannot deliver allocation reports; retrying");
                queue.push_front(batch);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use herd_api::alloc::AllocStatus;
    use herd_api::proto::agent::agent_server::{Agent, AgentServer};
    use herd_api::proto::agent::{
        AssignedAllocations, HeartbeatReply, HeartbeatRequest, MalformedReport, RegisterNodeReply,
        RegisterNodeRequest, WatchAllocationsRequest,
    };
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status};

    use super::*;

    /// How the fake coordinator answers a report it does not know.
    #[derive(Clone, Copy)]
    enum Release {
        /// Fails the whole request, as coordinators before per-report
        /// refusal did.
        Old,
        /// Refuses that report alone and applies the others.
        Current,
    }

    /// A coordinator that does not know the status "stopped" (as an older
    /// release would not know a status added later) and records what it
    /// took and every request it got.
    struct FakeCoordinator {
        release: Release,
        applied: Arc<StdMutex<Vec<String>>>,
        requests: Arc<StdMutex<Vec<Vec<String>>>>,
    }

    type Stream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<AssignedAllocations, Status>> + Send>>;

    #[tonic::async_trait]
    impl Agent for FakeCoordinator {
        async fn register(
            &self,
            _: Request<RegisterNodeRequest>,
        ) -> Result<Response<RegisterNodeReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn heartbeat(
            &self,
            _: Request<HeartbeatRequest>,
        ) -> Result<Response<HeartbeatReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        type WatchAllocationsStream = Stream;
        async fn watch_allocations(
            &self,
            _: Request<WatchAllocationsRequest>,
        ) -> Result<Response<Stream>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn report_migration(
            &self,
            _: Request<herd_api::proto::agent::MigrationReportRequest>,
        ) -> Result<Response<herd_api::proto::agent::MigrationReportReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn report_offline_move(
            &self,
            _: Request<herd_api::proto::agent::OfflineMoveReport>,
        ) -> Result<Response<herd_api::proto::agent::OfflineMoveVerdict>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn acl_table(
            &self,
            _: Request<herd_api::proto::agent::AclTableRequest>,
        ) -> Result<Response<herd_api::proto::agent::AclTableReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn report_allocations(
            &self,
            request: Request<ReportAllocationsRequest>,
        ) -> Result<Response<ReportAllocationsReply>, Status> {
            let reports = request.into_inner().reports;
            self.requests
                .lock()
                .expect("lock")
                .push(reports.iter().map(|r| r.id.clone()).collect());
            let unknown = |r: &ProtoReport| r.status == "stopped";
            let mut reply = ReportAllocationsReply::default();
            match self.release {
                Release::Old => {
                    if let Some(bad) = reports.iter().find(|r| unknown(r)) {
                        return Err(Status::invalid_argument(format!(
                            "report for {}: field `status`: unknown status",
                            bad.id
                        )));
                    }
                }
                Release::Current => {
                    for (position, bad) in reports.iter().enumerate().filter(|(_, r)| unknown(r)) {
                        reply.malformed.push(MalformedReport {
                            position: position as u32,
                            id: bad.id.clone(),
                            generation: bad.generation,
                            reason: "field `status`: unknown status".into(),
                        });
                        reply.refused.push(format!("{}: unknown status", bad.id));
                    }
                }
            }
            let mut applied = self.applied.lock().expect("lock");
            for report in reports.iter().filter(|r| !unknown(r)) {
                applied.push(report.id.clone());
                reply.accepted += 1;
            }
            Ok(Response::new(reply))
        }
    }

    struct Run {
        applied: Arc<StdMutex<Vec<String>>>,
        requests: Arc<StdMutex<Vec<Vec<String>>>>,
    }

    /// Sends `statuses` (allocation `a{i}` for the i-th) in one batch to a
    /// fake coordinator of `release`, and waits until the sender is idle.
    async fn deliver_to(release: Release, statuses: &[AllocStatus]) -> Run {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let applied = Arc::new(StdMutex::new(Vec::new()));
        let requests = Arc::new(StdMutex::new(Vec::new()));
        let fake = FakeCoordinator {
            release,
            applied: applied.clone(),
            requests: requests.clone(),
        };
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentServer::new(fake))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let (tx, rx) = mpsc::unbounded_channel();
        // All queued before the sender starts: they travel as one batch.
        for (i, status) in statuses.iter().enumerate() {
            let report = AllocReport::new(&format!("a{i}"), 1, *status, "event", "", None);
            tx.send(report).expect("queue");
        }
        let client = HerdClient::new(&[addr.to_string()]).expect("client");
        let sender = tokio::spawn(run("n1".into(), client, Arc::new(Mutex::new(rx)), None));
        let expected = statuses
            .iter()
            .filter(|s| **s != AllocStatus::Stopped)
            .count();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while applied.lock().expect("lock").len() < expected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "reports not delivered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Time for any resend that should not happen.
        tokio::time::sleep(Duration::from_millis(700)).await;
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), sender).await;
        server.abort();
        Run { applied, requests }
    }

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    const BATCH_WITH_ONE_UNKNOWN: [AllocStatus; 5] = [
        AllocStatus::Running,
        AllocStatus::Running,
        AllocStatus::Stopped,
        AllocStatus::Running,
        AllocStatus::Complete,
    ];

    #[tokio::test]
    async fn an_old_coordinator_refusing_a_batch_whole_still_gets_its_good_reports_in_order() {
        let run = deliver_to(Release::Old, &BATCH_WITH_ONE_UNKNOWN).await;
        assert_eq!(
            *run.applied.lock().expect("lock"),
            ids(&["a0", "a1", "a3", "a4"]),
            "every report it can read is delivered, in order"
        );
        let requests = run.requests.lock().expect("lock");
        let tries_of_bad = requests.iter().filter(|r| r.contains(&"a2".into())).count();
        // The batch, then the half holding a2, and so on down to a2 alone.
        assert!(
            tries_of_bad <= 3,
            "a2 sent {tries_of_bad} times: {requests:?}"
        );
        assert_eq!(
            requests.last().map(Vec::len),
            Some(2),
            "nothing is sent after the last good half: {requests:?}"
        );
    }

    #[tokio::test]
    async fn a_report_refused_as_malformed_is_sent_once_and_the_rest_applied() {
        let run = deliver_to(Release::Current, &BATCH_WITH_ONE_UNKNOWN).await;
        assert_eq!(
            *run.applied.lock().expect("lock"),
            ids(&["a0", "a1", "a3", "a4"])
        );
        assert_eq!(
            *run.requests.lock().expect("lock"),
            vec![ids(&["a0", "a1", "a2", "a3", "a4"])],
            "one request, never sent again"
        );
    }
}
