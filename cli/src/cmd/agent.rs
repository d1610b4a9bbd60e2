//! `herd node --name N --coordinators ADDR ...`: run a node agent until
//! interrupted. (`herd node list|drain|eligibility` are in [`super::node`].)

use std::path::PathBuf;

use clap::Args;
use herd_node::config::{parse_labels, ConfigError, NodeSettings};
use herd_node::NodeConfig;

use crate::exit::CliError;

/// Flags of the node agent; each overrides the same key of `--config`.
#[derive(Args, Debug, Clone, Default)]
pub struct AgentArgs {
    /// TOML file with any of the settings below (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The node's cluster-unique name.
    #[arg(long)]
    pub name: Option<String>,
    /// Coordinators to register with: HOST:PORT[,HOST:PORT...].
    #[arg(long)]
    pub coordinators: Option<String>,
    /// Address of the agent's own gRPC server (default 127.0.0.1:0, any free port).
    #[arg(long)]
    pub listen: Option<String>,
    /// Address clients reach the agent at (default: --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Host (IP or DNS name of this machine, no port) that incoming live
    /// migrations of VMs listen on and other agents connect to (default:
    /// the host of --advertise).
    #[arg(long, value_name = "HOST")]
    pub migration_host: Option<String>,
    /// Directory for allocations, their logs and the agent's state.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Node labels: KEY=VALUE[,KEY=VALUE...].
    #[arg(long)]
    pub labels: Option<String>,
    /// Report this many simulated GPUs instead of real ones.
    #[arg(long)]
    pub sim_gpus: Option<u32>,
    /// Model of the simulated GPUs (default h100).
    #[arg(long)]
    pub sim_gpu_model: Option<String>,
    /// Pin the simulated GPUs' activities (0.0 to 1.0, comma-separated,
    /// GPU i takes value i % len) instead of deriving them from their work:
    /// a SIMULATION knob for tests.
    #[arg(long, value_name = "A,A,...")]
    pub sim_gpu_activity: Option<String>,
    /// Lock every GPU's graphics clock to MIN:MAX MHz at start (NVML only;
    /// a range outside a device's is refused before NVML is asked).
    #[arg(long, value_name = "MIN:MAX")]
    pub gpu_lock_clocks: Option<String>,
    /// CPU kept back for the system, millicores.
    #[arg(long)]
    pub reserved_cpu: Option<u64>,
    /// Memory kept back for the system (e.g. 512MiB).
    #[arg(long)]
    pub reserved_memory: Option<String>,
    /// Heartbeat period in ms (default 1000).
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Serve the OpenAI-compatible HTTP endpoint (/v1/completions,
    /// /v1/chat/completions, /v1/models) on this IP:PORT.
    #[arg(long)]
    pub http_listen: Option<String>,
    /// Address HTTP clients reach that endpoint at (default: --http-listen).
    #[arg(long)]
    pub http_advertise: Option<String>,
    /// Serve Prometheus metrics at /metrics on this IP:PORT (off when unset).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Take no part in decentralised balancing (no gossip with other
    /// agents, nothing moved off or onto this node by it).
    #[arg(long)]
    pub no_balance: bool,
    /// Do not move running inference requests off this node's instances
    /// that drain or run low on KV blocks (docs/inference.md).
    #[arg(long)]
    pub no_reschedule: bool,
    /// Free KV blocks each inference instance keeps, as a fraction of its
    /// blocks (0.0 to 0.9; default 0.1): below it requests are moved away.
    #[arg(long, value_name = "FRACTION")]
    pub reschedule_reserve: Option<f64>,
    /// Requests with fewer tokens than this left to generate are not moved
    /// (default 16).
    #[arg(long, value_name = "TOKENS")]
    pub reschedule_min_tokens_left: Option<u32>,
    /// Run `exec` tasks as this unprivileged user (e.g. nobody), with no
    /// supplementary groups; the agent must run as root (docs/security.md).
    #[arg(long)]
    pub exec_user: Option<String>,
    /// A directory, besides each allocation's own, that paths in job specs
    /// (working directories, VM kernels and disks) may name; repeatable.
    #[arg(long = "allow-path", value_name = "DIR")]
    pub allow_paths: Vec<std::path::PathBuf>,
    /// A host block device a VM may be given as its disk; repeatable.
    #[arg(long = "vm-device", value_name = "DEVICE")]
    pub vm_devices: Vec<std::path::PathBuf>,
    /// Per-client request rate, streams and connections.
    #[command(flatten)]
    pub limits: super::limits::LimitFlags,
}

impl AgentArgs {
    /// Resolves flags and file into a validated configuration.
    pub fn resolve(&self) -> Result<NodeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => NodeSettings::from_file(path)?,
            None => NodeSettings::default(),
        };
        let labels = match &self.labels {
            Some(text) => Some(parse_labels(text).map_err(|message| ConfigError::Invalid {
                field: "labels",
                message,
            })?),
            None => None,
        };
        let flags = NodeSettings {
            name: self.name.clone(),
            coordinators: self.coordinators.clone(),
            listen: self.listen.clone(),
            advertise: self.advertise.clone(),
            migration_host: self.migration_host.clone(),
            data_dir: self.data_dir.clone(),
            labels,
            sim_gpus: self.sim_gpus,
            sim_gpu_model: self.sim_gpu_model.clone(),
            sim_gpu_activity: self.sim_gpu_activity.clone(),
            gpu_lock_clocks: self.gpu_lock_clocks.clone(),
            reserved_cpu: self.reserved_cpu,
            reserved_memory: self.reserved_memory.clone(),
            heartbeat_ms: self.heartbeat_ms,
            stop_grace_ms: None,
            http_listen: self.http_listen.clone(),
            http_advertise: self.http_advertise.clone(),
            metrics_listen: self.metrics_listen.clone(),
            balance: self.no_balance.then_some(false),
            reschedule: self.no_reschedule.then_some(false),
            reschedule_reserve: self.reschedule_reserve,
            reschedule_min_tokens_left: self.reschedule_min_tokens_left,
            exec_user: self.exec_user.clone(),
            allow_paths: (!self.allow_paths.is_empty()).then(|| self.allow_paths.clone()),
            vm_devices: (!self.vm_devices.is_empty()).then(|| self.vm_devices.clone()),
            limits: None,
        };
        let mut settings = file.overridden_by(flags);
        settings.limits = self.limits.merge(settings.limits.take());
        NodeConfig::resolve(settings)
    }
}

