//! `PowerGovernor`: the node's actor that holds its share of the power
//! budgets and enforces it, on its own, every [`SAMPLE_EVERY`].
//!
//! The coordinators send the node its share with every heartbeat reply
//! ([`PowerMsg::SetShare`]); the governor keeps the last one it got while
//! they are unreachable, so a partition never lifts the caps. While it holds
//! a share it samples the GPUs' draw through the [`GpuBackend`], runs the
//! POLCA [`policy`](super::policy) on the node's share and sets the limits
//! it decides, in the same blocking task: a spike is answered within one
//! sampling period, with no round trip to anyone. With no share it does
//! nothing at all (not even sampling); when a share is withdrawn, it puts
//! back the limits it lowered.
//!
//! Backend calls (NVML may block) run on tokio's blocking pool, one at a
//! time; a round still running when the next tick comes skips that tick.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herd_api::clock::now_ms;
use herd_api::power::Thresholds;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::policy::{decide, GpuPowerState, Phase, PolicyConfig, PriorityClass};
use crate::resources::{GpuBackend, GpuInfo};
use crate::ticker::Ticker;

/// How often the governor samples and decides while it holds a share.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Shortest sampling period accepted.
pub const MIN_SAMPLE_EVERY: Duration = Duration::from_millis(5);
/// Events kept (and reported with heartbeats).
pub const MAX_EVENTS: usize = 8;

/// The node's share of the budgets covering it, as the coordinators sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeShare {
    /// Watts this node's GPUs may draw together.
    pub watts: f64,
    /// Where the policy acts, as fractions of `watts`.
    pub thresholds: Thresholds,
    /// The group the share comes from (for events and status).
    pub group: String,
}

impl NodeShare {
    /// Checks a share received from the network: finite positive watts
    /// (at most 100 MW) and ordered thresholds.
    pub fn check(&self) -> Result<(), String> {
        let max = herd_api::power::MAX_BUDGET_WATTS as f64;
        if !(self.watts.is_finite() && self.watts > 0.0 && self.watts <= max) {
            return Err(format!(
                "power share of {} W is not between 0 and {max} W",
                self.watts
            ));
        }
        self.thresholds.check()
    }
}

/// Something the governor did, kept for `herd power status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerEvent {
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// `"cap"`, `"cap_all"`, `"release"`, `"share"` or `"error"`.
    pub kind: String,
    /// What, in a line.
    pub detail: String,
}

/// One GPU as the governor last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct GovernedGpu {
    /// Its figures.
    pub info: GpuInfo,
    /// The class of its work.
    pub class: PriorityClass,
    /// Whether the governor holds it under its maximum.
    pub capped: bool,
}

/// What the governor reports (heartbeats, tests).
#[derive(Debug, Clone, PartialEq)]
pub struct GovernorStatus {
    /// The share in force, if any.
    pub share: Option<NodeShare>,
    /// The GPUs at the last sample (empty before the first, or with no share).
    pub gpus: Vec<GovernedGpu>,
    /// The latest events, oldest first.
    pub events: Vec<PowerEvent>,
    /// Rounds run since start.
    pub rounds: u64,
}

/// Messages of the governor.
#[derive(Debug)]
pub enum PowerMsg {
    /// The share the coordinators sent (None: no budget covers this node).
    SetShare(Option<NodeShare>),
    /// The class of the work on each GPU, by index; GPUs not named are
    /// [`PriorityClass::Batch`].
    SetClasses(BTreeMap<u32, PriorityClass>),
    /// What the governor holds and saw last.
    Status(RpcReplyPort<GovernorStatus>),
    /// Time to sample and decide.
    Tick,
    /// A round finished on the blocking pool; only the governor makes these.
    RoundDone(RoundDone),
}

/// The outcome of a round. Opaque: only the governor creates it.
#[derive(Debug)]
pub struct RoundDone(Round);

#[derive(Debug)]
struct Round {
    gpus: Vec<GpuInfo>,
    phase: Phase,
    /// Limits set, as (index, from, to).
    set: Vec<(u32, u32, u32)>,
    errors: Vec<String>,
    draw_watts: f64,
    budget_watts: f64,
    /// Whether this round put every lowered limit back (the share went away).
    restored: bool,
}

/// What the governor needs to start.
#[derive(Clone)]
pub struct GovernorArgs {
    /// The node's name (for the policy's GPU records and logs).
    pub node: String,
    /// The GPUs, shared with the resource monitor.
    pub gpu: Arc<dyn GpuBackend>,
    /// How often to sample while holding a share (at least
    /// [`MIN_SAMPLE_EVERY`]).
    pub sample_every: Duration,
    /// The policy's tuning.
    pub config: PolicyConfig,
    /// Where the last share is kept across restarts
    /// ([`super::share_file`]); None: in memory only.
    pub share_file: Option<PathBuf>,
}

impl std::fmt::Debug for GovernorArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernorArgs")
            .field("node", &self.node)
            .field("gpu", &self.gpu.name())
            .field("sample_every", &self.sample_every)
            .finish()
    }
}

/// The actor; see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct PowerGovernor;

