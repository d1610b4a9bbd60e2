//! Helpers shared by the end-to-end tests, kept in one place so that every
//! test waits, parses and skips the same way: the herd binary, CLI runs and
//! their JSON output, spec files, waiting on a condition, skipping (or, in
//! CI, failing) where a tool is missing, and variable writes/reads through
//! the real gRPC API.
#![allow(dead_code)]
// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod agents;
pub mod balance;
pub mod browser;
pub mod members;
pub mod qemu;
pub mod serve;
pub mod tls;
pub mod tokens;
pub mod training;
pub mod vms;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use herd_api::client::HerdClient;
use herd_api::proto::v1::variables_client::VariablesClient;
use herd_api::proto::v1::{GetVariableRequest, PutVariableRequest};
use herd_chaos::process_cluster::ProcessCluster;
use serde_json::Value;

/// Whether these tests run in CI, where `CI` is set (to anything but empty,
/// `0` or `false`, as CI services set it): there a missing tool is a broken
/// machine, not a reason to pass.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE"))
}

/// Called by a test that cannot run here because `why` (a missing tool or
/// permission): outside CI it prints why and the caller returns, so a
/// laptop without Docker or QEMU still runs the rest; in CI it panics,
/// so CI can never pass by skipping. `.ci/run` installs what these need.
pub fn skip_or_fail(why: &str) {
    if in_ci() {
        panic!(
            "{why}\n(in CI, CI=true, a test whose tool is missing fails instead of \
             skipping: .ci/run must install it)"
        );
    }
    eprintln!("skipping: {why}");
}

/// Polls `probe` until it returns Some, and returns that; fails the test
/// after `limit` naming `what`. Every wait on a condition goes through here
/// (or [`until_or_none`]), so that no test asserts after a fixed sleep that
/// a slow machine can outrun.
pub async fn until<T>(what: &str, limit: Duration, probe: impl FnMut() -> Option<T>) -> T {
    match until_or_none(limit, probe).await {
        Some(value) => value,
        None => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `probe` until it returns Some, or None after `limit`, for a caller
/// that says more than [`until`] can when the wait fails. It polls quickly at
/// first (a condition that is nearly true costs little) and backs off to
/// 200 ms.
pub async fn until_or_none<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// `herd --addr ADDR ARGS -o json`, parsed; the command must succeed.
pub fn json(addr: &str, args: &[&str]) -> Value {
    let mut full = vec!["--addr", addr];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&must_cli_ok(&full)).expect("json output")
}

/// Writes `text` to `dir/name.toml`; returns its path.
pub fn write_spec(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write spec");
    path.display().to_string()
}

/// The herd binary cargo built for these tests.
pub fn herd_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herd"))
}

/// `herd` as a child process, plaintext: tests run whole clusters on
/// loopback, so their daemons get `--insecure` (through `HERD_INSECURE`;
/// client commands ignore it). TLS tests pass `--tls-*` and remove it.
pub fn herd_command() -> Command {
    let mut command = Command::new(herd_bin());
    command.env("HERD_INSECURE", "true");
    command
}

/// `libherd_chaos_shim.so` beside the herd binary, where `herd chaos run`
/// looks for it. Built here with the herd binary's profile and target dir:
/// a test build of the workspace compiles the shim's unit tests, not the
/// library itself, and a stale library would test old code.
pub fn chaos_shim() -> PathBuf {
    let profile_dir = herd_bin().parent().expect("herd's profile dir");
    let target_dir = profile_dir.parent().expect("herd's target dir");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--quiet", "-p", "herd-chaos-shim", "--target-dir"])
        .arg(target_dir);
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("run cargo");
    assert!(status.success(), "cargo build -p herd-chaos-shim failed");
    let shim = profile_dir.join(herd_chaos::shim::SHIM_FILE);
    assert!(shim.is_file(), "{} was not built", shim.display());
    shim
}

