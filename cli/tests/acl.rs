//! Client authentication end to end, on real coordinator processes:
//! bootstrap, tokens with roles, and every RPC of the role table refused or
//! served as its role says (docs/security.md).

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use herd_api::proto::agent::RegisterNodeRequest;
use herd_api::proto::v1 as pb;
use herd_chaos::agents::AgentSet;
use herd_chaos::process_cluster::ProcessCluster;
use herd_coordinator::acl::table::{rpcs_in_proto, RPC_ROLES};
use herd_coordinator::acl::Role;
use prost::bytes::{Buf, BufMut};
use prost::Message;
use serde_json::Value;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use common::tokens::{bootstrap, cli_as as cli, create_token, json_as};
use common::{herd_bin, until, write_spec};

// ---------------------------------------------------------------------------
// Any RPC by its path, with raw protobuf bytes: the table drives the test,
// so no RPC needs code of its own here.

#[derive(Clone, Copy)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut bytes = vec![0; src.remaining()];
        src.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .timeout(Duration::from_secs(30))
        .connect_lazy()
}

/// Calls `path` on `channel` with one message `body` (a stream of one for
/// streaming RPCs) and `token` as `authorization: Bearer`: Ok when it was
/// served (an answer, or a stream still open after a few seconds), or the
/// status it failed with.
async fn raw_call(
    channel: &Channel,
    path: &'static str,
    body: Vec<u8>,
    token: Option<&str>,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(tokio_stream::once(body));
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("ascii token");
        request.metadata_mut().insert("authorization", value);
    }
    let mut stream = grpc
        .streaming(request, PathAndQuery::from_static(path), RawCodec)
        .await?
        .into_inner();
    match tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
        Ok(first) => first.map(|_| ()),
        // A watch that sends nothing yet: served, not refused.
        Err(_) => Ok(()),
    }
}

fn is_auth_refusal(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unauthenticated | Code::PermissionDenied
    )
}

// ---------------------------------------------------------------------------
// Requests that would change something if they were served.

