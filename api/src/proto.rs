//! Generated gRPC code. Prost types stay at the edges: conversions into the
//! domain types live in [`crate::convert`], and no state machine stores them.

/// Coordinator-to-coordinator messages (Raft and leader forwarding).
pub mod internal {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("herd.internal.v1");
}

/// The client API used by the CLI and by programs.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("herd.v1");
}

/// The API node agents use to talk to coordinators.
pub mod agent {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("herd.agent.v1");
}