/// A one-member cluster with `extra` coordinator flags, once it leads.
pub async fn must_start_one_member(extra: &[&str]) -> ProcessCluster {
    let cluster = ProcessCluster::start(herd_bin(), 1, extra).expect("start a coordinator");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    cluster
}

/// Runs `herd ARGS` to completion.
pub fn must_run_cli(args: &[&str]) -> Output {
    herd_command()
        .args(args)
        .env("HERD_LOG", "error")
        .output()
        .expect("run herd")
}

/// Stdout of `herd ARGS`, which must succeed.
pub fn must_cli_ok(args: &[&str]) -> String {
    let out = must_run_cli(args);
    assert!(
        out.status.success(),
        "herd {args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `key = value`; Ok(version) once acknowledged.
pub async fn put(client: &HerdClient, key: &str, value: &str) -> Result<u64, String> {
    client
        .call(|ch| {
            let request = PutVariableRequest {
                key: key.to_string(),
                value: value.as_bytes().to_vec(),
                expected_version: None,
            };
            async move {
                VariablesClient::new(ch)
                    .put(request)
                    .await
                    .map(|r| r.into_inner().version)
            }
        })
        .await
        .map_err(|e| e.to_string())
}

/// Writes `key = value`, sending it again after any error until it is
/// acknowledged (30 s at most): for set-up writes, where writing the same
/// value twice is harmless and an election at start-up must not fail the test.
pub async fn must_put(client: &HerdClient, key: &str, value: &str) -> u64 {
    let started = Instant::now();
    loop {
        match put(client, key, value).await {
            Ok(version) => return version,
            Err(e) if started.elapsed() > Duration::from_secs(30) => {
                panic!("{key} = {value} not acknowledged within 30 s: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Reads `key` (linearizable unless `stale`); None when absent.
pub async fn get(client: &HerdClient, key: &str, stale: bool) -> Result<Option<String>, String> {
    client
        .call(|ch| {
            let request = GetVariableRequest {
                key: key.to_string(),
                stale,
            };
            async move {
                VariablesClient::new(ch)
                    .get(request)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
        .map(|r| {
            r.found
                .then(|| String::from_utf8_lossy(&r.value).into_owned())
        })
        .map_err(|e| e.to_string())
}

/// Writes `count` keys `{prefix}{i}` with `concurrency` writers spread over
/// `members`, retrying each until acknowledged; returns the acknowledged keys.
pub async fn must_write_many(
    cluster: &ProcessCluster,
    members: &[u64],
    prefix: &str,
    count: usize,
    concurrency: usize,
) -> Vec<(String, String)> {
    let clients: Vec<HerdClient> = members
        .iter()
        .map(|id| {
            // Each writer starts at "its" member and falls back to the others.
            let mut order = vec![*id];
            order.extend(members.iter().filter(|m| *m != id));
            cluster.client_for(&order).expect("client")
        })
        .collect();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let client = clients[w % clients.len()].clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = w;
            while i < count {
                let key = format!("{prefix}{i}");
                let value = format!("value-{i}");
                let started = Instant::now();
                loop {
                    match put(&client, &key, &value).await {
                        Ok(_) => break,
                        Err(e) if started.elapsed() > Duration::from_secs(30) => {
                            panic!("write {key} never acknowledged: {e}")
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                acked.push((key, value));
                i += concurrency;
            }
            acked
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("writer task"));
    }
    all
}

/// Asserts every acknowledged write reads back through `client` (linearizably
/// unless `stale`), with 16 readers at a time.
pub async fn must_read_all(client: &HerdClient, acked: &[(String, String)], stale: bool) {
    for chunk in acked.chunks(16) {
        let reads = chunk.iter().map(|(key, value)| async move {
            let got = get(client, key, stale)
                .await
                .unwrap_or_else(|e| panic!("read {key}: {e}"));
            assert_eq!(
                got.as_deref(),
                Some(value.as_str()),
                "acknowledged write {key} lost or wrong"
            );
        });
        futures::future::join_all(reads).await;
    }
}

/// Waits until the given members report the same applied index and state digest.
pub async fn must_converge(
    cluster: &ProcessCluster,
    members: &[u64],
    timeout: Duration,
) -> (u64, u64) {
    let started = Instant::now();
    loop {
        let mut reports = Vec::new();
        for id in members {
            if let Some(report) = cluster.member_report(*id).await {
                reports.push((report.last_applied.unwrap_or(0), report.state_digest));
            }
        }
        if reports.len() == members.len() && reports.windows(2).all(|w| w[0] == w[1]) {
            return reports[0];
        }
        assert!(
            started.elapsed() < timeout,
            "members {members:?} did not converge: {reports:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Registers a node of `cpu_millis` and 8 GiB with no agent behind it, so
/// that the scheduler has room to place on (its allocations never run).
pub async fn must_register_node(cluster: &ProcessCluster, name: &str, cpu_millis: u64) {
    let request = herd_api::proto::agent::RegisterNodeRequest {
        name: name.to_string(),
        addr: "127.0.0.1:1".to_string(),
        capacity: Some(herd_api::proto::v1::Resources {
            cpu_millis,
            memory_bytes: 8 << 30,
            gpus: 0,
            gpu_model: String::new(),
        }),
        labels: Default::default(),
        // No agent behind it, so no drivers to declare (capabilities unknown).
        drivers: vec![],
        http: String::new(),
    };
    // A registration is idempotent: one caught in an election ("outcome
    // unknown") is sent again.
    let client = cluster.client().expect("client");
    let mut last_error = None;
    for _ in 0..20 {
        let sent = client
            .call(|ch| {
                let request = request.clone();
                async move {
                    herd_api::proto::agent::agent_client::AgentClient::new(ch)
                        .register(request)
                        .await
                }
            })
            .await;
        match sent {
            Ok(_) => return,
            Err(e) => last_error = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("register {name}: {last_error:?}");
}

/// Runs `herd chaos run --scenario SCENARIO --duration DURATION --seed
/// SEED` and asserts what every run must show: exit 0, every checker
/// passed, the checker named `checker` among them. Returns the output
/// directory (kept alive), the report, and the path of the run's history.
pub fn must_pass_scenario(
    scenario: &str,
    seed: &str,
    duration: &str,
    checker: &str,
) -> (tempfile::TempDir, String, std::path::PathBuf) {
    must_pass_scenario_with(scenario, seed, duration, checker, &[])
}

/// [`must_pass_scenario`] with more flags for `herd chaos run` (`--tls`).
pub fn must_pass_scenario_with(
    scenario: &str,
    seed: &str,
    duration: &str,
    checker: &str,
    flags: &[&str],
) -> (tempfile::TempDir, String, std::path::PathBuf) {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out = herd_command()
        .args([
            "chaos",
            "run",
            "--scenario",
            scenario,
            "--duration",
            duration,
        ])
        .args(flags)
        .args(["--seed", seed, "--out"])
        .arg(out_dir.path())
        .env("HERD_LOG", "error")
        .output()
        .expect("run herd chaos");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "herd chaos run --scenario {scenario} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all checkers passed"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(checker) && l.contains("pass")),
        "the checker {checker:?} did not run or pass:\n{stdout}"
    );
    let history = out_dir
        .path()
        .join(format!("{scenario}-{seed}"))
        .join("history.jsonl");
    (out_dir, stdout, history)
}

/// [`must_pass_scenario`] for 12 s of a scenario that moves work: the
/// migration checker must pass.
pub fn must_pass_moving_scenario(
    scenario: &str,
    seed: &str,
) -> (tempfile::TempDir, String, std::path::PathBuf) {
    must_pass_scenario(scenario, seed, "12s", "migrations end, one copy")
}
