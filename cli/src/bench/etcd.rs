//! etcd as a yardstick: a 3-member etcd cluster on loopback, written to
//! through its own gRPC KV API with the same value size and durability
//! (etcd fsyncs its WAL before acknowledging, as herd does).
//!
//! Only the two messages the benchmark needs are declared, by hand, from
//! etcd's public API (`etcdserverpb.KV/Put`, fields 1 and 2).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

/// `etcdserverpb.PutRequest`, fields used here only.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    /// Key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// Value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `etcdserverpb.PutResponse`; its fields are not needed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {}

/// A put through etcd's gRPC API.
pub async fn put(channel: Channel, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| e.to_string())?;
    let path = PathAndQuery::from_static("/etcdserverpb.KV/Put");
    grpc.unary::<PutRequest, PutResponse, _>(
        tonic::Request::new(PutRequest { key, value }),
        path,
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(|_| ())
    .map_err(|s| s.message().to_string())
}

/// Three etcd processes; killed on drop.
pub struct EtcdCluster {
    children: Vec<Child>,
    /// Client endpoints, `127.0.0.1:PORT`.
    pub client_addrs: Vec<String>,
    _dir: tempfile::TempDir,
}

/// Finds the etcd binary: the given path, or `etcd` on PATH.
pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return path.exists().then(|| path.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|candidate| candidate.is_file())
    })
}

impl EtcdCluster {
    /// Starts three members and waits until a put succeeds.
    pub async fn start(binary: &Path) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("herd-bench-etcd-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let port = || herd_chaos::ports::free_loopback_port().map_err(|e| e.to_string());
        let mut members = Vec::new();
        for i in 1..=3 {
            members.push((format!("e{i}"), port()?, port()?));
        }
        let initial: Vec<String> = members
            .iter()
            .map(|(name, _, peer)| format!("{name}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let mut cluster = Self {
            children: Vec::new(),
            client_addrs: Vec::new(),
            _dir: dir,
        };
        for (name, client, peer) in &members {
            let data = cluster._dir.path().join(name);
            let log = std::fs::File::create(cluster._dir.path().join(format!("{name}.log")))
                .map_err(|e| e.to_string())?;
            let child = Command::new(binary)
                .args(["--name", name])
                .arg("--data-dir")
                .arg(&data)
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args([
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                ])
                .args([
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                ])
                .args([
                    "--initial-cluster-token",
                    "herd-bench",
                    "--log-level",
                    "error",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
            cluster.children.push(child);
            cluster.client_addrs.push(format!("127.0.0.1:{client}"));
        }
        let channel = cluster.channel(0)?;
        let started = Instant::now();
        while let Err(e) = put(channel.clone(), b"warmup".to_vec(), b"1".to_vec()).await {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("etcd did not become ready: {e}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(cluster)
    }

    /// A channel to member `i`.
    pub fn channel(&self, i: usize) -> Result<Channel, String> {
        let addr = self.client_addrs.get(i).ok_or("no such etcd member")?;
        Ok(Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_lazy())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