/// The herd binary, which the exec driver runs as each workload's executor.
pub fn executor_path() -> Result<PathBuf, CliError> {
    std::env::current_exe()
        .map_err(|e| CliError::runtime(format!("cannot find the herd binary: {e}")))
}

/// Runs the agent until SIGINT or SIGTERM (SIGHUP or new files renew
/// its TLS certificate). Workloads keep running after it exits; drain the node
/// first to move them.
/// `token` (`--token`/`HERD_TOKEN`, role `node`) goes with every request
/// to the coordinators.
pub async fn run(args: AgentArgs, token: Option<&str>) -> Result<(), CliError> {
    let mut config = args.resolve().map_err(CliError::input)?;
    config.check_on_this_host().map_err(CliError::input)?;
    config.token = token.map(str::to_string);
    if let herd_api::tls::Transport::Tls(material) = herd_api::tls::transport() {
        let certified = &material.identity().name;
        if *certified != config.name {
            return Err(CliError::input(format!(
                "--tls-cert is for node {certified:?}, but this agent is --name {:?}: \
                 an agent may only speak for the node its certificate names",
                config.name
            )));
        }
    }
    let mut running = herd_node::start(config, executor_path()?)
        .await
        .map_err(CliError::runtime)?;
    super::transport::keep_certificate_current()?;
    tokio::select! {
        signal = super::coordinator::wait_for_signal() => {
            signal.map_err(CliError::runtime)?;
            tracing::info!("shutting down; workloads keep running and are re-adopted on restart");
            running.shutdown().await;
            Ok(())
        }
        _ = running.stopped() => Err(CliError::runtime("the node agent's actors stopped; see the log")),
    }
}
