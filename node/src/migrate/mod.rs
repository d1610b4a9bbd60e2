//! Agent-to-agent state transfer for live migration: a migration's state
//! (a training job's checkpoint directory, a simulated VM's memory image)
//! moves as files directly from the source agent to the target agent over
//! the `AgentPeer` gRPC service, never through the coordinators.
//!
//! - [`receiver`]: the target's side, [`IncomingRegistry`]: which
//!   migrations this node may receive (the orchestration authorizes and
//!   revokes them from its assignment set) and what it holds of each, on
//!   disk in a staging directory (the files are the truth, so a restarted
//!   agent still knows what it holds);
//! - [`peer_service`]: the tonic `AgentPeer` server over that registry;
//! - [`transfer`]: the source's side, [`send_dir`] and [`send_with_resume`]:
//!   a directory sent in CRC-32C-checked chunks through a bounded in-flight
//!   window, optionally paced to a bandwidth cap, resumed from what the
//!   target reports after a cut.
//!
//! The rules every path and chunk must follow are here, shared by both
//! sides, so that a sender refuses locally what the target would refuse.

pub mod gang;
pub mod manager;
pub mod offline;
pub mod peer_service;
pub mod receiver;
pub mod report;
pub mod source;
pub mod transfer;

pub use peer_service::AgentPeerService;
pub use receiver::{
    EndpointsFuture, IncomingEndpointsSource, IncomingError, IncomingMigration, IncomingRegistry,
    IncomingStatus,
};
pub use transfer::{connect, send_dir, send_with_resume, TransferError, TransferStats};

/// Bytes of file data the sender puts in one chunk.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// The most file data the target accepts in one chunk (a bound on what an
/// untrusted peer may make it buffer).
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;
/// The largest gRPC message either side accepts on `AgentPeer`: a chunk of
/// [`MAX_CHUNK_BYTES`] plus its path, id and framing.
pub const MAX_MESSAGE_BYTES: usize = MAX_CHUNK_BYTES + 16 * 1024;
/// The longest relative path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// The deepest relative path accepted, in components.
pub const MAX_PATH_DEPTH: usize = 32;
/// The most files one migration may hold on the target.
pub const MAX_FILES: usize = 100_000;
/// Suffix of a file still arriving in the staging directory; a name the
/// sender may not use, so a partial file is never mistaken for a whole one.
pub const PARTIAL_SUFFIX: &str = ".herd-partial";
/// The longest path component accepted: the usual NAME_MAX (255) less
/// room for [`PARTIAL_SUFFIX`].
pub const MAX_COMPONENT_BYTES: usize = 255 - PARTIAL_SUFFIX.len();

/// Checks that `path` is a relative path a target may create under its
/// staging directory: '/'-separated, no leading '/', no empty, "." or ".."
/// component, no NUL, bounded length and depth, and not ending in
/// [`PARTIAL_SUFFIX`]. The message says what is wrong.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("path is empty".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!(
            "path is {} bytes long, over the limit of {MAX_PATH_BYTES}",
            path.len()
        ));
    }
    if path.starts_with('/') {
        return Err(format!("path {path:?} is absolute"));
    }
    if path.contains('\0') {
        return Err(format!("path {path:?} contains a NUL byte"));
    }
    let mut depth = 0;
    for component in path.split('/') {
        depth += 1;
        match component {
            "" => return Err(format!("path {path:?} has an empty component")),
            "." | ".." => return Err(format!("path {path:?} has a {component:?} component")),
            _ => {}
        }
        if component.len() > MAX_COMPONENT_BYTES {
            return Err(format!(
                "path {path:?} has a component of {} bytes, over the limit of {MAX_COMPONENT_BYTES}",
                component.len()
            ));
        }
        if component.ends_with(PARTIAL_SUFFIX) {
            return Err(format!(
                "path {path:?} ends a component in {PARTIAL_SUFFIX:?}, reserved for files still arriving"
            ));
        }
    }
    if depth > MAX_PATH_DEPTH {
        return Err(format!(
            "path {path:?} is {depth} components deep, over the limit of {MAX_PATH_DEPTH}"
        ));
    }
    Ok(())
}

/// CRC-32C (Castagnoli) of a chunk's data, as `TransferChunk.crc32c` carries it.
pub fn checksum(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_checked() {
        for good in [
            "a",
            "a/b/c.bin",
            "ckpt-000000000001.json",
            ".hidden",
            "a/.b",
        ] {
            assert_eq!(check_relative_path(good), Ok(()), "{good}");
        }
        let long = "x".repeat(MAX_COMPONENT_BYTES + 1);
        let deep = vec!["d"; MAX_PATH_DEPTH + 1].join("/");
        for (bad, why) in [
            ("", "empty"),
            ("/etc/x", "absolute"),
            ("../x", "\"..\""),
            ("a/../../x", "\"..\""),
            ("a//b", "empty component"),
            ("a/", "empty component"),
            ("./a", "\".\""),
            ("a\0b", "NUL"),
            (long.as_str(), "component of"),
            (deep.as_str(), "deep"),
            ("a/b.herd-partial", "reserved"),
        ] {
            let err = check_relative_path(bad).expect_err(bad);
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn checksum_is_crc32c() {
        // The CRC-32C check value of "123456789" (RFC 3720, B.4).
        assert_eq!(checksum(b"123456789"), 0xE306_9283);
    }
}
