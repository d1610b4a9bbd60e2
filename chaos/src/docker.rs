//! Docker mode: coordinators as containers on a private network of the
//! run's own, built from the locally compiled `herd` binary.
//!
//! There is no registry to pull from, so the image is made `FROM scratch`
//! by the same `deploy/image/build.sh` operators use (compiled into this
//! crate, so `herd chaos run --docker` works outside the repository), plus
//! the fault shim when the scenarios need it. Each member gets a fixed
//! address on the network, so restarting its container keeps its address;
//! the harness reaches members there directly (Linux routes the bridge to
//! the host), and its fault-injecting proxies listen on the network's
//! gateway, the host's side of the bridge. Kill is `docker kill -s KILL`,
//! restart `docker start`, pause `docker pause` (the cgroup freezer).
//!
//! Everything is labelled with the run's id and removed when the
//! [`DockerEnv`] is dropped: containers, network, image.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::nemesis::rng::Rng;
use crate::process_cluster::ClusterError;

/// The image build script and Dockerfile operators use (deploy/image).
const BUILD_SCRIPT: &str = include_str!("../../deploy/image/build.sh");
const DOCKERFILE: &str = include_str!("../../deploy/image/Dockerfile");

/// Where the shim sits inside the image.
pub const SHIM_IN_IMAGE: &str = "/usr/local/lib/libherd_chaos_shim.so";

/// The port every coordinator listens on, at its own address.
pub const MEMBER_PORT: u16 = 7100;

/// The port every node agent listens on, at its own address.
pub const AGENT_PORT: u16 = 7200;

/// What the chaos workloads run (`/bin/sh -c "exec sleep 600"`), copied
/// into the image from this machine; they need only the C library, which
/// herd's own libraries in the image provide.
const WORKLOAD_TOOLS: &[(&str, &str)] = &[("/bin/sh", "sh"), ("/bin/sleep", "sleep")];

/// The label every object of a run carries, with the run id as value.
const LABEL: &str = "herd-chaos-run";

/// A Docker failure: the command, and what it said.
fn docker_error(args: &[&str], message: impl Into<String>) -> ClusterError {
    ClusterError::Io {
        what: format!("docker {}", args.join(" ")),
        source: std::io::Error::other(message.into()),
    }
}

