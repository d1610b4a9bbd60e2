//! Decentralised load balancing among herd's node agents, as a pure,
//! sans-IO state machine.
//!
//! Each node agent holds one [`Agent`]. The caller (the node agent's tokio
//! task, or the [`sim`] SIMULATION) owns every side effect: it calls
//! [`Agent::tick`] every [`Config::tick_ms`] with its clock in ms, carries
//! the [`Outgoing`] packets to their peers (over gRPC `AgentPeer`), hands
//! received bytes to [`Agent::receive`], tells the agent its load
//! ([`Agent::set_local_load`]) and what may move ([`Agent::set_movable`]),
//! and acts on the [`Event`]s it takes ([`Agent::take_events`]): after
//! [`Event::MoveApproved`] it moves the item and reports with
//! [`Agent::move_done`]. The agent reads no clock, does no I/O and draws
//! randomness only from the seed it was given, so a run is reproducible.
//!
//! - [`membership`]: SWIM membership (the `foca` crate) — who is alive.
//! - [`exchange`]: push-pull gossip of load figures — the neighbourhood.
//! - [`policy`]: when to push, what, to whom; whether to accept.
//! - [`negotiate`]: offer → accept with a reservation / reject → move →
//!   confirm / cancel.
//! - [`wire`]: the packets and their bounded codec.
//! - [`sim`]: the in-process SIMULATION of a fleet over a lossy network.
//! - [`central`]: the yardstick, one central greedy rebalancing.
//!
//! The protocol and why it converges: docs/balancing.md.

pub mod agent;
pub mod central;
pub mod config;
pub mod exchange;
pub mod item;
pub mod load;
pub mod membership;
pub mod negotiate;
pub mod peer;
pub mod policy;
pub mod rng;
pub mod sim;
pub mod wire;

pub use agent::{Agent, AgentStats, Event, Liveness, Outgoing, PeerView, Spread};
pub use config::{Config, ConfigError};
pub use item::{ItemId, ItemKind, MovableItem};
pub use load::{LoadSummary, ServiceLoad};
pub use peer::{NodeId, PeerInfo};
pub use wire::{DecodeError, RejectReason};