fn job_spec(name: &str) -> pb::JobSpec {
    pb::JobSpec {
        name: name.into(),
        r#type: "service".into(),
        count: 1,
        priority: 50,
        task: Some(pb::TaskSpec {
            driver: "exec".into(),
            command: "/bin/true".into(),
            resources: Some(pb::Resources {
                cpu_millis: 100,
                memory_bytes: 64 << 20,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node_request(name: &str) -> RegisterNodeRequest {
    RegisterNodeRequest {
        name: name.into(),
        addr: "127.0.0.1:1".into(),
        capacity: Some(pb::Resources {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The body each refused call carries: for the RPCs that write, one that
/// would change the state if it were served; an empty message otherwise.
fn harmful_body(path: &str, operator_accessor: &str) -> Vec<u8> {
    match path {
        "/herd.v1.Jobs/Submit" => pb::SubmitJobRequest {
            spec: Some(job_spec("intruder")),
        }
        .encode_to_vec(),
        "/herd.v1.Jobs/Stop" => pb::StopJobRequest { name: "web".into() }.encode_to_vec(),
        "/herd.v1.Variables/Put" => pb::PutVariableRequest {
            key: "acl-probe".into(),
            value: b"intruder".to_vec(),
            expected_version: None,
        }
        .encode_to_vec(),
        "/herd.v1.Variables/PutStream" => pb::PutVariableBatch {
            puts: vec![pb::TaggedPut {
                tag: 1,
                put: Some(pb::PutVariableRequest {
                    key: "acl-probe".into(),
                    value: b"intruder".to_vec(),
                    expected_version: None,
                }),
            }],
        }
        .encode_to_vec(),
        "/herd.v1.Nodes/SetEligibility" => pb::SetEligibilityRequest {
            name: "n1".into(),
            eligible: false,
        }
        .encode_to_vec(),
        "/herd.v1.Nodes/Drain" => pb::DrainNodeRequest {
            name: "n1".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "/herd.v1.Cluster/RemoveMember" => pb::RemoveMemberRequest { id: 3 }.encode_to_vec(),
        "/herd.v1.Power/SetBudget" => pb::SetPowerBudgetRequest {
            group: "cluster".into(),
            watts: 100_000,
            ..Default::default()
        }
        .encode_to_vec(),
        "/herd.v1.Acl/CreateToken" => pb::CreateAclTokenRequest {
            name: "intruder".into(),
            role: "operator".into(),
            ttl_ms: 0,
        }
        .encode_to_vec(),
        "/herd.v1.Acl/RevokeToken" => pb::RevokeAclTokenRequest {
            accessor: operator_accessor.into(),
        }
        .encode_to_vec(),
        "/herd.agent.v1.Agent/Register" => node_request("intruder").encode_to_vec(),
        _ => Vec::new(),
    }
}

/// What the refused calls could have changed, as the API shows it: the
/// leader's state digest, and what people would look at.
async fn observed(addr: &str, leader: &Channel, operator: &str) -> (u64, Vec<Value>) {
    let mut grpc = tonic::client::Grpc::new(leader.clone());
    grpc.ready().await.expect("ready");
    let mut request =
        tonic::Request::new(pb::MemberStatusRequest { with_digest: true }.encode_to_vec());
    let value = format!("Bearer {operator}").parse().expect("ascii");
    request.metadata_mut().insert("authorization", value);
    let reply = grpc
        .unary(
            request,
            PathAndQuery::from_static("/herd.v1.Cluster/MemberStatus"),
            RawCodec,
        )
        .await
        .expect("member status")
        .into_inner();
    let digest = pb::MemberReport::decode(reply.as_slice())
        .expect("report")
        .state_digest;
    let views = [
        vec!["job", "list"],
        vec!["var", "get", "acl-probe"],
        vec!["node", "list"],
        vec!["acl", "token", "list"],
        vec!["power", "budget", "list"],
    ]
    .iter()
    .map(|args| json_as(addr, operator, args))
    .map(|mut v| {
        // Heartbeat ages and the like move on their own; names, versions
        // and statuses do not.
        strip_volatile(&mut v);
        v
    })
    .collect();
    (digest, views)
}

fn strip_volatile(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|k, _| !k.contains("heartbeat") && !k.contains("age"));
            map.values_mut().for_each(strip_volatile);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_volatile),
        _ => {}
    }
}

// ---------------------------------------------------------------------------

/// The table's RPCs are exactly the client and agent RPCs of the `.proto`
/// files: an RPC added without a line fails here (and in the unit test).
#[test]
fn the_role_table_lists_every_client_and_agent_rpc() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/proto/herd");
    let client = std::fs::read_to_string(root.join("client.proto")).expect("client.proto");
    let agent = std::fs::read_to_string(root.join("agent.proto")).expect("agent.proto");
    let mut served: BTreeSet<String> = rpcs_in_proto(&client, None).into_iter().collect();
    served.extend(rpcs_in_proto(&agent, Some(&["herd.agent.v1.Agent"])));
    let listed: BTreeSet<String> = RPC_ROLES.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(served, listed);
}

/// Every RPC of the table, through the leader and through a follower:
/// without a token, with a garbage, expired or revoked one, and with each
/// role too small, refused (`Unauthenticated` / `PermissionDenied`) and
/// nothing changed; with each role that suffices, served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_bad_tokens_and_serves_the_right_roles() {
    let cluster =
        ProcessCluster::start(herd_bin(), 3, &["--node-ttl-ms", "3600000"]).expect("start cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let addr = cluster.addr_list();
    let leader_channel = channel(&cluster.member(leader).expect("leader").addr);
    let follower_channel = channel(&cluster.member(follower).expect("follower").addr);

    // Open until bootstrapped: no token needed, and one sent is ignored.
    let out = cli(&addr, None, &["var", "put", "acl-probe", "original"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cli(&addr, Some("not-a-token"), &["job", "list"])
        .status
        .success());

    let operator = bootstrap(&addr);
    // Once only, with or without a token.
    let again = cli(&addr, Some(&operator.secret), &["acl", "bootstrap"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already bootstrapped"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let anonymous = cli(&addr, None, &["acl", "bootstrap"]);
    assert!(!anonymous.status.success());
    assert!(
        String::from_utf8_lossy(&anonymous.stderr).contains("requires a token"),
        "{}",
        String::from_utf8_lossy(&anonymous.stderr)
    );
    // Now closed: the same read as before needs a token.
    assert!(!cli(&addr, None, &["job", "list"]).status.success());

    let reader = create_token(&addr, &operator.secret, "reader", "read", None);
    let submitter = create_token(&addr, &operator.secret, "ci", "submit", None);
    let node = create_token(&addr, &operator.secret, "agents", "node", None);
    let revoked = create_token(&addr, &operator.secret, "gone", "operator", None);
    let expiring = create_token(&addr, &operator.secret, "brief", "operator", Some("1s"));
    let out = cli(
        &addr,
        Some(&operator.secret),
        &["acl", "token", "revoke", &revoked.accessor],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tokens = json_as(&addr, &operator.secret, &["acl", "token", "list"]);
    let listed = tokens.as_array().expect("list");
    assert_eq!(listed.len(), 6, "{tokens}");
    assert!(listed
        .iter()
        .any(|t| t["accessor"] == revoked.accessor.as_str() && t["revoked"] == true));
    assert!(
        !tokens.to_string().contains(&operator.secret),
        "a listing never shows a secret"
    );

    // Something to keep unchanged: a node, a job placed on it, a variable.
    raw_call(
        &leader_channel,
        "/herd.agent.v1.Agent/Register",
        node_request("n1").encode_to_vec(),
        Some(&node.secret),
    )
    .await
    .expect("register n1");
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = write_spec(
        dir.path(),
        "web",
        "name = \"web\"\ntype = \"service\"\ncount = 1\n[task]\ndriver = \"exec\"\ncommand = \"/bin/true\"\n[task.resources]\ncpu = 100\nmemory = \"64MiB\"\n",
    );
    // A few lines of the table pinned here, apart from the table itself.
    for (token, args, need) in [
        (
            &reader.secret,
            vec!["job", "run", spec.as_str(), "--detach"],
            "submit",
        ),
        (&node.secret, vec!["var", "put", "acl-probe", "x"], "submit"),
        (&submitter.secret, vec!["acl", "token", "list"], "operator"),
        (&submitter.secret, vec!["node", "drain", "n1"], "operator"),
        (&operator.secret, vec!["node", "list"], ""),
    ] {
        let out = cli(&addr, Some(token), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if need.is_empty() {
            assert!(out.status.success(), "{args:?}: {stderr}");
        } else {
            assert!(!out.status.success(), "{args:?} was served");
            assert!(
                stderr.contains(&format!("needs role {need}")),
                "{args:?}: {stderr}"
            );
        }
    }
    json_as(&addr, &submitter.secret, &["job", "run", &spec, "--detach"]);
    until("web placed on n1", Duration::from_secs(20), || {
        let jobs = json_as(&addr, &reader.secret, &["job", "list"]);
        (jobs[0]["placed"] == 1).then_some(())
    })
    .await;
    until("the 1 s token expired", Duration::from_secs(20), || {
        let out = cli(&addr, Some(&expiring.secret), &["job", "list"]);
        String::from_utf8_lossy(&out.stderr)
            .contains("expired")
            .then_some(())
    })
    .await;

    let before = observed(&addr, &leader_channel, &operator.secret).await;
    let garbage = format!("{}.{}", operator.accessor, "A".repeat(43));
    let roles = [
        (Role::Read, reader.secret.as_str()),
        (Role::Submit, submitter.secret.as_str()),
        (Role::Operator, operator.secret.as_str()),
        (Role::Node, node.secret.as_str()),
    ];
    let members = [("leader", &leader_channel), ("follower", &follower_channel)];
    let mut refused = 0;
    for (path, need) in RPC_ROLES {
        let body = harmful_body(path, &operator.accessor);
        let mut unauthenticated: Vec<(&str, Option<&str>)> = vec![
            ("no token", None),
            ("a malformed token", Some("nonsense")),
            ("a forged secret", Some(&garbage)),
            ("an expired token", Some(&expiring.secret)),
            ("a revoked token", Some(&revoked.secret)),
        ];
        // The bootstrap RPC refuses a valid token for its own reason.
        if *path == "/herd.v1.Acl/Bootstrap" {
            unauthenticated.retain(|(_, t)| t.is_none());
        }
        for (member, ch) in members {
            for (what, token) in &unauthenticated {
                let status = raw_call(ch, path, body.clone(), *token)
                    .await
                    .expect_err(&format!("{path} with {what} via the {member} was served"));
                assert_eq!(
                    status.code(),
                    Code::Unauthenticated,
                    "{path} with {what} via the {member}: {status:?}"
                );
                refused += 1;
            }
            for (role, token) in roles.iter().filter(|(r, _)| !r.allows(*need)) {
                let status = raw_call(ch, path, body.clone(), Some(token))
                    .await
                    .expect_err(&format!(
                        "{path} with role {role} via the {member} was served"
                    ));
                assert_eq!(
                    status.code(),
                    Code::PermissionDenied,
                    "{path} with role {role} via the {member}: {status:?}"
                );
                refused += 1;
            }
        }
    }
    assert!(refused > RPC_ROLES.len() * 10, "{refused} refusals");
    let after = observed(&addr, &leader_channel, &operator.secret).await;
    assert_eq!(before, after, "a refused request changed the state");

    // The right roles are served (an answer other than a refusal for
    // authentication: a validation error on an empty request is fine).
    for (path, need) in RPC_ROLES {
        for (member, ch) in members {
            for (role, token) in roles.iter().filter(|(r, _)| r.allows(*need)) {
                if let Err(status) = raw_call(ch, path, Vec::new(), Some(token)).await {
                    assert!(
                        !is_auth_refusal(&status),
                        "{path} with role {role} via the {member} was refused: {status:?}"
                    );
                }
            }
        }
    }

    // Writes through a follower are forwarded to the leader with the
    // caller's right checked first: a submit token's write lands.
    let follower_addr = cluster.member(follower).expect("follower").addr.clone();
    let out = cli(
        &follower_addr,
        Some(&submitter.secret),
        &["var", "put", "acl-probe", "by-ci"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        json_as(&follower_addr, &reader.secret, &["var", "get", "acl-probe"])["value"],
        "by-ci"
    );
    // A token revoked through the leader is refused for writes by the
    // follower at once (it waits for the leader's commit index first).
    let out = cli(
        &addr,
        Some(&operator.secret),
        &["acl", "token", "revoke", &submitter.accessor],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(
        &follower_addr,
        Some(&submitter.secret),
        &["var", "put", "acl-probe", "after-revoke"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revoked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// After bootstrap a node agent registers with a `node` token, and not
/// without one (nor with a token of another role).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_register_with_a_node_token_only() {
    let cluster = ProcessCluster::start(herd_bin(), 1, &["--node-ttl-ms", "5000"])
        .expect("start a coordinator");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let addr = cluster.addr_list();
    let operator = bootstrap(&addr);
    let node = create_token(&addr, &operator.secret, "agents", "node", None);
    let reader = create_token(&addr, &operator.secret, "reader", "read", None);

    let mut agents = AgentSet::new(herd_bin(), &addr).expect("agents");
    agents
        .start("with-token", &["--token", &node.secret])
        .expect("start agent");
    agents.start("no-token", &[]).expect("start agent");
    agents
        .start("read-token", &["--token", &reader.secret])
        .expect("start agent");
    until("with-token ready", Duration::from_secs(30), || {
        let nodes = json_as(&addr, &operator.secret, &["node", "list"]);
        nodes
            .as_array()?
            .iter()
            .any(|n| n["name"] == "with-token" && n["status"] == "ready")
            .then_some(())
    })
    .await;
    // The others are told why, and go on trying; none is registered.
    for (name, why) in [
        ("no-token", "requires a token"),
        ("read-token", "needs role node"),
    ] {
        let log = agents.agent(name).expect("agent").log_path.clone();
        until(&format!("{name} refused"), Duration::from_secs(30), || {
            std::fs::read_to_string(&log)
                .ok()?
                .contains(why)
                .then_some(())
        })
        .await;
    }
    let nodes = json_as(&addr, &operator.secret, &["node", "list"]);
    let names: Vec<&str> = nodes
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, vec!["with-token"]);
}

/// A coordinator started with `--join` is added to a bootstrapped cluster
/// when it sends an operator token, and not without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_a_bootstrapped_cluster_with_an_operator_token() {
    let cluster = ProcessCluster::start(herd_bin(), 1, &[]).expect("start a coordinator");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let addr = cluster.addr_list();
    let operator = bootstrap(&addr);
    let dir = tempfile::tempdir().expect("tempdir");

    let spawn = |id: &str, token: Option<&str>| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let log = std::fs::File::create(dir.path().join(format!("member-{id}.log"))).expect("log");
        let mut command = common::herd_command();
        command.args([
            "coordinator",
            "--id",
            id,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ]);
        command
            .arg(dir.path().join(format!("member-{id}")))
            .args(["--join", &addr])
            .env("HERD_LOG", "info")
            .env_remove("HERD_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        KillOnDrop(command.spawn().expect("spawn coordinator"))
    };
    let _without = spawn("5", None);
    let _with = spawn("4", Some(&operator.secret));
    until("member 4 added", Duration::from_secs(60), || {
        let status = json_as(&addr, &operator.secret, &["cluster", "status"]);
        let ids: Vec<u64> = status["members"]
            .as_array()?
            .iter()
            .filter_map(|m| m["id"].as_u64())
            .collect();
        ids.contains(&4).then_some(())
    })
    .await;
    let log = dir.path().join("member-5.log");
    until("member 5 refused", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("requires a token")
            .then_some(())
    })
    .await;
    let status = json_as(&addr, &operator.secret, &["cluster", "status"]);
    assert!(
        !status.to_string().contains("\"id\":5"),
        "member 5 joined without a token: {status}"
    );
}

/// Kills a child process when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