/// Runs `docker ARGS`; its stdout, trimmed.
fn docker(args: &[&str]) -> Result<String, ClusterError> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| docker_error(args, format!("cannot run docker: {e}")))?;
    if !out.status.success() {
        return Err(docker_error(
            args,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The image, network and containers of one `herd chaos run --docker`.
#[derive(Debug)]
pub struct DockerEnv {
    run: String,
    image: String,
    network: String,
    /// The network's first three octets (`10.X.Y`).
    prefix: String,
}

impl DockerEnv {
    /// Builds the image from `binary` (and `shim`, when given) and creates
    /// the network. Fails with what Docker said when the daemon cannot be
    /// reached.
    pub fn create(binary: &Path, shim: Option<&Path>, seed: u64) -> Result<Self, ClusterError> {
        docker(&["version", "--format", "{{.Server.Version}}"])?;
        let mut rng = Rng::new(seed ^ u64::from(std::process::id()));
        let run = format!("{:08x}", rng.next_u64() as u32);
        let mut env = Self {
            image: format!("herd-chaos:{run}"),
            network: format!("herd-chaos-{run}"),
            run,
            prefix: String::new(),
        };
        env.build_image(binary, shim)?;
        env.create_network(&mut rng)?;
        Ok(env)
    }

    fn build_image(&self, binary: &Path, shim: Option<&Path>) -> Result<(), ClusterError> {
        let context = tempfile::Builder::new()
            .prefix("herd-chaos-image-")
            .tempdir()
            .map_err(|e| docker_error(&["build"], format!("create build dir: {e}")))?;
        let script = context.path().join("build.sh");
        let write = |path: &Path, text: &str| {
            std::fs::write(path, text)
                .map_err(|e| docker_error(&["build"], format!("write {}: {e}", path.display())))
        };
        write(&script, BUILD_SCRIPT)?;
        write(&context.path().join("Dockerfile"), DOCKERFILE)?;
        let base = format!("{}-base", self.image);
        let out = Command::new("bash")
            .arg(&script)
            .args(["-t", &base])
            .arg(binary)
            .output()
            .map_err(|e| docker_error(&["build"], format!("run build.sh: {e}")))?;
        if !out.status.success() {
            return Err(docker_error(
                &["build", "-t", &base],
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        // The run's own layer: the shim, and the run's label for cleanup.
        let layer = context.path().join("layer");
        std::fs::create_dir_all(&layer)
            .map_err(|e| docker_error(&["build"], format!("create layer dir: {e}")))?;
        let mut dockerfile = format!("FROM {base}\nLABEL {LABEL}={}\n", self.run);
        for (path, file) in WORKLOAD_TOOLS {
            // fs::copy follows symlinks (/bin/sh is one on Debian).
            std::fs::copy(path, layer.join(file))
                .map_err(|e| docker_error(&["build"], format!("copy {path}: {e}")))?;
            dockerfile.push_str(&format!("COPY {file} {path}\n"));
        }
        if let Some(shim) = shim {
            std::fs::copy(shim, layer.join("shim.so"))
                .map_err(|e| docker_error(&["build"], format!("copy {}: {e}", shim.display())))?;
            dockerfile.push_str(&format!("COPY shim.so {SHIM_IN_IMAGE}\n"));
        }
        write(&layer.join("Dockerfile"), &dockerfile)?;
        let layer_dir = layer.display().to_string();
        docker(&["build", "--quiet", "-t", &self.image, &layer_dir])?;
        docker(&["rmi", &base])?;
        Ok(())
    }

    /// A /24 of 10.0.0.0/8 no other network uses (Docker refuses overlaps).
    fn create_network(&mut self, rng: &mut Rng) -> Result<(), ClusterError> {
        let label = format!("{LABEL}={}", self.run);
        let mut last = None;
        for _ in 0..8 {
            let prefix = format!("10.{}.{}", rng.between(100, 250), rng.between(1, 254));
            let subnet = format!("{prefix}.0/24");
            let gateway = format!("{prefix}.1");
            let args = [
                "network",
                "create",
                "--driver",
                "bridge",
                "--subnet",
                &subnet,
                "--gateway",
                &gateway,
                "--label",
                &label,
                &self.network,
            ];
            match docker(&args) {
                Ok(_) => {
                    self.prefix = prefix;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| docker_error(&["network", "create"], "no subnet tried")))
    }

    /// The host's address on the network, where proxies listen.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// Member `id`'s address (`10.X.Y.(10+id):7100`).
    pub fn member_addr(&self, id: u64) -> String {
        format!("{}.{}:{MEMBER_PORT}", self.prefix, 10 + id.min(200))
    }

    /// The container name of member `id`.
    pub fn member_container(&self, id: u64) -> String {
        format!("herd-chaos-{}-c{id}", self.run)
    }

    /// The address of the `index`-th node agent (from 0).
    pub fn agent_addr(&self, index: usize) -> String {
        format!("{}.{}:{AGENT_PORT}", self.prefix, 100 + index.min(150))
    }

    /// The container name of node agent `name`.
    pub fn agent_container(&self, name: &str) -> String {
        format!("herd-chaos-{}-{name}", self.run)
    }

    /// Creates and starts a container named `name` at `addr`'s host (an
    /// address of this network, from [`DockerEnv::member_addr`] or
    /// [`DockerEnv::agent_addr`]) running `herd ARGS`, with host directories
    /// mounted (`host`, `inside`) and environment variables set; with
    /// `entrypoint`, that program runs ARGS instead of herd.
    pub fn run(
        &self,
        name: &str,
        addr: &str,
        mounts: &[(PathBuf, &str)],
        env: &[(&str, String)],
        entrypoint: Option<&str>,
        args: &[String],
    ) -> Result<(), ClusterError> {
        let label = format!("{LABEL}={}", self.run);
        let ip = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        let mut command: Vec<String> = [
            "run",
            "--detach",
            "--name",
            name,
            "--network",
            &self.network,
            "--ip",
            ip,
            "--label",
            &label,
            // Root inside, so the host directories mounted in are writable.
            "--user",
            "0:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (host, inside) in mounts {
            command.push("--volume".into());
            command.push(format!("{}:{inside}", host.display()));
        }
        for (key, value) in env {
            command.push("--env".into());
            command.push(format!("{key}={value}"));
        }
        if let Some(entrypoint) = entrypoint {
            command.push("--entrypoint".into());
            command.push(entrypoint.into());
        }
        command.push(self.image.clone());
        command.extend(args.iter().cloned());
        let refs: Vec<&str> = command.iter().map(String::as_str).collect();
        docker(&refs).map(|_| ())
    }

    /// `docker kill -s KILL`.
    pub fn kill(&self, name: &str) -> Result<(), ClusterError> {
        if self.is_running(name) {
            docker(&["kill", "--signal", "KILL", name])?;
        }
        Ok(())
    }

    /// `docker start` a stopped container: same file system, same address.
    pub fn start(&self, name: &str) -> Result<(), ClusterError> {
        docker(&["start", name]).map(|_| ())
    }

    /// `docker pause` (every process of the container frozen).
    pub fn pause(&self, name: &str) -> Result<(), ClusterError> {
        docker(&["pause", name]).map(|_| ())
    }

    /// `docker unpause`.
    pub fn unpause(&self, name: &str) -> Result<(), ClusterError> {
        docker(&["unpause", name]).map(|_| ())
    }

    /// Whether the container is running (paused counts as running).
    pub fn is_running(&self, name: &str) -> bool {
        docker(&["inspect", "--format", "{{.State.Running}}", name]).is_ok_and(|s| s == "true")
    }

    /// What the container wrote to stdout and stderr.
    pub fn logs(&self, name: &str) -> String {
        Command::new("docker")
            .args(["logs", name])
            .output()
            .map(|out| {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                text
            })
            .unwrap_or_default()
    }

    /// Removes the container, running or not.
    pub fn remove(&self, name: &str) {
        if let Err(e) = docker(&["rm", "--force", "--volumes", name]) {
            tracing::warn!(container = name, error = %e, "cannot remove container");
        }
    }

    /// Containers of this run that still exist (after a teardown: leaks).
    pub fn leftover_containers(&self) -> Vec<String> {
        let filter = format!("label={LABEL}={}", self.run);
        docker(&["ps", "--all", "--filter", &filter, "--format", "{{.Names}}"])
            .map(|out| out.lines().map(|l| format!("container {l}")).collect())
            .unwrap_or_default()
    }
}

impl Drop for DockerEnv {
    fn drop(&mut self) {
        let filter = format!("label={LABEL}={}", self.run);
        if let Ok(names) = docker(&["ps", "--all", "--quiet", "--filter", &filter]) {
            for name in names.lines() {
                self.remove(name);
            }
        }
        if !self.prefix.is_empty() {
            if let Err(e) = docker(&["network", "rm", &self.network]) {
                tracing::warn!(network = %self.network, error = %e, "cannot remove network");
            }
        }
        if let Err(e) = docker(&["rmi", "--force", &self.image]) {
            tracing::warn!(image = %self.image, error = %e, "cannot remove image");
        }
    }
}
