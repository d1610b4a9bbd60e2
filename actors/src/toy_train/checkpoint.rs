//! Checkpoint files of `herd toy-train`, in the run's checkpoint directory:
//!
//! - `ckpt-<step, 12 digits>.json`: one [`TrainState`], parameters as bit
//!   patterns (exact) with a checksum, so that a torn or altered file is
//!   recognised and skipped rather than resumed from;
//! - `latest`: the name of the newest checkpoint (a hint: resumption checks
//!   the file it names and falls back to the others, newest first);
//! - `checkpoint.request` / `checkpoint.done`: the control-file protocol
//!   (see `docs/dljob.md`).
//!
//! Every file is written atomically: a temporary file, fsync, rename, fsync of
//! the directory. A crash leaves the old file or the new one, never half of one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::model::{TrainState, PARAMS};

/// Names the newest checkpoint file.
pub const LATEST: &str = "latest";
/// Created (by anyone) to ask the trainer for a checkpoint; its content, a
/// request id, is echoed in [`DONE`].
pub const REQUEST: &str = "checkpoint.request";
/// Written by the trainer once it checkpointed for a request ([`DoneRecord`]).
pub const DONE: &str = "checkpoint.done";
/// While it exists, a trainer that checkpointed for a request with an
/// `at_step` stays at that step (takes no further step) until it is
/// removed or the trainer is stopped: how a gang's learners are all
/// stopped at one step (`docs/dljob.md`).
pub const HOLD: &str = "checkpoint.hold";
/// The final parameters, written when a run completes.
pub const WEIGHTS: &str = "weights.json";
/// Checkpoints kept; older ones are removed after each new one.
pub const KEEP: usize = 3;

/// The version of the checkpoint format.
const FORMAT: u32 = 1;

/// Why checkpoints could not be written or looked for.
#[derive(Debug, Error)]
#[error("{path}: {source}")]
pub struct CheckpointError {
    /// The file or directory.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

fn err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError {
        path: path.to_path_buf(),
        source,
    }
}

/// A checkpoint file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    format: u32,
    seed: u64,
    step: u64,
    rng: u64,
    /// `f64::to_bits` of each parameter: JSON numbers would round-trip only
    /// with the right parser, bits always do.
    weight_bits: Vec<u64>,
    /// FNV-1a of the fields above.
    checksum: u64,
}

impl Stored {
    fn of(state: &TrainState) -> Self {
        let mut stored = Self {
            format: FORMAT,
            seed: state.seed,
            step: state.step,
            rng: state.rng,
            weight_bits: state.weight_bits(),
            checksum: 0,
        };
        stored.checksum = stored.digest();
        stored
    }

    fn digest(&self) -> u64 {
        let mut hash = Fnv::new();
        hash.write(&self.format.to_le_bytes());
        for v in [self.seed, self.step, self.rng] {
            hash.write(&v.to_le_bytes());
        }
        for w in &self.weight_bits {
            hash.write(&w.to_le_bytes());
        }
        hash.0
    }

