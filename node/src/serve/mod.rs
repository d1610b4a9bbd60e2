//! Serving LLMs across the fleet: each agent keeps a view of every
//! inference service's instances and their load ([`fleet`]), dispatches a
//! request to the instance with the lowest virtual usage ([`dispatch`],
//! pure; compared with round-robin in [`sim`], a SIMULATION), and serves an
//! OpenAI-compatible HTTP endpoint ([`http`], bodies in [`openai`]).
//! Running requests move between instances ([`request_migration`]), on
//! their own when an instance drains or runs low on KV blocks ([`resched`],
//! its pure policy in [`resched_policy`]); the source of a move keeps a
//! copy of the request for a few seconds ([`request_fallback`]).

pub mod dispatch;
pub mod fleet;
pub mod http;
pub mod openai;
pub mod request_fallback;
pub mod request_migration;
pub mod resched;
pub mod resched_policy;
pub mod sim;
pub mod sim_migrate;
pub mod sim_trace;
