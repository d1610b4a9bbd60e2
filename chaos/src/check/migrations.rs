//! Migrations under faults end well: judged from the migration client's
//! attempts ([`MigrationAttempt`]), the workload samples taken through
//! /proc, and what the cluster listed at the end ([`FinalMigrationState`]).
//!
//! 1. **Every migration ends.** Every migration started (by the client, or
//!    listed at the end) is `completed` or `aborted` once the run's quiet
//!    period is over.
//! 2. **Within its deadlines.** No phase is seen still running more than
//!    [`DEADLINE_GRACE_MS`] past its leader-stamped deadline, and none ends
//!    later than that after the deadline of the phase it ended in. The
//!    grace covers the leader's 500 ms watch and a leader change.
//! 3. **Phases only move forward**, and nothing follows an end.
//! 4. **One copy.** An allocation that was moved never runs as two
//!    processes in any sample, and outside a migration it runs only on its
//!    owner: the source before a switch-over (and after an abort), the
//!    target after it. A checkpoint move (`dljob`) stops the source before
//!    the target starts, so that is judged strictly from the moment the
//!    client saw the migration end; a live move's paused source may linger
//!    as a process for [`LIVE_SOURCE_GRACE_NS`] after the switch-over.
//!    Migrations the client did not start (a drain's live moves) count
//!    too, timed by the record's own start and end (the leader's clock,
//!    mapped onto the run's through the client's observations, with
//!    [`FOREIGN_SLACK_NS`] of slack). The owner is judged only for an
//!    allocation whose every move is known: as many completed migrations
//!    as its final generation says (the cluster keeps only the newest
//!    ended migrations of each allocation); otherwise only the two-copies
//!    rule applies to it.
//! 5. **The switch-over is the only change of owner.** An allocation's
//!    migrations (as listed at the end, oldest first) chain: each begins
//!    where the one before left it (on the target at generation + 1 after
//!    a completion, on the source at the same generation after an abort),
//!    and the allocation ends where and at the generation its last one
//!    left it.
//! 6. **Resources reserved only while migrating.** With no migration in
//!    flight at the end (rule 1), no allocation is listed twice and no
//!    node holds more than its capacity in the allocations that hold
//!    resources there (`pending` or `running`).

use std::collections::{BTreeMap, BTreeSet};

use super::Verdict;
use crate::history::{
    FinalMigrationState, GuestSeen, History, MigrationAttempt, Outcome, Record, Sample,
    SeenMigration,
};

/// How late past a phase deadline a migration may still be seen running
/// or end, ms: the leader looks every 500 ms, and a leader killed just
/// before leaves it to the next one, elected within a couple of seconds.
pub const DEADLINE_GRACE_MS: u64 = 5_000;

/// How long after the switch-over a live move's paused source may still
/// show as a process, ns.
pub const LIVE_SOURCE_GRACE_NS: u64 = 3_000_000_000;

/// Slack around a migration the client did not start, whose window comes
/// from the record's wall-clock stamps, ns.
pub const FOREIGN_SLACK_NS: u64 = 250_000_000;

/// The migration checker's verdict on `history`; None when the run did
/// not migrate (no final migration state was recorded).
pub fn check_history(history: &History) -> Option<Verdict> {
    let finals = history.records.iter().rev().find_map(|r| match r {
        Record::FinalMigrations(f) => Some(f),
        _ => None,
    })?;
    let attempts: Vec<MigrationAttempt> = history.migrations().cloned().collect();
    let samples: Vec<Sample> = history.samples().cloned().collect();
    Some(check(&attempts, &samples, finals))
}

/// Every rule of the module, first failure first.
pub fn check(
    attempts: &[MigrationAttempt],
    samples: &[Sample],
    finals: &FinalMigrationState,
) -> Verdict {
    Verdict::all([
        ended(attempts, finals),
        deadlines(attempts, finals),
        forward(attempts),
        one_copy(attempts, samples, finals),
        switch_overs(finals),
        room(finals),
    ])
}

