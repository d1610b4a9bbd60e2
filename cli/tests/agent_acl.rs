//! Node agents check client tokens too, end to end on real processes: one
//! coordinator, bootstrapped, and one `herd node` agent with a node token
//! running one instance of a SIMULATED LLM service and serving the
//! OpenAI-compatible endpoint. For every `NodeAgent` RPC (driven by the
//! agent's role table) and every HTTP route: no token, a token of too small
//! a role and a revoked token are refused and nothing runs; the right role
//! is served. The CLI's agent calls (`herd infer`, `herd alloc logs`,
//! `herd balance status`) send `--token`. A revocation reaches the agent
//! within its refresh interval; a second agent forwards a request to the
//! first with its own node token; with the coordinator stopped, a token the
//! agent already knows still works and a revoked one stays refused
//! (docs/security.md, "Node agents check tokens too").

// Test code: an unwrap/expect failing here fails the test at its line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use herd_api::acl::Role;
use herd_api::client::BearerToken;
use herd_api::proto::agent::node_agent_client::NodeAgentClient;
use herd_api::proto::agent::{
    AllocLogsRequest, BalanceStatusRequest, EngineStatsRequest, InferRequest, MigrateRequestRequest,
};
use herd_chaos::agents::AgentSet;
use herd_chaos::process_cluster::ProcessCluster;
use herd_node::acl::table::{HTTP_ROLES, RPC_ROLES};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use common::tokens::{bootstrap, cli_as as cli, create_token, json_as};
use common::{herd_bin, write_spec};

// ---------------------------------------------------------------------------
// The agent's gRPC service, one call per RPC, driven by the table.

/// A client of the agent at `agent`, connected (so that an agent not yet
/// listening is an error here, never an answer of its service).
async fn client(
    agent: &str,
    token: Option<&str>,
) -> Result<
    NodeAgentClient<tonic::service::interceptor::InterceptedService<Channel, BearerToken>>,
    Status,
> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{agent}"))
        .expect("endpoint")
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("agent {agent} unreachable: {e}")))?;
    Ok(NodeAgentClient::with_interceptor(
        channel,
        BearerToken::new(token.unwrap_or("")).expect("token"),
    ))
}

/// Calls `rpc` on the agent with `token`: Ok when the service answered
/// (whatever it answered, short of a refusal), else the status; panics
/// when the agent cannot be reached.
async fn call_rpc(agent: &str, rpc: &str, token: Option<&str>, alloc: &str) -> Result<(), Status> {
    let mut c = client(agent, token).await.expect("the agent listens");
    let served = |s: Status| match s.code() {
        Code::Unauthenticated | Code::PermissionDenied => Err(s),
        _ => Ok(()),
    };
    match rpc {
        "/herd.agent.v1.NodeAgent/AllocLogs" => match c
            .alloc_logs(AllocLogsRequest {
                alloc_id: alloc.into(),
                stream: "stdout".into(),
                follow: false,
                tail_bytes: 0,
            })
            .await
        {
            Ok(mut stream) => {
                while let Some(chunk) = stream.get_mut().message().await.transpose() {
                    chunk?;
                }
                Ok(())
            }
            Err(s) => served(s),
        },
        "/herd.agent.v1.NodeAgent/Infer" => match c
            .infer(InferRequest {
                job: "llm".into(),
                prompt_tokens: 4,
                max_tokens: 2,
                ..Default::default()
            })
            .await
        {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                let mut tokens = 0;
                while let Some(token) = stream.message().await? {
                    tokens += u32::from(token.moved.is_none());
                }
                assert_eq!(tokens, 2, "a served request streams its tokens");
                Ok(())
            }
            Err(s) => served(s),
        },
        "/herd.agent.v1.NodeAgent/EngineStats" => {
            c.engine_stats(EngineStatsRequest {}).await.map(|_| ())
        }
        "/herd.agent.v1.NodeAgent/BalanceStatus" => {
            c.balance_status(BalanceStatusRequest {}).await.map(|_| ())
        }
        // A request id no engine runs: served means "not found", not moved.
        "/herd.agent.v1.NodeAgent/MigrateRequest" => match c
            .migrate_request(MigrateRequestRequest {
                alloc_id: alloc.into(),
                request_id: 987_654,
                to_alloc: "nowhere".into(),
                to_agent: "127.0.0.1:1".into(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) => served(s),
        },
        other => panic!("no call for {other}: add one to this test"),
    }
}

/// Whether a request for service `llm` entering at `agent` streams its
/// tokens (whichever engine of the fleet runs it).
async fn infer_streams(agent: &str, token: &str) -> bool {
    let Ok(mut c) = client(agent, Some(token)).await else {
        return false;
    };
    let request = InferRequest {
        job: "llm".into(),
        prompt_tokens: 4,
        max_tokens: 2,
        ..Default::default()
    };
    let Ok(stream) = c.infer(request).await else {
        return false;
    };
    let mut stream = stream.into_inner();
    let mut tokens = 0;
    while let Ok(Some(token)) = stream.message().await {
        tokens += u32::from(token.moved.is_none());
    }
    tokens == 2
}

