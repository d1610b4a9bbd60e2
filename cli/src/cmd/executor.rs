//! `herd executor --launch PATH` (hidden): the per-workload supervisor the
//! exec driver starts; `herd executor --standby --allocs DIR`, one started
//! ahead of need that reads its launch's path from stdin. Not for people; see
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
    #[arg(long, requires = "allocs")]
    pub standby: bool,
    /// With `--standby`: the agent's allocation root, the only place it
    /// takes a launch from.
    #[arg(long, requires = "standby")]
    pub allocs: Option<PathBuf>,
}

/// Supervises the workload to its end; returns the process exit code (the
/// task's code, or 128 + its signal; 1 when the executor itself failed, which
/// it also reports in the allocation directory).
pub fn run(args: &ExecutorArgs) -> i32 {
    let outcome = match (&args.launch, &args.allocs) {
        (Some(launch), _) => herd_actors::driver::exec::executor::run(launch),
        (None, Some(allocs)) => herd_actors::driver::exec::executor::run_standby(allocs),
        (None, None) => unreachable_args(),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herd: {e}");
            1
        }
    }
}

/// What clap's `required_unless_present` and `requires` rule out: neither
/// `--launch` nor `--standby --allocs`.
fn unreachable_args() -> Result<i32, herd_actors::driver::exec::executor::ExecutorError> {
    Err(herd_actors::driver::exec::executor::ExecutorError {
        context: "herd executor".to_string(),
        message: "give --launch PATH, or --standby --allocs DIR".to_string(),
    })
}
