//! Specs shared by this crate's tests: the README's minimal job, built once.

use std::collections::BTreeMap;

use crate::job::{JobSpec, JobType, TaskSpec};
use crate::resources::{Resources, MIB};

/// The smallest spec that must be accepted (`examples/hello.toml`), as a value.
pub(crate) fn minimal_batch() -> JobSpec {
    JobSpec {
        name: "hello".into(),
        job_type: JobType::Batch,
        count: 1,
        priority: 50,
        task: TaskSpec {
            driver: "exec".into(),
            command: Some("/bin/sleep".into()),
            args: vec!["30".into()],
            env: BTreeMap::new(),
            workdir: None,
            resources: Resources {
                cpu_millis: 100,
                memory_bytes: 64 * MIB,
                gpus: 0,
                gpu_model: None,
            },
            config: Default::default(),
        },
        placement: Default::default(),
        stop_after_disconnect: None,
        balance: Default::default(),
        autoscale: None,
    }
}