/// The governor's state.
pub struct GovernorState {
    args: GovernorArgs,
    share: Option<NodeShare>,
    classes: BTreeMap<u32, PriorityClass>,
    /// The GPUs the governor holds lowered, with the limit each had before
    /// (put back when the share goes away).
    original: BTreeMap<u32, u32>,
    gpus: Vec<GpuInfo>,
    events: VecDeque<PowerEvent>,
    busy: bool,
    rounds: u64,
    last_error: Option<String>,
    /// The tick, ended with the actor.
    ticker: Ticker,
    /// Whether "no GPUs to cap" was logged already.
    said_no_gpus: bool,
}

impl GovernorState {
    fn event(&mut self, kind: &str, detail: String) {
        tracing::info!(kind, %detail, "power governor");
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(PowerEvent {
            at_ms: now_ms(),
            kind: kind.to_string(),
            detail,
        });
    }

    fn class_of(&self, index: u32) -> PriorityClass {
        self.classes
            .get(&index)
            .copied()
            .unwrap_or(PriorityClass::Batch)
    }

    fn status(&self) -> GovernorStatus {
        GovernorStatus {
            share: self.share.clone(),
            gpus: self
                .gpus
                .iter()
                .map(|info| GovernedGpu {
                    class: self.class_of(info.index),
                    capped: self.original.contains_key(&info.index),
                    info: info.clone(),
                })
                .collect(),
            events: self.events.iter().cloned().collect(),
            rounds: self.rounds,
        }
    }

