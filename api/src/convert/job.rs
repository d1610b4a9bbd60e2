//! [`JobSpec`] to and from [`proto::JobSpec`].

use crate::autoscale::AutoscaleSpec;
use crate::job::{unknown_job_type_message, JobSpec, JobType};
use crate::proto::v1 as proto;
use crate::validate::FieldError;

impl From<&JobSpec> for proto::JobSpec {
    fn from(spec: &JobSpec) -> Self {
        let mut wire = proto::JobSpec {
            name: spec.name.clone(),
            r#type: spec.job_type.as_str().to_string(),
            count: spec.count,
            priority: spec.priority,
            task: Some((&spec.task).into()),
            stop_after_disconnect_ms: crate::duration::to_wire_ms(spec.stop_after_disconnect),
            balance_movable: spec.balance.movable,
            autoscale: spec.autoscale.as_deref().map(autoscale_to_proto),
            ..Default::default()
        };
        super::placement::to_proto(&spec.placement, &mut wire);
        wire
    }
}

/// Converts a job spec from the wire and runs [`JobSpec::validate`] on it:
/// whatever a client sends is untrusted, and this is where it enters.
///
/// A `count` of 0 (what proto3 sends when the client left it unset) is
/// rejected by validation rather than defaulted, so a client bug is visible.
impl TryFrom<proto::JobSpec> for JobSpec {
    type Error = FieldError;

