//! `herd toy-train`: a small real trainer shipped with herd (linear regression
//! by gradient descent on seeded synthetic data, see
//! `herd_actors::toy_train`), the `dljob` driver's default task, and a
//! reference for the checkpoint protocol of `docs/dljob.md`:
//! - resumes from the newest valid checkpoint in its checkpoint directory;
//! - checkpoints every `--checkpoint-every` steps, on SIGUSR1, and when
//!   `checkpoint.request` appears (answering with `checkpoint.done`); a
//!   request for a step (`at_step`) is answered at that step, and the
//!   trainer then stays there while `checkpoint.hold` exists;
//! - on SIGTERM or SIGINT checkpoints at the step boundary and exits 0;
//! - prints `step=N loss=L` per step and, at the end, `done step=N weights=..`
//!   (bit patterns), also written to `weights.json`;
//! - on GPUs (`HERD_GPU_INDICES` and `HERD_ALLOC_DIR` set, as the agent sets
//!   them), reports how busy it keeps them (`gpu-work`) and, on SIMULATED
//!   GPUs capped by the agent's governor, stretches each step by the inverse
//!   of the throughput share the agent writes (`gpu-throttle`); see
//!   `herd_actors::resources::gpu_work` and docs/power.md.
//!
//! It runs before the async runtime starts, single-threaded, so that it can
//! wait for its signals synchronously between steps (`sigtimedwait`).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use herd_actors::resources::gpu_work::{stretched, WorkMeter, WorkReporter};
use herd_actors::toy_train::{checkpoint, final_line, step_line, TrainState, Trainer};

use crate::exit::CliError;

/// Arguments of `herd toy-train`.
#[derive(Args, Debug)]
pub struct ToyTrainArgs {
    /// Steps to train for in all (a resumed run continues up to this).
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    /// Seed of the synthetic data and the hidden parameters.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where checkpoints are written and resumed from (the dljob driver sets
    /// HERD_CHECKPOINT_DIR); without one, nothing is checkpointed.
    #[arg(long, env = "HERD_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Checkpoint every K steps (0: only on request, on SIGTERM and at the end).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: u64,
    /// Sleep this long after each step (so that a run can be watched and interrupted).
    #[arg(long, default_value_t = 0)]
    pub step_ms: u64,
}

/// Trains to the end or to SIGTERM; returns the process exit code.
pub fn run(args: &ToyTrainArgs) -> i32 {
    match train(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("herd toy-train: {}", e.message);
            e.code
        }
    }
}

fn train(args: &ToyTrainArgs) -> Result<(), CliError> {
    let signals = Signals::block().map_err(|e| CliError::runtime(format!("signals: {e}")))?;
    let dir = args.checkpoint_dir.as_deref();
    let state = initial_state(dir, args.seed)?;
    let mut trainer = Trainer::new(state)
        .ok_or_else(|| CliError::runtime("the checkpoint does not hold this model's parameters"))?;
    let mut out = io::stdout().lock();
    let mut print = |line: String| {
        writeln!(out, "{line}").map_err(|e| CliError::runtime(format!("stdout: {e}")))
    };
    let mut asked = Received::default();
    let mut gpu = GpuLink::from_env();
    loop {
        if let Some(dir) = dir {
            let due = checkpoint::pending(dir)
                .map_err(CliError::runtime)?
                .is_some_and(|r| r.due(trainer.state().step));
            let at_asked_step = if asked.checkpoint || asked.stop || due {
                save(dir, trainer.state())?
            } else {
                false
            };
            if at_asked_step && !asked.stop {
                asked = hold(dir, trainer.state(), &signals)?;
            }
        } else if asked.checkpoint {
            eprintln!("herd toy-train: checkpoint asked for, but no checkpoint directory is set");
        }
        if asked.stop {
            gpu.idle();
            print(format!("stopped at step {}", trainer.state().step))?;
            return Ok(());
        }
        if trainer.state().step >= args.steps {
            break;
        }
        let started = Instant::now();
        let report = trainer.step();
        print(step_line(&report))?;
        if let Some(dir) = dir {
            let periodic = args.checkpoint_every > 0 && report.step % args.checkpoint_every == 0;
            if periodic && save(dir, trainer.state())? {
                asked = hold(dir, trainer.state(), &signals)?;
                if asked.stop {
                    continue;
                }
            }
        }
        // The sleep models the step's GPU time; a capped GPU takes longer.
        let compute = started.elapsed();
        let nominal = compute + Duration::from_millis(args.step_ms);
        let wait = stretched(nominal, gpu.throughput()).saturating_sub(compute);
        asked = signals.wait(wait);
        gpu.worked(started.elapsed());
    }
    gpu.idle();
    if let Some(dir) = dir {
        save(dir, trainer.state())?;
        checkpoint::write_weights(dir, trainer.state()).map_err(CliError::runtime)?;
    }
    print(final_line(trainer.state()))
}

/// The trainer's end of the GPU files (none when it runs on no GPU).
struct GpuLink {
    link: Option<(WorkMeter, WorkReporter)>,
}

