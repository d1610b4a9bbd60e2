//! Requests only the leader can serve, as they travel from another member.

use serde::{Deserialize, Serialize};

use crate::machine::command::{Command, CommandResult};

/// A request that must run on the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
// Short-lived (one per write, moved once): boxing the command would cost an
// allocation per write to save bytes on the stack.
#[allow(clippy::large_enum_variant)]
pub enum LeaderRequest {
    /// Propose a command.
    Write(Command),
    /// Propose several commands (a follower's forwarded batch).
    WriteBatch(Vec<Command>),
    /// Add a coordinator as a voter (after catching it up as a learner).
    AddMember {
        /// Its Raft id.
        id: u64,
        /// Its gRPC address.
        addr: String,
    },
    /// Remove a voter.
    RemoveMember {
        /// Its Raft id.
        id: u64,
    },
    /// Swap a voter for another in one membership change.
    ReplaceMember {
        /// Member leaving.
        old_id: u64,
        /// Member arriving.
        new_id: u64,
        /// Address of the arriving member.
        new_addr: String,
    },
    /// The leader's view of the cluster.
    Status,
}

/// The leader's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderReply {
    /// A committed and applied command.
    Written(Written),
    /// One result per command of a `WriteBatch`, in order.
    WrittenBatch(Vec<Result<Written, ForwardError>>),
    /// The voters after a membership change.
    Membership {
        /// Voter ids now in force.
        voters: Vec<u64>,
        /// Log index of the change.
        log_index: u64,
    },
    /// Cluster status.
    Status(StatusView),
}

/// A command's fate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// What apply returned.
    pub result: CommandResult,
    /// Where the command sits in the log.
    pub log_index: u64,
}

/// The cluster as the leader sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    /// Leader id.
    pub leader: u64,
    /// Current term.
    pub term: u64,
    /// Cluster id, once set.
    pub cluster_id: String,
    /// Commit index known to the leader.
    pub commit_index: u64,
    /// Voters and learners.
    pub members: Vec<MemberView>,
}

/// One member in a [`StatusView`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    /// Raft id.
    pub id: u64,
    /// gRPC address.
    pub addr: String,
    /// Answered the leader recently.
    pub healthy: bool,
    /// Votes (false for learners).
    pub voter: bool,
    /// Log index the leader knows it holds.
    pub matched_index: Option<u64>,
}

/// Why a forwarded request was not served.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardError {
    /// The receiver is not (or no longer) the leader: ask again.
    NotLeader,
    /// The receiver is not in any cluster.
    NotMember {
        /// Its id.
        id: u64,
    },
    /// A membership change was refused.
    Membership(String),
    /// Anything else; the outcome of a write is then unknown.
    Failed(String),
}