    fn try_from(mut spec: proto::JobSpec) -> Result<Self, FieldError> {
        let placement = super::placement::from_proto(&mut spec)?;
        let job_type = JobType::parse(&spec.r#type)
            .ok_or_else(|| FieldError::new("type", unknown_job_type_message(&spec.r#type)))?;
        let task = spec
            .task
            .ok_or_else(|| FieldError::new("task", "is required"))?;
        let spec = JobSpec {
            name: spec.name,
            job_type,
            count: spec.count,
            priority: spec.priority,
            task: super::task::from_proto(task)?,
            placement,
            stop_after_disconnect: crate::duration::from_wire_ms(spec.stop_after_disconnect_ms),
            balance: crate::job::BalanceSpec {
                movable: spec.balance_movable,
            },
            autoscale: spec.autoscale.map(|a| Box::new(autoscale_from_proto(a))),
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// `[autoscale]` on the wire.
fn autoscale_to_proto(a: &AutoscaleSpec) -> proto::AutoscaleSpec {
    proto::AutoscaleSpec {
        min: a.min,
        max: a.max,
        target_load_permille: a.target_load_permille,
        ttft_p99_ms: a.ttft_p99_ms.unwrap_or(0),
        tbt_p99_ms: a.tbt_p99_ms.unwrap_or(0),
        scale_out_cooldown_ms: a.scale_out_cooldown_ms,
        scale_in_cooldown_ms: a.scale_in_cooldown_ms,
    }
}

/// `[autoscale]` from the wire: zeros mean the defaults (or no objective);
/// the ranges are checked by [`JobSpec::validate`].
fn autoscale_from_proto(a: proto::AutoscaleSpec) -> AutoscaleSpec {
    let defaults = AutoscaleSpec::new(a.min, a.max);
    let or = |value: u64, default: u64| if value == 0 { default } else { value };
    AutoscaleSpec {
        target_load_permille: match a.target_load_permille {
            0 => defaults.target_load_permille,
            n => n,
        },
        ttft_p99_ms: (a.ttft_p99_ms > 0).then_some(a.ttft_p99_ms),
        tbt_p99_ms: (a.tbt_p99_ms > 0).then_some(a.tbt_p99_ms),
        scale_out_cooldown_ms: or(a.scale_out_cooldown_ms, defaults.scale_out_cooldown_ms),
        scale_in_cooldown_ms: or(a.scale_in_cooldown_ms, defaults.scale_in_cooldown_ms),
        ..defaults
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prost::Message;

    use super::*;
    use crate::job::TaskSpec;
    use crate::placement::{Affinity, ConstraintOp, LabelConstraint, PlacementSpec, SpreadPolicy};
    use crate::resources::{Resources, GIB};

    fn batch() -> JobSpec {
        crate::fixtures::minimal_batch()
    }

    fn service() -> JobSpec {
        JobSpec {
            name: "web.v2".into(),
            job_type: JobType::Service,
            count: 3,
            priority: 0,
            task: TaskSpec {
                driver: "exec".into(),
                command: Some("/bin/sh".into()),
                args: vec!["-c".into(), "while true; do echo up; sleep 5; done".into()],
                env: BTreeMap::from([
                    ("PORT".to_string(), "8080".to_string()),
                    ("EMPTY".to_string(), String::new()),
                ]),
                workdir: Some("/srv/web".into()),
                resources: Resources {
                    cpu_millis: 2000,
                    memory_bytes: 2 * GIB,
                    gpus: 1,
                    gpu_model: Some("a100".into()),
                },
                config: Default::default(),
            },
            placement: PlacementSpec {
                constraints: vec![
                    LabelConstraint {
                        label: "rack".into(),
                        op: ConstraintOp::NotEquals,
                        value: Some("r7".into()),
                    },
                    LabelConstraint {
                        label: "zone".into(),
                        op: ConstraintOp::Exists,
                        value: None,
                    },
                ],
                affinities: vec![Affinity {
                    label: "gpu_gen".into(),
                    value: "hopper".into(),
                    weight: -50,
                }],
                spread: SpreadPolicy::Label("rack".into()),
                gang: true,
                power_class: crate::power_class::PowerClass::Medium,
            },
            stop_after_disconnect: Some(std::time::Duration::from_millis(2500)),
            balance: Default::default(),
            autoscale: None,
        }
    }

    fn autoscaled() -> JobSpec {
        let mut spec = service();
        spec.task.driver = "inference".into();
        spec.task.command = None;
        spec.task.args = Vec::new();
        spec.task.resources.gpus = 0;
        spec.task.resources.gpu_model = None;
        spec.autoscale = Some(Box::new(AutoscaleSpec {
            ttft_p99_ms: Some(2000),
            target_load_permille: 600,
            ..AutoscaleSpec::new(2, 5)
        }));
        spec
    }

    #[test]
    fn round_trips_through_proto_and_the_wire() {
        for spec in [batch(), service(), autoscaled()] {
            let wire = proto::JobSpec::from(&spec);
            assert_eq!(JobSpec::try_from(wire.clone()), Ok(spec.clone()));
            // And through the encoded bytes a client actually sends.
            let decoded = proto::JobSpec::decode(wire.encode_to_vec().as_slice())
                .expect("decodes what was encoded");
            assert_eq!(JobSpec::try_from(decoded), Ok(spec));
        }
    }

    #[test]
    fn proto_fields_carry_the_stable_names() {
        let wire = proto::JobSpec::from(&service());
        assert_eq!(wire.r#type, "service");
        let task = wire.task.expect("task is set");
        assert_eq!(task.command, "/bin/sh");
        assert_eq!(task.workdir, "/srv/web");
        assert_eq!(
            task.resources.map(|r| r.gpu_model),
            Some("a100".to_string())
        );
        let wire = proto::JobSpec::from(&batch());
        assert_eq!(wire.r#type, "batch");
        assert_eq!(wire.task.map(|t| t.workdir), Some(String::new()));
    }

    fn rejected_field(change: impl FnOnce(&mut proto::JobSpec)) -> String {
        let mut wire = proto::JobSpec::from(&batch());
        change(&mut wire);
        match JobSpec::try_from(wire) {
            Err(e) => e.field,
            Ok(spec) => panic!("accepted {spec:?}"),
        }
    }

    #[test]
    fn untrusted_input_is_validated() {
        assert_eq!(rejected_field(|w| w.priority = 500), "priority");
        let mut wire = proto::JobSpec::from(&batch());
        wire.priority = 500;
        assert_eq!(
            JobSpec::try_from(wire),
            Err(FieldError::new(
                "priority",
                "must be between 0 and 100, got 500"
            ))
        );

        assert_eq!(
            rejected_field(|w| {
                if let Some(task) = w.task.as_mut() {
                    task.driver = "docker".into();
                }
            }),
            "task.driver"
        );
        assert_eq!(rejected_field(|w| w.count = 0), "count");
        assert_eq!(
            rejected_field(|w| w.power_class = "huge".into()),
            "power_class"
        );
        // The default class travels as "" (proto3's unset), and back.
        let wire = proto::JobSpec::from(&batch());
        assert_eq!(wire.power_class, "");
        assert_eq!(
            JobSpec::try_from(wire).map(|s| s.placement.power_class),
            Ok(crate::power_class::PowerClass::Max)
        );
        let bad_op = |w: &mut proto::JobSpec| {
            w.constraints.push(proto::LabelConstraint {
                label: "rack".into(),
                op: "==".into(),
                value: Some("r7".into()),
            })
        };
        assert_eq!(rejected_field(bad_op), "constraint[0].op");
        let heavy = |w: &mut proto::JobSpec| {
            w.affinities.push(proto::Affinity {
                label: "rack".into(),
                value: "r7".into(),
                weight: 1000,
            })
        };
        assert_eq!(rejected_field(heavy), "affinity[0].weight");
        assert_eq!(rejected_field(|w| w.name = "Bad Name".into()), "name");
        assert_eq!(rejected_field(|w| w.r#type = String::new()), "type");
        assert_eq!(rejected_field(|w| w.r#type = "Batch".into()), "type");
        assert_eq!(rejected_field(|w| w.task = None), "task");
        assert_eq!(
            rejected_field(|w| {
                if let Some(task) = w.task.as_mut() {
                    task.resources = None;
                }
            }),
            "task.resources"
        );
        assert_eq!(
            rejected_field(|w| {
                if let Some(task) = w.task.as_mut() {
                    task.env.insert("BAD KEY".into(), "x".into());
                }
            }),
            "task.env.\"BAD KEY\""
        );
        assert_eq!(
            rejected_field(|w| {
                if let Some(resources) = w.task.as_mut().and_then(|t| t.resources.as_mut()) {
                    resources.memory_bytes = 0;
                }
            }),
            "task.resources.memory"
        );
    }

    #[test]
    fn an_empty_message_is_rejected_not_defaulted() {
        assert!(JobSpec::try_from(proto::JobSpec::default()).is_err());
    }
}
