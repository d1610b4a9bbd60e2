//! One module per command group.

pub mod acl;
pub mod agent;
pub mod alloc;
pub mod balance;
pub mod chaos;
pub mod chaos_sim;
pub mod cluster;
pub mod coordinator;
pub mod dev;
pub mod executor;
pub mod gang_migrate;
pub mod infer;
pub mod infer_migrate;
pub mod inference_engine;
pub mod job;
pub mod limits;
pub mod migration;
pub mod node;
pub mod operator;
pub mod power;
pub mod reschedule;
pub mod service;
pub mod sim_vm;
pub mod tls;
pub mod tls_revoke;
pub mod toy_train;
pub mod transport;
pub mod var;
pub mod vm;

use std::time::Duration;

use herd_api::client::HerdClient;

use crate::exit::CliError;
use crate::output::OutputFormat;

/// How long a command whose request may safely run twice keeps trying
/// while no coordinator can serve it (an election, a member restarting)
/// before it reports "no coordinator could serve": elections take well
/// under a second, a coordinator's restart a few.
pub const RIDE_OUT_ELECTIONS: Duration = Duration::from_secs(15);

/// What every client command needs.
pub struct Context {
    /// `--addr` / `HERD_ADDR`.
    pub addr: String,
    /// `--output`.
    pub output: OutputFormat,
    /// `--token` / `HERD_TOKEN`.
    pub token: Option<String>,
    /// `--request-id` / `HERD_REQUEST_ID`, else a fresh id: sent with
    /// every call of this command (api/src/request_id.rs).
    pub request_id: herd_api::request_id::RequestId,
}

impl Context {
    /// A client for the configured coordinators, sending the token.
    pub fn client(&self) -> Result<HerdClient, CliError> {
        HerdClient::from_list(&self.addr)
            .map_err(CliError::input)?
            .with_token(self.token.as_deref().unwrap_or(""))
            .map(|client| client.with_request_id(&self.request_id))
            .map_err(|e| CliError::input(format!("--token / HERD_TOKEN: {e}")))
    }

    /// The token as metadata for calls straight to node agents (`herd
    /// alloc logs`, `herd infer`, `herd balance status`...), which check
    /// it too once the cluster is bootstrapped (docs/security.md).
    pub fn agent_token(&self) -> Result<herd_api::client::BearerToken, CliError> {
        herd_api::client::BearerToken::new(self.token.as_deref().unwrap_or(""))
            .map_err(|e| CliError::input(format!("--token / HERD_TOKEN: {e}")))
    }

    /// Whether to print JSON.
    pub fn json(&self) -> bool {
        self.output == OutputFormat::Json
    }
}
