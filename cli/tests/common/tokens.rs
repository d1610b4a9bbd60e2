//! The CLI with a bearer token, and the tokens `herd acl` makes: what the
//! tests of a bootstrapped cluster (coordinators, agents, dashboard) share.

use std::process::Output;

use serde_json::Value;

/// `herd --addr ADDR [--token TOKEN] ARGS`, whatever HERD_TOKEN the test
/// process has.
pub fn cli_as(addr: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = super::herd_command();
    command.args(["--addr", addr]);
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    command
        .args(args)
        .env("HERD_LOG", "error")
        .env_remove("HERD_TOKEN")
        .output()
        .expect("run herd")
}

/// `herd ... ARGS -o json` with `token` (none when empty), parsed; it
/// must succeed.
pub fn json_as(addr: &str, token: &str, args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.extend_from_slice(&["-o", "json"]);
    let out = cli_as(addr, Some(token).filter(|t| !t.is_empty()), &full);
    assert!(
        out.status.success(),
        "herd {args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json output")
}

/// A token as `herd acl bootstrap` or `herd acl token create` prints it.
pub struct Token {
    /// Its public id.
    pub accessor: String,
    /// What a client sends (`ACCESSOR.SECRET`).
    pub secret: String,
}

impl Token {
    /// The token in a command's JSON output.
    pub fn of(made: &Value) -> Token {
        Token {
            accessor: made["accessor"].as_str().expect("accessor").to_string(),
            secret: made["secret"].as_str().expect("secret").to_string(),
        }
    }
}

/// `herd acl bootstrap` on `addr`: the first operator token.
pub fn bootstrap(addr: &str) -> Token {
    let first = json_as(addr, "", &["acl", "bootstrap"]);
    assert_eq!(first["role"], "operator");
    Token::of(&first)
}

/// `herd acl token create --name NAME --role ROLE [--ttl TTL]` with the
/// `operator` token.
pub fn create_token(
    addr: &str,
    operator: &str,
    name: &str,
    role: &str,
    ttl: Option<&str>,
) -> Token {
    let mut args = vec!["acl", "token", "create", "--name", name, "--role", role];
    if let Some(ttl) = ttl {
        args.extend(["--ttl", ttl]);
    }
    let made = json_as(addr, operator, &args);
    assert_eq!(made["role"], role);
    Token::of(&made)
}
