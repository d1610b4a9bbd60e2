//! Membership changes, run on the leader: add (learner first, then voter),
//! remove, and replace in one joint change.

use std::collections::BTreeSet;

use openraft::{BasicNode, ChangeMembers};

use crate::coordinator::Coordinator;
use crate::routing::forward::{ForwardError, LeaderReply};
use crate::routing::propose::write_error;

impl Coordinator {
    pub(crate) fn voters(&self) -> BTreeSet<u64> {
        self.metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    fn membership_reply(&self, log_index: u64) -> LeaderReply {
        LeaderReply::Membership {
            voters: self.voters().into_iter().collect(),
            log_index,
        }
    }

    pub(crate) async fn add_member(
        &self,
        id: u64,
        addr: String,
    ) -> Result<LeaderReply, ForwardError> {
        if id == 0 {
            return Err(ForwardError::Membership("member id 0 is reserved".into()));
        }
        if self.voters().contains(&id) {
            return match self.member_addr(id) {
                Some(existing) if existing == addr => Ok(self.membership_reply(self.metrics().last_log_index.unwrap_or(0))),
                Some(existing) => Err(ForwardError::Membership(format!(
                    "member {id} already exists at {existing}; to move it use `herd cluster replace {id} NEW_ID NEW_ADDR`"
                ))),
                None => Err(ForwardError::Membership(format!("member {id} already exists"))),
            };
        }
        tracing::info!(member = id, %addr, "adding learner, then promoting to voter");
        self.raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map_err(write_error)?;
        let response = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        Ok(self.membership_reply(response.log_id.index))
    }

    pub(crate) async fn remove_member(&self, id: u64) -> Result<LeaderReply, ForwardError> {
        let voters = self.voters();
        if !voters.contains(&id) {
            return Err(ForwardError::Membership(format!(
                "member {id} is not a voter (voters: {voters:?})"
            )));
        }
        if voters.len() == 1 {
            return Err(ForwardError::Membership(
                "cannot remove the last voter".into(),
            ));
        }
        tracing::info!(member = id, "removing voter");
        let response = self
            .raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        Ok(self.membership_reply(response.log_id.index))
    }

    pub(crate) async fn replace_member(
        &self,
        old_id: u64,
        new_id: u64,
        new_addr: String,
    ) -> Result<LeaderReply, ForwardError> {
        let voters = self.voters();
        if !voters.contains(&old_id) {
            return Err(ForwardError::Membership(format!(
                "member {old_id} is not a voter (voters: {voters:?})"
            )));
        }
        if old_id == new_id {
            return Err(ForwardError::Membership(
                "a replacement needs a new member id: a wiped member must not reuse its old id, or it could vote twice in one term"
                    .into(),
            ));
        }
        if voters.contains(&new_id) {
            return Err(ForwardError::Membership(format!(
                "member {new_id} is already a voter"
            )));
        }
        tracing::info!(old = old_id, new = new_id, addr = %new_addr, "replacing member");
        self.raft
            .add_learner(new_id, BasicNode::new(new_addr), true)
            .await
            .map_err(write_error)?;
        let mut next = voters;
        next.remove(&old_id);
        next.insert(new_id);
        let response = self
            .raft
            .change_membership(ChangeMembers::ReplaceAllVoters(next), false)
            .await
            .map_err(write_error)?;
        Ok(self.membership_reply(response.log_id.index))
    }
}
