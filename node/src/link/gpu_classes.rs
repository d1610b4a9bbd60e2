//! Which class of work holds each GPU of the node, from an assignment set:
//! what the PowerGovernor needs to cap low-priority work first.
//!
//! An allocation's GPUs are its assignment's `gpu_indices`; its class comes
//! from its job's type and driver ([`PriorityClass::of_work`]). An
//! allocation only readied here as a migration's target does not run yet
//! and holds nothing. A GPU no allocation holds is idle and left out of
//! the map, which the governor reads as the lowest class
//! ([`PriorityClass::Batch`]): capping it first costs no work.

use std::collections::BTreeMap;

use herd_actors::power::PriorityClass;
use herd_api::job::JobType;
use herd_api::proto::agent::AssignedAllocation;

/// The class of the work on each GPU that `allocs` bind, by index. Were
/// two allocations ever to name one index, the GPU takes the higher class,
/// so that serving is never capped early for a mistake.
pub fn gpu_classes(allocs: &[AssignedAllocation]) -> BTreeMap<u32, PriorityClass> {
    let mut classes: BTreeMap<u32, PriorityClass> = BTreeMap::new();
    for alloc in allocs {
        if alloc.migration.as_ref().is_some_and(|m| m.role == "target") {
            continue;
        }
        // A type this agent cannot read is refused as a whole elsewhere.
        let Some(job_type) = JobType::parse(&alloc.job_type) else {
            continue;
        };
        let driver = alloc.task.as_ref().map_or("", |t| t.driver.as_str());
        let class = PriorityClass::of_work(job_type, driver);
        for &index in &alloc.gpu_indices {
            let held = classes.entry(index).or_insert(class);
            *held = (*held).max(class);
        }
    }
    classes
}

#[cfg(test)]
mod tests {
    use herd_api::proto::agent::MigrationAssignment;
    use herd_api::proto::v1::TaskSpec;

    use super::*;

    fn assigned(id: &str, job_type: &str, driver: &str, gpus: &[u32]) -> AssignedAllocation {
        AssignedAllocation {
            id: id.into(),
            job_type: job_type.into(),
            task: Some(TaskSpec {
                driver: driver.into(),
                ..Default::default()
            }),
            gpu_indices: gpus.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn each_gpu_takes_the_class_of_the_work_bound_to_it() {
        let mut incoming = assigned("moving-in", "service", "inference", &[5]);
        incoming.migration = Some(MigrationAssignment {
            role: "target".into(),
            ..Default::default()
        });
        let mut leaving = assigned("moving-out", "batch", "exec", &[6]);
        leaving.migration = Some(MigrationAssignment {
            role: "source".into(),
            ..Default::default()
        });
        let classes = gpu_classes(&[
            assigned("train", "batch", "dljob", &[0, 1]),
            assigned("serve", "batch", "inference", &[2]),
            assigned("api", "service", "exec", &[3]),
            assigned("cpu-only", "service", "exec", &[]),
            assigned("newer", "daemon", "exec", &[4]),
            incoming,
            leaving,
        ]);
        assert_eq!(
            classes,
            BTreeMap::from([
                (0, PriorityClass::Training),
                (1, PriorityClass::Training),
                (2, PriorityClass::Inference),
                (3, PriorityClass::Inference),
                (6, PriorityClass::Batch),
            ])
        );
        // Idle GPUs (4: unreadable work; 5: not started yet; 7: nothing)
        // are left out: the governor counts them lowest.
        assert!(PriorityClass::ALL[0] == PriorityClass::Batch);
    }

    #[test]
    fn an_index_named_twice_keeps_the_higher_class() {
        let classes = gpu_classes(&[
            assigned("a", "batch", "exec", &[0]),
            assigned("b", "service", "inference", &[0]),
            assigned("c", "batch", "dljob", &[0]),
        ]);
        assert_eq!(classes, BTreeMap::from([(0, PriorityClass::Inference)]));
    }
}
