//! `herd coordinator`: run one Raft member until interrupted.

use std::path::PathBuf;

use clap::Args;
use herd_coordinator::config::{ConfigError, CoordinatorSettings};
use herd_coordinator::CoordinatorConfig;

use crate::exit::CliError;

/// Flags of `herd coordinator`; each overrides the same key of `--config`.
#[derive(Args, Debug, Clone)]
pub struct CoordinatorArgs {
    /// TOML file with any of the settings below (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This member's id (1, 2, ...).
    #[arg(long)]
    pub id: Option<u64>,
    /// Address to serve Raft, clients and agents on.
    #[arg(long)]
    pub listen: Option<String>,
    /// Address others reach this member at (default: --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Directory for the Raft log and state.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Form a new cluster of --peers (same line on every initial member; ignored on restart).
    #[arg(long)]
    pub bootstrap: bool,
    /// Initial members: 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT.
    #[arg(long)]
    pub peers: Option<String>,
    /// Join the cluster at this address (ignored on restart).
    #[arg(long)]
    pub join: Option<String>,
    /// Build a snapshot every N applied entries (overrides [raft] snapshot_every).
    #[arg(long)]
    pub snapshot_every: Option<u64>,
    /// Log entries kept behind a snapshot (overrides [raft] keep_logs).
    #[arg(long)]
    pub keep_logs: Option<u64>,
    /// Mark a node down after this many ms without a heartbeat (default 5000).
    #[arg(long)]
    pub node_ttl_ms: Option<u64>,
    /// Reach these members at other addresses than they advertise:
    /// 2=HOST:PORT,3=HOST:PORT (address translation; the chaos harness's proxies).
    #[arg(long)]
    pub dial: Option<String>,
    /// Serve the read-only web dashboard on this IP:PORT (off when unset).
    #[arg(long)]
    pub http_listen: Option<String>,
    /// Serve Prometheus metrics at /metrics on this IP:PORT (off when unset).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Start a NEW one-member cluster from a backup (`herd operator snapshot
    /// save`): seeds the empty --data-dir from FILE, then runs; other members
    /// join it with --join. For a cluster that lost its quorum, or a restore
    /// into a new cluster. Not with --bootstrap, --peers or --join.
    #[arg(long, value_name = "FILE")]
    pub recover_from: Option<PathBuf>,
    /// With --recover-from: replace the Raft state --data-dir already holds.
    #[arg(long, requires = "recover_from")]
    pub force_recover: bool,
    /// The defragmenting loop and the placement fallback.
    #[command(flatten)]
    pub reschedule: super::reschedule::RescheduleFlags,
    /// Per-client request rate, streams and connections.
    #[command(flatten)]
    pub limits: super::limits::LimitFlags,
}

impl CoordinatorArgs {
    /// Resolves flags and file into a validated configuration.
    pub fn resolve(&self) -> Result<CoordinatorConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => CoordinatorSettings::from_file(path)?,
            None => CoordinatorSettings::default(),
        };
        let flags = CoordinatorSettings {
            id: self.id,
            listen: self.listen.clone(),
            advertise: self.advertise.clone(),
            data_dir: self.data_dir.clone(),
            bootstrap: self.bootstrap.then_some(true),
            peers: self.peers.clone(),
            join: self.join.clone(),
            raft: None,
            node_ttl_ms: self.node_ttl_ms,
            dial: self.dial.clone(),
            http_listen: self.http_listen.clone(),
            metrics_listen: self.metrics_listen.clone(),
            reschedule: None,
            placement_fallback: None,
            limits: None,
        };
        let mut settings = file.overridden_by(flags);
        settings.reschedule = self.reschedule.reschedule(settings.reschedule.take());
        settings.placement_fallback = self.reschedule.fallback(settings.placement_fallback.take());
        settings.limits = self.limits.merge(settings.limits.take());
        if self.snapshot_every.is_some() || self.keep_logs.is_some() {
            let mut raft = settings.raft.take().unwrap_or_default();
            if let Some(n) = self.snapshot_every {
                raft.snapshot_every = n;
            }
            if let Some(n) = self.keep_logs {
                raft.keep_logs = n;
            }
            settings.raft = Some(raft);
        }
        CoordinatorConfig::resolve(settings)
    }
}

/// Runs the coordinator until SIGINT or SIGTERM; SIGHUP (or new files)
/// renews its TLS certificate.
/// `token` (`--token`/`HERD_TOKEN`, an operator's) is sent when `--join`
/// asks a bootstrapped cluster to add this member.
pub async fn run(args: CoordinatorArgs, token: Option<&str>) -> Result<(), CliError> {
    let mut config = args.resolve().map_err(CliError::input)?;
    config.join_token = token.map(str::to_string);
    if let Some(file) = &args.recover_from {
        if config.mode != herd_coordinator::config::StartMode::Wait {
            return Err(CliError::input(
                "--recover-from starts a new cluster from the backup alone: drop --bootstrap, --peers and --join (from the config file too); other members join it afterwards",
            ));
        }
        super::operator::recover(&herd_coordinator::snapshot::restore::RestoreOptions {
            file: file.clone(),
            data_dir: config.data_dir.clone(),
            member: config.id,
            advertise: config.advertise.clone(),
            force: args.force_recover,
            resume_if_restored: true,
        })?;
    }
    let running = herd_coordinator::start(config).await.map_err(|e| match e {
        herd_coordinator::start::StartError::Bind { .. }
        | herd_coordinator::start::StartError::Storage(_) => CliError::runtime(e),
        other => CliError::input(other),
    })?;
    let coordinator = running.coordinator.clone();
    super::transport::keep_certificate_current()?;
    tokio::select! {
        signal = wait_for_signal() => signal.map_err(CliError::runtime)?,
        reason = running.raft_stopped() => {
            tracing::error!(member = coordinator.id(), %reason, "raft stopped; exiting so that the supervisor restarts this member");
            running.shutdown().await;
            return Err(CliError::runtime(format!(
                "raft stopped on member {}: {reason}; restart it once the cause (a full or failing disk) is mended: it resumes from its data dir",
                coordinator.id()
            )));
        }
    }
    tracing::info!(member = coordinator.id(), "shutting down");
    running.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(|e| format!("cannot watch SIGINT: {e}")),
        _ = term.recv() => Ok(()),
    }
}