/// Rule 1.
fn ended(attempts: &[MigrationAttempt], finals: &FinalMigrationState) -> Verdict {
    let Some(listed) = &finals.migrations else {
        return Verdict::Unknown("the final list of migrations could not be read".into());
    };
    if let Some(m) = listed.iter().find(|m| !m.is_final()) {
        return Verdict::Fail(format!(
            "migration {} of allocation {} ({} to {}) was still {} at the end of the run",
            m.id, m.alloc_id, m.source, m.target, m.phase
        ));
    }
    for a in attempts.iter().filter(|a| a.outcome == Outcome::Ok) {
        if a.ended_ns.is_some() {
            continue;
        }
        let Some(id) = a.last.as_ref().map(|m| m.id.as_str()) else {
            continue;
        };
        if !listed.iter().any(|m| m.id == id) {
            return Verdict::Unknown(format!(
                "migration {id}: the client never saw it end and the cluster no longer lists it"
            ));
        }
    }
    Verdict::Pass
}

/// The newest record of every migration: the final list's, else the
/// client's last sight.
fn newest(attempts: &[MigrationAttempt], finals: &FinalMigrationState) -> Vec<SeenMigration> {
    let mut by_id: BTreeMap<String, SeenMigration> = attempts
        .iter()
        .filter_map(|a| a.last.clone())
        .map(|m| (m.id.clone(), m))
        .collect();
    for m in finals.migrations.iter().flatten() {
        by_id.insert(m.id.clone(), m.clone());
    }
    by_id.into_values().collect()
}

/// Rule 2.
fn deadlines(attempts: &[MigrationAttempt], finals: &FinalMigrationState) -> Verdict {
    for a in attempts {
        let id = a.last.as_ref().map_or("?", |m| m.id.as_str());
        for seen in &a.phases {
            let running = seen.phase != "completed" && seen.phase != "aborted";
            if running && seen.wall_ms > seen.deadline_ms.saturating_add(DEADLINE_GRACE_MS) {
                return Verdict::Fail(format!(
                    "migration {id} of allocation {} was still {} {} ms past its deadline",
                    a.alloc_id,
                    seen.phase,
                    seen.wall_ms - seen.deadline_ms
                ));
            }
        }
    }
    for m in newest(attempts, finals) {
        if let Some(end) = m.ended_at_ms {
            if end > m.phase_deadline_ms.saturating_add(DEADLINE_GRACE_MS) {
                return Verdict::Fail(format!(
                    "migration {} of allocation {} ended {} {} ms past the deadline of its last phase",
                    m.id,
                    m.alloc_id,
                    m.phase,
                    end - m.phase_deadline_ms
                ));
            }
        }
    }
    Verdict::Pass
}

/// A phase's place in the order phases go through (both ends share one).
fn rank(phase: &str) -> Option<u8> {
    match phase {
        "planned" => Some(0),
        "preparing" => Some(1),
        "transferring" => Some(2),
        "switching" => Some(3),
        "completed" | "aborted" => Some(4),
        _ => None,
    }
}

/// Rule 3.
fn forward(attempts: &[MigrationAttempt]) -> Verdict {
    for a in attempts {
        let id = a.last.as_ref().map_or("?", |m| m.id.as_str());
        let mut previous: Option<(&str, u8)> = None;
        for seen in &a.phases {
            let Some(now) = rank(&seen.phase) else {
                return Verdict::Fail(format!(
                    "migration {id} was seen in phase {:?}, which the API does not name",
                    seen.phase
                ));
            };
            if let Some((before, was)) = previous {
                if now < was || was == 4 {
                    return Verdict::Fail(format!(
                        "migration {id} of allocation {} went from {before} to {}",
                        a.alloc_id, seen.phase
                    ));
                }
            }
            previous = Some((&seen.phase, now));
        }
    }
    Verdict::Pass
}

/// A migration of one allocation as the client saw it in time.
struct Window<'a> {
    id: &'a str,
    /// Where it begins to matter (a move the client did not start: its
    /// start less [`FOREIGN_SLACK_NS`]).
    start_ns: u64,
    /// Where it stands among the allocation's moves, which follow one
    /// another: its start without slack (a slack could put a move that
    /// began just after another before it).
    order_ns: u64,
    /// When it stops mattering that two nodes may be involved (None: never
    /// seen to end).
    end_ns: Option<u64>,
    /// Where the allocation runs before it.
    before: &'a str,
    /// Where it runs after it (None: unknown).
    after: Option<&'a str>,
}

