//! `herd executor --launch PATH` (hidden): the per-workload supervisor the
//! exec driver starts; `herd executor --standby`, one started ahead of need
//! that reads its launch's path from stdin. Not for people; see
//! `herd_actors::driver::exec`.

use std::path::PathBuf;

use clap::Args;

/// Arguments of `herd executor`.
#[derive(Args, Debug)]
pub struct ExecutorArgs {
    /// The launch description the exec driver wrote (`<alloc_dir>/launch.json`).
    #[arg(long, required_unless_present = "standby", conflicts_with = "standby")]
    pub launch: Option<PathBuf>,
    /// Wait for the launch's path on stdin (the agent's standby executor).
    #[arg(long)]
    pub standby: bool,
}

/// Supervises the workload to its end; returns the process exit code (the
/// task's code, or 128 + its signal; 1 when the executor itself failed, which
/// it also reports in the allocation directory).
pub fn run(args: &ExecutorArgs) -> i32 {
    let outcome = match &args.launch {
        Some(launch) => herd_actors::driver::exec::executor::run(launch),
        None => herd_actors::driver::exec::executor::run_standby(),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herd: {e}");
            1
        }
    }
}
