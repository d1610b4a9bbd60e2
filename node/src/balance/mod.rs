//! Decentralised load balancing on the node agent: the wiring of the pure
//! [`herd_balance`] state machine to this agent.
//!
//! - [`actor`]: the `Balancer` actor that owns the state machine, ticks it,
//!   measures this node's load and acts on its decisions;
//! - [`assigned`]: what the coordinators assigned here, as the link last
//!   heard it (the allocations whose load and movability count);
//! - [`load`]: this node's load summary and its movable items;
//! - [`peers`]: where the first peers come from (the coordinators' node
//!   list, or the peers remembered on disk when the coordinators are away);
//! - [`moves`]: carrying out an approved move;
//! - [`requests`]: inference requests as items (moved by request
//!   migration, with the coordinators away too);
//! - [`journal`], [`offline`]: moves made agent to agent while every
//!   coordinator is away, and their reconciliation once they return;
//! - [`handle`]: how the gRPC services reach the actor;
//! - [`dial`]: a FAULT-INJECTION hook routing agent-to-agent connections
//!   through a test's proxies (partitions of the agents).
//!
//! Packets travel over the agents' `AgentPeer.Gossip` RPC, so they take the
//! same path (and the same partitions) as migrations. The protocol and the
//! policy: docs/balancing.md.

pub mod actor;
pub mod assigned;
pub mod dial;
pub mod handle;
pub mod journal;
pub mod load;
pub mod moves;
pub mod offline;
pub mod peers;
pub mod requests;

pub use actor::{BalanceMsg, Balancer, BalancerArgs};
pub use assigned::{AssignedRx, AssignedTx, AssignedWork};
pub use handle::BalanceHandle;
