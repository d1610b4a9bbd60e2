//! The node agent daemon (`herd node`): configuration, the wiring of the
//! actors from `herd-actors` into a supervision tree, the link to the
//! coordinators and the peer gRPC server.
//!
//! Not written yet: it arrives with the node-agent issue. Until then nodes
//! register through the agent API directly (see `cli/tests/node_registry.rs`).
//! It must never depend on the coordinator or consensus crates.
#![warn(missing_docs)]
