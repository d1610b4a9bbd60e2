//! Exit codes: 0 success, 1 a failure at run time, 2 bad input (usage, specs,
//! configuration) — the same convention clap uses for usage errors.

use herd_api::client::ClientError;

/// An error that ends the process with a message and a code.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code.
    pub code: i32,
    /// What to print after `herd: `.
    pub message: String,
}

impl CliError {
    /// Bad input from the user: exit code 2.
    pub fn input(message: impl std::fmt::Display) -> Self {
        Self {
            code: 2,
            message: message.to_string(),
        }
    }

    /// A failure while running: exit code 1.
    pub fn runtime(message: impl std::fmt::Display) -> Self {
        Self {
            code: 1,
            message: message.to_string(),
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        // The server's verdict that the request itself is wrong is bad input too.
        match e.code() {
            Some(tonic::Code::InvalidArgument) => CliError::input(e),
            _ => CliError::runtime(e),
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::runtime(format!("{e:#}"))
    }
}
