//! SIMULATED-VM rows of `herd bench migrate`: `simvm` jobs (a `herd
//! sim-vm` process whose memory is a real buffer written at a set rate)
//! moved live by herd, pre-copy over the sim-vm processes' own migration stream. Measured
//! only where the agents' `simvm` driver says it moves live and a small
//! trial move completes; otherwise each row says why it is not available.
//! There is no baseline: nothing but herd moves a simulated VM.

use std::time::Duration;

use herd_api::resources::{display_memory, MIB};

use super::herd_side::{HerdCluster, Placed, NODES};
use super::report::{HerdFigures, Row};
use super::vm::live_move;
use super::Limits;
use crate::exit::CliError;

/// The trial move's size.
const TRIAL_MIB: u64 = 64;
/// How long a simulated VM runs before it is moved (it dirties pages
/// from its start).
const WARM_UP: Duration = Duration::from_secs(2);

/// One simulated-VM case: memory and dirty rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimVmCase {
    /// Memory, bytes.
    pub size_bytes: u64,
    /// Bytes written per second.
    pub dirty_bytes_per_sec: u64,
}

impl SimVmCase {
    fn load_text(&self) -> String {
        if self.dirty_bytes_per_sec == 0 {
            "idle".to_string()
        } else {
            format!("dirty {}/s", display_memory(self.dirty_bytes_per_sec))
        }
    }
}

fn spec_toml(job: &str, case: &SimVmCase) -> String {
    format!(
        "name = {job:?}\ntype = \"service\"\n[task]\ndriver = \"simvm\"\n[task.config]\n\
         dirty_rate = \"{rate}\"\n[task.resources]\ncpu = 100\nmemory = \"{mib}MiB\"\n",
        rate = case.dirty_bytes_per_sec,
        mib = case.size_bytes / MIB,
    )
}

/// Memory this host has available, bytes (`MemAvailable`), if readable.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Whether simulated VMs can be moved here: the driver's capability says
/// live, and a [`TRIAL_MIB`] one moves; `Err` says why not.
pub async fn available(cluster: &HerdCluster, limits: &Limits) -> Result<(), String> {
    match cluster
        .migration_mode(NODES[0], "simvm")
        .await
        .map_err(|e| e.message)?
    {
        Some(mode) if mode == "live" => {}
        Some(mode) => {
            return Err(format!(
                "the agents' simvm driver moves workloads as {mode:?}, not live"
            ))
        }
        None => return Err("the agents offer no simvm driver".to_string()),
    }
    let trial = SimVmCase {
        size_bytes: TRIAL_MIB * MIB,
        dirty_bytes_per_sec: MIB,
    };
    herd_move(cluster, &trial, limits, "bench-simvm-trial")
        .await
        .map(|_| ())
        .map_err(|e| {
            format!(
                "a trial move of a {TRIAL_MIB} MiB simulated VM failed: {}",
                e.message
            )
        })
}

/// A row that could not be measured, saying why.
pub fn unavailable(case: &SimVmCase, limits: &Limits, run: u32, why: &str) -> Row {
    Row {
        kind: "simvm",
        size_bytes: case.size_bytes,
        load: case.load_text(),
        run,
        downtime_limit_ms: limits.downtime_limit_ms(),
        herd: None,
        baseline: None,
        note: Some(format!("not available: {why}")),
    }
}

/// One simulated-VM row.
pub async fn row(cluster: &HerdCluster, case: &SimVmCase, limits: &Limits, run: u32) -> Row {
    // Its buffer is allocated zeroed and costs only the pages written, on
    // either side; a whole copy must still fit, in case one is touched.
    if let Some(available) = available_memory() {
        if case.size_bytes > available {
            return unavailable(
                case,
                limits,
                run,
                &format!(
                    "a copy of {} does not fit in this host's {} available",
                    display_memory(case.size_bytes),
                    display_memory(available)
                ),
            );
        }
    }
    let mut row = unavailable(case, limits, run, "");
    row.note = None;
    let job = format!(
        "bench-simvm-{}-{}-{run}",
        case.size_bytes / MIB,
        case.dirty_bytes_per_sec / MIB
    );
    match herd_move(cluster, case, limits, &job).await {
        Ok(figures) => row.herd = Some(figures),
        Err(e) => row.note = Some(format!("herd: {}", e.message)),
    }
    row
}

async fn herd_move(
    cluster: &HerdCluster,
    case: &SimVmCase,
    limits: &Limits,
    job: &str,
) -> Result<HerdFigures, CliError> {
    cluster.submit(&spec_toml(job, case)).await?;
    let placed: Placed = cluster.running(job).await?;
    let result: Result<HerdFigures, CliError> = async {
        tokio::time::sleep(WARM_UP).await;
        live_move(cluster, &placed, limits).await
    }
    .await;
    let finished = cluster.finish(job, &placed.alloc).await;
    let figures = result?;
    finished?;
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_is_a_valid_simvm_job_of_the_case() {
        let case = SimVmCase {
            size_bytes: 1 << 30,
            dirty_bytes_per_sec: 64 * MIB,
        };
        let spec = herd_api::spec_file::parse_job_spec(&spec_toml("s", &case), "t").expect("valid");
        let settings = herd_api::driver_settings::simvm(&spec.task).expect("simvm settings");
        assert_eq!(
            (settings.memory_mib, settings.dirty_bytes_per_sec),
            (1024, 64 * MIB)
        );
        assert_eq!(case.load_text(), "dirty 64MiB/s");
    }

    #[test]
    fn an_unavailable_row_says_why_and_has_no_figures() {
        let limits = Limits::for_test();
        let case = SimVmCase {
            size_bytes: 16 << 30,
            dirty_bytes_per_sec: 0,
        };
        let row = unavailable(&case, &limits, 1, "no live moves");
        assert_eq!(row.herd, None);
        assert_eq!(row.note.as_deref(), Some("not available: no live moves"));
        assert_eq!(row.load, "idle");
    }
}
