//! The leader as a [`Cluster`] for the apply engine: reads from its own
//! applied state, starts migrations as decisions fenced by its term
//! (`Command::StartMigration`, decided by the same `start_migration` as
//! `Migrations.Start`), and ends the run as soon as it no longer leads that
//! term.

use std::sync::Arc;

use herd_api::migration::MigrationPhase;

use super::apply::{Cluster, Phase, Poll, Started};
use super::plan::LiveMove;
use crate::coordinator::Coordinator;
use crate::error::CoordinatorError;
use crate::machine::command::{Command, CommandResult, Rejection};

/// Why the leader stopped a run.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Leadership moved on: the new leader's own loops carry on.
    #[error("member {member} no longer leads term {term}")]
    NotLeading {
        /// This member.
        member: u64,
        /// The term the run was decided in.
        term: u64,
    },
    /// A write failed for another reason (its outcome may be unknown).
    #[error("{0}")]
    Write(String),
}

/// The leader of `term`, moving work with `downtime_limit_ms` per move.
pub struct LeaderCluster {
    coordinator: Arc<Coordinator>,
    term: u64,
    downtime_limit_ms: u64,
    bandwidth_bytes_per_sec: Option<u64>,
}

impl LeaderCluster {
    /// The leader of `term` on `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>, term: u64, downtime_limit_ms: u64) -> Self {
        Self {
            coordinator,
            term,
            downtime_limit_ms,
            bandwidth_bytes_per_sec: None,
        }
    }

    /// The same, capping each move's transfer at `bytes_per_sec`.
    pub fn with_bandwidth(mut self, bytes_per_sec: Option<u64>) -> Self {
        self.bandwidth_bytes_per_sec = bytes_per_sec;
        self
    }

    /// Err unless this member still leads the run's term.
    pub fn check(&self) -> Result<(), LeaderError> {
        if self.coordinator.leading_term() == Some(self.term) {
            Ok(())
        } else {
            Err(LeaderError::NotLeading {
                member: self.coordinator.id(),
                term: self.term,
            })
        }
    }
}

impl Cluster for LeaderCluster {
    type Error = LeaderError;

    async fn node_of(&self, alloc_id: &str) -> Result<Option<String>, LeaderError> {
        self.check()?;
        Ok(self
            .coordinator
            .read_state(|s| s.allocations.get(alloc_id).map(|a| a.node.clone())))
    }

    async fn start(&self, m: &LiveMove) -> Result<Result<Started, String>, LeaderError> {
        self.check()?;
        let command = Command::StartMigration {
            alloc_id: m.alloc_id.clone(),
            target: m.target.clone(),
            downtime_limit_ms: self.downtime_limit_ms,
            bandwidth_bytes_per_sec: self.bandwidth_bytes_per_sec,
            now_ms: 0,
        };
        match self.coordinator.decide_as_leader(self.term, command).await {
            Ok(written) => match written.result {
                CommandResult::MigrationUpdated { id, .. } => Ok(Ok(Started {
                    id,
                    source: m.source.clone(),
                    target: m.target.clone(),
                })),
                other => Err(LeaderError::Write(format!(
                    "unexpected result of a migration start: {other:?}"
                ))),
            },
            Err(CoordinatorError::Rejected(Rejection::Migration(why))) => {
                Ok(Err(format!("cannot migrate: {why}")))
            }
            Err(CoordinatorError::Rejected(Rejection::StaleLeader { .. })) => {
                Err(LeaderError::NotLeading {
                    member: self.coordinator.id(),
                    term: self.term,
                })
            }
            Err(CoordinatorError::Rejected(other)) => Ok(Err(other.to_string())),
            Err(e) => {
                self.check()?;
                Err(LeaderError::Write(e.to_string()))
            }
        }
    }

    async fn poll(&self, id: &str) -> Result<Poll, LeaderError> {
        self.check()?;
        Ok(self.coordinator.read_state(|s| match s.migrations.get(id) {
            None => Poll::Unreachable(format!("migration {id} is not in the state")),
            Some(m) => Poll::Phase(match m.phase {
                MigrationPhase::Completed => Phase::Completed {
                    downtime_ms: m.downtime_ms.unwrap_or(0),
                },
                MigrationPhase::Aborted => Phase::Aborted {
                    why: m
                        .error
                        .clone()
                        .unwrap_or_else(|| "no reason given".to_string()),
                },
                _ => Phase::Running,
            }),
        }))
    }
}
