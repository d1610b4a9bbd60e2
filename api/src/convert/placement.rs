//! [`PlacementSpec`]'s parts to and from the flat fields of [`proto::JobSpec`].

use crate::placement::{
    unknown_op_message, Affinity, ConstraintOp, LabelConstraint, PlacementSpec, SpreadPolicy,
};
use crate::proto::v1 as proto;
use crate::validate::FieldError;

/// Fills the placement fields of `wire` from `spec`.
pub(super) fn to_proto(spec: &PlacementSpec, wire: &mut proto::JobSpec) {
    wire.constraints = spec
        .constraints
        .iter()
        .map(|c| proto::LabelConstraint {
            label: c.label.clone(),
            op: c.op.as_str().to_string(),
            value: c.value.clone(),
        })
        .collect();
    wire.affinities = spec
        .affinities
        .iter()
        .map(|a| proto::Affinity {
            label: a.label.clone(),
            value: a.value.clone(),
            weight: a.weight,
        })
        .collect();
    wire.spread = spec.spread.as_str().to_string();
    wire.gang = spec.gang;
    wire.power_class = if spec.power_class.is_default() {
        String::new()
    } else {
        spec.power_class.as_str().to_string()
    };
}

/// Reads the placement fields of `wire`; the operators are parsed here, every
/// other rule is left to [`JobSpec::validate`](crate::job::JobSpec::validate).
pub(super) fn from_proto(wire: &mut proto::JobSpec) -> Result<PlacementSpec, FieldError> {
    let constraints = std::mem::take(&mut wire.constraints)
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let op = ConstraintOp::parse(&c.op).ok_or_else(|| {
                FieldError::new(format!("constraint[{i}].op"), unknown_op_message(&c.op))
            })?;
            Ok(LabelConstraint {
                label: c.label,
                op,
                value: c.value,
            })
        })
        .collect::<Result<_, FieldError>>()?;
    let affinities = std::mem::take(&mut wire.affinities)
        .into_iter()
        .map(|a| Affinity {
            label: a.label,
            value: a.value,
            weight: a.weight,
        })
        .collect();
    let power_class = crate::power_class::PowerClass::parse(&wire.power_class)
        .map_err(|e| FieldError::new("power_class", e))?;
    Ok(PlacementSpec {
        constraints,
        affinities,
        spread: SpreadPolicy::parse(&wire.spread),
        gang: wire.gang,
        power_class,
    })
}
