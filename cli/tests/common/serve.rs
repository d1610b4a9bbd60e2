//! Helpers for tests of the agents' OpenAI-compatible HTTP endpoint
//! (`herd node --http-listen`), shared so that every such test starts its
//! agents, runs its service and talks plain HTTP the same way: an agent
//! with an endpoint on a free loopback port, an inference service run from
//! a spec, a raw HTTP/1.0 exchange, and a wait until the endpoint lists the
//! service.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use herd_chaos::agents::AgentSet;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{must_cli_ok, write_spec};

/// Starts agent `name` of `agents` with its HTTP endpoint on a free
/// loopback port; returns the endpoint's address (`127.0.0.1:PORT`).
pub fn start_http_agent(agents: &mut AgentSet, name: &str) -> String {
    let port = herd_chaos::ports::free_loopback_port().expect("a free port");
    let listen = format!("127.0.0.1:{port}");
    agents
        .start(name, &["--http-listen", &listen])
        .expect("start agent");
    listen
}

/// Writes `spec` (a job named `name`) into `dir` and runs it on the
/// cluster at `addr`.
pub fn run_job(addr: &str, dir: &std::path::Path, name: &str, spec: &str) {
    let path = write_spec(dir, name, spec);
    must_cli_ok(&["--addr", addr, "job", "run", &path]);
}

/// An HTTP/1.0 exchange (the server closes the connection after the
/// response, so the body needs no chunked decoding): the status, the
/// headers (lower-case names) and a reader positioned at the body.
pub async fn send(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, BTreeMap<String, String>, BufReader<TcpStream>) {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the endpoint");
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
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
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.expect("header");
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        headers.insert(name.to_lowercase(), value.trim().to_string());
    }
    (status, headers, reader)
}

/// [`send`], the body read whole as JSON.
pub async fn call(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, BTreeMap<String, String>, Value) {
    let (status, headers, mut reader) = send(addr, method, path, body).await;
    let mut text = String::new();
    reader.read_to_string(&mut text).await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (status, headers, value)
}

/// The `data:` payloads of a server-sent event stream.
pub fn events(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim().to_string())
        .collect()
}

/// Waits until the endpoint at `entry` lists `model` in `/v1/models` (the
/// agent lists the services from the coordinators every 2 s), 10 s at
/// most; every answer meanwhile must be a 200.
pub async fn must_list_model(entry: &str, model: &str) {
    let started = Instant::now();
    loop {
        let (status, _, body) = call(entry, "GET", "/v1/models", "").await;
        assert_eq!(status, 200, "{body}");
        if body["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|m| m["id"] == model))
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{model} not listed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A gRPC client of the node agent at `addr` (its agent port), for tests
/// that call `Infer`, `EngineStats` or `MigrateRequest` directly.
pub async fn agent(
    addr: &str,
) -> herd_api::proto::agent::node_agent_client::NodeAgentClient<tonic::transport::Channel> {
    herd_api::proto::agent::node_agent_client::NodeAgentClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the agent")
}

/// The running instances of `job` by node (node → allocation), once there
/// are `count` of them on distinct nodes (30 s at most).
pub async fn instances_by_node(addr: &str, job: &str, count: usize) -> BTreeMap<String, String> {
    super::until(
        &format!("{count} running instances of {job}"),
        Duration::from_secs(30),
        || {
            let by_node: BTreeMap<String, String> = super::agents::running_allocs(addr, job)
                .iter()
                .map(|a| {
                    (
                        a["node"].as_str().unwrap_or_default().to_string(),
                        a["id"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            (by_node.len() == count).then_some(by_node)
        },
    )
    .await
}

/// Waits until the agent at `agent_addr` (which runs `source`) lists
/// `other` in its fleet view: until then `MigrateRequest` refuses a target
/// given without its agent; then it refuses the unknown request instead.
/// 20 s at most; then a second more, so that its load is polled too.
pub async fn must_know_instance(agent_addr: &str, source: &str, other: &str) {
    let started = Instant::now();
    loop {
        let probe = agent(agent_addr)
            .await
            .migrate_request(herd_api::proto::agent::MigrateRequestRequest {
                alloc_id: source.to_string(),
                request_id: u64::MAX,
                to_alloc: other.to_string(),
                to_agent: String::new(),
            })
            .await;
        match probe {
            Err(s) if s.message().contains("to_agent") => {}
            _ => break,
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{agent_addr} never listed {other}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
}

/// The stats of allocation `alloc_id` as its agent at `agent_addr` serves
/// them (`NodeAgent.EngineStats`), if it has read them.
pub async fn engine_stats(
    agent_addr: &str,
    alloc_id: &str,
) -> Option<herd_api::proto::inference::EngineStats> {
    agent(agent_addr)
        .await
        .engine_stats(herd_api::proto::agent::EngineStatsRequest {})
        .await
        .expect("engine stats")
        .into_inner()
        .engines
        .into_iter()
        .find(|e| e.alloc_id == alloc_id)
        .and_then(|e| e.stats)
}
