//! The bincode shape of [`PlanCommand`] in [`Command::ApplyPlan`] entries:
//! placements without GPU indices, exactly as entries logged before GPUs
//! were bound to allocations encode them, so those entries still decode.
//!
//! A plan that binds GPU indices cannot take this shape (bincode is not
//! self-describing, a field added to a placement would make older entries
//! unreadable): it travels as [`Command::ApplyGpuPlan`], JSON inside the
//! entry, and encoding one here fails rather than drop its indices.
//! [`Command::apply_plan`] picks the variant.
//!
//! Use as `#[serde(with = "crate::machine::plan_codec")]`.
//!
//! [`Command::ApplyPlan`]: crate::machine::command::Command::ApplyPlan
//! [`Command::ApplyGpuPlan`]: crate::machine::command::Command::ApplyGpuPlan
//! [`Command::apply_plan`]: crate::machine::command::Command::apply_plan

use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::planning::{PlanCommand, PlannedEviction, PlannedPlacement};

/// A placement as plans logged before GPU indices wrote it.
#[derive(Serialize, Deserialize)]
struct PlacementV1<'a> {
    instance: u32,
    #[serde(borrow)]
    node: std::borrow::Cow<'a, str>,
}

/// A plan as logged before GPU indices, field for field.
#[derive(Serialize, Deserialize)]
struct PlanV1<'a> {
    #[serde(borrow)]
    job: std::borrow::Cow<'a, str>,
    job_version: u64,
    #[serde(borrow)]
    placements: Vec<PlacementV1<'a>>,
    evictions: Vec<PlannedEviction>,
    blocked: Option<String>,
}

/// Writes `plan` in the shape without GPU indices; fails for a plan that
/// has some.
pub fn serialize<S: Serializer>(plan: &PlanCommand, serializer: S) -> Result<S::Ok, S::Error> {
    if plan.placements.iter().any(|p| !p.gpu_indices.is_empty()) {
        return Err(S::Error::custom(format!(
            "the plan for job {} binds GPU indices: it must be proposed as ApplyGpuPlan",
            plan.job
        )));
    }
    PlanV1 {
        job: plan.job.as_str().into(),
        job_version: plan.job_version,
        placements: plan
            .placements
            .iter()
            .map(|p| PlacementV1 {
                instance: p.instance,
                node: p.node.as_str().into(),
            })
            .collect(),
        evictions: plan.evictions.clone(),
        blocked: plan.blocked.clone(),
    }
    .serialize(serializer)
}

/// Reads what [`serialize`] wrote (or an entry of an older release).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PlanCommand, D::Error> {
    let plan = PlanV1::deserialize(deserializer)?;
    Ok(PlanCommand {
        job: plan.job.into_owned(),
        job_version: plan.job_version,
        placements: plan
            .placements
            .into_iter()
            .map(|p| PlannedPlacement::new(p.instance, p.node.into_owned()))
            .collect(),
        evictions: plan.evictions,
        blocked: plan.blocked,
    })
}

#[cfg(test)]
mod tests {
    use crate::machine::command::Command;
    use crate::planning::{PlanCommand, PlannedEviction, PlannedPlacement};

    fn plan(gpus: Vec<u32>) -> PlanCommand {
        PlanCommand {
            job: "train".into(),
            job_version: 2,
            placements: vec![
                PlannedPlacement {
                    gpu_indices: gpus,
                    ..PlannedPlacement::new(0, "n1")
                },
                PlannedPlacement::new(1, "n2"),
            ],
            evictions: vec![PlannedEviction {
                alloc_id: "low-0-3".into(),
                node: "n1".into(),
                for_instance: 0,
            }],
            blocked: Some("instance 2: no room".into()),
        }
    }

    fn round_trip(command: &Command) -> Command {
        let bytes = herd_consensus::codec::encode(command).expect("encode");
        crate::machine::legacy::decode_command(&bytes).expect("decode")
    }

    #[test]
    fn plans_pick_the_variant_their_gpus_need_and_round_trip() {
        let plain = Command::apply_plan(plan(vec![]), 7);
        assert!(matches!(plain, Command::ApplyPlan { .. }), "{plain:?}");
        assert_eq!(round_trip(&plain), plain);
        let bound = Command::apply_plan(plan(vec![3, 1]), 7);
        assert!(matches!(bound, Command::ApplyGpuPlan { .. }), "{bound:?}");
        assert_eq!(round_trip(&bound), bound);
        // Inside a fenced decision too.
        let fenced = Command::fenced(4, bound);
        assert_eq!(round_trip(&fenced), fenced);
    }

    #[test]
    fn an_old_shaped_plan_never_drops_gpu_indices() {
        let wrong = Command::ApplyPlan {
            plan: plan(vec![0]),
            now_ms: 1,
        };
        let e = herd_consensus::codec::encode(&wrong).expect_err("refused");
        assert!(e.to_string().contains("ApplyGpuPlan"), "{e}");
    }

    #[test]
    fn apply_plan_entries_logged_before_gpu_indices_still_decode() {
        // The shape every release before GPU indices logged.
        #[derive(serde::Serialize)]
        enum OldCommand {
            _InitCluster,
            _SubmitJob,
            _StopJob,
            _RegisterNode,
            ApplyPlan { plan: OldPlan, now_ms: u64 },
        }
        #[derive(serde::Serialize)]
        struct OldPlan {
            job: String,
            job_version: u64,
            placements: Vec<(u32, String)>,
            evictions: Vec<(String, String, u32)>,
            blocked: Option<String>,
        }
        let old = OldCommand::ApplyPlan {
            plan: OldPlan {
                job: "train".into(),
                job_version: 2,
                placements: vec![(0, "n1".into()), (1, "n2".into())],
                evictions: vec![("low-0-3".into(), "n1".into(), 0)],
                blocked: Some("instance 2: no room".into()),
            },
            now_ms: 7,
        };
        let bytes = herd_consensus::codec::encode(&old).expect("encode");
        let decoded = crate::machine::legacy::decode_command(&bytes).expect("decode");
        assert_eq!(decoded, Command::apply_plan(plan(vec![]), 7));
    }
}
