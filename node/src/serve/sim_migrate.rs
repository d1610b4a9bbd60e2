//! Request migration in the SIMULATED fleet ([`super::sim`]): when to move a
//! running request (the rescheduling rule) and the move itself, stage by
//! stage, through the engine core's real migration calls
//! (`export_kv`, `stage_kv`, `resume_imported`, `release_frozen`, `thaw`,
//! `abort_import`, the ones the engine processes serve to the agents), on
//! the modelled clock.
//!
//! Modelled times, why these figures:
//! - a copy stage takes `stage_overhead_us` plus `copy_per_block_us` per
//!   block: a 16-token block of a 7B fp16 model is about 8 MiB, about
//!   0.67 ms over a 100 Gb/s link;
//! - the **downtime** (the request frozen on the source until it decodes on
//!   the target) is `downtime_us`, 85 ms by default: the top of what
//!   herd's real request migration measured between two agents (49–84 ms,
//!   see docs/inference.md), so the simulation does not flatter migration.
//!   The freeze waits for the source's current step to end, as the engine
//!   process does, and the target decodes the request from its next step.
//!
//! The rule is herd's own rescheduling policy, the same pure code the
//! agents run ([`super::resched_policy::plan`]: off instances about to run
//! out of KV blocks, the running request with the most tokens left, to the
//! instance with the lowest virtual usage that keeps its reserve), called
//! every `interval_us` (100 ms, as the agents do) on every instance's
//! stats. Differences from the agents: the stats are exact and instant
//! (the agents' are up to 250 ms old), and a failed move is not retried
//! for 5 s of modelled time, as there.

use std::collections::BTreeSet;

use herd_actors::inference::{wire, KvState, RequestId};

use super::resched_policy::{self, InstanceView, Settings};
use super::sim::Instance;

/// The migration model's constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MigrationModel {
    /// The stop between freeze and decoding on the target (µs).
    pub downtime_us: u64,
    /// Copy time of one KV block while the request decodes (µs).
    pub copy_per_block_us: u64,
    /// Fixed cost of one copy stage (RPC round trips, µs).
    pub stage_overhead_us: u64,
    /// How often the rescheduling policy runs (µs).
    pub interval_us: u64,
    /// How long a request whose move failed is not tried again (µs).
    pub retry_after_us: u64,
    /// A copy stage of at most this many blocks ends the copy phase.
    pub final_blocks: u32,
    /// The copy phase ends after this many stages anyway.
    pub max_stages: u32,
    /// The rescheduling policy's settings.
    pub policy: Settings,
}

impl Default for MigrationModel {
    fn default() -> Self {
        Self {
            downtime_us: 85_000,
            copy_per_block_us: 670,
            stage_overhead_us: 2_000,
            interval_us: 100_000,
            retry_after_us: 5_000_000,
            final_blocks: 2,
            max_stages: 8,
            policy: Settings::default(),
        }
    }
}

/// Where a migration is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// Copying full blocks while the request decodes on the source.
    Copy,
    /// Next: stop it on the source and copy the rest.
    Freeze,
    /// Frozen; next: decode on the target from this state.
    Resume(KvState),
}

/// One request on its way from one instance to another.
#[derive(Debug, Clone)]
pub(crate) struct Migration {
    id: String,
    src: usize,
    src_request: RequestId,
    dst: usize,
    /// Blocks it takes on the target once resumed (the policy's figure),
    /// counted in the target's virtual usage while it moves.
    pub(crate) blocks: u64,
    staged: u32,
    stages: u32,
    step: Step,
    /// When its next stage runs (µs).
    pub(crate) due_us: u64,
}

/// How a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// More stages to come.
    Continue,
    /// The request decodes on the target; the source freed it.
    Done,
    /// Given up; the request goes on on the source.
    Aborted,
}

/// Two distinct instances, both mutable.
fn pair_mut(fleet: &mut [Instance], a: usize, b: usize) -> Option<(&mut Instance, &mut Instance)> {
    if a == b || a >= fleet.len() || b >= fleet.len() {
        return None;
    }
    if a < b {
        let (left, right) = fleet.split_at_mut(b);
        Some((&mut left[a], &mut right[0]))
    } else {
        let (left, right) = fleet.split_at_mut(a);
        Some((&mut right[0], &mut left[b]))
    }
}

impl Migration {
    /// The instance it moves the request to.
    pub(crate) fn target(&self) -> usize {
        self.dst
    }

