//! Generated gRPC code. Prost types stay at the edges: conversions into the
//! domain types live in [`crate::convert`], and no state machine stores them.

/// Modules nested as the protobuf packages are, so cross-package references resolve.
#[allow(missing_docs, clippy::all)]
pub mod herd {
    /// The client API used by the CLI and by programs.
    pub mod v1 {
        tonic::include_proto!("herd.v1");
    }
    /// The API node agents use to talk to coordinators.
    pub mod agent {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("herd.agent.v1");
        }
    }
    /// The SIMULATED inference engine's API, served to its node agent.
    pub mod inference {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("herd.inference.v1");
        }
    }
    /// Coordinator-to-coordinator messages (Raft and leader forwarding).
    pub mod internal {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("herd.internal.v1");
        }
    }
}

pub use herd::agent::v1 as agent;
pub use herd::inference::v1 as inference;
pub use herd::internal::v1 as internal;
pub use herd::v1;
