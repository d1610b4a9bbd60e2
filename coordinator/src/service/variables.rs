//! Variables: replicated registers with compare-and-set.

use std::sync::Arc;

use herd_api::proto::v1 as pb;
use herd_api::proto::v1::variables_server::Variables;
use tonic::{Request, Response, Status};

use super::consistency;
use crate::command::{Command, CommandResult, Rejection};
use crate::error::CoordinatorError;
use crate::handle::Coordinator;

/// Serves [`Variables`].
pub struct VariablesService {
    coordinator: Arc<Coordinator>,
}

impl VariablesService {
    /// Serves `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

#[tonic::async_trait]
impl Variables for VariablesService {
    async fn put(
        &self,
        request: Request<pb::PutVariableRequest>,
    ) -> Result<Response<pb::PutVariableReply>, Status> {
        let pb::PutVariableRequest {
            key,
            value,
            expected_version,
        } = request.into_inner();
        let command = Command::PutVariable {
            key,
            value,
            expected_version,
        };
        match self.coordinator.write(command).await {
            Ok(written) => match written.result {
                CommandResult::VariablePut { version } => Ok(Response::new(pb::PutVariableReply {
                    ok: true,
                    version,
                    log_index: written.log_index,
                })),
                other => {
                    Err(CoordinatorError::Internal(format!("unexpected result {other:?}")).into())
                }
            },
            // A failed compare-and-set is an answer, not an error.
            Err(CoordinatorError::Rejected(Rejection::VersionMismatch { actual, .. })) => {
                Ok(Response::new(pb::PutVariableReply {
                    ok: false,
                    version: actual,
                    log_index: 0,
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn get(
        &self,
        request: Request<pb::GetVariableRequest>,
    ) -> Result<Response<pb::GetVariableReply>, Status> {
        let request = request.into_inner();
        self.coordinator
            .read_barrier(consistency(request.stale))
            .await?;
        let reply = self
            .coordinator
            .read_state(|s| match s.variables.get(&request.key) {
                Some(v) => pb::GetVariableReply {
                    found: true,
                    value: v.value.clone(),
                    version: v.version,
                },
                None => pb::GetVariableReply::default(),
            });
        Ok(Response::new(reply))
    }
}
