//! `herd acl bootstrap` and `herd acl token create|list|revoke`: client
//! authentication by bearer tokens with roles (docs/security.md).

use clap::Subcommand;
use herd_api::client::Repeat;
use herd_api::duration::parse_duration;
use herd_api::proto::v1::acl_client::AclClient;
use herd_api::proto::v1::{
    AclBootstrapRequest, AclToken, AclTokenSecret, CreateAclTokenRequest, ListAclTokensRequest,
    RevokeAclTokenRequest,
};
use serde_json::{json, Value};

use super::Context;
use crate::exit::CliError;
use crate::output::{format_time, print_json, print_table};

/// Subcommands of `herd acl`.
#[derive(Subcommand, Debug)]
pub enum AclCommand {
    /// Turn authentication on and print the first operator token. Once per
    /// cluster: the token is shown here only, so keep it.
    Bootstrap,
    /// Create, list and revoke tokens (operator role).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// Subcommands of `herd acl token`.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown once).
    Create {
        /// What the token is for (1 to 128 characters).
        #[arg(long)]
        name: String,
        /// read, submit, operator or node (for `herd node --token`).
        #[arg(long)]
        role: String,
        /// Expire after this long (e.g. 24h, 30m); default: never.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Every token: accessor, name, role, expiry, whether revoked.
    List {
        /// Answer from the first coordinator's own state.
        #[arg(long)]
        stale: bool,
    },
    /// Refuse a token from now on.
    Revoke {
        /// The token's accessor (see `herd acl token list`).
        accessor: String,
    },
}

/// Roles `--role` accepts, checked here so that bad input never reaches a
/// coordinator.
const ROLES: [&str; 4] = ["read", "submit", "operator", "node"];

fn token_json(token: &AclToken) -> Value {
    json!({
        "accessor": token.accessor,
        "name": token.name,
        "role": token.role,
        "created_at_ms": token.created_at_ms,
        "expires_at_ms": token.expires_at_ms,
        "revoked": token.revoked,
    })
}

fn print_secret(ctx: &Context, reply: &AclTokenSecret) {
    let token = reply.token.clone().unwrap_or_default();
    if ctx.json() {
        let mut value = token_json(&token);
        value["secret"] = json!(reply.secret);
        value["log_index"] = json!(reply.log_index);
        print_json(&value);
        return;
    }
    println!("Accessor: {}", token.accessor);
    println!("Secret:   {}", reply.secret);
    println!("Name:     {}", token.name);
    println!("Role:     {}", token.role);
    match token.expires_at_ms {
        Some(ms) => println!("Expires:  {} UTC", format_time(ms)),
        None => println!("Expires:  never"),
    }
    println!();
    println!("The secret is shown once. Send it with --token or HERD_TOKEN.");
}

/// Runs a `herd acl` subcommand.
pub async fn run(ctx: &Context, command: AclCommand) -> Result<(), CliError> {
    let client = ctx.client()?;
    match command {
        AclCommand::Bootstrap => {
            let reply = client
                .call(|ch| async move {
                    AclClient::new(ch)
                        .bootstrap(AclBootstrapRequest {})
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
            print_secret(ctx, &reply);
        }
        AclCommand::Token(TokenCommand::Create { name, role, ttl }) => {
            if !ROLES.contains(&role.as_str()) {
                return Err(CliError::input(format!(
                    "--role: unknown role {role:?}: expected read, submit, operator or node"
                )));
            }
            let ttl_ms = match ttl {
                None => 0,
                Some(text) => {
                    let ttl = parse_duration(&text)
                        .map_err(|e| CliError::input(format!("--ttl: {e}")))?;
                    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                    if ms == 0 {
                        return Err(CliError::input(
                            "--ttl: must be positive (omit it for a token that never expires)",
                        ));
                    }
                    ms
                }
            };
            let request = CreateAclTokenRequest { name, role, ttl_ms };
            let reply = client
                .call(|ch| {
                    let request = request.clone();
                    async move {
                        AclClient::new(ch)
                            .create_token(request)
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            print_secret(ctx, &reply);
        }
        AclCommand::Token(TokenCommand::List { stale }) => {
            let tokens = client
                .call_as(Repeat::Safe, |ch| async move {
                    AclClient::new(ch)
                        .list_tokens(ListAclTokensRequest { stale })
                        .await
                        .map(|r| r.into_inner().tokens)
                })
                .await?;
            if ctx.json() {
                print_json(&json!(tokens.iter().map(token_json).collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.accessor.clone(),
                            t.name.clone(),
                            t.role.clone(),
                            format_time(t.created_at_ms),
                            t.expires_at_ms.map_or("never".into(), format_time),
                            if t.revoked { "yes" } else { "no" }.into(),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "ACCESSOR",
                        "NAME",
                        "ROLE",
                        "CREATED (UTC)",
                        "EXPIRES (UTC)",
                        "REVOKED",
                    ],
                    &rows,
                );
            }
        }
        AclCommand::Token(TokenCommand::Revoke { accessor }) => {
            // Revoking twice is one revocation.
            let request = RevokeAclTokenRequest {
                accessor: accessor.clone(),
            };
            let reply = client
                .call_as(Repeat::Safe, |ch| {
                    let request = request.clone();
                    async move {
                        AclClient::new(ch)
                            .revoke_token(request)
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            if ctx.json() {
                print_json(
                    &json!({"accessor": accessor, "revoked": true, "log_index": reply.log_index}),
                );
            } else {
                println!("token {accessor} revoked");
            }
        }
    }
    Ok(())
}
