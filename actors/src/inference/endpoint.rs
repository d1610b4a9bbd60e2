//! `engine.json`: where a running engine process listens, written by the
//! engine into its allocation directory so the node agent (the same or a
//! restarted one) finds it without asking the process.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::driver::exec::files;

/// The file's name in the allocation directory.
pub const ENGINE_FILE: &str = "engine.json";

/// What `engine.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineEndpoint {
    /// `127.0.0.1:PORT` of the engine's gRPC server.
    pub addr: String,
    /// Its allocation.
    pub alloc_id: String,
    /// Its job.
    pub job: String,
    /// The engine process.
    pub pid: u32,
}

impl EngineEndpoint {
    /// Writes it atomically into `alloc_dir`.
    pub fn write(&self, alloc_dir: &Path) -> io::Result<()> {
        files::write_atomic(alloc_dir, ENGINE_FILE, self)
    }

    /// Reads it from `alloc_dir`: `Ok(None)` when no engine wrote one.
    pub fn read(alloc_dir: &Path) -> io::Result<Option<Self>> {
        files::read_json(alloc_dir, ENGINE_FILE)
    }

    /// Removes it (the engine is exiting).
    pub fn remove(alloc_dir: &Path) -> io::Result<()> {
        match std::fs::remove_file(alloc_dir.join(ENGINE_FILE)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