    /// Runs the stage due at `now`.
    pub(crate) fn run(
        &mut self,
        fleet: &mut [Instance],
        now: u64,
        model: &MigrationModel,
    ) -> Outcome {
        let Some((src, dst)) = pair_mut(fleet, self.src, self.dst) else {
            return Outcome::Aborted;
        };
        let outcome = self.stage(src, dst, now, model);
        if outcome == Outcome::Aborted {
            dst.engine.abort_import(&self.id);
            // A frozen request decodes again (no-op if it is not frozen).
            let _ = src.engine.thaw(self.src_request);
        }
        if outcome != Outcome::Continue {
            src.wake(now);
            dst.wake(now);
        }
        outcome
    }

    fn stage(
        &mut self,
        src: &mut Instance,
        dst: &mut Instance,
        now: u64,
        model: &MigrationModel,
    ) -> Outcome {
        match self.step {
            Step::Copy => {
                // Fails if it finished, was preempted or swapped meanwhile.
                let Ok(export) = src.engine.export_kv(self.src_request, self.staged, false) else {
                    return Outcome::Aborted;
                };
                if export.blocks > 0
                    && dst
                        .engine
                        .stage_kv(&self.id, export.from_block, &export.data)
                        .is_err()
                {
                    return Outcome::Aborted;
                }
                self.staged = export.from_block + export.blocks;
                self.stages += 1;
                if export.blocks <= model.final_blocks || self.stages >= model.max_stages {
                    self.step = Step::Freeze;
                }
                self.due_us = now
                    + model.stage_overhead_us
                    + model.copy_per_block_us * u64::from(export.blocks);
                Outcome::Continue
            }
            Step::Freeze => {
                // The freeze takes effect when the source's current step ends.
                let frozen_at = src.next_at.unwrap_or(now).max(now);
                let Ok(export) = src.engine.export_kv(self.src_request, self.staged, true) else {
                    return Outcome::Aborted;
                };
                let Some(state) = export.state else {
                    return Outcome::Aborted;
                };
                if export.blocks > 0
                    && dst
                        .engine
                        .stage_kv(&self.id, export.from_block, &export.data)
                        .is_err()
                {
                    return Outcome::Aborted;
                }
                self.stages += 1;
                self.step = Step::Resume(state);
                self.due_us = frozen_at + model.downtime_us;
                Outcome::Continue
            }
            Step::Resume(state) => {
                let Ok(resumed) = dst.engine.resume_imported(&self.id, state, now) else {
                    return Outcome::Aborted;
                };
                if src.engine.release_frozen(self.src_request).is_err() {
                    // Cannot happen (it was frozen by this migration); undo.
                    let _ = dst.engine.cancel(resumed);
                    return Outcome::Aborted;
                }
                if let Some(logical) = src.owner.remove(&self.src_request) {
                    dst.owner.insert(resumed, logical);
                }
                Outcome::Done
            }
        }
    }
}

/// Moves that failed, by (source instance, request), with when.
#[derive(Debug, Default)]
pub(crate) struct Failures(Vec<(usize, RequestId, u64)>);

impl Failures {
    /// Records a failed move at `now`.
    pub(crate) fn add(&mut self, m: &Migration, now: u64) {
        self.0.push((m.src, m.src_request, now));
    }
}

fn alloc_name(i: usize) -> String {
    format!("sim-instance-{i}")
}

/// herd's rescheduling policy on the simulated fleet: the migrations to
/// start at `now`. `next_id` numbers them.
pub(crate) fn plan(
    fleet: &[Instance],
    running: &[Migration],
    failures: &mut Failures,
    model: &MigrationModel,
    now: u64,
    next_id: &mut u64,
) -> Vec<Migration> {
    let mut incoming = vec![0u64; fleet.len()];
    let mut busy = BTreeSet::new();
    let mut skip = BTreeSet::new();
    for m in running {
        incoming[m.dst] += m.blocks;
        busy.insert(alloc_name(m.src));
        skip.insert((alloc_name(m.src), m.src_request));
    }
    failures
        .0
        .retain(|(_, _, at)| now < at.saturating_add(model.retry_after_us));
    for (src, request, _) in &failures.0 {
        skip.insert((alloc_name(*src), *request));
    }
    let views: Vec<InstanceView> = fleet
        .iter()
        .enumerate()
        .map(|(i, instance)| InstanceView {
            alloc_id: alloc_name(i),
            job: "sim".to_string(),
            agent: "sim".to_string(),
            local: true,
            stats: wire::stats(&instance.engine.stats()),
            incoming_blocks: incoming[i],
        })
        .collect();
    resched_policy::plan(&views, &busy, &skip, &model.policy)
        .into_iter()
        .map(|m| {
            *next_id += 1;
            Migration {
                id: format!("sim-migration-{next_id}"),
                src: m.source,
                src_request: m.request_id,
                dst: m.target,
                blocks: m.blocks,
                staged: 0,
                stages: 0,
                step: Step::Copy,
                due_us: now,
            }
        })
        .collect()
}
