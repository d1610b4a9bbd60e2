//! The agent-to-agent stream of a whole migration cut mid-transfer (real
//! processes on loopback: a coordinator, agents m1 and m2). A training
//! job's checkpoint directory, with a few MiB beside the checkpoints,
//! moves from m1 to m2; m2 advertises its agent address through a TCP
//! proxy in this test, which closes every connection through it once 2 MiB
//! went towards m2.
//!
//! - Cut once: the source prepares again and resumes from what m2 holds
//!   (`send_with_resume`), and the move completes: the files arrive whole,
//!   the run ends as if never moved.
//! - Cut for good (every later connection closed at once): the move is
//!   aborted cleanly: the record ends `aborted`, the trainer resumes at
//!   home, one copy at a time, and m2 keeps no staging directory or
//!   partial file.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::training::{reference_weights, steps_in};
use common::*;
use herd_actors::toy_train::checkpoint::{self, WeightsRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const STEPS: u64 = 500;
const ARGS: [&str; 8] = [
    "--steps",
    "500",
    "--seed",
    "31",
    "--step-ms",
    "15",
    "--checkpoint-every",
    "50",
];
/// What travels beside the checkpoints.
const BLOB: &str = "optimizer-state.bin";
const BLOB_BYTES: usize = 6 << 20;
/// Bytes towards m2 after which the proxy cuts.
const CUT_AFTER: u64 = 2 << 20;

/// A TCP proxy to m2's agent that cuts every connection once [`CUT_AFTER`]
/// bytes went through towards m2, then carries new connections again
/// (`for_good` false) or closes each at once (`for_good` true).
struct CutProxy {
    addr: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    /// m2's real address, once its agent started.
    target: Mutex<Option<String>>,
    towards_target: AtomicU64,
    cut: AtomicBool,
    cuts: AtomicU32,
    for_good: bool,
    connections: Mutex<Vec<AbortHandle>>,
}

impl CutProxy {
    async fn start(for_good: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr").to_string();
        let shared = Arc::new(Shared {
            target: Mutex::new(None),
            towards_target: AtomicU64::new(0),
            cut: AtomicBool::new(false),
            cuts: AtomicU32::new(0),
            for_good,
            connections: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(accept(listener, shared.clone()));
        Self { addr, shared, task }
    }

    fn point_at(&self, target: &str) {
        *self.shared.target.lock().expect("lock") = Some(target.to_string());
    }

    fn cuts(&self) -> u32 {
        self.shared.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
        for c in self.shared.connections.lock().expect("lock").drain(..) {
            c.abort();
        }
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        if shared.for_good && shared.cut.load(Ordering::SeqCst) {
            drop(inbound);
            continue;
        }
        let Some(target) = shared.target.lock().expect("lock").clone() else {
            continue;
        };
        let task = tokio::spawn(carry(inbound, target, shared.clone()));
        shared
            .connections
            .lock()
            .expect("lock")
            .push(task.abort_handle());
    }
}

async fn carry(inbound: TcpStream, target: String, shared: Arc<Shared>) {
    let Ok(outbound) = TcpStream::connect(&target).await else {
        return;
    };
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let up = {
        let shared = shared.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match in_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if out_write.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                let total = shared.towards_target.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                if total >= CUT_AFTER && !shared.cut.swap(true, Ordering::SeqCst) {
                    shared.cuts.fetch_add(1, Ordering::SeqCst);
                    // Every connection through the proxy, this one included.
                    for c in shared.connections.lock().expect("lock").drain(..) {
                        c.abort();
                    }
                    return;
                }
            }
        }
    };
    let down = async move {
        let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

struct Moving {
    _cluster: herd_chaos::process_cluster::ProcessCluster,
    addr: String,
    agents: herd_chaos::agents::AgentSet,
    alloc: String,
    proxy: CutProxy,
    m1_alloc: PathBuf,
    blob: Vec<u8>,
    _dir: tempfile::TempDir,
}

/// The trainer running on m1 past its first checkpoint with a blob beside
/// its checkpoints, and m2 reached through the cutting proxy.
async fn moving(for_good: bool) -> Moving {
    let (cluster, addr, mut agents) = cluster_with_agents(1, "3000").await;
    agents.start("m1", &[]).expect("start m1");
    must_have_ready_nodes(&addr, &["m1"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = ARGS.iter().map(|a| format!("{a:?}")).collect();
    let spec = write_spec(
        dir.path(),
        "train",
        &format!(
            "name = \"train\"\ntype = \"batch\"\n[task]\ndriver = \"dljob\"\nargs = [{}]\n[task.resources]\ncpu = 100\nmemory = \"64MiB\"\n",
            args.join(", ")
        ),
    );
    must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &spec]);
    let alloc = until("the trainer running", Duration::from_secs(20), || {
        let allocs = running_allocs(&addr, "train");
        let [a] = allocs.as_slice() else { return None };
        a["id"].as_str().map(str::to_string)
    })
    .await;
    let m1_alloc = agents
        .agent("m1")
        .expect("m1")
        .data_dir
        .join("allocs")
        .join(&alloc);
    let log = m1_alloc.join("stdout.log");
    until(
        "steps past the first checkpoint",
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&log).ok()?;
            (steps_in(&text).last().copied()? > 60).then_some(())
        },
    )
    .await;
    // Bytes that do not compress, so the cut falls mid-file.
    let mut blob = Vec::with_capacity(BLOB_BYTES);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while blob.len() < BLOB_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        blob.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(m1_alloc.join("checkpoints").join(BLOB), &blob).expect("write the blob");

    let proxy = CutProxy::start(for_good).await;
    let m2 = agents
        .start("m2", &["--advertise", &proxy.addr])
        .expect("start m2")
        .addr
        .clone();
    proxy.point_at(&m2);
    must_have_ready_nodes(&addr, &["m1", "m2"]).await;
    Moving {
        _cluster: cluster,
        addr,
        agents,
        alloc,
        proxy,
        m1_alloc,
        blob,
        _dir: dir,
    }
}

/// Trainer processes of the job now, through /proc.
fn copies(t: &Moving) -> usize {
    t.agents
        .workloads()
        .into_iter()
        .filter(|w| w.job == "train")
        .count()
}

/// `herd alloc migrate ... --wait` to m2, capped so that the cut falls
/// mid-transfer, watching the trainers meanwhile; the output and the most
/// copies seen at once.
async fn migrate(t: &Moving) -> (std::process::Output, usize) {
    let args: Vec<String> = [
        "--addr",
        &t.addr,
        "alloc",
        "migrate",
        &t.alloc,
        "--to",
        "m2",
        "--bandwidth",
        "4MiB/s",
        "--wait",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let cli = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        must_run_cli(&args)
    });
    let mut most = 0;
    while !cli.is_finished() {
        most = most.max(copies(t));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (cli.join().expect("cli thread"), most)
}

async fn until_complete(t: &Moving, mut most: usize) -> usize {
    let started = std::time::Instant::now();
    loop {
        most = most.max(copies(t));
        if json(&t.addr, &["job", "status", "train"])["status"] == "complete" {
            return most;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the job never completed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ends_as_if_never_moved(logs: &[PathBuf], weights: &Path) {
    let mut all = Vec::new();
    for log in logs {
        all.extend(steps_in(&std::fs::read_to_string(log).expect("log")));
    }
    assert_eq!(all, (1..=STEPS).collect::<Vec<_>>(), "steps of {logs:?}");
    let reference_dir = tempfile::tempdir().expect("tempdir");
    let reference = reference_weights(reference_dir.path(), &ARGS);
    let moved: WeightsRecord =
        serde_json::from_str(&std::fs::read_to_string(weights).expect("weights")).expect("json");
    assert_eq!(moved.step, STEPS);
    assert_eq!(moved.weight_bits, reference.weight_bits);
}

/// Files under `dir` whose name ends in `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found
}

/// Staging directories left on `node`.
fn staging_left(t: &Moving, node: &str) -> usize {
    let dir = t
        .agents
        .agent(node)
        .expect("agent")
        .data_dir
        .join("migrations");
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_mid_transfer_resumes_and_the_move_completes() {
    let t = moving(false).await;
    let (moved, most) = migrate(&t).await;
    assert!(
        moved.status.success(),
        "migrate: {}\n{}",
        String::from_utf8_lossy(&moved.stdout),
        String::from_utf8_lossy(&moved.stderr)
    );
    assert_eq!(t.proxy.cuts(), 1, "the proxy never cut the stream");
    let record = json(&t.addr, &["migration", "list", "--alloc", &t.alloc])[0].clone();
    assert_eq!(record["phase"], "completed", "{record:#}");
    assert!(
        record["bytes"].as_u64().unwrap_or(0) >= BLOB_BYTES as u64,
        "{record:#}"
    );
    // The source resumed the transfer after the cut.
    let m1_log =
        std::fs::read_to_string(&t.agents.agent("m1").expect("m1").log_path).expect("m1's log");
    assert!(
        m1_log.contains("transfer cut; resuming"),
        "no resume in m1's log"
    );

    let m2_alloc = t
        .agents
        .agent("m2")
        .expect("m2")
        .data_dir
        .join("allocs")
        .join(&t.alloc);
    let arrived = std::fs::read(m2_alloc.join("checkpoints").join(BLOB)).expect("the blob arrived");
    assert!(arrived == t.blob, "the blob arrived changed");
    let most = until_complete(&t, most).await;
    assert_eq!(most, 1, "two trainers ran at once (or none was seen)");
    ends_as_if_never_moved(
        &[t.m1_alloc.join("stdout.log"), m2_alloc.join("stdout.log")],
        &m2_alloc.join("checkpoints").join(checkpoint::WEIGHTS),
    );
    assert_eq!(staging_left(&t, "m2"), 0);
    let m2_dir = t.agents.agent("m2").expect("m2").data_dir.clone();
    assert_eq!(
        files_ending(&m2_dir, herd_node::migrate::PARTIAL_SUFFIX),
        Vec::<PathBuf>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_for_good_aborts_the_move_cleanly() {
    let t = moving(true).await;
    let (moved, most) = migrate(&t).await;
    let stderr = String::from_utf8_lossy(&moved.stderr);
    assert_eq!(moved.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("aborted"), "{stderr}");
    assert_eq!(t.proxy.cuts(), 1, "the proxy never cut the stream");
    let record = json(&t.addr, &["migration", "list", "--alloc", &t.alloc])[0].clone();
    assert_eq!(record["phase"], "aborted", "{record:#}");
    assert!(
        record["error"]
            .as_str()
            .is_some_and(|e| e.contains("copying the checkpoint failed")),
        "{record:#}"
    );
    let status = json(&t.addr, &["alloc", "status", &t.alloc]);
    assert_eq!(status["node"], "m1", "{status:#}");
    assert_eq!(status["generation"], 1, "{status:#}");

    let most = until_complete(&t, most).await;
    assert_eq!(most, 1, "two trainers ran at once (or none was seen)");
    ends_as_if_never_moved(
        &[t.m1_alloc.join("stdout.log")],
        &t.m1_alloc.join("checkpoints").join(checkpoint::WEIGHTS),
    );
    // m2 learned of the abort from its assignments (the proxy carries
    // nothing to it any more) and dropped what it held.
    let m2_dir = t.agents.agent("m2").expect("m2").data_dir.clone();
    until("m2's staging removed", Duration::from_secs(20), || {
        (staging_left(&t, "m2") == 0).then_some(())
    })
    .await;
    assert_eq!(
        files_ending(&m2_dir, herd_node::migrate::PARTIAL_SUFFIX),
        Vec::<PathBuf>::new()
    );
    assert!(
        !m2_dir
            .join("allocs")
            .join(&t.alloc)
            .join("checkpoints")
            .exists(),
        "m2 installed a checkpoint of an aborted move"
    );
}
