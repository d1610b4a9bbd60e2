//! The link between SIMULATED GPUs and the work bound to them: two small
//! files in the allocation's directory, one written by each side.
//!
//! - `gpu-work`, written by the workload (the inference engine, `herd
//!   toy-train`) about twice a second: how busy it keeps its GPUs,
//!   `{"activity": 0.83, "at_ms": 1733480000000}` (0.0 to 1.0, and when).
//!   The agent sets each simulated GPU's activity from the report of the
//!   allocation bound to it; a GPU with no fresh report idles.
//! - `gpu-throttle`, written by the agent only when its GPUs are simulated:
//!   the share of its uncapped throughput the allocation's GPUs keep under
//!   the limits the governor set (one number, `0.05..=1.0`). The workload
//!   stretches its modelled step time by its inverse. No file: full speed,
//!   so work on real GPUs (NVML) or none is never slowed artificially.
//!
//! Files rather than a socket because both sides already share the
//! directory (it survives an agent restart, a workload can be any process,
//! and the agent reads them like the other files it watches there). The
//! agent treats `gpu-work` as untrusted input: short reads only, the
//! number checked, stale reports ignored.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The workload's report of how busy it keeps its GPUs.
pub const WORK_FILE: &str = "gpu-work";
/// The agent's answer: the throughput share its GPUs keep under their caps.
pub const THROTTLE_FILE: &str = "gpu-throttle";
/// How often a workload reports and reads its throttle.
pub const REPORT_EVERY: Duration = Duration::from_millis(500);
/// A report older than this says nothing of now (its work stopped or hung).
pub const STALE_AFTER_MS: u64 = 3_000;
/// The lowest throughput share a workload accepts from the file: a damaged
/// or absurd value must not stall it.
pub const MIN_THROUGHPUT: f64 = 0.05;
/// Longest file either side reads; anything longer is not ours.
const MAX_FILE_BYTES: u64 = 256;

/// What `gpu-work` holds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WorkReport {
    /// How busy the work kept its GPUs over the last period, 0.0 to 1.0.
    pub activity: f64,
    /// When it was written, ms since the Unix epoch.
    pub at_ms: u64,
}

/// Writes `name` in `dir` whole or not at all (a temporary file renamed),
/// so the reader never sees half a number. The directory is the
/// workload's, so the agent writing here never follows a link the workload
/// put in its way: the temporary is created anew (`O_EXCL`, which fails on
/// an existing name, a symbolic link included) and renamed over the link
/// itself, never through it.
fn write_atomic(dir: &Path, name: &str, text: &str) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}.tmp"));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
    }
    std::fs::rename(&tmp, dir.join(name))
}