/// The windows of each allocation's migrations, in start order: the
/// client's (a refused start changed nothing and makes none), then those
/// it did not start, from the final list. The second map says, per
/// allocation, whether its every move is known (see the module's rule 4).
fn windows<'a>(
    attempts: &'a [MigrationAttempt],
    finals: &'a FinalMigrationState,
) -> (BTreeMap<&'a str, Vec<Window<'a>>>, BTreeMap<&'a str, bool>) {
    let mut by_alloc: BTreeMap<&str, Vec<Window<'_>>> = BTreeMap::new();
    for a in attempts.iter().filter(|a| a.outcome != Outcome::Fail) {
        let (source, target) = match &a.last {
            Some(m) => (m.source.as_str(), m.target.as_str()),
            None => (a.source.as_str(), a.target.as_str()),
        };
        let final_phase = a.last.as_ref().filter(|m| m.is_final());
        let live = a.last.as_ref().is_some_and(|m| m.kind != "dljob");
        let end_ns = a.ended_ns.filter(|_| final_phase.is_some()).map(|end| {
            if live {
                end.saturating_add(LIVE_SOURCE_GRACE_NS)
            } else {
                end
            }
        });
        let after = final_phase.map(|m| {
            if m.phase == "completed" {
                target
            } else {
                source
            }
        });
        by_alloc
            .entry(a.alloc_id.as_str())
            .or_default()
            .push(Window {
                id: a
                    .last
                    .as_ref()
                    .map_or("(start of unknown outcome)", |m| m.id.as_str()),
                start_ns: a.invoke_ns,
                order_ns: a.invoke_ns,
                end_ns,
                before: source,
                after,
            });
    }
    // The leader's wall clock onto the run's: both read on this host.
    let offset_ms: Option<i128> = attempts
        .iter()
        .flat_map(|a| a.phases.first())
        .next()
        .map(|p| i128::from(p.wall_ms) - i128::from(p.at_ns / 1_000_000));
    let to_ns = |wall_ms: u64| {
        offset_ms.map(|offset| {
            let ms = (i128::from(wall_ms) - offset).max(0);
            u64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(u64::MAX)
        })
    };
    let client_ids: BTreeSet<&str> = attempts
        .iter()
        .filter_map(|a| a.last.as_ref().map(|m| m.id.as_str()))
        .collect();
    let mut unplaced: BTreeSet<&str> = BTreeSet::new();
    for m in finals.migrations.iter().flatten() {
        if client_ids.contains(m.id.as_str()) {
            continue;
        }
        let Some(start_ns) = to_ns(m.started_at_ms) else {
            unplaced.insert(&m.alloc_id);
            continue;
        };
        let grace = if m.kind == "dljob" {
            FOREIGN_SLACK_NS
        } else {
            FOREIGN_SLACK_NS + LIVE_SOURCE_GRACE_NS
        };
        let end_ns = m
            .ended_at_ms
            .filter(|_| m.is_final())
            .and_then(to_ns)
            .map(|end| end.saturating_add(grace));
        let after = m.is_final().then(|| {
            if m.phase == "completed" {
                m.target.as_str()
            } else {
                m.source.as_str()
            }
        });
        by_alloc.entry(&m.alloc_id).or_default().push(Window {
            id: &m.id,
            start_ns: start_ns.saturating_sub(FOREIGN_SLACK_NS),
            order_ns: start_ns,
            end_ns,
            before: &m.source,
            after,
        });
    }
    for list in by_alloc.values_mut() {
        list.sort_by_key(|w| w.order_ns);
    }
    // Every move known: the completed migrations seen (by id) are as many
    // as the generations the allocation gained.
    let mut completed: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let seen = attempts
        .iter()
        .filter_map(|a| a.last.as_ref())
        .chain(finals.migrations.iter().flatten());
    for m in seen.filter(|m| m.phase == "completed") {
        completed.entry(&m.alloc_id).or_default().insert(&m.id);
    }
    let known = by_alloc
        .keys()
        .map(|alloc| {
            let generation = finals
                .allocs
                .iter()
                .flatten()
                .find(|a| a.id == *alloc)
                .map(|a| a.generation);
            let moves = completed.get(alloc).map_or(0, |ids| ids.len() as u64);
            let whole = !unplaced.contains(alloc) && generation == Some(moves + 1);
            (*alloc, whole)
        })
        .collect();
    (by_alloc, known)
}

/// Where `alloc` must run at `t` (None: anywhere, once): inside a
/// migration's window nobody is owner, after one its outcome decides,
/// before the first its source.
fn owner_at<'a>(windows: &'a [Window<'a>], t: u64) -> Option<(&'a str, Option<&'a str>)> {
    let mut owner = windows.first().map(|w| (w.before, None));
    for w in windows {
        if t < w.start_ns {
            break;
        }
        match w.end_ns {
            Some(end) if t >= end => owner = w.after.map(|node| (node, Some(w.id))),
            _ => return None,
        }
    }
    owner
}

