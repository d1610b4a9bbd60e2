//! Serving LLMs across the fleet: each agent keeps a view of every
//! inference service's instances and their load ([`fleet`]), dispatches a
//! request to the instance with the lowest virtual usage ([`dispatch`],
//! pure; compared with round-robin in [`sim`], a SIMULATION), and serves an
//! OpenAI-compatible HTTP endpoint ([`http`], bodies in [`openai`]).

pub mod dispatch;
pub mod fleet;
pub mod http;
pub mod openai;
pub mod request_migration;
pub mod sim;
