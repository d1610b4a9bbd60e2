//! A spec resubmitted for an autoscaled service: its instance count
//! belongs to the autoscaler, not to the spec.
//!
//! Without this, `herd job run` of the same file after the autoscaler has
//! scaled the service out would look like a changed spec (its `count`
//! differs from the scaled one): a new job version, every instance
//! replaced, and the count reset to the file's, undoing the autoscaler.
//! Operators expect the opposite: Nomad keeps the counts of scaled groups
//! (`job run -preserve-counts`), and Kubernetes says to leave `replicas`
//! out of a Deployment under a HorizontalPodAutoscaler. So, while a job
//! with an `[autoscale]` table runs, a resubmission that keeps the table
//! keeps the current count, brought within the new `min..=max`:
//!
//! - the same spec, `count` aside: nothing changes (no new version, the
//!   same instances; `herd job run` says "unchanged");
//! - a changed spec: a new version with the current count, clamped.
//!
//! The spec's `count` is then only the count a service *starts* with: when
//! it is first submitted, after `herd job stop`, or when the `[autoscale]`
//! table is added (until then the count was the spec's or `herd service
//! scale`'s, and the table's addition is the moment the operator hands it
//! over). Removing the table gives the count back to the spec.
//!
//! Applied in [`crate::machine::apply`] (not at the API), so that the count
//! kept is the one in the state when the entry applies, whatever the
//! autoscaler committed between the submission and its entry; pure and
//! deterministic like the rest of `apply`.

use herd_api::job::JobSpec;

use crate::state::{Job, JobStatus};

/// The instance count a submission of `spec` is stored with, given the
/// job as it stands (`current`, None for a new job): the autoscaler's
/// current count clamped into the new `min..=max` when both the running
/// job and `spec` have an `[autoscale]` table; the spec's `count`
/// otherwise.
pub fn count_on_submit(current: Option<&Job>, spec: &JobSpec) -> u32 {
    let (Some(job), Some(new)) = (current, spec.autoscale.as_deref()) else {
        return spec.count;
    };
    if job.status == JobStatus::Stopped || job.spec.autoscale.is_none() {
        return spec.count;
    }
    // Not `clamp`: it panics when min > max, and `apply` must not panic
    // whatever an entry holds (the full rules are checked at the API).
    job.spec.count.max(new.min).min(new.max).max(1)
}

#[cfg(test)]
mod tests {
    use herd_api::autoscale::AutoscaleSpec;
    use herd_api::job::JobType;

    use super::*;
    use crate::autoscale::apply::{ScaleRequest, SOURCE_AUTOSCALER};
    use crate::machine::command::{Command, CommandResult};
    use crate::state::ClusterState;
    use crate::testkit::{place, run, spec};

    fn service(count: u32, min: u32, max: u32) -> JobSpec {
        let mut job = spec("llm", JobType::Service, count);
        job.task.driver = "inference".into();
        job.task.command = None;
        job.autoscale = Some(Box::new(AutoscaleSpec::new(min, max)));
        job
    }

    fn job(spec: JobSpec, status: JobStatus) -> Job {
        Job {
            spec,
            version: 1,
            status,
            submitted_at_ms: 1,
            updated_at_ms: 1,
            modify_index: 1,
            blocked: None,
        }
    }

    #[test]
    fn a_running_autoscaled_job_keeps_its_count_clamped_into_the_new_range() {
        let mut scaled = service(1, 1, 6);
        scaled.count = 4; // where the autoscaler took it
        let running = job(scaled, JobStatus::Running);
        // The file still says 1: the autoscaler's 4 stays.
        assert_eq!(count_on_submit(Some(&running), &service(1, 1, 6)), 4);
        // A new range that 4 is outside of: brought to its nearest end.
        assert_eq!(count_on_submit(Some(&running), &service(1, 1, 3)), 3);
        assert_eq!(count_on_submit(Some(&running), &service(5, 5, 8)), 5);
        // Pending counts as live too (instances not placed yet).
        let pending = job(running.spec.clone(), JobStatus::Pending);
        assert_eq!(count_on_submit(Some(&pending), &service(2, 1, 6)), 4);
    }