    fn into_state(self) -> Result<TrainState, String> {
        if self.format != FORMAT {
            return Err(format!("format {} (this herd reads {FORMAT})", self.format));
        }
        if self.checksum != self.digest() {
            return Err("checksum mismatch".to_string());
        }
        if self.weight_bits.len() != PARAMS {
            return Err(format!(
                "{} parameters, expected {PARAMS}",
                self.weight_bits.len()
            ));
        }
        Ok(TrainState {
            seed: self.seed,
            step: self.step,
            weights: self.weight_bits.into_iter().map(f64::from_bits).collect(),
            rng: self.rng,
        })
    }
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The file name of the checkpoint after `step` steps.
pub fn file_name(step: u64) -> String {
    format!("ckpt-{step:012}.json")
}

/// The step of a checkpoint file name, if it is one.
fn step_of(name: &str) -> Option<u64> {
    name.strip_prefix("ckpt-")?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

/// Writes `bytes` to `dir/name` atomically (temp file, fsync, rename, fsync dir).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&tmp).map_err(err(&tmp))?;
    file.write_all(bytes).map_err(err(&tmp))?;
    file.sync_all().map_err(err(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(err(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err(dir))
}

/// Writes the checkpoint of `state` into `dir` (created if missing), points
/// [`LATEST`] at it and removes all but the [`KEEP`] newest. Returns its name.
pub fn save(dir: &Path, state: &TrainState) -> Result<String, CheckpointError> {
    fs::create_dir_all(dir).map_err(err(dir))?;
    let name = file_name(state.step);
    let bytes =
        serde_json::to_vec_pretty(&Stored::of(state)).map_err(|e| err(dir)(io::Error::other(e)))?;
    write_atomic(dir, &name, &bytes)?;
    write_atomic(dir, LATEST, name.as_bytes())?;
    let mut steps = checkpoint_steps(dir)?;
    steps.sort_unstable_by(|a, b| b.cmp(a));
    for old in steps.into_iter().skip(KEEP) {
        let path = dir.join(file_name(old));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&path)(e)),
        }
    }
    Ok(name)
}

/// Steps of the checkpoint files in `dir`, in no order.
fn checkpoint_steps(dir: &Path) -> Result<Vec<u64>, CheckpointError> {
    let mut steps = Vec::new();
    for entry in fs::read_dir(dir).map_err(err(dir))? {
        let entry = entry.map_err(err(dir))?;
        if let Some(step) = entry.file_name().to_str().and_then(step_of) {
            steps.push(step);
        }
    }
    Ok(steps)
}

/// Reads and checks one checkpoint file.
pub fn read(path: &Path) -> Result<TrainState, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    stored.into_state()
}

/// A checkpoint a run can resume from.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    /// Its state.
    pub state: TrainState,
    /// Its file name.
    pub file: String,
}

/// What [`latest`] found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Found {
    /// The checkpoint to resume from, if any is valid.
    pub resumed: Option<Resumed>,
    /// Newer checkpoints that were unusable, each with why (to warn about).
    pub skipped: Vec<String>,
}

/// The newest valid checkpoint in `dir`: the one [`LATEST`] names if valid,
/// else the valid file of the highest step; nothing when there is none (or no
/// directory). Unusable files are skipped and reported, never fatal.
pub fn latest(dir: &Path) -> Result<Found, CheckpointError> {
    let mut steps = match checkpoint_steps(dir) {
        Ok(steps) => steps,
        Err(e) if e.source.kind() == io::ErrorKind::NotFound => return Ok(Found::default()),
        Err(e) => return Err(e),
    };
    steps.sort_unstable_by(|a, b| b.cmp(a));
    let mut candidates: Vec<String> = steps.into_iter().map(file_name).collect();
    let mut found = Found::default();
    // `latest` first: normally the newest; if it names an older file (a newer
    // one was written but `latest` not yet updated), that file is still the
    // last one known complete.
    match fs::read_to_string(dir.join(LATEST)) {
        Ok(text) => {
            let named = text.trim().to_string();
            if candidates.contains(&named) {
                candidates.retain(|c| *c != named);
                candidates.insert(0, named);
            } else {
                found
                    .skipped
                    .push(format!("{LATEST} names {named:?}, which is not there"));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => found.skipped.push(format!("{LATEST}: {e}")),
    }
    for file in candidates {
        match read(&dir.join(&file)) {
            Ok(state) => {
                found.resumed = Some(Resumed { state, file });
                break;
            }
            Err(why) => found.skipped.push(format!("{file}: {why}")),
        }
    }
    Ok(found)
}

/// What the trainer writes to [`DONE`] after checkpointing for a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneRecord {
    /// The content of the [`REQUEST`] file it answers (trimmed).
    pub request: String,
    /// Steps done when the checkpoint was taken.
    pub step: u64,
    /// The checkpoint file written.
    pub checkpoint: String,
}

/// A checkpoint request as [`REQUEST`] holds it: a bare id (checkpoint at
/// the next step boundary), or JSON `{"request": ID, "at_step": N}`
/// (checkpoint once N steps are done; at once, answering the step reached,
/// if already past N).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The id the answer echoes.
    #[serde(rename = "request")]
    pub id: String,
    /// The step to checkpoint at, if not the next boundary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_step: Option<u64>,
}

