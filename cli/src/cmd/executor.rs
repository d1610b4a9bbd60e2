//! `herd executor --launch PATH` (hidden): the per-workload supervisor the
//! exec driver starts. Not for people; see `herd_actors::driver::exec`.

use std::path::PathBuf;

use clap::Args;

/// Arguments of `herd executor`.
#[derive(Args, Debug)]
pub struct ExecutorArgs {
    /// The launch description the exec driver wrote (`<alloc_dir>/launch.json`).
    #[arg(long)]
    pub launch: PathBuf,
}

/// Supervises the workload to its end; returns the process exit code (the
/// task's code, or 128 + its signal; 1 when the executor itself failed, which
/// it also reports in the allocation directory).
pub fn run(args: &ExecutorArgs) -> i32 {
    match herd_actors::driver::exec::executor::run(&args.launch) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herd: {e}");
            1
        }
    }
}
