//! `herd cluster status|member|add|remove|replace`.

use clap::Subcommand;
use herd_api::proto::v1::cluster_client::ClusterClient;
use herd_api::proto::v1::{
    AddMemberRequest, ClusterStatusRequest, MemberStatusRequest, MembershipReply,
    RemoveMemberRequest, ReplaceMemberRequest,
};
use serde_json::json;

use super::Context;
use crate::exit::CliError;
use crate::output::{print_json, print_table};

/// Subcommands of `herd cluster`.
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// The leader's view: leader, term, members and their health.
    Status {
        /// Answer from the first coordinator's own state, without the leader.
        #[arg(long)]
        stale: bool,
    },
    /// The first --addr coordinator's own Raft state.
    Member,
    /// Add a coordinator (started with neither --bootstrap nor --join) as a voter.
    Add {
        /// Its member id.
        id: u64,
        /// Its address.
        #[arg(value_name = "ADDR")]
        member_addr: String,
    },
    /// Remove a voter.
    Remove {
        /// Its member id.
        id: u64,
    },
    /// Swap a voter for a new member (for a lost or wiped machine) in one change.
    Replace {
        /// The member leaving.
        old_id: u64,
        /// The new member's id (never the old one's).
        new_id: u64,
        /// The new member's address.
        new_addr: String,
    },
}

/// Runs a `herd cluster` subcommand.
pub async fn run(ctx: &Context, command: ClusterCommand) -> Result<(), CliError> {
    let client = ctx.client()?;
    match command {
        ClusterCommand::Status { stale } => {
            let status = client
                .call(|ch| async move {
                    ClusterClient::new(ch)
                        .status(ClusterStatusRequest { stale })
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
            if ctx.json() {
                let members: Vec<_> = status
                    .members
                    .iter()
                    .map(|m| {
                        json!({"id": m.id, "addr": m.addr, "healthy": m.healthy, "voter": m.voter,
                               "matched_index": m.matched_index})
                    })
                    .collect();
                print_json(
                    &json!({"leader": status.leader, "term": status.term, "cluster_id": status.cluster_id,
                                   "commit_index": status.commit_index, "members": members}),
                );
            } else {
                println!(
                    "cluster {}  leader {}  term {}  applied {}",
                    if status.cluster_id.is_empty() {
                        "(unnamed)"
                    } else {
                        &status.cluster_id
                    },
                    status.leader,
                    status.term,
                    status.commit_index
                );
                let rows: Vec<Vec<String>> = status
                    .members
                    .iter()
                    .map(|m| {
                        vec![
                            m.id.to_string(),
                            m.addr.clone(),
                            if m.id == status.leader {
                                "leader"
                            } else if m.voter {
                                "voter"
                            } else {
                                "learner"
                            }
                            .to_string(),
                            if m.healthy { "yes" } else { "NO" }.to_string(),
                            m.matched_index.map_or("-".to_string(), |i| i.to_string()),
                        ]
                    })
                    .collect();
                print_table(&["ID", "ADDRESS", "ROLE", "HEALTHY", "MATCHED"], &rows);
            }
        }
        ClusterCommand::Member => {
            // The digest (a hash of the whole state) only goes into JSON output.
            let with_digest = ctx.json();
            let report = client
                .call_one(0, |ch| async move {
                    ClusterClient::new(ch)
                        .member_status(MemberStatusRequest { with_digest })
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
            if ctx.json() {
                print_json(
                    &json!({"id": report.id, "cluster_id": report.cluster_id, "state": report.state,
                    "term": report.term, "leader": report.leader, "last_log_index": report.last_log_index,
                    "last_applied": report.last_applied, "snapshot_index": report.snapshot_index,
                    "purged_index": report.purged_index, "snapshots_installed": report.snapshots_installed,
                    "initialized": report.initialized, "state_digest": report.state_digest}),
                );
            } else {
                let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
                print_table(
                    &[
                        "ID", "STATE", "TERM", "LEADER", "LAST LOG", "APPLIED", "SNAPSHOT",
                        "PURGED",
                    ],
                    &[vec![
                        report.id.to_string(),
                        report.state.clone(),
                        report.term.to_string(),
                        opt(report.leader),
                        opt(report.last_log_index),
                        opt(report.last_applied),
                        opt(report.snapshot_index),
                        opt(report.purged_index),
                    ]],
                );
            }
        }
        ClusterCommand::Add { id, member_addr } => {
            let reply = client
                .call(|ch| {
                    let addr = member_addr.clone();
                    async move {
                        ClusterClient::new(ch)
                            .add_member(AddMemberRequest { id, addr })
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            print_membership(ctx, &format!("member {id} added"), &reply);
        }
        ClusterCommand::Remove { id } => {
            let reply = client
                .call(|ch| async move {
                    ClusterClient::new(ch)
                        .remove_member(RemoveMemberRequest { id })
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
            print_membership(ctx, &format!("member {id} removed"), &reply);
        }
        ClusterCommand::Replace {
            old_id,
            new_id,
            new_addr,
        } => {
            let reply = client
                .call(|ch| {
                    let new_addr = new_addr.clone();
                    async move {
                        ClusterClient::new(ch)
                            .replace_member(ReplaceMemberRequest {
                                old_id,
                                new_id,
                                new_addr,
                            })
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            print_membership(
                ctx,
                &format!("member {old_id} replaced by {new_id}"),
                &reply,
            );
        }
    }
    Ok(())
}

fn print_membership(ctx: &Context, what: &str, reply: &MembershipReply) {
    if ctx.json() {
        print_json(
            &json!({"voters": reply.voters, "cluster_id": reply.cluster_id, "log_index": reply.log_index}),
        );
    } else {
        println!(
            "{what}; voters now {:?} (log index {})",
            reply.voters, reply.log_index
        );
    }
}