impl GpuLink {
    /// Reports into `HERD_ALLOC_DIR` when `HERD_GPU_INDICES` names GPUs.
    fn from_env() -> Self {
        let gpus = std::env::var("HERD_GPU_INDICES").unwrap_or_default();
        let dir = std::env::var_os("HERD_ALLOC_DIR").map(PathBuf::from);
        let link = match dir {
            Some(dir) if !gpus.trim().is_empty() => {
                let (meter, reporter) = (WorkMeter::default(), WorkReporter::new(dir));
                reporter.read_throttle_now(&meter);
                Some((meter, reporter))
            }
            _ => None,
        };
        Self { link }
    }

    /// The throughput share its GPUs keep (1.0 when not told otherwise).
    fn throughput(&self) -> f64 {
        self.link
            .as_ref()
            .map_or(1.0, |(meter, _)| meter.throughput())
    }

    /// Counts a step's time as busy (training keeps its GPUs fully busy)
    /// and reports when due; a failed report is said, not fatal.
    fn worked(&mut self, took: Duration) {
        if let Some((meter, reporter)) = &mut self.link {
            meter.add_busy(took.as_secs_f64(), 1.0);
            if let Err(e) = reporter.tick(meter) {
                eprintln!("herd toy-train: warning: cannot report GPU work: {e}");
            }
        }
    }

    /// Says the work is over.
    fn idle(&mut self) {
        if let Some((_, reporter)) = &mut self.link {
            if let Err(e) = reporter.idle() {
                eprintln!("herd toy-train: warning: cannot report GPU work: {e}");
            }
        }
    }
}

/// The newest valid checkpoint's state, or a fresh one.
fn initial_state(dir: Option<&Path>, seed: u64) -> Result<TrainState, CliError> {
    let Some(dir) = dir else {
        return Ok(TrainState::fresh(seed));
    };
    let found = checkpoint::latest(dir).map_err(CliError::runtime)?;
    for skipped in &found.skipped {
        eprintln!("herd toy-train: warning: skipping {skipped}");
    }
    match found.resumed {
        Some(resumed) if resumed.state.seed != seed => Err(CliError::input(format!(
            "{} holds a run of seed {}, not {seed}; use another checkpoint directory",
            dir.join(&resumed.file).display(),
            resumed.state.seed
        ))),
        Some(resumed) => {
            eprintln!(
                "herd toy-train: resuming from {} at step {}",
                resumed.file, resumed.state.step
            );
            Ok(resumed.state)
        }
        None => Ok(TrainState::fresh(seed)),
    }
}

/// Writes a checkpoint and answers a pending request that is due; returns
/// whether that request asked for exactly this step (the trainer then
/// holds there while `checkpoint.hold` exists, see [`hold`]).
fn save(dir: &Path, state: &TrainState) -> Result<bool, CliError> {
    let file = checkpoint::save(dir, state).map_err(CliError::runtime)?;
    let answered = checkpoint::answer_request(dir, state.step, &file).map_err(CliError::runtime)?;
    Ok(answered.is_some_and(|r| r.at_step == Some(state.step)))
}

/// How often a holding trainer looks whether it may go on.
const HOLD_POLL: Duration = Duration::from_millis(20);

/// Stays at this step while `checkpoint.hold` exists in `dir` (a gang's
/// move stops every learner at one step, then stops them): SIGUSR1 still
/// checkpoints, SIGTERM ends the hold (returned, so the caller checkpoints
/// and exits as always).
fn hold(dir: &Path, state: &TrainState, signals: &Signals) -> Result<Received, CliError> {
    let mut got = Received::default();
    while checkpoint::holding(dir) && !got.stop {
        got = signals.wait(HOLD_POLL);
        if got.checkpoint && !got.stop {
            save(dir, state)?;
        }
    }
    Ok(got)
}

/// What arrived while waiting.
#[derive(Debug, Default, Clone, Copy)]
struct Received {
    /// SIGUSR1: checkpoint at the next step boundary.
    checkpoint: bool,
    /// SIGTERM or SIGINT: checkpoint and exit.
    stop: bool,
}

/// SIGUSR1, SIGTERM and SIGINT, blocked and collected with `sigtimedwait`.
struct Signals {
    set: libc::sigset_t,
}

impl Signals {
    /// Blocks the signals; the process must be single-threaded (or every
    /// other thread must block them too).
    fn block() -> io::Result<Self> {
        // SAFETY: the set is initialised by sigemptyset before use.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signal in [libc::SIGUSR1, libc::SIGTERM, libc::SIGINT] {
                libc::sigaddset(&mut set, signal);
            }
            match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
                0 => Ok(Self { set }),
                e => Err(io::Error::from_raw_os_error(e)),
            }
        }
    }

    /// Waits `timeout`, or less when asked to stop; returns what arrived.
    fn wait(&self, timeout: Duration) -> Received {
        let deadline = Instant::now() + timeout;
        let mut got = Received::default();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = libc::timespec {
                tv_sec: left.as_secs().try_into().unwrap_or(libc::time_t::MAX),
                tv_nsec: left.subsec_nanos().into(),
            };
            // SAFETY: a valid, initialised set and timespec; no siginfo wanted.
            let signal = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
            match signal {
                libc::SIGUSR1 => got.checkpoint = true,
                libc::SIGTERM | libc::SIGINT => {
                    got.stop = true;
                    return got;
                }
                _ if signal >= 0 => {}
                _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                // EAGAIN: the time is up.
                _ => return got,
            }
        }
    }
}
