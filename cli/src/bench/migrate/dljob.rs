//! DL-checkpoint rows of `herd bench migrate`: `herd toy-train` under the
//! `dljob` driver, its checkpoint directory padded to the row's size with a
//! file of random bytes (the bench writes it there once the trainer runs:
//! the trainer's own checkpoints are a few hundred bytes), moved by herd
//! (checkpoint on SIGTERM, the directory streamed agent to agent, resumed
//! on the target). There is no baseline: nothing but herd moves a trainer.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use herd_actors::driver::dljob::CHECKPOINT_SUBDIR;

use super::herd_side::{HerdCluster, LogTail, Probes};
use super::report::{HerdFigures, Row};
use super::vm::gap_ms;
use super::Limits;
use crate::exit::CliError;

/// The padding file in the checkpoint directory (the trainer ignores it:
/// it resumes from its own `ckpt-*.json`).
const PAD_FILE: &str = "bench-pad.bin";
/// How long the trainer may take to print its first steps.
const STEP_WAIT: Duration = Duration::from_secs(60);

/// The row's job: toy-train, for longer than the bench runs, stepping
/// every 10 ms, checkpointing only when stopped (or asked).
fn spec_toml(job: &str) -> String {
    format!(
        "name = {job:?}\ntype = \"batch\"\n[task]\ndriver = \"dljob\"\n\
         args = [\"--steps\", \"100000000\", \"--seed\", \"7\", \"--step-ms\", \"10\"]\n\
         [task.resources]\ncpu = 100\nmemory = \"64MiB\"\n"
    )
}

/// Whether `line` is one of toy-train's step lines.
fn is_step(line: &str) -> bool {
    line.starts_with("step=")
}

/// Writes `bytes` of pseudo-random data (xorshift: not compressible, and
/// cheap) to `dir/PAD_FILE`, through a temporary file and a rename.
fn pad(dir: &Path, bytes: u64) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::runtime(format!("{}: {e}", dir.display()));
    let part = dir.join(format!("{PAD_FILE}.part"));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&part).map_err(io)?);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = bytes;
    let mut block = vec![0u8; 1 << 16];
    while left > 0 {
        for chunk in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        let n = usize::try_from(left.min(block.len() as u64)).unwrap_or(block.len());
        file.write_all(&block[..n]).map_err(io)?;
        left -= n as u64;
    }
    file.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    std::fs::rename(&part, dir.join(PAD_FILE)).map_err(io)
}

/// Waits until the trainer logged a step in `stdout`.
async fn stepping(stdout: &Path) -> Result<(), CliError> {
    let mut tail = LogTail::from_start(stdout);
    let started = Instant::now();
    while !tail.new_lines().iter().any(|l| is_step(l)) {
        if started.elapsed() > STEP_WAIT {
            return Err(CliError::runtime(format!(
                "the trainer printed no step within {STEP_WAIT:?} (see {})",
                stdout.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// One DL-checkpoint row of `size_bytes` of padding.
pub async fn row(cluster: &HerdCluster, size_bytes: u64, limits: &Limits, run: u32) -> Row {
    let mut row = Row {
        kind: "dljob",
        size_bytes,
        load: "toy-train, a step per 10 ms".to_string(),
        run,
        downtime_limit_ms: limits.downtime_limit_ms(),
        herd: None,
        baseline: None,
        note: None,
    };
    match herd_move(cluster, size_bytes, limits, run).await {
        Ok(figures) => row.herd = Some(figures),
        Err(e) => row.note = Some(format!("herd: {}", e.message)),
    }
    row
}

async fn herd_move(
    cluster: &HerdCluster,
    size_bytes: u64,
    limits: &Limits,
    run: u32,
) -> Result<HerdFigures, CliError> {
    let job = format!("bench-dljob-{}-{run}", size_bytes >> 20);
    cluster.submit(&spec_toml(&job)).await?;
    let placed = cluster.running(&job).await?;
    let result: Result<HerdFigures, CliError> = async {
        let source_dir = cluster.alloc_dir(&placed.node, &placed.alloc);
        stepping(&source_dir.join("stdout.log")).await?;
        pad(&source_dir.join(CHECKPOINT_SUBDIR), size_bytes)?;
        let mut source_log = LogTail::from_end(&source_dir.join("stdout.log"));
        // toy-train's last line when SIGTERM stops it, after its checkpoint.
        let mut stopped = || source_log.saw("stopped at step");
        let target_dir = cluster.alloc_dir(placed.other_node(), &placed.alloc);
        let mut target_log = LogTail::from_start(&target_dir.join("stdout.log"));
        let mut resumed = || target_log.new_lines().iter().any(|l| is_step(l));
        let (m, timeline) = cluster
            .migrate(
                &placed,
                limits.downtime_limit,
                limits.bandwidth,
                Probes {
                    stopped: Some(&mut stopped),
                    resumed: &mut resumed,
                },
            )
            .await?;
        Ok(HerdFigures {
            total_ms: m.total_ms,
            downtime_ms: gap_ms(timeline.stopped, timeline.resumed),
            record_downtime_ms: m.downtime_ms,
            bytes: m.bytes,
            rounds: m.rounds,
            resumed_after_ms: gap_ms(timeline.switching, timeline.resumed),
            phases: timeline.phases,
            breakdown: None,
        })
    }
    .await;
    let finished = cluster.finish(&job, &placed.alloc).await;
    let figures = result?;
    finished?;
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_has_the_asked_size_and_is_not_zeros() {
        let dir = tempfile::tempdir().expect("tempdir");
        pad(dir.path(), 100_003).expect("pad");
        let bytes = std::fs::read(dir.path().join(PAD_FILE)).expect("read");
        assert_eq!(bytes.len(), 100_003);
        assert!(bytes.iter().filter(|b| **b == 0).count() < 1000);
        assert!(!dir.path().join(format!("{PAD_FILE}.part")).exists());
    }

    #[test]
    fn the_spec_is_a_valid_dljob() {
        let spec = herd_api::spec_file::parse_job_spec(&spec_toml("bench-dljob-10-1"), "t")
            .expect("valid");
        assert_eq!(spec.task.driver, "dljob");
        assert!(is_step("step=3 loss=0.5"));
        assert!(!is_step("stopped at step 3"));
    }
}
