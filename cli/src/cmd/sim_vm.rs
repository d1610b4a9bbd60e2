//! `herd sim-vm` (hidden): one SIMULATED VM, as the `simvm` driver runs it:
//! a real memory buffer written at a set rate, with a status line a second.

use std::time::{Duration, Instant};

use clap::Args;
use herd_actors::driver::simvm::memory::{SimulatedMemory, PAGE_SIZE};

use crate::exit::CliError;

/// How often the simulated guest writes.
const TICK: Duration = Duration::from_millis(100);

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
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(args: SimVmArgs) -> Result<(), CliError> {
    let pages = usize::try_from(args.memory_mib.saturating_mul(1 << 20) / PAGE_SIZE as u64)
        .map_err(|_| CliError::input("--memory-mib is too large for this machine"))?;
    let rate = args.dirty_bytes_per_sec as f64 / PAGE_SIZE as f64;
    let mut memory = SimulatedMemory::new(pages, rate, args.seed);
    println!(
        "sim-vm (simulated VM): {} MiB in {pages} pages, writing {:.0} pages/s",
        args.memory_mib, rate
    );
    let stop = super::coordinator::wait_for_signal();
    tokio::pin!(stop);
    let mut last = Instant::now();
    let mut reported = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            signal = &mut stop => {
                signal.map_err(CliError::runtime)?;
                println!("sim-vm (simulated VM): stopping after {} page writes", memory.writes());
                return Ok(());
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                memory.advance(now.duration_since(last).as_secs_f64());
                last = now;
                if reported.elapsed() >= Duration::from_secs(1) {
                    reported = now;
                    println!(
                        "sim-vm (simulated VM): {} page writes, {} pages dirty",
                        memory.writes(),
                        memory.dirty_pages()
                    );
                }
            }
        }
    }
}
