//! The records a run ends with, once its faults healed and the cluster
//! converged: a linearizable read of every register key (a lost
//! acknowledged write shows there at the latest), then the jobs and the
//! allocations as the cluster lists them, for the job and drain checkers.
//! `chaos run` and the simulation (`chaos/sim`) both end with them.

use std::time::Duration;

use herd_api::client::HerdClient;
use herd_api::proto::v1::allocs_client::AllocsClient;
use herd_api::proto::v1::jobs_client::JobsClient;
use herd_api::proto::v1::{ListAllocsRequest, ListJobsRequest};

use crate::history::{FinalAlloc, FinalJob, Op, OpKind, Record};
use crate::workload::{self, Recorder};

/// Reads every key in `keys`, lists jobs and allocations through `client`,
/// and records all of it into `recorder` (a list that cannot be read is
/// recorded as such, and its checker says it could not decide).
pub async fn record(client: &HerdClient, keys: &[String], recorder: &Recorder) {
    for key in keys {
        let invoke_ns = recorder.now_ns();
        let answer = workload::register_op(client, 0, OpKind::Read, key, None, None).await;
        recorder.push(Record::Op(Op {
            id: recorder.next_id(),
            process: 0,
            kind: OpKind::Read,
            key: key.clone(),
            value: answer.1,
            expected: None,
            version: answer.2,
            invoke_ns,
            complete_ns: recorder.now_ns(),
            outcome: answer.0,
            error: answer.3,
            member: workload::member_id(0),
        }));
    }
    let jobs = tokio::time::timeout(
        Duration::from_secs(5),
        client.call(|ch| async move {
            JobsClient::new(ch)
                .list(ListJobsRequest { stale: false })
                .await
                .map(|r| r.into_inner())
        }),
    )
    .await;
    let jobs = match jobs {
        Ok(Ok(reply)) => Some(
            reply
                .jobs
                .into_iter()
                .filter_map(|j| {
                    j.spec.map(|s| FinalJob {
                        name: s.name,
                        status: j.status,
                    })
                })
                .collect(),
        ),
        _ => None,
    };
    recorder.push(Record::FinalJobs { jobs });
    let allocs = tokio::time::timeout(
        Duration::from_secs(5),
        client.call(|ch| async move {
            AllocsClient::new(ch)
                .list(ListAllocsRequest {
                    job: String::new(),
                    stale: false,
                })
                .await
                .map(|r| r.into_inner())
        }),
    )
    .await;
    let allocs = match allocs {
        Ok(Ok(reply)) => Some(
            reply
                .allocs
                .into_iter()
                .map(|a| FinalAlloc {
                    id: a.id,
                    job: a.job,
                    node: a.node,
                    create_index: a.create_index,
                    generation: Some(a.generation),
                })
                .collect(),
        ),
        _ => None,
    };
    recorder.push(Record::FinalAllocs { allocs });
}
