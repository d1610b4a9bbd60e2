//! `herd sim-vm` (hidden): one SIMULATED VM, as the `simvm` driver runs it:
//! a real memory buffer written at a set rate, with a status line a second,
//! steered over a control socket (`--control`, in the allocation directory)
//! and able to move live to another `herd sim-vm` started with
//! `--incoming` (see `herd_actors::driver::simvm::machine`), over mutual
//! TLS when given the node's credentials (`--migration-tls-*`, read and
//! removed at start; see `herd_actors::driver::simvm::tls`).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use herd_actors::driver::simvm::machine::{self, MachineConfig, MachineError};
use herd_actors::driver::simvm::tls::StreamTls;
use herd_api::tls::identity::valid_name;

use crate::exit::CliError;

/// Arguments of `herd sim-vm`.
#[derive(Args, Debug)]
pub struct SimVmArgs {
    /// Memory of the simulated VM, MiB.
    #[arg(long)]
    pub memory_mib: u64,
    /// Bytes it writes per second.
    #[arg(long, default_value_t = 0)]
    pub dirty_bytes_per_sec: u64,
    /// Seed of its write pattern.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The control socket to serve (JSON lines: status, checksum, migrate,
    /// cancel, resume).
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Start paused, as an incoming migration's target listening here
    /// (`127.0.0.1:0` picks a free port; the control socket says which).
    #[arg(long, value_name = "IP:PORT")]
    pub incoming: Option<String>,
    /// The cluster's CA certificate (PEM) for the migration stream's
    /// mutual TLS. The file is removed once read, as are the certificate
    /// and key: the agent writes them for this process only.
    #[arg(
        long,
        value_name = "PATH",
        requires_all = ["migration_tls_cert", "migration_tls_key"]
    )]
    pub migration_tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), serving a target and dialling from a
    /// source; removed once read.
    #[arg(long, value_name = "PATH", requires = "migration_tls_ca")]
    pub migration_tls_cert: Option<PathBuf>,
    /// This node's key (PEM); removed once read.
    #[arg(long, value_name = "PATH", requires = "migration_tls_ca")]
    pub migration_tls_key: Option<PathBuf>,
    /// The certificates the cluster revoked: SHA-256 fingerprints, one a
    /// line; no peer may present one. Removed once read.
    #[arg(long, value_name = "PATH", requires = "migration_tls_ca")]
    pub migration_tls_revoked: Option<PathBuf>,
    /// The node an incoming migration comes from: under TLS only its
    /// certificate may send the memory (without it, any node's).
    #[arg(long, value_name = "NODE", requires = "incoming")]
    pub migration_source_node: Option<String>,
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(args: SimVmArgs) -> Result<(), CliError> {
    if let Some(name) = args
        .migration_source_node
        .as_deref()
        .filter(|n| !valid_name(n))
    {
        return Err(CliError::input(format!(
            "--migration-source-node {name:?}: not a node name"
        )));
    }
    let tls = match (
        &args.migration_tls_ca,
        &args.migration_tls_cert,
        &args.migration_tls_key,
    ) {
        (Some(ca), Some(cert), Some(key)) => {
            let revoked = args.migration_tls_revoked.as_deref();
            Some(StreamTls::load_and_remove(ca, cert, key, revoked).map_err(CliError::input)?)
        }
        _ => None,
    };
    let config = MachineConfig {
        memory_mib: args.memory_mib,
        dirty_bytes_per_sec: args.dirty_bytes_per_sec,
        seed: args.seed,
        control: args.control,
        incoming: args.incoming,
        tls,
        source_node: args.migration_source_node,
    };
    let log: machine::Log = Arc::new(|line: &str| println!("{line}"));
    match machine::run(config, super::coordinator::wait_for_signal(), log).await {
        Ok(_) => Ok(()),
        Err(MachineError::Config(e)) => Err(CliError::input(e)),
        Err(MachineError::Io(e)) => Err(CliError::runtime(e)),
    }
}
