//! [`Resources`] to and from [`proto::Resources`].

use crate::proto::v1 as proto;
use crate::resources::Resources;
use crate::validate::FieldError;

impl From<&Resources> for proto::Resources {
    fn from(resources: &Resources) -> Self {
        proto::Resources {
            cpu_millis: resources.cpu_millis,
            memory_bytes: resources.memory_bytes,
            gpus: resources.gpus,
            gpu_model: resources.gpu_model.clone().unwrap_or_default(),
        }
    }
}

/// Converts a task's resource request from the wire and validates it with
/// [`Resources::validate`]; error paths start with `task.resources.`.
impl TryFrom<proto::Resources> for Resources {
    type Error = FieldError;

    fn try_from(resources: proto::Resources) -> Result<Self, FieldError> {
        let resources = from_proto(resources);
        resources.validate()?;
        Ok(resources)
    }
}

/// The field-by-field conversion, without validation, for callers that
/// validate a larger whole afterwards.
pub(super) fn from_proto(resources: proto::Resources) -> Resources {
    Resources {
        cpu_millis: resources.cpu_millis,
        memory_bytes: resources.memory_bytes,
        gpus: resources.gpus,
        gpu_model: super::non_empty(resources.gpu_model),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{GIB, MIB};

    #[test]
    fn round_trips() {
        for resources in [
            Resources {
                cpu_millis: 100,
                memory_bytes: 64 * MIB,
                gpus: 0,
                gpu_model: None,
            },
            Resources {
                cpu_millis: 8000,
                memory_bytes: 32 * GIB,
                gpus: 4,
                gpu_model: Some("h100".into()),
            },
        ] {
            let wire = proto::Resources::from(&resources);
            assert_eq!(Resources::try_from(wire), Ok(resources));
        }
    }

    #[test]
    fn an_empty_gpu_model_means_any() {
        let wire = proto::Resources {
            cpu_millis: 100,
            memory_bytes: MIB,
            gpus: 1,
            gpu_model: String::new(),
        };
        assert_eq!(Resources::try_from(wire).map(|r| r.gpu_model), Ok(None));
    }

    #[test]
    fn invalid_requests_are_rejected_with_task_resources_paths() {
        let valid = proto::Resources {
            cpu_millis: 100,
            memory_bytes: MIB,
            gpus: 0,
            gpu_model: String::new(),
        };
        let cases = [
            (
                proto::Resources {
                    cpu_millis: 0,
                    ..valid.clone()
                },
                "task.resources.cpu",
            ),
            (
                proto::Resources {
                    memory_bytes: u64::MAX,
                    ..valid.clone()
                },
                "task.resources.memory",
            ),
            (
                proto::Resources {
                    gpus: u32::MAX,
                    ..valid.clone()
                },
                "task.resources.gpus",
            ),
            (
                proto::Resources {
                    gpu_model: "a100".into(),
                    ..valid.clone()
                },
                "task.resources.gpu_model",
            ),
        ];
        for (wire, field) in cases {
            assert_eq!(
                Resources::try_from(wire).map_err(|e| e.field),
                Err(field.to_string())
            );
        }
    }
}
