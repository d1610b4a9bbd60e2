//! `herd bench`: measurements against herd's targets, printed as Markdown
//! tables ready for docs/benchmarks.md.

mod balance;
mod etcd;
mod load;
mod migrate;
mod power;
mod raft;
mod schedule;
mod serve;

use clap::Subcommand;

use crate::cmd::Context;
use crate::exit::CliError;

/// Subcommands of `herd bench`.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Committed writes/s and commit latency of a 3-member cluster, beside etcd.
    Raft(raft::RaftBenchArgs),
    /// Placements/s and submit-to-placed latency with thousands of simulated nodes.
    Schedule(schedule::ScheduleBenchArgs),
    /// Live migrations through a coordinator and two agents: VMs beside QEMU alone, DL checkpoints, simulated VMs.
    Migrate(migrate::MigrateBenchArgs),
    /// Decentralised load balancing, as a SIMULATION of 100 and 1,000 agents beside one central rebalancing.
    Balance(balance::BalanceBenchArgs),
    /// LLM serving dispatch (round-robin, least-loaded, herd, herd + migration) on a SIMULATED fleet of 16 instances.
    Serve(serve::ServeBenchArgs),
    /// Power oversubscription, as a SIMULATION: servers per MW, time over budget and throughput lost, herd's policy beside a static cap.
    Power(power::PowerBenchArgs),
}

/// Runs a benchmark.
pub async fn run(ctx: &Context, command: BenchCommand) -> Result<(), CliError> {
    match command {
        BenchCommand::Raft(args) => raft::run(args).await,
        BenchCommand::Schedule(args) => schedule::run(args).await,
        BenchCommand::Migrate(args) => migrate::run(ctx, args).await,
        BenchCommand::Balance(args) => balance::run(ctx, args).await,
        BenchCommand::Power(args) => power::run(ctx, args).await,
        BenchCommand::Serve(args) => serve::run(ctx, args).await,
    }
}
