//! [`TaskSpec`] to and from [`proto::TaskSpec`].

use crate::job::TaskSpec;
use crate::proto::v1 as proto;
use crate::validate::FieldError;

impl From<&TaskSpec> for proto::TaskSpec {
    fn from(task: &TaskSpec) -> Self {
        proto::TaskSpec {
            driver: task.driver.clone(),
            command: task.command.clone().unwrap_or_default(),
            args: task.args.clone(),
            env: task
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            workdir: task.workdir.clone().unwrap_or_default(),
            resources: Some((&task.resources).into()),
            config: task
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// Converts a task from the wire and validates it with
/// [`TaskSpec::validate`]; error paths start with `task.`.
impl TryFrom<proto::TaskSpec> for TaskSpec {
    type Error = FieldError;

    fn try_from(task: proto::TaskSpec) -> Result<Self, FieldError> {
        let task = from_proto(task)?;
        task.validate()?;
        Ok(task)
    }
}

/// The field-by-field conversion, without validation; fails only when the
/// message lacks its `resources`, which have no sensible default.
pub(super) fn from_proto(task: proto::TaskSpec) -> Result<TaskSpec, FieldError> {
    let resources = task
        .resources
        .ok_or_else(|| FieldError::new("task.resources", "is required"))?;
    Ok(TaskSpec {
        driver: task.driver,
        command: super::non_empty(task.command),
        args: task.args,
        env: task.env.into_iter().collect(),
        workdir: super::non_empty(task.workdir),
        resources: super::resources::from_proto(resources),
        config: task.config.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::resources::{Resources, MIB};

    fn task() -> TaskSpec {
        TaskSpec {
            driver: "exec".into(),
            command: Some("/bin/env".into()),
            args: vec!["-0".into(), "".into()],
            env: BTreeMap::from([
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), String::new()),
            ]),
            workdir: Some("/tmp".into()),
            resources: Resources {
                cpu_millis: 250,
                memory_bytes: 128 * MIB,
                gpus: 0,
                gpu_model: None,
            },
            config: Default::default(),
        }
    }

    #[test]
    fn round_trips() {
        let full = task();
        assert_eq!(TaskSpec::try_from(proto::TaskSpec::from(&full)), Ok(full));
        let bare = TaskSpec {
            args: Vec::new(),
            env: BTreeMap::new(),
            workdir: None,
            ..task()
        };
        assert_eq!(TaskSpec::try_from(proto::TaskSpec::from(&bare)), Ok(bare));
    }

    #[test]
    fn missing_resources_and_invalid_tasks_are_rejected() {
        let wire = proto::TaskSpec {
            resources: None,
            ..proto::TaskSpec::from(&task())
        };
        assert_eq!(
            TaskSpec::try_from(wire).map_err(|e| e.field),
            Err("task.resources".to_string())
        );

        let wire = proto::TaskSpec {
            command: String::new(),
            ..proto::TaskSpec::from(&task())
        };
        assert_eq!(
            TaskSpec::try_from(wire).map_err(|e| e.field),
            Err("task.command".to_string())
        );

        let wire = proto::TaskSpec {
            workdir: "relative".into(),
            ..proto::TaskSpec::from(&task())
        };
        assert_eq!(
            TaskSpec::try_from(wire).map_err(|e| e.field),
            Err("task.workdir".to_string())
        );
    }
}