    #[test]
    fn the_spec_s_count_applies_where_the_autoscaler_owns_nothing() {
        let mut scaled = service(1, 1, 6);
        scaled.count = 4;
        // A new job.
        assert_eq!(count_on_submit(None, &service(2, 1, 6)), 2);
        // A stopped job starts again with the spec's count.
        let stopped = job(scaled.clone(), JobStatus::Stopped);
        assert_eq!(count_on_submit(Some(&stopped), &service(2, 1, 6)), 2);
        // The table removed: the count is the spec's again.
        let running = job(scaled.clone(), JobStatus::Running);
        let mut plain = service(2, 1, 6);
        plain.autoscale = None;
        assert_eq!(count_on_submit(Some(&running), &plain), 2);
        // The table added to a job that had none: it starts from the spec.
        let mut unscaled = scaled;
        unscaled.autoscale = None;
        let running = job(unscaled, JobStatus::Running);
        assert_eq!(count_on_submit(Some(&running), &service(2, 1, 6)), 2);
    }

    #[test]
    fn an_inverted_range_gives_a_count_and_no_panic() {
        let mut scaled = service(1, 1, 6);
        scaled.count = 4;
        let running = job(scaled, JobStatus::Running);
        let mut bad = service(1, 1, 6);
        bad.autoscale = Some(Box::new(AutoscaleSpec::new(5, 2)));
        assert_eq!(count_on_submit(Some(&running), &bad), 2);
        bad.autoscale = Some(Box::new(AutoscaleSpec::new(0, 0)));
        assert_eq!(count_on_submit(Some(&running), &bad), 1);
    }

    /// Submits `spec` at `index` and returns the result.
    fn submit(state: &mut ClusterState, index: u64, spec: JobSpec) -> CommandResult {
        run(
            state,
            index,
            Command::SubmitJob {
                spec,
                now_ms: index * 10,
            },
        )
        .0
    }

    /// Scales llm to `count` as the autoscaler would, at `index`.
    fn autoscale_to(state: &mut ClusterState, index: u64, count: u32) {
        let (result, _) = run(
            state,
            index,
            Command::ScaleJob {
                scale: ScaleRequest {
                    job: "llm".into(),
                    count,
                    expect_count: None,
                    source: SOURCE_AUTOSCALER.into(),
                    reason: "test".into(),
                },
                now_ms: index * 10,
            },
        );
        assert!(
            matches!(result, CommandResult::JobScaled { to, .. } if to == count),
            "{result:?}"
        );
    }

    #[test]
    fn resubmitting_an_autoscaled_service_neither_versions_it_nor_undoes_the_autoscaler() {
        let mut state = ClusterState::default();
        let index = place(&mut state, &["n1", "n2", "n3"], vec![service(1, 1, 3)], 5);
        autoscale_to(&mut state, index, 3);
        let before = state.clone();
        // The same file again: a no-op.
        assert_eq!(
            submit(&mut state, index + 1, service(1, 1, 3)),
            CommandResult::JobSubmitted {
                version: 1,
                changed: false
            }
        );
        assert_eq!(state, before, "nothing written");
        // A changed spec (max 2): a new version, the count kept but clamped.
        assert_eq!(
            submit(&mut state, index + 2, service(1, 1, 2)),
            CommandResult::JobSubmitted {
                version: 2,
                changed: true
            }
        );
        assert_eq!(state.jobs["llm"].spec.count, 2);
        // Without the table, the spec's count applies again.
        let mut plain = service(1, 1, 2);
        plain.autoscale = None;
        submit(&mut state, index + 3, plain);
        assert_eq!(
            (state.jobs["llm"].version, state.jobs["llm"].spec.count),
            (3, 1)
        );
    }

    #[test]
    fn a_job_without_autoscale_still_versions_on_a_new_count() {
        let mut state = ClusterState::default();
        let mut plain = service(1, 1, 3);
        plain.autoscale = None;
        submit(&mut state, 1, plain.clone());
        plain.count = 2;
        assert_eq!(
            submit(&mut state, 2, plain),
            CommandResult::JobSubmitted {
                version: 2,
                changed: true
            }
        );
        assert_eq!(state.jobs["llm"].spec.count, 2);
    }
}