/// At most [`MAX_FILE_BYTES`] of `dir/name`; None when absent, unreadable
/// or not a plain file. Opened without following a link and without
/// blocking, so that a workload's FIFO or link there cannot stall or
/// redirect the reader.
fn read_short(dir: &Path, name: &str) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dir.join(name))
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Writes the workload's report (activity clamped to 0.0..=1.0).
pub fn write_work(dir: &Path, activity: f64, at_ms: u64) -> io::Result<()> {
    let activity = if activity.is_finite() {
        activity.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let text = serde_json::to_string(&WorkReport { activity, at_ms }).map_err(io::Error::other)?;
    write_atomic(dir, WORK_FILE, &text)
}

/// The activity `dir`'s workload reported, when its report is fresh (at
/// most [`STALE_AFTER_MS`] old at `now_ms`, or from at most that far in
/// the future) and valid; None otherwise (no work to show: the GPU idles).
pub fn read_work(dir: &Path, now_ms: u64) -> Option<f64> {
    let report: WorkReport = serde_json::from_str(&read_short(dir, WORK_FILE)?).ok()?;
    let fresh = now_ms.abs_diff(report.at_ms) <= STALE_AFTER_MS;
    (fresh && (0.0..=1.0).contains(&report.activity)).then_some(report.activity)
}

/// Writes the agent's throttle for `dir`'s workload.
pub fn write_throttle(dir: &Path, fraction: f64) -> io::Result<()> {
    write_atomic(
        dir,
        THROTTLE_FILE,
        &format!("{:.4}\n", clamp_throughput(fraction)),
    )
}

/// The throughput share `dir`'s workload keeps: the agent's number, clamped
/// to [`MIN_THROUGHPUT`]`..=1.0`; 1.0 with no file or a bad one.
pub fn read_throttle(dir: &Path) -> f64 {
    read_short(dir, THROTTLE_FILE)
        .and_then(|t| t.trim().parse::<f64>().ok())
        .map_or(1.0, clamp_throughput)
}

fn clamp_throughput(fraction: f64) -> f64 {
    if fraction.is_finite() {
        fraction.clamp(MIN_THROUGHPUT, 1.0)
    } else {
        1.0
    }
}

/// `duration` stretched by a throughput share: the time the same work takes
/// when only `throughput` of it gets done per second.
pub fn stretched(duration: Duration, throughput: f64) -> Duration {
    duration.div_f64(clamp_throughput(throughput))
}

/// The workload's side: busy time counted as it works, and the throttle it
/// last read. Shared between the work loop and the reporter; cheap.
#[derive(Debug)]
pub struct WorkMeter {
    /// Busy seconds × intensity since the last report.
    busy: Mutex<f64>,
    /// The throughput share, as f64 bits.
    throughput: AtomicU64,
}

impl Default for WorkMeter {
    fn default() -> Self {
        Self {
            busy: Mutex::new(0.0),
            throughput: AtomicU64::new(1.0f64.to_bits()),
        }
    }
}

impl WorkMeter {
    /// Counts `seconds` of work that kept the GPU `intensity` busy (0 to 1:
    /// a small decode batch draws less than a prefill).
    pub fn add_busy(&self, seconds: f64, intensity: f64) {
        if !(seconds.is_finite() && intensity.is_finite()) || seconds <= 0.0 {
            return;
        }
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        *busy += seconds * intensity.clamp(0.0, 1.0);
    }

    /// The activity over the `elapsed` seconds since the last call (busy
    /// over elapsed, at most 1), and starts a new period.
    pub fn take_activity(&self, elapsed: f64) -> f64 {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let activity = if elapsed > 0.0 {
            (*busy / elapsed).clamp(0.0, 1.0)
        } else {
            0.0
        };
        *busy = 0.0;
        activity
    }

    /// The throughput share the workload keeps now (1.0 until told less).
    pub fn throughput(&self) -> f64 {
        f64::from_bits(self.throughput.load(Ordering::Relaxed))
    }

    /// Takes a new throughput share (clamped like the file's).
    pub fn set_throughput(&self, fraction: f64) {
        self.throughput
            .store(clamp_throughput(fraction).to_bits(), Ordering::Relaxed);
    }
}

/// One workload's end of the files: every [`REPORT_EVERY`], reads the
/// throttle into the meter and writes the activity it measured.
#[derive(Debug)]
pub struct WorkReporter {
    dir: std::path::PathBuf,
    last: Instant,
}

impl WorkReporter {
    /// Reports for the allocation directory `dir`.
    pub fn new(dir: impl Into<std::path::PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            last: Instant::now(),
        }
    }

    /// Reads the throttle into `meter` now (at start, so that a workload
    /// started under a cap is slowed from its first step).
    pub fn read_throttle_now(&self, meter: &WorkMeter) {
        meter.set_throughput(read_throttle(&self.dir));
    }

    /// Exchanges with the agent when a period has passed (else nothing);
    /// an error writing the report is returned for the caller to log.
    pub fn tick(&mut self, meter: &WorkMeter) -> io::Result<()> {
        let elapsed = self.last.elapsed();
        // A little early is on time (a timer ticking every period).
        if elapsed < REPORT_EVERY.mul_f64(0.9) {
            return Ok(());
        }
        self.exchange(meter, elapsed)
    }

    fn exchange(&mut self, meter: &WorkMeter, elapsed: Duration) -> io::Result<()> {
        self.last = Instant::now();
        meter.set_throughput(read_throttle(&self.dir));
        let activity = meter.take_activity(elapsed.as_secs_f64());
        write_work(&self.dir, activity, herd_api::clock::now_ms())
    }

    /// Says the work is over (activity 0 now), e.g. on exit.
    pub fn idle(&mut self) -> io::Result<()> {
        write_work(&self.dir, 0.0, herd_api::clock::now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_reports_round_trip_and_go_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_work(dir.path(), 10_000), None);
        write_work(dir.path(), 0.75, 10_000).expect("write");
        assert_eq!(read_work(dir.path(), 10_500), Some(0.75));
        assert_eq!(read_work(dir.path(), 10_000 + STALE_AFTER_MS + 1), None);
        write_work(dir.path(), 7.0, 10_000).expect("write");
        assert_eq!(read_work(dir.path(), 10_000), Some(1.0));
        // Untrusted content: not a report, a bad number, too long.
        for text in [
            "x".to_string(),
            r#"{"activity": -0.5, "at_ms": 10000}"#.to_string(),
            format!(
                r#"{{"activity": 0.5, "at_ms": 10000, "pad": "{}"}}"#,
                "p".repeat(400)
            ),
        ] {
            std::fs::write(dir.path().join(WORK_FILE), text).expect("write");
            assert_eq!(read_work(dir.path(), 10_000), None);
        }
    }

    #[test]
    fn throttles_are_clamped_and_default_to_full_speed() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_throttle(dir.path()), 1.0);
        write_throttle(dir.path(), 0.8).expect("write");
        assert_eq!(read_throttle(dir.path()), 0.8);
        for (text, want) in [
            ("0", MIN_THROUGHPUT),
            ("3", 1.0),
            ("NaN", 1.0),
            ("half", 1.0),
        ] {
            std::fs::write(dir.path().join(THROTTLE_FILE), text).expect("write");
            assert_eq!(read_throttle(dir.path()), want, "{text}");
        }
        let step = Duration::from_millis(100);
        assert_eq!(stretched(step, 1.0), step);
        assert_eq!(stretched(step, 0.5), Duration::from_millis(200));
        assert_eq!(stretched(step, 0.0), step.div_f64(MIN_THROUGHPUT));
    }

    #[test]
    fn the_meter_turns_busy_time_into_activity() {
        let meter = WorkMeter::default();
        assert_eq!(meter.throughput(), 1.0);
        meter.add_busy(0.25, 1.0);
        meter.add_busy(0.5, 0.5);
        meter.add_busy(f64::NAN, 1.0);
        assert!((meter.take_activity(1.0) - 0.5).abs() < 1e-12);
        // A new period.
        assert_eq!(meter.take_activity(1.0), 0.0);
        meter.add_busy(3.0, 1.0);
        assert_eq!(meter.take_activity(1.0), 1.0);
        meter.set_throughput(0.6);
        assert_eq!(meter.throughput(), 0.6);
    }

    #[test]
    fn the_reporter_exchanges_with_the_agent_s_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meter = WorkMeter::default();
        let mut reporter = WorkReporter::new(dir.path());
        write_throttle(dir.path(), 0.7).expect("write");
        meter.add_busy(0.4, 1.0);
        reporter
            .exchange(&meter, Duration::from_millis(500))
            .expect("report");
        assert_eq!(meter.throughput(), 0.7);
        let now = herd_api::clock::now_ms();
        let activity = read_work(dir.path(), now).expect("fresh");
        assert!((activity - 0.8).abs() < 1e-9, "{activity}");
        // Too soon for another exchange: nothing read.
        write_throttle(dir.path(), 0.9).expect("write");
        reporter.tick(&meter).expect("tick");
        assert_eq!(meter.throughput(), 0.7);
        reporter.idle().expect("idle");
        assert_eq!(read_work(dir.path(), now), Some(0.0));
    }
    #[test]
    fn links_and_fifos_in_the_workload_s_directory_are_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "keep").expect("write");
        // A link where the agent's temporary goes, and one as the file.
        std::os::unix::fs::symlink(&victim, dir.path().join(".gpu-throttle.tmp")).expect("link");
        write_atomic(dir.path(), "gpu-throttle", "0.5").expect("written beside the link");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep");
        assert_eq!(
            read_short(dir.path(), "gpu-throttle").as_deref(),
            Some("0.5")
        );
        std::os::unix::fs::symlink(&victim, dir.path().join("linked")).expect("link");
        assert_eq!(read_short(dir.path(), "linked"), None);
        // A FIFO: neither blocks nor counts.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("c path");
        // SAFETY: a valid NUL-terminated path; mkfifo touches nothing else.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert_eq!(read_short(dir.path(), "fifo"), None);
    }
}
