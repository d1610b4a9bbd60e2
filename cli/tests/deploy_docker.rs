//! The deploy/ kit end to end, with Docker: the FROM-scratch image that
//! deploy/image/build.sh makes out of this test's herd binary, and the
//! three-coordinator cluster of deploy/compose/docker-compose.yml.
//!
//! It forms a cluster, writes through it, kills the leader's container and
//! reads the write back through the new leader, then replaces every container
//! with a new one and reads it back again from what the volumes kept.
//!
//! Passes with a "skipping" message where Docker or compose is not
//! available, except in CI (`CI=true`), where that fails (`skip_or_fail`).

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::Command;

use common::skip_or_fail;

/// How long the cluster may take to form, or to elect a new leader.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(250);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

fn compose_file() -> PathBuf {
    repo_root().join("deploy/compose/docker-compose.yml")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `program args` to completion, killing it after `limit`.
async fn run(program: &str, args: &[&str], envs: &[(String, String)], limit: Duration) -> Output {
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(limit, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("cannot run {program} {args:?}: {e}"),
        Err(_) => panic!("{program} {args:?} did not finish within {limit:?}"),
    }
}

/// Like [`run`], but the command must succeed.
async fn must_run(
    program: &str,
    args: &[&str],
    envs: &[(String, String)],
    limit: Duration,
) -> String {
    let out = run(program, args, envs, limit).await;
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Whether `program args` runs and succeeds (false if it cannot be started).
fn succeeds(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `docker compose` (v2) or `docker-compose` (v1), whichever works.
fn compose_command() -> Option<Vec<String>> {
    if succeeds("docker", &["compose", "version"]) {
        Some(vec!["docker".into(), "compose".into()])
    } else if succeeds("docker-compose", &["version"]) {
        Some(vec!["docker-compose".into()])
    } else {
        None
    }
}

/// Three distinct free loopback ports (held together so they differ).
fn free_ports() -> [u16; 3] {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    let port = |i: usize| listeners[i].local_addr().expect("local addr").port();
    [port(0), port(1), port(2)]
}

/// The compose project and image of one run; tears both down when dropped,
/// however the test ends.
struct Deployment {
    compose: Vec<String>,
    file: String,
    project: String,
    image: String,
    env: Vec<(String, String)>,
    addrs: String,
    /// The admin client's certificate, copied out of the cluster's TLS volume.
    tls: tempfile::TempDir,
}

impl Deployment {
    fn compose_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all: Vec<&str> = self.compose[1..].iter().map(String::as_str).collect();
        all.extend(["-p", self.project.as_str(), "-f", self.file.as_str()]);
        all.extend(args);
        all
    }

    async fn compose(&self, args: &[&str], limit: Duration) -> String {
        must_run(&self.compose[0], &self.compose_args(args), &self.env, limit).await
    }

    /// Copies the CA and the admin client's certificate out of the TLS
    /// volume (made by the compose file's `herd tls quickstart` step).
    async fn fetch_tls(&self) {
        let member = self.container("herd-1").await;
        let source = format!("{member}:/etc/herd/tls/.");
        let target = self.tls.path().display().to_string();
        must_run(
            "docker",
            &["cp", &source, &target],
            &[],
            Duration::from_secs(30),
        )
        .await;
        for file in [
            "herd-ca.pem",
            "herd-client-admin.pem",
            "herd-client-admin-key.pem",
        ] {
            assert!(
                self.tls.path().join(file).exists(),
                "no {file} in the TLS volume"
            );
        }
    }

    /// Runs `herd --addr <the three published ports> ARGS` as the admin
    /// client, over mutual TLS.
    async fn herd(&self, args: &[&str]) -> Output {
        let file = |name: &str| self.tls.path().join(name).display().to_string();
        let (ca, cert, key) = (
            file("herd-ca.pem"),
            file("herd-client-admin.pem"),
            file("herd-client-admin-key.pem"),
        );
        let mut all = vec!["--addr", self.addrs.as_str()];
        all.extend(["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key]);
        all.extend(args);
        run(
            env!("CARGO_BIN_EXE_herd"),
            &all,
            &[("HERD_LOG".into(), "error".into())],
            Duration::from_secs(10),
        )
        .await
    }

    /// The container of compose service `service`.
    async fn container(&self, service: &str) -> String {
        let id = self
            .compose(&["ps", "-q", service], Duration::from_secs(30))
            .await;
        let id = id.trim();
        assert!(!id.is_empty(), "no container for service {service}");
        id.to_string()
    }

    /// Polls `cluster status -o json` until `ok` accepts it; the last answer
    /// is in the panic message otherwise.
    async fn wait_status(&self, what: &str, limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.herd(&["cluster", "status", "-o", "json"]).await;
            let last = if out.status.success() {
                let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                    panic!(
                        "cluster status -o json is not JSON ({e}): {}",
                        text(&out.stdout)
                    )
                });
                if ok(&status) {
                    return status;
                }
                status.to_string()
            } else {
                text(&out.stderr)
            };
            assert!(
                Instant::now() < deadline,
                "no {what} within {limit:?}; last answer: {last}"
            );
            self.assert_no_crash().await;
            tokio::time::sleep(POLL).await;
        }
    }

    /// Fails at once if a container of the project has exited on its own
    /// and been restarted (a broken image or a crashing coordinator), rather
    /// than when a wait runs out.
    async fn assert_no_crash(&self) {
        let filter = format!("label=com.docker.compose.project={}", self.project);
        let ids = must_run(
            "docker",
            &["ps", "-aq", "--filter", &filter],
            &[],
            Duration::from_secs(30),
        )
        .await;
        let mut args = vec!["inspect", "-f", "{{.Name}} {{.RestartCount}}"];
        args.extend(ids.split_whitespace());
        if args.len() == 3 {
            return;
        }
        let counts = must_run("docker", &args, &[], Duration::from_secs(30)).await;
        for line in counts.lines() {
            let (name, count) = line.rsplit_once(' ').unwrap_or((line, "0"));
            assert_eq!(count, "0", "container {name} crashed and was restarted");
        }
    }

    /// Waits until Docker reports the compose healthcheck of every service
    /// as passing.
    async fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut containers = Vec::new();
        for service in ["herd-1", "herd-2", "herd-3"] {
            containers.push(self.container(service).await);
        }
        loop {
            let mut states = Vec::new();
            for container in &containers {
                let state = must_run(
                    "docker",
                    &["inspect", "-f", "{{.State.Health.Status}}", container],
                    &[],
                    Duration::from_secs(30),
                )
                .await;
                states.push(state.trim().to_string());
            }
            if states.iter().all(|s| s == "healthy") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "healthchecks not passing within {limit:?}: {states:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// `var get KEY` must answer `want`: retried while the cluster cannot
    /// serve, but a missing or different value fails at once.
    async fn must_read(&self, key: &str, want: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.herd(&["var", "get", key]).await;
            if out.status.success() {
                assert_eq!(text(&out.stdout).trim_end(), want, "var {key} changed");
                return;
            }
            let err = text(&out.stderr);
            assert!(!err.contains("not found"), "var {key} lost: {err}");
            assert!(
                Instant::now() < deadline,
                "var get {key} failed for {limit:?}: {err}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let compose = |args: &[&str]| {
            std::process::Command::new(&self.compose[0])
                .args(self.compose_args(args))
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(std::process::Stdio::null())
                .output()
        };
        if std::thread::panicking() {
            if let Ok(out) = compose(&["logs", "--no-color", "--tail=60"]) {
                eprintln!(
                    "--- logs of {} ---\n{}{}",
                    self.project,
                    text(&out.stdout),
                    text(&out.stderr)
                );
            }
        }
        match compose(&["down", "-v", "--remove-orphans", "-t", "5"]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "compose down {} failed: {}",
                self.project,
                text(&out.stderr)
            ),
            Err(e) => eprintln!("cannot run compose down {}: {e}", self.project),
        }
        let removed = std::process::Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .stdin(std::process::Stdio::null())
            .output();
        if !removed.is_ok_and(|out| out.status.success()) {
            eprintln!("could not remove image {}", self.image);
        }
    }
}

/// The leader's id, once there is one.
fn leader(status: &Value) -> u64 {
    status["leader"].as_u64().unwrap_or(0)
}

/// Members of a status answer as (id, addr, healthy, voter).
fn members(status: &Value) -> Vec<(u64, String, bool, bool)> {
    status["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .map(|m| {
                    (
                        m["id"].as_u64().unwrap_or(0),
                        m["addr"].as_str().unwrap_or("").to_string(),
                        m["healthy"].as_bool().unwrap_or(false),
                        m["voter"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A leader and three healthy voters.
fn formed(status: &Value) -> bool {
    let members = members(status);
    leader(status) != 0 && members.len() == 3 && members.iter().all(|m| m.2 && m.3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_cluster_forms_fails_over_and_restarts_from_its_volumes() {
    if !succeeds("docker", &["info"]) {
        return skip_or_fail("Docker not available (`docker info` failed)");
    }
    let Some(compose) = compose_command() else {
        return skip_or_fail(
            "Docker compose not available (neither `docker compose` nor `docker-compose`)",
        );
    };
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.2}s] {what}", t0.elapsed().as_secs_f64());

    // Lowercase letters and digits only: compose v1 strips anything else.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    let unique = format!("herdtest{}x{nanos}", std::process::id());
    let image = format!("herd-deploy-test:{unique}");
    let ports = free_ports();
    let mut env = vec![("HERD_IMAGE".to_string(), image.clone())];
    for (i, port) in ports.iter().enumerate() {
        env.push((format!("HERD_PORT_{}", i + 1), port.to_string()));
    }
    let deployment = Deployment {
        compose,
        file: compose_file().display().to_string(),
        project: unique.clone(),
        image: image.clone(),
        env,
        addrs: ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(","),
        tls: tempfile::tempdir().expect("tempdir"),
    };

    let script = repo_root().join("deploy/image/build.sh");
    must_run(
        "bash",
        &[
            &script.display().to_string(),
            "--tag",
            &image,
            env!("CARGO_BIN_EXE_herd"),
        ],
        &[],
        Duration::from_secs(120),
    )
    .await;
    let user = must_run(
        "docker",
        &["image", "inspect", "-f", "{{.Config.User}}", &image],
        &[],
        Duration::from_secs(30),
    )
    .await;
    let user = user.trim();
    assert!(
        !user.is_empty() && !user.starts_with("0:") && user != "0" && user != "root",
        "image runs as root ({user:?})"
    );
    phase(&format!("image {image} built"));

    deployment
        .compose(&["up", "-d", "--no-build"], Duration::from_secs(90))
        .await;
    phase(&format!("project {unique} up on ports {ports:?}"));
    deployment.fetch_tls().await;
    // Mutual TLS only: a plaintext client is not served.
    let plaintext = run(
        env!("CARGO_BIN_EXE_herd"),
        &["--addr", &deployment.addrs, "cluster", "status"],
        &[("HERD_LOG".into(), "error".into())],
        Duration::from_secs(10),
    )
    .await;
    assert!(
        !plaintext.status.success(),
        "a plaintext client was served: {}",
        text(&plaintext.stdout)
    );
    let status = deployment
        .wait_status("leader with three healthy voters", FORM_TIMEOUT, formed)
        .await;
    let first = leader(&status);
    phase(&format!("cluster formed, leader {first}"));
    deployment.wait_healthy(FORM_TIMEOUT).await;
    phase("healthchecks pass");
    let mut addrs: Vec<String> = members(&status).into_iter().map(|m| m.1).collect();
    addrs.sort();
    assert_eq!(addrs, ["herd-1:7100", "herd-2:7100", "herd-3:7100"]);

    let out = deployment.herd(&["var", "put", "k", "v"]).await;
    assert!(out.status.success(), "var put k v: {}", text(&out.stderr));
    deployment
        .must_read("k", "v", Duration::from_secs(10))
        .await;
    phase("k = v written and read");

    let victim = deployment.container(&format!("herd-{first}")).await;
    must_run("docker", &["kill", &victim], &[], Duration::from_secs(30)).await;
    let killed_at = Instant::now();
    let status = deployment
        .wait_status("new leader", FAILOVER_TIMEOUT, |s| {
            leader(s) != 0 && leader(s) != first
        })
        .await;
    phase(&format!(
        "leader {first} killed, {} elected after {:?}",
        leader(&status),
        killed_at.elapsed()
    ));
    deployment
        .must_read("k", "v", Duration::from_secs(10))
        .await;
    phase("k = v read through the new leader");

    // Every container stopped, removed and created anew: only the volumes
    // can remember k. The two still running must stop cleanly on SIGTERM
    // (exit 0, not killed when the grace period runs out).
    let mut survivors = Vec::new();
    for id in [1, 2, 3].into_iter().filter(|id| *id != first) {
        survivors.push(deployment.container(&format!("herd-{id}")).await);
    }
    deployment
        .compose(&["stop", "-t", "15"], Duration::from_secs(60))
        .await;
    for container in &survivors {
        let code = must_run(
            "docker",
            &["inspect", "-f", "{{.State.ExitCode}}", container],
            &[],
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(
            code.trim(),
            "0",
            "a coordinator did not exit cleanly on SIGTERM"
        );
    }
    deployment.compose(&["down"], Duration::from_secs(60)).await;
    phase("all stopped cleanly and removed, volumes kept");
    deployment
        .compose(&["up", "-d", "--no-build"], Duration::from_secs(90))
        .await;
    let status = deployment
        .wait_status(
            "leader with three healthy voters after restart",
            FORM_TIMEOUT,
            formed,
        )
        .await;
    phase(&format!("recreated, leader {}", leader(&status)));
    deployment
        .must_read("k", "v", Duration::from_secs(10))
        .await;
    phase("k = v read from the volumes");
    drop(deployment);
    phase("torn down");
}
