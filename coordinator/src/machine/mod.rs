//! The replicated state machine: the commands that change the cluster
//! state and the deterministic, total `apply` that every member runs on
//! them, with the decoding of what older releases wrote.

pub mod app;
pub mod apply;
pub mod command;
pub mod json_codec;
pub mod legacy;
pub mod next_format;
pub mod plan_codec;
pub mod spec_codec;
