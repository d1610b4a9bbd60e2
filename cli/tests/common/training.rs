//! Helpers for tests that move or drain training jobs: the steps a
//! trainer's log shows and the weights of the same run never moved.

use std::path::Path;

use herd_actors::toy_train::checkpoint::{self, WeightsRecord};

/// Step numbers of the `step=N ...` lines of a trainer's stdout.
pub fn steps_in(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("step=")?.split(' ').next()?.parse().ok())
        .collect()
}

/// The training run of `args` (toy-train's flags), uninterrupted, in
/// `dir`: its final weights.
pub fn reference_weights(dir: &Path, args: &[&str]) -> WeightsRecord {
    let out = std::process::Command::new(super::herd_bin())
        .arg("toy-train")
        .args(args)
        .arg("--checkpoint-dir")
        .arg(dir)
        .env_remove("HERD_CHECKPOINT_DIR")
        .output()
        .expect("run toy-train");
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(dir.join(checkpoint::WEIGHTS)).expect("weights");
    serde_json::from_str(&text).expect("weights json")
}
