//! `herd var put|get`: replicated registers with compare-and-set.

use clap::Subcommand;
use herd_api::proto::v1::variables_client::VariablesClient;
use herd_api::proto::v1::{GetVariableRequest, PutVariableRequest};
use serde_json::json;

use super::Context;
use crate::exit::CliError;
use crate::output::print_json;

/// Subcommands of `herd var`.
#[derive(Subcommand, Debug)]
pub enum VarCommand {
    /// Write a variable.
    Put {
        /// Key.
        key: String,
        /// Value (UTF-8 text).
        value: String,
        /// Only write if the current version is this (0: only if absent).
        #[arg(long)]
        cas: Option<u64>,
    },
    /// Read a variable.
    Get {
        /// Key.
        key: String,
        /// Answer from the first coordinator's own state.
        #[arg(long)]
        stale: bool,
    },
}

/// Runs a `herd var` subcommand.
pub async fn run(ctx: &Context, command: VarCommand) -> Result<(), CliError> {
    let client = ctx.client()?;
    match command {
        VarCommand::Put { key, value, cas } => {
            let reply = client
                .call(|ch| {
                    let request = PutVariableRequest {
                        key: key.clone(),
                        value: value.clone().into_bytes(),
                        expected_version: cas,
                    };
                    async move {
                        VariablesClient::new(ch)
                            .put(request)
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            if ctx.json() {
                print_json(
                    &json!({"ok": reply.ok, "version": reply.version, "log_index": reply.log_index}),
                );
            } else if reply.ok {
                println!("{key} = {value:?} (version {})", reply.version);
            }
            if !reply.ok {
                return Err(CliError::runtime(format!(
                    "compare-and-set failed: {key} is at version {}",
                    reply.version
                )));
            }
        }
        VarCommand::Get { key, stale } => {
            let reply = client
                .call(|ch| {
                    let request = GetVariableRequest {
                        key: key.clone(),
                        stale,
                    };
                    async move {
                        VariablesClient::new(ch)
                            .get(request)
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            if !reply.found {
                return Err(CliError::runtime(format!("variable {key:?} not found")));
            }
            let text = String::from_utf8_lossy(&reply.value);
            if ctx.json() {
                print_json(&json!({"key": key, "value": text, "version": reply.version}));
            } else {
                println!("{text}");
            }
        }
    }
    Ok(())
}
