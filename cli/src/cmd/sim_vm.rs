//! `herd sim-vm` (hidden): one SIMULATED VM, as the `simvm` driver runs it:
//! a real memory buffer written at a set rate, with a status line a second,
//! steered over a control socket (`--control`, in the allocation directory)
//! and able to move live to another `herd sim-vm` started with
//! `--incoming` (see `herd_actors::driver::simvm::machine`).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use herd_actors::driver::simvm::machine::{self, MachineConfig, MachineError};

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
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(args: SimVmArgs) -> Result<(), CliError> {
    let config = MachineConfig {
        memory_mib: args.memory_mib,
        dirty_bytes_per_sec: args.dirty_bytes_per_sec,
        seed: args.seed,
        control: args.control,
        incoming: args.incoming,
    };
    let log: machine::Log = Arc::new(|line: &str| println!("{line}"));
    match machine::run(config, super::coordinator::wait_for_signal(), log).await {
        Ok(_) => Ok(()),
        Err(MachineError::Config(e)) => Err(CliError::input(e)),
        Err(MachineError::Io(e)) => Err(CliError::runtime(e)),
    }
}