/// Rule 4.
fn one_copy(
    attempts: &[MigrationAttempt],
    samples: &[Sample],
    finals: &FinalMigrationState,
) -> Verdict {
    let (windows, known) = windows(attempts, finals);
    for sample in samples {
        let mut by_alloc: BTreeMap<&str, Vec<(u32, &str)>> = BTreeMap::new();
        // A simulated VM's copy whose guest did not run (a paused source,
        // a target not yet resumed) is no running copy (`GuestSeen`).
        let counted = sample
            .processes
            .iter()
            .filter(|p| GuestSeen::counts(p.guest));
        for p in counted {
            if windows.contains_key(p.alloc_id.as_str()) {
                by_alloc
                    .entry(&p.alloc_id)
                    .or_default()
                    .push((p.pid, &p.node));
            }
        }
        let at_ms = sample.at_ns / 1_000_000;
        for (alloc, copies) in by_alloc {
            if copies.len() > 1 {
                return Verdict::Fail(format!(
                    "allocation {alloc}, moved by the migration client, ran as two copies at {at_ms} ms: {copies:?} (pid, node)"
                ));
            }
            if known.get(alloc) != Some(&true) {
                continue;
            }
            let Some((owner, after)) = windows.get(alloc).and_then(|w| owner_at(w, sample.at_ns))
            else {
                continue;
            };
            if let Some((pid, node)) = copies.iter().find(|(_, node)| *node != owner) {
                let since = after.map_or("before its first migration".to_string(), |id| {
                    format!("after migration {id} ended")
                });
                return Verdict::Fail(format!(
                    "allocation {alloc} ran on {node} (pid {pid}) at {at_ms} ms, {since}, when its node was {owner}"
                ));
            }
        }
    }
    Verdict::Pass
}

/// Rule 5.
fn switch_overs(finals: &FinalMigrationState) -> Verdict {
    let (Some(listed), Some(allocs)) = (&finals.migrations, &finals.allocs) else {
        return Verdict::Unknown(
            "the final list of migrations or of allocations could not be read".into(),
        );
    };
    let mut by_alloc: BTreeMap<&str, Vec<&SeenMigration>> = BTreeMap::new();
    for m in listed {
        by_alloc.entry(&m.alloc_id).or_default().push(m);
    }
    for (alloc_id, mut chain) in by_alloc {
        chain.sort_by_key(|m| m.create_index);
        let left = |m: &SeenMigration| match m.phase.as_str() {
            "completed" => Some((m.target.clone(), m.from_generation + 1)),
            "aborted" => Some((m.source.clone(), m.from_generation)),
            _ => None,
        };
        for pair in chain.windows(2) {
            let (before, next) = (pair[0], pair[1]);
            if let Some((node, generation)) = left(before) {
                if next.source != node || next.from_generation != generation {
                    return Verdict::Fail(format!(
                        "allocation {alloc_id}: migration {} began on {} at generation {}, but {} {} had left it on {node} at generation {generation}",
                        next.id, next.source, next.from_generation, before.id, before.phase
                    ));
                }
            }
        }
        let Some(last) = chain.last() else { continue };
        let (Some((node, generation)), Some(alloc)) =
            (left(last), allocs.iter().find(|a| a.id == alloc_id))
        else {
            continue;
        };
        if alloc.node != node || alloc.generation != generation {
            return Verdict::Fail(format!(
                "allocation {alloc_id} ended on {} at generation {}, but its last migration {} ({}, {} to {}, from generation {}) left it on {node} at generation {generation}",
                alloc.node, alloc.generation, last.id, last.phase, last.source, last.target, last.from_generation
            ));
        }
    }
    Verdict::Pass
}

