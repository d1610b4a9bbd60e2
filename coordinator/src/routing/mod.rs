//! How any member serves any request: leader-only work forwarded to the
//! leader (writes packed into one call), commands group-committed into one
//! Raft entry, linearizable reads through a batched read-index, a member's
//! doubts about its leader, and membership changes.

pub mod batch;
pub mod forward;
pub mod leader_link;
pub mod leadership;
pub mod membership;
pub mod propose;
pub mod read_index;
pub mod status;
