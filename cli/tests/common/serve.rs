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

/// An inference service's spec as the serving tests run it: the SIMULATED
/// engine's `inference` driver, one task whose `[task.config]` sizes the
/// engine. The tests differ only in the few figures set here, so each says
/// which ones it needs and the rest stays one shared text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    name: String,
    count: u32,
    spread_node: bool,
    cpu: u32,
    memory: String,
    kv_blocks: u32,
    bytes_per_token: Option<u32>,
    max_batch: Option<u32>,
    time_scale: String,
    priority_preemption: Option<bool>,
}

impl ServiceSpec {
    /// `count` instances of service `llm`, one per node, of 100 CPU and 64
    /// MiB each: 64 KV blocks, decoding at the modelled speed
    /// (`time_scale` 1), the engine's defaults otherwise.
    pub fn llm(count: u32) -> Self {
        Self {
            name: "llm".into(),
            count,
            spread_node: true,
            cpu: 100,
            memory: "64MiB".into(),
            kv_blocks: 64,
            bytes_per_token: None,
            max_batch: None,
            time_scale: "1".into(),
            priority_preemption: None,
        }
    }

    /// The service (job) is called `name`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// `count` instances.
    pub fn count(mut self, count: u32) -> Self {
        self.count = count;
        self
    }

    /// Instances may share a node (no `spread`).
    pub fn any_node(mut self) -> Self {
        self.spread_node = false;
        self
    }

    /// Each instance reserves `cpu` (millicores) and `memory` (`"64MiB"`).
    pub fn resources(mut self, cpu: u32, memory: &str) -> Self {
        self.cpu = cpu;
        self.memory = memory.into();
        self
    }

    /// Each engine has `blocks` KV blocks (of 16 tokens).
    pub fn kv_blocks(mut self, blocks: u32) -> Self {
        self.kv_blocks = blocks;
        self
    }

    /// KV bytes per token (a block is 16 of them): what a migration copies.
    pub fn bytes_per_token(mut self, bytes: u32) -> Self {
        self.bytes_per_token = Some(bytes);
        self
    }

    /// At most `batch` requests decode together.
    pub fn max_batch(mut self, batch: u32) -> Self {
        self.max_batch = Some(batch);
        self
    }

    /// Real time per modelled second (`"0.1"`: 10× faster than modelled).
    pub fn time_scale(mut self, scale: &str) -> Self {
        self.time_scale = scale.into();
        self
    }

    /// Whether a high-priority request may preempt lower ones.
    pub fn priority_preemption(mut self, on: bool) -> Self {
        self.priority_preemption = Some(on);
        self
    }

    /// The service's name.
    pub fn job(&self) -> &str {
        &self.name
    }

    /// The spec's TOML text.
    pub fn toml(&self) -> String {
        let mut text = format!(
            "name = \"{}\"\ntype = \"service\"\ncount = {}\n",
            self.name, self.count
        );
        if self.spread_node {
            text.push_str("spread = \"node\"\n");
        }
        text.push_str(&format!(
            "\n[task]\ndriver = \"inference\"\n\n[task.resources]\ncpu = {}\nmemory = \"{}\"\n\n[task.config]\nkv_blocks = \"{}\"\n",
            self.cpu, self.memory, self.kv_blocks
        ));
        if let Some(bytes) = self.bytes_per_token {
            text.push_str(&format!("bytes_per_token = \"{bytes}\"\n"));
        }
        if let Some(batch) = self.max_batch {
            text.push_str(&format!("max_batch = \"{batch}\"\n"));
        }
        text.push_str(&format!("time_scale = \"{}\"\n", self.time_scale));
        if let Some(on) = self.priority_preemption {
            text.push_str(&format!("priority_preemption = \"{on}\"\n"));
        }
        text
    }

    /// Writes the spec into `dir` and runs it on the cluster at `addr`.
    pub fn run(&self, addr: &str, dir: &std::path::Path) {
        run_job(addr, dir, &self.name, &self.toml());
    }
}

/// The gRPC address of each agent of `names` in `agents`.
pub fn agent_addrs<'a>(agents: &AgentSet, names: &[&'a str]) -> BTreeMap<&'a str, String> {
    names
        .iter()
        .map(|n| (*n, agents.agent(n).expect("agent").addr.clone()))
        .collect()
}

/// A cluster serving one inference service, as most serving tests begin:
/// one coordinator (nodes down after 2 s without a heartbeat), agents
/// started and ready, the service running with an instance on each of
/// `spec`'s count of nodes. Keep it alive for the whole test: dropping it
/// stops the coordinator and the agents.
pub struct Serving {
    /// The coordinator.
    pub cluster: herd_chaos::process_cluster::ProcessCluster,
    /// Its address list (`--addr`).
    pub addr: String,
    /// The agents.
    pub agents: AgentSet,
    /// Each agent's gRPC address, by node.
    pub agent_addr: BTreeMap<&'static str, String>,
    /// Each instance, by node (node → allocation).
    pub instance: BTreeMap<String, String>,
    /// Where the spec was written.
    _specs: tempfile::TempDir,
}

/// Starts [`Serving`]: agents `names`, each with `agent_args` and the
/// environment `env`, running `spec`.
pub async fn serving(
    names: &[&'static str],
    agent_args: &[&str],
    env: &[(&str, &str)],
    spec: &ServiceSpec,
) -> Serving {
    let (cluster, addr, agents) = super::agents::cluster_with_agents(1, "2000").await;
    let mut agents = env
        .iter()
        .fold(agents, |agents, (key, value)| agents.with_env(key, value));
    for name in names {
        agents.start(name, agent_args).expect("start agent");
    }
    super::agents::must_have_ready_nodes(&addr, names).await;
    let agent_addr = agent_addrs(&agents, names);
    let specs = tempfile::tempdir().expect("tempdir");
    spec.run(&addr, specs.path());
    let instance = instances_by_node(&addr, spec.job(), spec.count as usize).await;
    Serving {
        cluster,
        addr,
        agents,
        agent_addr,
        instance,
        _specs: specs,
    }
}
