//! Resource errors: each says what could not be read or done, and where.

use thiserror::Error;

/// Why a figure of the host or a GPU could not be read or changed.
///
/// Every variant names the file, field, backend or GPU concerned, so the
/// agent's log line is enough to find the cause without a debugger.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResourceError {
    /// A file (e.g. `/proc/meminfo`) or directory could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file or directory.
        path: String,
        /// The OS error.
        message: String,
    },
    /// A kernel file was read but a field in it is missing or malformed.
    #[error("{file}: field {field}: {message}")]
    Parse {
        /// The file, e.g. `/proc/stat`.
        file: String,
        /// The field, e.g. `MemTotal`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A GPU backend (NVML...) failed to answer or to act.
    #[error("GPU backend {backend}: {message}")]
    Gpu {
        /// The backend's name, e.g. `nvml`.
        backend: String,
        /// What failed, with the backend's own error.
        message: String,
    },
    /// The GPU index does not exist on this host.
    #[error("GPU backend {backend}: no GPU with index {index}: this host has {count} GPU(s)")]
    NoSuchGpu {
        /// The backend's name.
        backend: String,
        /// The index asked for.
        index: u32,
        /// How many GPUs there are.
        count: u32,
    },
    /// A power limit outside what the GPU accepts.
    #[error(
        "GPU {index}: power limit {watts} W is outside the settable range {min_watts}..={max_watts} W"
    )]
    PowerLimitOutOfRange {
        /// The GPU.
        index: u32,
        /// The limit asked for.
        watts: u32,
        /// The lowest settable limit.
        min_watts: u32,
        /// The highest settable limit.
        max_watts: u32,
    },
    /// The simulated GPU options are unusable (empty model name...).
    #[error("simulated GPUs: {0}")]
    BadSimulation(String),
}

impl ResourceError {
    /// A parse error for `field` of `file`.
    pub(crate) fn parse(file: &str, field: &str, message: impl Into<String>) -> Self {
        ResourceError::Parse {
            file: file.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// A read error for `path`.
    pub(crate) fn read(path: impl Into<String>, err: &std::io::Error) -> Self {
        ResourceError::Read {
            path: path.into(),
            message: err.to_string(),
        }
    }
}