/// Rule 6.
fn room(finals: &FinalMigrationState) -> Verdict {
    let (Some(allocs), Some(nodes)) = (&finals.allocs, &finals.nodes) else {
        return Verdict::Unknown(
            "the final list of allocations or of nodes could not be read".into(),
        );
    };
    let mut ids = BTreeSet::new();
    if let Some(twice) = allocs.iter().find(|a| !ids.insert(a.id.as_str())) {
        return Verdict::Fail(format!(
            "allocation {} is listed twice at the end",
            twice.id
        ));
    }
    for node in nodes {
        let held: Vec<_> = allocs
            .iter()
            .filter(|a| a.node == node.name && (a.status == "pending" || a.status == "running"))
            .collect();
        let cpu: u64 = held.iter().map(|a| a.cpu_millis).sum();
        let memory: u64 = held.iter().map(|a| a.memory_bytes).sum();
        let gpus: u64 = held.iter().map(|a| u64::from(a.gpus)).sum();
        if cpu > node.cpu_millis || memory > node.memory_bytes || gpus > u64::from(node.gpus) {
            return Verdict::Fail(format!(
                "node {} holds {cpu} millicores, {memory} bytes and {gpus} GPUs in {} allocations, over its capacity of {} millicores, {} bytes and {} GPUs",
                node.name,
                held.len(),
                node.cpu_millis,
                node.memory_bytes,
                node.gpus
            ));
        }
    }
    Verdict::Pass
}

/// What the migration client did and how its migrations ended, for the
/// report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationCounts {
    /// Starts sent.
    pub attempts: usize,
    /// Starts acknowledged.
    pub started: usize,
    /// Starts refused (nothing changed).
    pub refused: usize,
    /// Starts whose answer was lost.
    pub unknown: usize,
    /// Started migrations seen completed.
    pub completed: usize,
    /// How many of those were of each kind (the driver: `dljob`, `simvm`).
    pub completed_by_kind: BTreeMap<String, usize>,
    /// Started migrations seen aborted.
    pub aborted: usize,
    /// Why they were aborted, with how often.
    pub abort_reasons: BTreeMap<String, usize>,
    /// Start to end of the completed ones, ms (the record's figures).
    pub total_ms: Vec<u64>,
    /// Downtime of the completed ones, ms.
    pub downtime_ms: Vec<u64>,
}

