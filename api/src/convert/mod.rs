//! Conversions between the generated proto types and the domain types.
//!
//! Prost types stay at the edges: the server converts every request with
//! `TryFrom` as soon as it arrives, and that conversion runs the same
//! validation as a spec file gets, because network input is untrusted.
//! Converting a domain value to proto cannot fail.
//!
//! Proto3 strings cannot be absent, so an empty string on the wire stands for
//! `None` in the optional fields (`command`, `workdir`, `gpu_model`).

pub mod capabilities;
mod job;
mod placement;
pub mod report;
mod resources;
mod task;

/// `None` for the empty string proto3 sends for an unset optional field.
fn non_empty(text: String) -> Option<String> {
    if text.is_empty() {
        None
    } else {
        Some(text)
    }
}
