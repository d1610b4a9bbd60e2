//! The coordinator's gRPC services, all served on one port.

mod agent;
mod allocs;
mod cluster;
mod internal;
mod jobs;
mod migration_report;
mod migrations;
mod nodes;
mod offline_move;
mod operator;
mod power;
mod reschedule;
mod variables;

use std::sync::Arc;

use herd_api::limits::Limits;
use herd_api::proto::agent::agent_server::AgentServer;
use herd_api::proto::internal::internal_server::InternalServer;
use herd_api::proto::v1::allocs_server::AllocsServer;
use herd_api::proto::v1::cluster_server::ClusterServer;
use herd_api::proto::v1::jobs_server::JobsServer;
use herd_api::proto::v1::migrations_server::MigrationsServer;
use herd_api::proto::v1::nodes_server::NodesServer;
use herd_api::proto::v1::power_server::PowerServer;
use herd_api::proto::v1::variables_server::VariablesServer;
use herd_api::request_id::RequestIdLayer;
use herd_consensus::codec::MAX_DECODED_BYTES;
use herd_metrics::limits::WithLimits;
use tonic::transport::server::Router;

use herd_api::tls::{roles_only, PeerRole};

use crate::acl::guard;
use crate::coordinator::{Coordinator, ReadConsistency};

/// Largest client request accepted and response sent (job specs are small;
/// this bounds abuse; clients decode at most tonic's default, the same 4 MiB).
const MAX_CLIENT_MESSAGE: usize = 4 * 1024 * 1024;

/// The layer stack of the coordinator's server: counted, limited, then
/// given a request id ([`herd_api::request_id`]) that every log line of
/// the call carries.
pub type WithRequestIds = tower_layer::Stack<RequestIdLayer, WithLimits>;

fn consistency(stale: bool) -> ReadConsistency {
    if stale {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    }
}

/// Every service of a coordinator, ready to serve: each client and agent
/// service behind [`guard`] (tokens and roles, once bootstrapped); the
/// coordinator-to-coordinator service unguarded (docs/security.md).
/// Every call is counted for the metrics (`herd_metrics` layer), then held
/// to `limits` (`crate::limits`; refusals are counted too), then runs in a
/// span naming its request id.
///
/// Under mutual TLS (`herd_api::tls`) Raft serves coordinators' certificates
/// only and the agent service node agents' only (each speaking for the node
/// its certificate names); client services take any certificate of the
/// cluster's CA, and tokens say what each caller may do.
pub fn router(coordinator: Arc<Coordinator>, limits: &Limits) -> Router<WithRequestIds> {
    let raft_limit = MAX_DECODED_BYTES as usize;
    crate::limits::server(limits)
        .layer(coordinator.instruments().grpc.layer())
        .layer(crate::limits::rate_layer(&coordinator, limits))
        .layer(RequestIdLayer)
        .add_service(roles_only(
            &[PeerRole::Coordinator],
            InternalServer::new(internal::InternalService::new(coordinator.clone()))
                .max_decoding_message_size(raft_limit)
                .max_encoding_message_size(raft_limit),
        ))
        .add_service(guard(
            &coordinator,
            ClusterServer::new(cluster::ClusterService::new(coordinator.clone()))
                .max_decoding_message_size(MAX_CLIENT_MESSAGE)
                .max_encoding_message_size(MAX_CLIENT_MESSAGE),
        ))
        .add_service(guard(
            &coordinator,
            JobsServer::new(jobs::JobsService::new(coordinator.clone()))
                .max_decoding_message_size(MAX_CLIENT_MESSAGE)
                .max_encoding_message_size(MAX_CLIENT_MESSAGE),
        ))
        .add_service(guard(
            &coordinator,
            NodesServer::new(nodes::NodesService::new(coordinator.clone()))
                .max_decoding_message_size(MAX_CLIENT_MESSAGE)
                .max_encoding_message_size(MAX_CLIENT_MESSAGE),
        ))
        .add_service(guard(
            &coordinator,
            AllocsServer::new(allocs::AllocsService::new(coordinator.clone()))
                .max_decoding_message_size(MAX_CLIENT_MESSAGE)
                .max_encoding_message_size(MAX_CLIENT_MESSAGE),
        ))
        .add_service(guard(
            &coordinator,
            MigrationsServer::new(migrations::MigrationsService::new(coordinator.clone()))
                .max_decoding_message_size(MAX_CLIENT_MESSAGE)
                .max_encoding_message_size(MAX_CLIENT_MESSAGE),
        ))
        .add_service(guard(
            &coordinator,
            PowerServer::new(power::PowerService::new(coordinator.clone()))
                .max_decoding_message_size(MAX_CLIENT_MESSAGE)
                .max_encoding_message_size(MAX_CLIENT_MESSAGE),
        ))
        .add_service(guard(
            &coordinator,
            herd_api::proto::v1::reschedule_server::RescheduleServer::new(
                reschedule::RescheduleService::new(coordinator.clone()),
            )
            .max_decoding_message_size(MAX_CLIENT_MESSAGE)
            .max_encoding_message_size(MAX_CLIENT_MESSAGE),
        ))
        .add_service(guard(
            &coordinator,
            herd_api::proto::v1::services_server::ServicesServer::new(
                crate::autoscale::service::ServicesService::new(coordinator.clone()),
            )
            .max_decoding_message_size(MAX_CLIENT_MESSAGE),
        ))
        .add_service(guard(
            &coordinator,
            VariablesServer::new(variables::VariablesService::new(coordinator.clone()))
                .max_decoding_message_size(MAX_CLIENT_MESSAGE)
                .max_encoding_message_size(MAX_CLIENT_MESSAGE),
        ))
        .add_service(guard(
            &coordinator,
            roles_only(
                &[PeerRole::Node],
                AgentServer::new(agent::AgentService::new(coordinator.clone()))
                    .max_decoding_message_size(MAX_CLIENT_MESSAGE)
                    .max_encoding_message_size(MAX_CLIENT_MESSAGE),
            ),
        ))
        .add_service(guard(
            &coordinator,
            herd_api::proto::v1::operator_server::OperatorServer::new(
                operator::OperatorService::new(coordinator.clone()),
            )
            .max_decoding_message_size(MAX_CLIENT_MESSAGE)
            .max_encoding_message_size(MAX_CLIENT_MESSAGE),
        ))
        .add_service(guard(
            &coordinator,
            herd_api::proto::v1::acl_server::AclServer::new(crate::acl::service::AclService::new(
                coordinator.clone(),
            ))
            .max_decoding_message_size(MAX_CLIENT_MESSAGE)
            .max_encoding_message_size(MAX_CLIENT_MESSAGE),
        ))
}
