//! The agent's request rescheduler: every [`EVERY`], it reads the loads of
//! this node's inference instances (its own poller) and of the others (the
//! fleet view), asks [`super::resched_policy::plan`] which requests to move
//! off this node's instances (draining ones, ones where a high-priority
//! request waits for KV blocks, and ones about to run out of them), and
//! moves each with
//! [`super::request_migration::migrate_request`]. No coordinator is on this
//! path. A migration that fails leaves its request where it was (the
//! migration's guarantee), so no request is lost or answered twice; the
//! request is not tried again for [`RETRY_AFTER`].
//!
//! On by default; `herd node --no-reschedule` (or `reschedule = false` in
//! the node's TOML) turns it off.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::request_migration::{migrate_request, Target};
use super::resched_policy::{plan, InstanceView, Settings, Why};
use crate::infer::Inference;

/// How often the rescheduler looks.
pub const EVERY: Duration = Duration::from_millis(100);
/// A request whose migration failed is not tried again before this.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Stats older than this are not acted on.
const STALE_AFTER: Duration = Duration::from_secs(2);
/// How long blocks moved to a target count against its room (until its
/// stats show them).
const INCOMING_FOR: Duration = Duration::from_secs(1);
/// Migrations at once off one draining instance (one off any other).
const DRAINING_IN_FLIGHT: usize = 2;

#[derive(Default)]
struct State {
    /// Requests moving now, by (source allocation, request).
    moving: BTreeSet<(String, u64)>,
    /// Requests whose migration failed, and when.
    failed: HashMap<(String, u64), Instant>,
    /// When the last migration off each source ended.
    last_move: HashMap<String, Instant>,
    /// Blocks sent to each target, and when.
    incoming: HashMap<String, Vec<(Instant, u64)>>,
}

/// Starts the rescheduler of the agent reached at `self_agent`; the task
/// runs until aborted (and does nothing on an agent without a fleet view).
pub fn spawn(inference: Inference, self_agent: String, settings: Settings) -> JoinHandle<()> {
    tokio::spawn(async move {
        let state = Arc::new(Mutex::new(State::default()));
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            round(&inference, &self_agent, &settings, &state);
        }
    })
}

/// One look: plans and starts the moves (each in its own task).
fn round(inference: &Inference, self_agent: &str, settings: &Settings, state: &Arc<Mutex<State>>) {
    let Some(fleet) = inference.fleet() else {
        return;
    };
    let now = Instant::now();
    let mut views = Vec::new();
    // When each local instance's stats were read.
    let mut read_at = HashMap::new();
    for (engine, stats) in inference.engines().local() {
        let Some((stats, at)) = stats else { continue };
        if now.saturating_duration_since(at) >= STALE_AFTER {
            continue;
        }
        read_at.insert(engine.alloc_id.clone(), at);
        views.push(InstanceView {
            alloc_id: engine.alloc_id,
            job: engine.job,
            agent: self_agent.to_string(),
            local: true,
            stats,
            incoming_blocks: 0,
        });
    }
    for (instance, stats) in fleet.fresh_remote() {
        views.push(InstanceView {
            alloc_id: instance.alloc_id,
            job: instance.job,
            agent: instance.agent,
            local: false,
            stats,
            incoming_blocks: 0,
        });
    }
    let Ok(mut st) = state.lock() else {
        return;
    };
    st.failed
        .retain(|_, at| now.saturating_duration_since(*at) < RETRY_AFTER);
    for list in st.incoming.values_mut() {
        list.retain(|(at, _)| now.saturating_duration_since(*at) < INCOMING_FOR);
    }
    st.incoming.retain(|_, list| !list.is_empty());
    for view in &mut views {
        view.incoming_blocks = st
            .incoming
            .get(&view.alloc_id)
            .map_or(0, |l| l.iter().map(|(_, b)| b).sum());
    }
    let busy: BTreeSet<String> = views
        .iter()
        .filter(|v| v.local)
        .filter(|v| {
            let in_flight = st.moving.iter().filter(|(a, _)| a == &v.alloc_id).count();
            let limit = if v.stats.draining {
                DRAINING_IN_FLIGHT
            } else {
                1
            };
            // Stats read before the last move ended do not show it yet.
            let stale = !v.stats.draining
                && st
                    .last_move
                    .get(&v.alloc_id)
                    .zip(read_at.get(&v.alloc_id))
                    .is_some_and(|(moved, read)| read <= moved);
            in_flight >= limit || stale
        })
        .map(|v| v.alloc_id.clone())
        .collect();
    let skip: BTreeSet<(String, u64)> = st
        .moving
        .iter()
        .cloned()
        .chain(st.failed.keys().cloned())
        .collect();
    for m in plan(&views, &busy, &skip, settings) {
        let (source, target) = (&views[m.source], &views[m.target]);
        let key = (source.alloc_id.clone(), m.request_id);
        st.moving.insert(key.clone());
        st.incoming
            .entry(target.alloc_id.clone())
            .or_default()
            .push((now, m.blocks));
        let why = match m.why {
            Why::Draining => "draining",
            Why::HighPriorityRoom => "room for a high-priority request",
            Why::LowOnBlocks => "low on KV blocks",
        };
        let to = Target {
            alloc_id: target.alloc_id.clone(),
            agent: target.agent.clone(),
            node: inference.fleet().and_then(|f| f.node_of(&target.alloc_id)),
        };
        let (inference, state) = (inference.clone(), state.clone());
        tokio::spawn(async move {
            let (alloc, request) = (&key.0, key.1);
            let result = migrate_request(&inference, alloc, request, &to).await;
            match &result {
                Ok(o) => tracing::info!(
                    from = %alloc, request, to = %to.alloc_id, why,
                    downtime_us = o.downtime.as_micros() as u64, "request rescheduled"
                ),
                Err(e) => tracing::info!(
                    from = %alloc, request, to = %to.alloc_id, why, error = %e,
                    "request not rescheduled (it goes on where it was)"
                ),
            }
            if let Ok(mut st) = state.lock() {
                st.moving.remove(&key);
                st.last_move.insert(key.0.clone(), Instant::now());
                if result.is_err() {
                    st.failed.insert(key, Instant::now());
                }
            }
        });
    }
}