    fn finish(&mut self, round: Round) {
        self.busy = false;
        self.rounds += 1;
        if round.gpus.is_empty() && !self.said_no_gpus && self.share.is_some() {
            self.said_no_gpus = true;
            tracing::warn!(
                backend = self.args.gpu.name(),
                "power share held, but this node has no GPU to cap"
            );
        }
        self.gpus = round.gpus;
        for &(index, from, to) in &round.set {
            if to < from {
                self.original.entry(index).or_insert(from);
            } else if self.original.get(&index).is_some_and(|o| to >= *o) {
                self.original.remove(&index);
            }
        }
        // A GPU at its maximum is not capped, whoever raised it.
        for gpu in &self.gpus {
            if gpu.power_limit_watts >= gpu.power_limit_max_watts {
                self.original.remove(&gpu.index);
            }
        }
        if !round.set.is_empty() {
            let lowered = round.set.iter().filter(|(_, f, t)| t < f).count();
            let raised = round.set.len() - lowered;
            let kind = if round.restored {
                "release"
            } else {
                round.phase.as_str()
            };
            self.event(
                kind,
                format!(
                    "draw {:.0} W of a {:.0} W share: {lowered} GPU(s) lowered, {raised} raised ({})",
                    round.draw_watts,
                    round.budget_watts,
                    round
                        .set
                        .iter()
                        .map(|(i, f, t)| format!("{i}: {f}→{t} W"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        let error = (!round.errors.is_empty()).then(|| round.errors.join("; "));
        if let Some(error) = &error {
            if self.last_error.as_ref() != Some(error) {
                self.event("error", error.clone());
            }
        }
        self.last_error = error;
    }
}

/// One round, blocking: read the GPUs, decide, set the limits, read again.
fn run_round(
    node: &str,
    gpu: &dyn GpuBackend,
    share: Option<&NodeShare>,
    classes: &BTreeMap<u32, PriorityClass>,
    original: &BTreeMap<u32, u32>,
    config: &PolicyConfig,
) -> Round {
    let mut errors = Vec::new();
    let infos = match gpu.gpus() {
        Ok(infos) => infos,
        Err(e) => {
            return Round {
                gpus: Vec::new(),
                phase: Phase::Hold,
                set: Vec::new(),
                errors: vec![format!("reading GPUs: {e}")],
                draw_watts: 0.0,
                budget_watts: 0.0,
                restored: false,
            }
        }
    };
    let draw: f64 = infos.iter().map(|g| g.power_draw_watts).sum();
    let (phase, wanted, budget, restored) = match share {
        Some(share) => {
            let states: Vec<GpuPowerState> = infos
                .iter()
                .map(|g| GpuPowerState {
                    index: g.index,
                    node: node.to_string(),
                    class: classes
                        .get(&g.index)
                        .copied()
                        .unwrap_or(PriorityClass::Batch),
                    limit_watts: g.power_limit_watts,
                    min_watts: g.power_limit_min_watts,
                    max_watts: g.power_limit_max_watts,
                    draw_watts: g.power_draw_watts,
                })
                .collect();
            let decision = decide(share.watts, draw, &share.thresholds, config, &states);
            let wanted: Vec<(u32, u32, u32)> = decision
                .changes
                .iter()
                .map(|c| (c.index, c.from_watts, c.to_watts))
                .collect();
            (decision.phase, wanted, share.watts, false)
        }
        // No share: put back what was lowered, within the device's range.
        None => {
            let wanted = infos
                .iter()
                .filter_map(|g| {
                    let back = original.get(&g.index)?;
                    let back = (*back).clamp(g.power_limit_min_watts, g.power_limit_max_watts);
                    (back != g.power_limit_watts).then_some((g.index, g.power_limit_watts, back))
                })
                .collect();
            (Phase::Release, wanted, 0.0, true)
        }
    };
    let mut set = Vec::with_capacity(wanted.len());
    for (index, from, to) in wanted {
        match gpu.set_power_limit(index, to) {
            Ok(()) => set.push((index, from, to)),
            Err(e) => errors.push(format!("setting GPU {index} to {to} W: {e}")),
        }
    }
    let gpus = if set.is_empty() {
        infos
    } else {
        match gpu.gpus() {
            Ok(after) => after,
            Err(e) => {
                errors.push(format!("re-reading GPUs: {e}"));
                infos
            }
        }
    };
    Round {
        gpus,
        phase,
        set,
        errors,
        draw_watts: draw,
        budget_watts: budget,
        restored,
    }
}

impl Actor for PowerGovernor {
    type Msg = PowerMsg;
    type State = GovernorState;
    type Arguments = GovernorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        mut args: GovernorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.sample_every = args.sample_every.max(MIN_SAMPLE_EVERY);
        let mut said_no_gpus = false;
        if args.gpu.name() == "none" {
            // Said once here; detect() already said why at start-up.
            tracing::info!("power governor: no GPU backend (NVML absent); power shares will be held but nothing can be capped");
            said_no_gpus = true;
        }
        // The share held before a restart, until a heartbeat reply says
        // otherwise: a restarted node must not run uncapped meanwhile.
        let share = match args.share_file.as_deref().map(super::share_file::load) {
            Some(Ok(Some(share))) => {
                tracing::info!(watts = share.watts, group = %share.group, "power governor: holding the share kept from before the restart");
                Some(share)
            }
            Some(Err(reason)) => {
                tracing::warn!(%reason, "power governor: ignoring the kept share");
                None
            }
            Some(Ok(None)) | None => None,
        };
        Ok(GovernorState {
            args,
            share,
            classes: BTreeMap::new(),
            original: BTreeMap::new(),
            gpus: Vec::new(),
            events: VecDeque::new(),
            busy: false,
            rounds: 0,
            last_error: None,
            ticker: Ticker::default(),
            said_no_gpus,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state
            .ticker
            .start(myself.send_interval(state.args.sample_every, || PowerMsg::Tick));
        if let Some(share) = &state.share {
            let detail = format!(
                "share {:.0} W from group {} kept from before the restart",
                share.watts, share.group
            );
            state.event("share", detail);
            myself.cast(PowerMsg::Tick)?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PowerMsg::SetShare(share) => {
                let share = match share {
                    Some(share) => match share.check() {
                        Ok(()) => Some(share),
                        Err(reason) => {
                            tracing::warn!(%reason, "ignoring a bad power share; keeping the last one");
                            return Ok(());
                        }
                    },
                    None => None,
                };
                if share != state.share {
                    let detail = match &share {
                        Some(s) => format!(
                            "share {:.0} W from group {} (cap at {:.0} %, all at {:.0} %)",
                            s.watts,
                            s.group,
                            s.thresholds.cap * 100.0,
                            s.thresholds.hard * 100.0
                        ),
                        None => "no budget covers this node; caps released".to_string(),
                    };
                    state.event("share", detail);
                    if let Some(path) = &state.args.share_file {
                        if let Err(reason) = super::share_file::save(path, share.as_ref()) {
                            tracing::warn!(%reason, "power governor: cannot keep the share on disk");
                        }
                    }
                    state.share = share;
                    // Act on the new share at once rather than at the next tick.
                    myself.cast(PowerMsg::Tick)?;
                }
            }
            PowerMsg::SetClasses(classes) => state.classes = classes,
            PowerMsg::Status(reply) => {
                let _ = reply.send(state.status());
            }
            PowerMsg::Tick => {
                // Nothing to hold and nothing to put back: do nothing.
                if state.busy || (state.share.is_none() && state.original.is_empty()) {
                    return Ok(());
                }
                state.busy = true;
                let node = state.args.node.clone();
                let gpu = state.args.gpu.clone();
                let share = state.share.clone();
                let classes = state.classes.clone();
                let original = state.original.clone();
                let config = state.args.config;
                tokio::spawn(async move {
                    let round = tokio::task::spawn_blocking(move || {
                        run_round(
                            &node,
                            gpu.as_ref(),
                            share.as_ref(),
                            &classes,
                            &original,
                            &config,
                        )
                    })
                    .await
                    .unwrap_or_else(|e| Round {
                        gpus: Vec::new(),
                        phase: Phase::Hold,
                        set: Vec::new(),
                        errors: vec![format!("power round failed: {e}")],
                        draw_watts: 0.0,
                        budget_watts: 0.0,
                        restored: false,
                    });
                    // Fails only when the governor has stopped.
                    let _ = myself.send_message(PowerMsg::RoundDone(RoundDone(round)));
                });
            }
            PowerMsg::RoundDone(RoundDone(round)) => state.finish(round),
        }
        Ok(())
    }
}
