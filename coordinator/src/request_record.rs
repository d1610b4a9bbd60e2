//! Which client request last changed a job, kept so that its request id
//! follows the job past the coordinator that received it: the leader logs
//! it when it places the job, and agents get it with the allocations they
//! run (`AssignedAllocation.request_id`). One `grep` for the id over every
//! process's logs then tells the story of a submission (docs/logging.md).
//!
//! The record is the variable `herd/request/<job>` (JSON,
//! [`JobRequest`]), written just before the job's own command. A variable,
//! not a new record or command: members of the previous release read
//! variables already, so the record needs no new log format during a
//! rolling upgrade (docs/durability.md). Written first, it is in the state
//! before any placement of the version it names; the version is known by
//! order: the record applies to the job's version when the record's write
//! precedes the write of that version (`modify_index`). A resubmission
//! that changes nothing writes a later record, which then names no version
//! (the version was another request's). Two clients changing one job at
//! the same moment may see one id for both versions: the record is for
//! logs, and nothing decides by it.

use herd_api::request_id::RequestId;
use serde::{Deserialize, Serialize};

use crate::machine::command::Command;
use crate::state::ClusterState;

/// Prefix of the records; keys under `herd/` are herd's own, read-only to
/// clients.
pub const KEY_PREFIX: &str = "herd/request/";

/// The variable holding `job`'s record.
pub fn key(job: &str) -> String {
    format!("{KEY_PREFIX}{job}")
}

/// What a client did to the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// `herd job run`: a new job or version.
    Submit,
    /// `herd job stop`.
    Stop,
}

/// The request that last changed a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    /// Its id, as the client sent it (or as the receiving member made it).
    pub request_id: RequestId,
    /// What it did.
    pub action: Action,
    /// When the receiving member took it, ms since the epoch.
    pub at_ms: u64,
    /// The record this one replaced, so that a request that changed
    /// nothing (a resubmission of the same spec) does not hide the one
    /// that made the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousRequest>,
}

/// The request a [`JobRequest`] replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousRequest {
    /// Its id.
    pub request_id: RequestId,
    /// The log index its record was written at.
    pub written_at: u64,
}

impl JobRequest {
    /// A record of request `id` doing `action` now, after whatever record
    /// `state` holds for `job`.
    pub fn new(
        state: &ClusterState,
        job: &str,
        id: RequestId,
        action: Action,
        now_ms: u64,
    ) -> Self {
        let previous = state.variables.get(&key(job)).and_then(|record| {
            let replaced = serde_json::from_slice::<JobRequest>(&record.value).ok()?;
            Some(PreviousRequest {
                request_id: replaced.request_id,
                written_at: record.modify_index,
            })
        });
        Self {
            request_id: id,
            action,
            at_ms: now_ms,
            previous,
        }
    }
}

/// The command that records `request` for `job`, to be written before the
/// job's own command.
pub fn record_command(job: &str, request: &JobRequest) -> Result<Command, serde_json::Error> {
    let value = serde_json::to_vec(request)?;
    Ok(crate::machine::next_format::put_variable(
        key(job),
        value,
        None,
    ))
}

/// The request that made `job`'s current version: the newest record
/// written before the version (the record there, or the one it replaced).
pub fn of_current_version(state: &ClusterState, job: &str) -> Option<RequestId> {
    let current = state.jobs.get(job)?;
    let record = state.variables.get(&key(job))?;
    let request = serde_json::from_slice::<JobRequest>(&record.value).ok()?;
    if record.modify_index < current.modify_index {
        return Some(request.request_id);
    }
    request
        .previous
        .filter(|previous| previous.written_at < current.modify_index)
        .map(|previous| previous.request_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::command::CommandResult;
    use crate::testkit::{run, spec};
    use herd_api::job::JobType;

    fn request(state: &ClusterState, id: &str) -> JobRequest {
        let id = RequestId::parse(id).expect("id");
        JobRequest::new(state, "web", id, Action::Submit, 1)
    }

    fn submit(state: &mut ClusterState, index: u64, count: u32) -> CommandResult {
        run(
            state,
            index,
            Command::SubmitJob {
                spec: spec("web", JobType::Service, count),
                now_ms: 1,
            },
        )
        .0
    }

    #[test]
    fn a_record_names_the_version_written_after_it_and_no_later_one() {
        let mut state = ClusterState::default();
        assert_eq!(of_current_version(&state, "web"), None, "no job");
        let record =
            |state: &ClusterState, id| record_command("web", &request(state, id)).expect("record");
        let command = record(&state, "cli-1");
        run(&mut state, 1, command);
        assert_eq!(of_current_version(&state, "web"), None, "no job yet");
        submit(&mut state, 2, 1);
        assert_eq!(
            of_current_version(&state, "web").map(|id| id.to_string()),
            Some("cli-1".to_string())
        );
        // A resubmission that changes nothing: the version stays cli-1's.
        let command = record(&state, "cli-2");
        run(&mut state, 3, command);
        assert!(matches!(
            submit(&mut state, 4, 1),
            CommandResult::JobSubmitted { changed: false, .. }
        ));
        assert_eq!(
            of_current_version(&state, "web").map(|id| id.to_string()),
            Some("cli-1".to_string()),
            "cli-2 made no version: it stays cli-1's"
        );
        // A change: the new version is cli-3's.
        let command = record(&state, "cli-3");
        run(&mut state, 5, command);
        submit(&mut state, 6, 2);
        assert_eq!(
            of_current_version(&state, "web").map(|id| id.to_string()),
            Some("cli-3".to_string())
        );
        // A record that is not ours reads as none rather than failing.
        run(
            &mut state,
            7,
            crate::machine::next_format::put_variable(key("web"), b"not json".to_vec(), None),
        );
        submit(&mut state, 8, 3);
        assert_eq!(of_current_version(&state, "web"), None);
    }
}
