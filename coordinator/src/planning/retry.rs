//! When a failed instance is placed again: a batch instance's attempts, the
//! growing delay between attempts, and what each instance's allocations say.

use std::collections::BTreeMap;

use herd_api::alloc::AllocStatus;
use herd_api::job::JobType;

use super::views::is_live;
use crate::state::{ClusterState, Job};

/// Attempts a batch instance gets before its job is failed.
pub const BATCH_ATTEMPTS: usize = 3;
/// Delay before an instance that failed once is placed again; it doubles
/// with every further failure, up to [`RETRY_MAX_MS`], so a crash-looping
/// service does not flood the log with allocations.
pub const RETRY_BASE_MS: u64 = 1_000;
/// Longest delay between attempts of a failing instance.
pub const RETRY_MAX_MS: u64 = 60_000;

/// The wait before the next attempt of an instance that failed `failures` times.
pub fn retry_delay_ms(failures: usize) -> u64 {
    match failures {
        0 => 0,
        n => RETRY_BASE_MS
            .saturating_mul(1 << (n - 1).min(16))
            .min(RETRY_MAX_MS),
    }
}

/// What the allocations of one instance of a job's current version say.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InstanceHistory {
    /// An allocation runs or is about to.
    pub live: bool,
    /// An allocation ran to completion.
    pub complete: bool,
    /// Allocations that failed (lost nodes and evictions do not count).
    pub failures: usize,
    /// When the last failure was recorded, ms since the epoch.
    pub last_failure_ms: u64,
}

/// The history of every instance of the job's current version that has allocations.
pub fn instance_histories(state: &ClusterState, job: &Job) -> BTreeMap<u32, InstanceHistory> {
    let mut histories: BTreeMap<u32, InstanceHistory> = BTreeMap::new();
    for alloc in state
        .allocs_of_job(&job.spec.name)
        .filter(|a| a.job_version == job.version)
    {
        let history = histories.entry(alloc.instance).or_default();
        history.live |= is_live(alloc);
        match alloc.status {
            AllocStatus::Complete => history.complete = true,
            AllocStatus::Failed => {
                history.failures += 1;
                let at = alloc.events.last().map_or(0, |e| e.at_ms);
                history.last_failure_ms = history.last_failure_ms.max(at);
            }
            _ => {}
        }
    }
    histories
}

/// Whether an instance with this history has used up its attempts (batch only).
pub fn exhausted(job: &Job, history: &InstanceHistory) -> bool {
    job.spec.job_type == JobType::Batch && history.failures >= BATCH_ATTEMPTS && !history.complete
}

/// Instances of the job's current version that need a new allocation at
/// `now_ms`: no live allocation, not completed (batch), attempts left
/// (batch), and past the retry delay of their last failure.
pub fn missing_instances(state: &ClusterState, job: &Job, now_ms: u64) -> Vec<u32> {
    let histories = instance_histories(state, job);
    let batch = job.spec.job_type == JobType::Batch;
    (0..job.spec.count)
        .filter(|i| {
            let history = histories.get(i).copied().unwrap_or_default();
            if history.live || (batch && history.complete) || exhausted(job, &history) {
                return false;
            }
            now_ms >= history.last_failure_ms + retry_delay_ms(history.failures)
        })
        .collect()
}