/// Counts the client's attempts in `history`; None when it made none and
/// the run did not migrate.
pub fn counts(history: &History) -> Option<MigrationCounts> {
    let migrates = history
        .records
        .iter()
        .any(|r| matches!(r, Record::FinalMigrations(_) | Record::Migration(_)));
    if !migrates {
        return None;
    }
    let mut c = MigrationCounts::default();
    for a in history.migrations() {
        c.attempts += 1;
        match a.outcome {
            Outcome::Ok => c.started += 1,
            Outcome::Fail => c.refused += 1,
            Outcome::Unknown => c.unknown += 1,
        }
        let Some(m) = a.last.as_ref().filter(|m| m.is_final()) else {
            continue;
        };
        if m.phase == "completed" {
            c.completed += 1;
            *c.completed_by_kind.entry(m.kind.clone()).or_default() += 1;
            if let Some(end) = m.ended_at_ms {
                c.total_ms.push(end.saturating_sub(m.started_at_ms));
            }
            c.downtime_ms.extend(m.downtime_ms);
        } else {
            c.aborted += 1;
            // The reason's start, so that alike ones group.
            let reason: String = m
                .error
                .as_deref()
                .unwrap_or("no reason given")
                .chars()
                .take(100)
                .collect();
            *c.abort_reasons.entry(reason).or_default() += 1;
        }
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{AllocState, NodeRoom, PhaseSeen, SeenProcess};

    const MS: u64 = 1_000_000;

    fn record(id: &str, phase: &str, source: &str, target: &str, generation: u64) -> SeenMigration {
        SeenMigration {
            id: id.into(),
            alloc_id: "a1".into(),
            kind: "dljob".into(),
            source: source.into(),
            target: target.into(),
            phase: phase.into(),
            phase_deadline_ms: 100_000,
            started_at_ms: 50_000,
            ended_at_ms: (phase == "completed" || phase == "aborted").then_some(52_000),
            from_generation: generation,
            create_index: id.trim_start_matches("mig-").parse().unwrap_or(0),
            bytes: 10,
            downtime_ms: (phase == "completed").then_some(100),
            error: (phase == "aborted").then(|| "node n2 is down".into()),
        }
    }

    /// A started migration from `start` to `end` ms of the run, seen
    /// through its phases.
    fn attempt(m: &SeenMigration, start: u64, end: u64) -> MigrationAttempt {
        let phase = |phase: &str, at: u64| PhaseSeen {
            at_ns: at * MS,
            wall_ms: 50_000 + at - start,
            phase: phase.into(),
            deadline_ms: 80_000,
        };
        MigrationAttempt {
            id: 1,
            process: 9,
            alloc_id: m.alloc_id.clone(),
            source: m.source.clone(),
            target: m.target.clone(),
            invoke_ns: start * MS,
            complete_ns: start * MS + MS,
            outcome: Outcome::Ok,
            member: Some(1),
            error: None,
            phases: vec![
                phase("planned", start + 1),
                phase("transferring", start + 2),
                phase(&m.phase, end),
            ],
            last: Some(m.clone()),
            ended_ns: Some(end * MS),
        }
    }

    fn sample(at: u64, copies: &[(u32, &str)]) -> Sample {
        Sample {
            at_ns: at * MS,
            settled: false,
            processes: copies
                .iter()
                .map(|(pid, node)| SeenProcess {
                    pid: *pid,
                    node: node.to_string(),
                    alloc_id: "a1".into(),
                    job: "chaos-train".into(),
                    instance: Some(0),
                    mark: None,
                    guest: None,
                })
                .collect(),
        }
    }

    fn finals(migrations: Vec<SeenMigration>, node: &str, generation: u64) -> FinalMigrationState {
        FinalMigrationState {
            migrations: Some(migrations),
            allocs: Some(vec![AllocState {
                id: "a1".into(),
                job: "chaos-train".into(),
                node: node.into(),
                status: "running".into(),
                generation,
                cpu_millis: 50,
                memory_bytes: 32 << 20,
                gpus: 0,
            }]),
            nodes: Some(
                ["n1", "n2"]
                    .iter()
                    .map(|n| NodeRoom {
                        name: n.to_string(),
                        cpu_millis: 2000,
                        memory_bytes: 1 << 30,
                        gpus: 0,
                    })
                    .collect(),
            ),
        }
    }

    /// A move n1 -> n2 completed (1000-1500 ms), then one back aborted
    /// (3000-3400 ms); the trainer seen where it should be throughout.
    fn good() -> (Vec<MigrationAttempt>, Vec<Sample>, FinalMigrationState) {
        let first = record("mig-10", "completed", "n1", "n2", 1);
        let second = record("mig-20", "aborted", "n2", "n1", 2);
        let attempts = vec![attempt(&first, 1000, 1500), attempt(&second, 3000, 3400)];
        let samples = vec![
            sample(500, &[(11, "n1")]),
            sample(1200, &[]),
            sample(1400, &[(12, "n2")]),
            sample(2000, &[(12, "n2")]),
            sample(3200, &[(12, "n2")]),
            sample(4000, &[(13, "n2")]),
        ];
        (attempts, samples, finals(vec![first, second], "n2", 2))
    }

    #[test]
    fn moves_that_end_where_they_say_pass() {
        let (attempts, samples, finals) = good();
        assert_eq!(check(&attempts, &samples, &finals), Verdict::Pass);
        let history = History {
            records: attempts
                .into_iter()
                .map(|a| Record::Migration(Box::new(a)))
                .chain(samples.into_iter().map(Record::Sample))
                .chain([Record::FinalMigrations(finals)])
                .collect(),
        };
        assert_eq!(check_history(&history), Some(Verdict::Pass));
        let c = counts(&history).expect("counts");
        assert_eq!((c.started, c.completed, c.aborted), (2, 1, 1));
        assert_eq!(c.completed_by_kind.values().sum::<usize>(), 1);
        assert_eq!(c.total_ms, vec![2000]);
        assert_eq!(check_history(&History::default()), None);
    }

    fn fails(
        attempts: &[MigrationAttempt],
        samples: &[Sample],
        finals: &FinalMigrationState,
        what: &str,
    ) {
        let verdict = check(attempts, samples, finals);
        assert!(
            matches!(&verdict, Verdict::Fail(why) if why.contains(what)),
            "{what}: {verdict:?}"
        );
    }

    #[test]
    fn a_migration_left_running_fails() {
        let (attempts, samples, mut finals) = good();
        if let Some(list) = finals.migrations.as_mut() {
            list[1].phase = "transferring".into();
            list[1].ended_at_ms = None;
        }
        fails(
            &attempts,
            &samples,
            &finals,
            "still transferring at the end",
        );
        // Gone from the list and never seen to end: undecided, not a pass.
        let (mut attempts, _, mut finals) = good();
        attempts[1].ended_ns = None;
        finals.migrations = Some(vec![record("mig-10", "completed", "n1", "n2", 1)]);
        assert!(matches!(
            ended(&attempts, &finals),
            Verdict::Unknown(why) if why.contains("never saw it end")
        ));
    }

    #[test]
    fn a_phase_past_its_deadline_fails() {
        let (mut attempts, samples, finals) = good();
        attempts[0].phases[1].wall_ms = 80_000 + DEADLINE_GRACE_MS + 1;
        fails(&attempts, &samples, &finals, "past its deadline");
        let (attempts, samples, mut finals) = good();
        if let Some(list) = finals.migrations.as_mut() {
            list[0].ended_at_ms = Some(100_000 + DEADLINE_GRACE_MS + 1);
        }
        fails(
            &attempts,
            &samples,
            &finals,
            "past the deadline of its last phase",
        );
    }

    #[test]
    fn a_phase_going_backwards_fails() {
        let (mut attempts, samples, finals) = good();
        attempts[0].phases.swap(0, 1);
        fails(
            &attempts,
            &samples,
            &finals,
            "went from transferring to planned",
        );
    }

    #[test]
    fn two_copies_or_a_copy_off_its_owner_fail() {
        // Both trainers at once during the move.
        let (attempts, mut samples, finals) = good();
        samples.push(sample(1300, &[(11, "n1"), (12, "n2")]));
        fails(&attempts, &samples, &finals, "ran as two copies");
        // The source's copy back after the switch-over.
        let (attempts, mut samples, finals) = good();
        samples.push(sample(2500, &[(11, "n1")]));
        fails(&attempts, &samples, &finals, "after migration mig-10 ended");
        // The target of the aborted move ran it.
        let (attempts, mut samples, finals) = good();
        samples.push(sample(3500, &[(14, "n1")]));
        fails(&attempts, &samples, &finals, "after migration mig-20 ended");
        // Running on the target before any move.
        let (attempts, mut samples, finals) = good();
        samples.insert(0, sample(100, &[(15, "n2")]));
        fails(&attempts, &samples, &finals, "before its first migration");
        // A refused start moves nothing: the source stays owner.
        let (mut attempts, _, _) = good();
        let finals =
            super::tests::finals(vec![record("mig-10", "completed", "n1", "n2", 1)], "n2", 2);
        attempts.truncate(1);
        let mut refused = attempts[0].clone();
        refused.outcome = Outcome::Fail;
        refused.invoke_ns = 200 * MS;
        refused.last = None;
        refused.ended_ns = None;
        attempts.insert(0, refused);
        fails(
            &attempts,
            &[sample(300, &[(16, "n2")])],
            &finals,
            "before its first migration",
        );
    }

    #[test]
    fn a_simulated_vms_paused_copies_are_no_copies_but_a_running_one_is() {
        let with_guests = |at: u64, copies: &[(u32, &str, GuestSeen)]| {
            let mut s = sample(
                at,
                &copies.iter().map(|(p, n, _)| (*p, *n)).collect::<Vec<_>>(),
            );
            for (process, (_, _, guest)) in s.processes.iter_mut().zip(copies) {
                process.guest = Some(*guest);
            }
            s
        };
        // During the move the target waits paused beside the running
        // source; after it the paused source lingers beside the target.
        let (attempts, mut samples, finals) = good();
        samples.push(with_guests(
            1300,
            &[
                (11, "n1", GuestSeen::Running),
                (12, "n2", GuestSeen::Paused),
            ],
        ));
        samples.push(with_guests(
            2500,
            &[
                (11, "n1", GuestSeen::Paused),
                (12, "n2", GuestSeen::Running),
            ],
        ));
        assert_eq!(check(&attempts, &samples, &finals), Verdict::Pass);
        // Both guests running during the move, or the source's guest
        // running again after the switch-over.
        let (attempts, mut samples, finals) = good();
        samples.push(with_guests(
            1300,
            &[
                (11, "n1", GuestSeen::Running),
                (12, "n2", GuestSeen::Running),
            ],
        ));
        fails(&attempts, &samples, &finals, "ran as two copies");
        let (attempts, mut samples, finals) = good();
        samples.push(with_guests(2500, &[(11, "n1", GuestSeen::Running)]));
        fails(&attempts, &samples, &finals, "after migration mig-10 ended");
    }

    #[test]
    fn moves_the_client_did_not_start_count_when_every_move_is_known() {
        // After the client's move n1 -> n2 (1000-1500 ms of the run, wall
        // clock 49 000 ms ahead), a drain moved the allocation back to n1
        // from 2000 to 2200 ms: known only from the final list.
        let (mut attempts, _, _) = good();
        attempts.truncate(1);
        let mut drained = record("mig-30", "completed", "n2", "n1", 2);
        drained.started_at_ms = 51_000;
        drained.ended_at_ms = Some(51_200);
        let all = vec![record("mig-10", "completed", "n1", "n2", 1), drained];
        let known = finals(all.clone(), "n1", 3);
        let moved_back = [
            sample(500, &[(11, "n1")]),
            sample(1800, &[(12, "n2")]),
            sample(2100, &[]),
            sample(3000, &[(13, "n1")]),
        ];
        assert_eq!(check(&attempts, &moved_back, &known), Verdict::Pass);
        let mut stale = moved_back.to_vec();
        stale.push(sample(3500, &[(12, "n2")]));
        fails(&attempts, &stale, &known, "after migration mig-30 ended");
        // With a move forgotten (generation 4 but two completions known),
        // where it runs is not judged; two copies at once still are.
        let mut unknown = finals(all, "n1", 4);
        if let Some(list) = unknown.migrations.as_mut() {
            list[1].from_generation = 3;
        }
        let judged = |samples: &[Sample]| one_copy(&attempts, samples, &unknown);
        assert_eq!(judged(&stale), Verdict::Pass);
        stale.push(sample(4000, &[(12, "n2"), (13, "n1")]));
        assert!(judged(&stale).is_fail());
    }

    #[test]
    fn a_move_the_client_did_not_start_right_after_its_own_keeps_its_place() {
        // The client's move n1 -> n2 (1000-1100 ms), then a drain's back to
        // n1 starting 50 ms after it ended: its slack reaches back before
        // the client's start, but the allocation still ran on n1 first.
        let mut first = record("mig-10", "completed", "n1", "n2", 1);
        first.started_at_ms = 50_000;
        first.ended_at_ms = Some(50_100);
        let attempts = vec![attempt(&first, 1000, 1100)];
        let mut drained = record("mig-30", "completed", "n2", "n1", 2);
        drained.started_at_ms = 50_150;
        drained.ended_at_ms = Some(50_250);
        let known = finals(vec![first, drained], "n1", 3);
        let samples = [
            sample(500, &[(11, "n1")]),
            sample(1050, &[]),
            sample(5000, &[(13, "n1")]),
        ];
        assert_eq!(check(&attempts, &samples, &known), Verdict::Pass);
        let mut late = samples.to_vec();
        late.push(sample(5100, &[(12, "n2")]));
        fails(&attempts, &late, &known, "after migration mig-30 ended");
    }

    #[test]
    fn an_owner_changed_other_than_by_a_switch_over_fails() {
        // The allocation left on the source although the move completed.
        let (attempts, samples, mut finals) = good();
        finals.migrations = Some(vec![record("mig-10", "completed", "n1", "n2", 1)]);
        if let Some(allocs) = finals.allocs.as_mut() {
            allocs[0].node = "n1".into();
        }
        fails(
            &attempts[..1],
            &samples[..4],
            &finals,
            "left it on n2 at generation 2",
        );
        // The generation not raised by a completed move.
        let (attempts, samples, mut finals) = good();
        finals.migrations = Some(vec![record("mig-10", "completed", "n1", "n2", 1)]);
        if let Some(allocs) = finals.allocs.as_mut() {
            allocs[0].generation = 1;
        }
        fails(&attempts[..1], &samples[..4], &finals, "at generation 1");
        // A move that began where the one before had not left it.
        let (attempts, samples, mut finals) = good();
        if let Some(list) = finals.migrations.as_mut() {
            list[1].source = "n1".into();
        }
        fails(&attempts, &samples, &finals, "began on n1 at generation 2");
    }

    #[test]
    fn a_node_over_capacity_or_an_allocation_listed_twice_fails() {
        let (attempts, samples, mut finals) = good();
        if let Some(allocs) = finals.allocs.as_mut() {
            allocs[0].cpu_millis = 2001;
        }
        fails(&attempts, &samples, &finals, "over its capacity");
        let (attempts, samples, mut finals) = good();
        if let Some(allocs) = finals.allocs.as_mut() {
            let mut twin = allocs[0].clone();
            twin.node = "n1".into();
            allocs.push(twin);
        }
        fails(&attempts, &samples, &finals, "listed twice");
        // Unreadable lists leave it undecided.
        let (attempts, samples, mut finals) = good();
        finals.nodes = None;
        assert!(matches!(
            check(&attempts, &samples, &finals),
            Verdict::Unknown(_)
        ));
    }
}