impl Request {
    /// Reads a request file's text: JSON when it is a JSON object with a
    /// `request` field, else the trimmed text as a bare id (the older form).
    pub fn parse(text: &str) -> Self {
        let text = text.trim();
        if text.starts_with('{') {
            if let Ok(request) = serde_json::from_str::<Request>(text) {
                return request;
            }
        }
        Self {
            id: text.to_string(),
            at_step: None,
        }
    }

    /// The text to write into [`REQUEST`]: the bare id when no step is
    /// asked for (what every trainer of the protocol reads), JSON otherwise.
    pub fn encode(&self) -> String {
        match self.at_step {
            None => self.id.clone(),
            Some(_) => serde_json::to_string(self).unwrap_or_else(|_| self.id.clone()),
        }
    }

    /// Whether a trainer that has done `step` steps answers it now.
    pub fn due(&self, step: u64) -> bool {
        self.at_step.is_none_or(|at| step >= at)
    }
}

/// The pending [`REQUEST`] in `dir`, if any.
pub fn pending(dir: &Path) -> Result<Option<Request>, CheckpointError> {
    let path = dir.join(REQUEST);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(Request::parse(&text))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(&path)(e)),
    }
}

/// Whether [`HOLD`] is present in `dir`.
pub fn holding(dir: &Path) -> bool {
    dir.join(HOLD).exists()
}

/// Answers the pending [`REQUEST`] in `dir`, if any is due at `step`
/// ([`Request::due`]), after a checkpoint of `step` was written to
/// `checkpoint`: writes [`DONE`], then removes the request. Returns the
/// request answered.
pub fn answer_request(
    dir: &Path,
    step: u64,
    checkpoint: &str,
) -> Result<Option<Request>, CheckpointError> {
    let path = dir.join(REQUEST);
    let request = match pending(dir)? {
        Some(request) if request.due(step) => request,
        _ => return Ok(None),
    };
    let record = DoneRecord {
        request: request.id.clone(),
        step,
        checkpoint: checkpoint.to_string(),
    };
    let bytes = serde_json::to_vec(&record).map_err(|e| err(&path)(io::Error::other(e)))?;
    write_atomic(dir, DONE, &bytes)?;
    match fs::remove_file(&path) {
        Ok(()) => Ok(Some(request)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(request)),
        Err(e) => Err(err(&path)(e)),
    }
}

/// Whether a [`REQUEST`] is pending in `dir`.
pub fn requested(dir: &Path) -> bool {
    dir.join(REQUEST).exists()
}

/// The final parameters of a completed run, as `weights.json` holds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsRecord {
    /// The run's seed.
    pub seed: u64,
    /// Steps done.
    pub step: u64,
    /// The parameters, for people.
    pub weights: Vec<f64>,
    /// Their bit patterns, to compare runs exactly.
    pub weight_bits: Vec<u64>,
}

impl WeightsRecord {
    /// The record of `state`.
    pub fn of(state: &TrainState) -> Self {
        Self {
            seed: state.seed,
            step: state.step,
            weights: state.weights.clone(),
            weight_bits: state.weight_bits(),
        }
    }
}

/// Writes [`WEIGHTS`] for `state` into `dir`, atomically.
pub fn write_weights(dir: &Path, state: &TrainState) -> Result<(), CheckpointError> {
    fs::create_dir_all(dir).map_err(err(dir))?;
    let bytes = serde_json::to_vec_pretty(&WeightsRecord::of(state))
        .map_err(|e| err(dir)(io::Error::other(e)))?;
    write_atomic(dir, WEIGHTS, &bytes)
}