/// The completed requests of the engine of `alloc`, as its agent last
/// read them.
async fn completed(agent: &str, token: &str, alloc: &str) -> u64 {
    let reply = client(agent, Some(token))
        .await
        .expect("the agent listens")
        .engine_stats(EngineStatsRequest {})
        .await
        .expect("engine stats")
        .into_inner();
    reply
        .engines
        .iter()
        .find(|e| e.alloc_id == alloc)
        .and_then(|e| e.stats.as_ref())
        .map(|s| s.completed_total)
        .expect("the instance's stats")
}

// ---------------------------------------------------------------------------
// The HTTP endpoint.

/// An HTTP/1.0 exchange with an optional bearer token: status and body.
async fn http(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let body = match (method, path) {
        ("POST", "/v1/chat/completions") => {
            json!({"model": "llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
                .to_string()
        }
        ("POST", _) => json!({"model": "llm", "prompt": [1, 2, 3], "max_tokens": 2}).to_string(),
        _ => String::new(),
    };
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    loop {
        line.clear();
        reader.read_line(&mut line).await.expect("header");
        if line.trim().is_empty() {
            break;
        }
    }
    let mut text = String::new();
    reader.read_to_string(&mut text).await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (status, value)
}

async fn eventually<F, Fut>(what: &str, limit: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !probe().await {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const SPEC: &str = "name = \"llm\"\ntype = \"service\"\ncount = 1\n\n[task]\ndriver = \"inference\"\n\n[task.resources]\ncpu = 100\nmemory = \"64MiB\"\n\n[task.config]\nkv_blocks = \"64\"\ntime_scale = \"0.1\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_entry_point_checks_tokens_even_without_coordinators() {
    let mut cluster = ProcessCluster::start(herd_bin(), 1, &[]).expect("start a coordinator");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let addr = cluster.addr_list();
    let operator = bootstrap(&addr);
    let node = create_token(&addr, &operator.secret, "agents", "node", None);
    let reader = create_token(&addr, &operator.secret, "reader", "read", None);
    let submitter = create_token(&addr, &operator.secret, "submitter", "submit", None);
    let revoked = create_token(&addr, &operator.secret, "gone", "operator", None);
    let later = create_token(&addr, &operator.secret, "later", "submit", None);
    json_as(
        &addr,
        &operator.secret,
        &["acl", "token", "revoke", &revoked.accessor],
    );

    let port = herd_chaos::ports::free_loopback_port().expect("a free port");
    let http_addr = format!("127.0.0.1:{port}");
    let mut agents = AgentSet::new(herd_bin(), &addr).expect("agents");
    agents
        .start(
            "a1",
            &["--token", &node.secret, "--http-listen", &http_addr],
        )
        .expect("start agent");
    let agent = agents.agent("a1").expect("agent").addr.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = write_spec(dir.path(), "llm", SPEC);
    let run = cli(&addr, Some(&submitter.secret), &["job", "run", &spec]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut alloc = String::new();
    eventually("a running instance", Duration::from_secs(30), || {
        let allocs = json_as(&addr, &reader.secret, &["alloc", "list", "--job", "llm"]);
        let running = allocs.as_array().and_then(|list| {
            list.iter()
                .find(|a| a["status"] == "running")
                .and_then(|a| a["id"].as_str())
                .map(str::to_string)
        });
        if let Some(id) = running {
            alloc = id;
        }
        std::future::ready(!alloc.is_empty())
    })
    .await;
    // The engine answers: a submit token is served (the agent fetched the
    // table, or fetches it now for an accessor it does not know).
    eventually("the engine serves", Duration::from_secs(30), || {
        let (agent, secret) = (agent.clone(), submitter.secret.clone());
        async move { infer_streams(&agent, &secret).await }
    })
    .await;

    // Every RPC of the table: refused without a valid token of its role,
    // served with one. A token of each role, the smallest that is enough
    // and the largest that is not.
    let tokens: HashMap<Role, &str> = [
        (Role::Read, reader.secret.as_str()),
        (Role::Submit, submitter.secret.as_str()),
        (Role::Operator, operator.secret.as_str()),
    ]
    .into_iter()
    .collect();
    // The agent reads its engines' stats every 250 ms: let it see the
    // request above before counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = completed(&agent, &reader.secret, &alloc).await;
    for (rpc, need) in RPC_ROLES {
        let status = call_rpc(&agent, rpc, None, &alloc).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{rpc}: {status:?}");
        let status = call_rpc(&agent, rpc, Some(&revoked.secret), &alloc)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{rpc}: {status:?}");
        assert!(status.message().contains("revoked"), "{rpc}: {status:?}");
        let forged = format!(
            "{}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            reader.accessor
        );
        let status = call_rpc(&agent, rpc, Some(&forged), &alloc)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{rpc}: {status:?}");
        let too_small = match need {
            Role::Submit => Some(Role::Read),
            Role::Operator => Some(Role::Submit),
            _ => None,
        };
        if let Some(small) = too_small {
            let status = call_rpc(&agent, rpc, Some(tokens[&small]), &alloc)
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::PermissionDenied, "{rpc}: {status:?}");
            assert!(status.message().contains(need.as_str()), "{status:?}");
        }
        call_rpc(&agent, rpc, Some(tokens[need]), &alloc)
            .await
            .unwrap_or_else(|s| panic!("{rpc} with a {need} token: {s:?}"));
    }
    // The refused inference requests never reached the engine; the one
    // served per pass above did.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = completed(&agent, &reader.secret, &alloc).await;
    assert_eq!(after, before + 1, "only the served Infer ran");

    // The HTTP routes: 401 with an OpenAI-style body, 403 for a role too
    // small, served with the right one.
    for (method, path, need) in HTTP_ROLES {
        let (status, body) = http(&http_addr, method, path, None).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        let (status, body) = http(&http_addr, method, path, Some(&revoked.secret)).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        if *need == Role::Submit {
            let (status, body) = http(&http_addr, method, path, Some(&reader.secret)).await;
            assert_eq!(status, 403, "{method} {path}: {body}");
            assert!(body["error"]["message"].is_string(), "{body}");
        }
        let (status, body) = http(&http_addr, method, path, Some(tokens[need])).await;
        assert_eq!(status, 200, "{method} {path}: {body}");
    }
    let (status, _) = http(&http_addr, "GET", "/nope", None).await;
    assert_eq!(status, 401, "no route answers without a token");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        completed(&agent, &reader.secret, &alloc).await,
        after + 2,
        "only the two served completions ran"
    );

    // The CLI's agent calls send --token.
    let infer = ["infer", "llm", "--prompt-tokens", "4", "--max-tokens", "2"];
    let out = cli(&addr, Some(&submitter.secret), &infer);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&addr, Some(&reader.secret), &infer);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs role submit"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&addr, None, &["alloc", "logs", &alloc]);
    assert!(!out.status.success());
    let out = cli(&addr, Some(&reader.secret), &["alloc", "logs", &alloc]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || !(stderr.contains("token") || stderr.contains("role")),
        "{stderr}"
    );
    let out = cli(&addr, Some(&reader.secret), &["balance", "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A revocation reaches the agent within its refresh interval.
    let stats = "/herd.agent.v1.NodeAgent/EngineStats";
    call_rpc(&agent, stats, Some(&later.secret), &alloc)
        .await
        .expect("served before the revocation");
    json_as(
        &addr,
        &operator.secret,
        &["acl", "token", "revoke", &later.accessor],
    );
    let revoked_at = Instant::now();
    eventually(
        "the agent refuses the revoked token",
        Duration::from_secs(8),
        || {
            let (agent, alloc, secret) = (agent.clone(), alloc.clone(), later.secret.clone());
            async move {
                call_rpc(&agent, stats, Some(&secret), &alloc)
                    .await
                    .is_err_and(|s| s.code() == Code::Unauthenticated)
            }
        },
    )
    .await;
    eprintln!(
        "revocation reached the agent after {:?}",
        revoked_at.elapsed()
    );

    // Agent to agent: a request entering at a second agent is forwarded to
    // the instance's agent with the second agent's node token, and the
    // second agent's fleet view reads the instance's load with it too.
    agents
        .start("a2", &["--token", &node.secret])
        .expect("start agent");
    let second = agents.agent("a2").expect("agent").addr.clone();
    eventually(
        "a request entering at a2 served by a1's engine",
        Duration::from_secs(30),
        || {
            let (second, secret) = (second.clone(), submitter.secret.clone());
            async move { infer_streams(&second, &secret).await }
        },
    )
    .await;
    let status = call_rpc(
        &second,
        "/herd.agent.v1.NodeAgent/Infer",
        Some(&reader.secret),
        "",
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // The coordinator stops: the agent keeps its table. Known tokens work,
    // the revoked ones and no token stay refused.
    let member = cluster.ids()[0];
    cluster.kill(member).expect("stop the coordinator");
    tokio::time::sleep(Duration::from_secs(4)).await;
    call_rpc(&agent, stats, Some(&reader.secret), &alloc)
        .await
        .expect("a known read token without coordinators");
    call_rpc(
        &agent,
        "/herd.agent.v1.NodeAgent/Infer",
        Some(&submitter.secret),
        &alloc,
    )
    .await
    .expect("a known submit token serves without coordinators");
    for token in [
        None,
        Some(later.secret.as_str()),
        Some(revoked.secret.as_str()),
    ] {
        let status = call_rpc(&agent, stats, token, &alloc).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let (status, _) = http(&http_addr, "GET", "/v1/models", Some(&reader.secret)).await;
    assert_eq!(status, 200);
    let (status, _) = http(&http_addr, "GET", "/v1/models", None).await;
    assert_eq!(status, 401);
}
