//! `apply`: the deterministic, total transition function of the cluster state.
//!
//! No clock, no randomness, no I/O: given the same state and command every
//! member computes the same result. A command that does not fit is rejected
//! whole with a reason.

pub mod alloc;
pub mod drain;
pub mod gang_migration;
pub mod migration;
pub mod offline_move;
pub mod plan;
pub mod power;

use herd_api::node::NodeStatus;
use herd_consensus::state_machine::EntryPosition;

use crate::machine::apply::alloc::{apply_updates, mark_node_down};
use crate::machine::apply::drain::{clear_deadline, drain_now, drain_within};
use crate::machine::apply::plan::{apply_plan, stop_allocations};
use crate::machine::command::{Command, CommandResult, Rejection};
use crate::state::{ChangeLog, ClusterState, Job, JobStatus, Record, Variable};

/// Largest variable value: variables are configuration, not blobs.
pub const MAX_VARIABLE_BYTES: usize = 64 * 1024;
/// Longest variable key.
pub const MAX_VARIABLE_KEY: usize = 256;

/// Applies `command`, appended at `at`, recording persisted changes in
/// `changes`: the entry point for committed entries, where a leader's
/// [`Command::Fenced`] decision is checked against the term that appended it.
pub fn apply_entry(
    state: &mut ClusterState,
    at: EntryPosition,
    command: Command,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    match command {
        Command::Fenced { term, command } if term == at.term => {
            apply(state, at.index, *command, changes)
        }
        Command::Fenced { term, .. } => CommandResult::Rejected(Rejection::StaleLeader {
            decided_in: term,
            appended_in: at.term,
        }),
        command => apply(state, at.index, command, changes),
    }
}

/// Applies `command`, committed at log `index`, recording persisted changes in `changes`.
pub fn apply(
    state: &mut ClusterState,
    index: u64,
    command: Command,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    match command {
        Command::PutVariableJson { put } => apply(state, index, put.into_command(), changes),
        Command::InitCluster { cluster_id } => {
            if let Some(existing) = &state.cluster_id {
                return CommandResult::ClusterInitialized {
                    cluster_id: existing.clone(),
                };
            }
            state.cluster_id = Some(cluster_id.clone());
            changes.put(Record::ClusterId, state);
            CommandResult::ClusterInitialized { cluster_id }
        }
        Command::SubmitJob { mut spec, now_ms } => {
            // Only the frozen rules: an entry an older release accepted must
            // apply the same on every release (see `validate_stored`).
            if let Err(e) = spec.validate_stored() {
                return CommandResult::Rejected(Rejection::InvalidSpec(e.to_string()));
            }
            let name = spec.name.clone();
            // An autoscaled service's count is the autoscaler's, not the file's.
            spec.count = crate::autoscale::resubmit::count_on_submit(state.jobs.get(&name), &spec);
            let result = match state.jobs.get_mut(&name) {
                Some(job) if job.spec == spec && job.status != JobStatus::Stopped => {
                    CommandResult::JobSubmitted {
                        version: job.version,
                        changed: false,
                    }
                }
                Some(job) => {
                    job.spec = spec;
                    job.version += 1;
                    job.status = JobStatus::Pending;
                    job.updated_at_ms = now_ms;
                    job.modify_index = index;
                    CommandResult::JobSubmitted {
                        version: job.version,
                        changed: true,
                    }
                }
                None => {
                    state.jobs.insert(
                        name.clone(),
                        Job {
                            spec,
                            version: 1,
                            status: JobStatus::Pending,
                            submitted_at_ms: now_ms,
                            updated_at_ms: now_ms,
                            modify_index: index,
                            blocked: None,
                        },
                    );
                    CommandResult::JobSubmitted {
                        version: 1,
                        changed: true,
                    }
                }
            };
            if let CommandResult::JobSubmitted {
                version,
                changed: true,
            } = result
            {
                changes.put(Record::Job(&name), state);
                // The new version replaces the instances of older ones.
                stop_allocations(state, &name, Some(version), index, now_ms, changes);
            }
            result
        }
        Command::StopJob { name, now_ms } => {
            let Some(job) = state.jobs.get_mut(&name) else {
                return CommandResult::Rejected(Rejection::JobNotFound(name));
            };
            if job.status == JobStatus::Stopped {
                return CommandResult::JobStopped {
                    version: job.version,
                };
            }
            job.status = JobStatus::Stopped;
            job.version += 1;
            job.updated_at_ms = now_ms;
            job.modify_index = index;
            let version = job.version;
            job.blocked = None;
            changes.put(Record::Job(&name), state);
            stop_allocations(state, &name, None, index, now_ms, changes);
            CommandResult::JobStopped { version }
        }
        Command::RegisterNode { mut node, now_ms } => {
            if node.name.is_empty() || node.name.len() > 128 {
                return CommandResult::Rejected(Rejection::Invalid(format!(
                    "node name must be 1 to 128 characters, got {}",
                    node.name.len()
                )));
            }
            // Re-registering (an agent restart) keeps what operators decided.
            match state.nodes.get(&node.name) {
                Some(existing) => {
                    node.registered_at_ms = existing.registered_at_ms;
                    node.eligible = existing.eligible;
                    node.status = match existing.status {
                        NodeStatus::Draining => NodeStatus::Draining,
                        NodeStatus::Ready | NodeStatus::Down => NodeStatus::Ready,
                    };
                }
                None => {
                    node.registered_at_ms = now_ms;
                    node.eligible = true;
                    node.status = NodeStatus::Ready;
                }
            }
            let name = node.name.clone();
            state.nodes.insert(name.clone(), node);
            changes.put(Record::Node(&name), state);
            CommandResult::NodeRegistered
        }
        Command::ApplyPlan { plan, now_ms } | Command::ApplyGpuPlan { plan, now_ms } => {
            apply_plan(state, index, plan, now_ms, changes)
        }
        Command::SetNodeEligibility { node, eligible } => {
            let Some(info) = state.nodes.get_mut(&node) else {
                return CommandResult::Rejected(Rejection::NodeNotFound(node));
            };
            info.eligible = eligible;
            // Making a drained node eligible again ends its drain.
            let ends_drain = eligible && info.status == NodeStatus::Draining;
            if ends_drain {
                info.status = NodeStatus::Ready;
            }
            changes.put(Record::Node(&node), state);
            if ends_drain {
                clear_deadline(state, &node, changes);
            }
            CommandResult::NodeUpdated
        }
        Command::DrainNode { node, now_ms } => drain_now(state, index, &node, now_ms, changes),
        Command::StartMigration {
            alloc_id,
            target,
            downtime_limit_ms,
            bandwidth_bytes_per_sec,
            now_ms,
        } => migration::start_migration(
            state,
            index,
            migration::MoveRequest {
                alloc_id: &alloc_id,
                target: &target,
                downtime_limit_ms,
                bandwidth_bytes_per_sec,
            },
            now_ms,
            changes,
        ),
        Command::AdvanceMigration {
            id,
            phase,
            bytes,
            rounds,
            now_ms,
        } => migration::advance_migration(
            state,
            index,
            &id,
            migration::Progress {
                phase,
                bytes,
                rounds,
            },
            now_ms,
            changes,
        ),
        Command::SwitchMigration {
            id,
            downtime_ms,
            now_ms,
        } => migration::switch_migration(state, index, &id, downtime_ms, now_ms, changes),
        Command::AbortMigration { id, reason, now_ms } => {
            migration::abort_migration(state, index, &id, &reason, now_ms, changes)
        }
        Command::StartGangMigration {
            moves,
            downtime_limit_ms,
            bandwidth_bytes_per_sec,
            now_ms,
        } => gang_migration::start_gang_migration(
            state,
            index,
            &moves,
            gang_migration::GangLimits {
                downtime_limit_ms,
                bandwidth_bytes_per_sec,
            },
            now_ms,
            changes,
        ),
        Command::GangMigrationStep {
            id,
            step,
            pace_milli,
            now_ms,
        } => gang_migration::gang_step(state, index, &id, step, pace_milli, now_ms, changes),
        Command::AcceptOfflineMove {
            move_id,
            alloc_id,
            source,
            target,
            from_generation,
            now_ms,
        } => offline_move::accept(
            state,
            index,
            &offline_move::OfflineMove {
                move_id: &move_id,
                alloc_id: &alloc_id,
                source: &source,
                target: &target,
                from_generation,
            },
            now_ms,
            changes,
        ),
        Command::ScaleJob { scale, now_ms } => {
            crate::autoscale::apply::scale_job(state, index, &scale, now_ms, changes)
        }
        Command::SettleOfflineMove {
            move_id,
            alloc_id,
            source,
            target,
            from_generation,
            target_silent,
            target_disowned,
            now_ms,
        } => offline_move::settle_unfinished(
            state,
            index,
            &offline_move::OfflineMove {
                move_id: &move_id,
                alloc_id: &alloc_id,
                source: &source,
                target: &target,
                from_generation,
            },
            offline_move::TargetWord {
                silent: target_silent,
                disowned: target_disowned,
            },
            now_ms,
            changes,
        ),
        // Only `apply_entry` knows the entry's term; a fence inside a fence
        // is not something herd proposes.
        Command::Fenced { .. } => CommandResult::Rejected(Rejection::Invalid(
            "a fenced command must be the entry's own command, not nested".into(),
        )),
        Command::DrainNodeWithin {
            node,
            grace_ms,
            now_ms,
        } => drain_within(state, index, &node, grace_ms, now_ms, changes),
        Command::DrainNodeLive {
            node,
            grace_ms,
            migrate,
            now_ms,
        } => drain::drain_live(
            state,
            index,
            drain::DrainRequest {
                node: &node,
                grace_ms,
                migrate,
            },
            now_ms,
            changes,
        ),
        Command::MarkNodeDown { node, now_ms } => {
            mark_node_down(state, index, &node, now_ms, changes)
        }
        Command::UpdateAllocs {
            node,
            updates,
            now_ms,
        } => apply_updates(state, index, &node, updates, now_ms, changes),
        Command::PutVariable {
            key,
            value,
            expected_version,
        } => {
            if key.is_empty() || key.len() > MAX_VARIABLE_KEY {
                return CommandResult::Rejected(Rejection::Invalid(format!(
                    "variable key must be 1 to {MAX_VARIABLE_KEY} bytes, got {}",
                    key.len()
                )));
            }
            if value.len() > MAX_VARIABLE_BYTES {
                return CommandResult::Rejected(Rejection::Invalid(format!(
                    "variable value must be at most {MAX_VARIABLE_BYTES} bytes, got {}",
                    value.len()
                )));
            }
            let actual = state.variables.get(&key).map_or(0, |v| v.version);
            if let Some(expected) = expected_version {
                if expected != actual {
                    return CommandResult::Rejected(Rejection::VersionMismatch {
                        key,
                        expected,
                        actual,
                    });
                }
            }
            let version = actual + 1;
            state.variables.insert(
                key.clone(),
                Variable {
                    value,
                    version,
                    modify_index: index,
                },
            );
            changes.put(Record::Variable(&key), state);
            CommandResult::VariablePut { version }
        }
        Command::SetNodeDrivers { node, drivers } => {
            if !state.nodes.contains_key(&node) {
                return CommandResult::Rejected(Rejection::NodeNotFound(node));
            }
            // Checked again here (the entry is network input relayed), with
            // rules that may loosen in a later release but never tighten.
            if let Some(drivers) = &drivers {
                if let Err(e) = herd_api::capabilities::check_drivers(drivers) {
                    return CommandResult::Rejected(Rejection::Invalid(format!(
                        "node {node:?}: {e}"
                    )));
                }
            }
            // An agent that registers again with the same drivers changes
            // nothing, and wakes no loop.
            if state.node_drivers.get(&node) == drivers.as_ref() {
                return CommandResult::NodeUpdated;
            }
            match drivers {
                Some(drivers) => state.node_drivers.insert(node.clone(), drivers),
                None => state.node_drivers.remove(&node),
            };
            changes.put(Record::NodeDrivers(&node), state);
            CommandResult::NodeUpdated
        }
        Command::SetNodeEndpoints { node, endpoints } => {
            if !state.nodes.contains_key(&node) {
                return CommandResult::Rejected(Rejection::NodeNotFound(node));
            }
            // Checked again here (network input relayed), with rules that
            // may loosen in a later release but never tighten.
            if let Err(e) = check_endpoints(&endpoints) {
                return CommandResult::Rejected(Rejection::Invalid(format!("node {node:?}: {e}")));
            }
            let current = state.node_endpoints.get(&node);
            if current == Some(&endpoints) || (current.is_none() && endpoints.is_empty()) {
                return CommandResult::NodeUpdated;
            }
            if endpoints.is_empty() {
                state.node_endpoints.remove(&node);
            } else {
                state.node_endpoints.insert(node.clone(), endpoints);
            }
            changes.put(Record::NodeEndpoints(&node), state);
            CommandResult::NodeUpdated
        }
        Command::SetPowerBudget {
            group,
            watts,
            cap_permille,
            hard_permille,
            now_ms,
        } => power::set_budget(
            state,
            index,
            power::BudgetRequest {
                group: &group,
                watts,
                cap_permille,
                hard_permille,
            },
            now_ms,
            changes,
        ),
        Command::RemovePowerBudget { group } => power::remove_budget(state, &group, changes),
        Command::BootstrapAcl { grant, now_ms } => {
            crate::acl::apply::bootstrap(state, index, grant, now_ms, changes)
        }
        Command::CreateToken { grant, now_ms } => {
            crate::acl::apply::create_token(state, index, grant, now_ms, changes)
        }
        Command::RevokeToken { accessor } => {
            crate::acl::apply::revoke_token(state, index, &accessor, changes)
        }
    }
}

#[cfg(test)]
mod gpu_tests;
/// Most endpoints a node may declare.
pub const MAX_NODE_ENDPOINTS: usize = 8;

/// Checks the endpoints a node's agent declared: at most
/// [`MAX_NODE_ENDPOINTS`], each named 1 to 32 bytes of `a-z`, `0-9`, `-`
/// and `_`, at a `HOST:PORT` of at most 256 bytes.
pub fn check_endpoints(
    endpoints: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    if endpoints.len() > MAX_NODE_ENDPOINTS {
        return Err(format!(
            "at most {MAX_NODE_ENDPOINTS} endpoints, got {}",
            endpoints.len()
        ));
    }
    for (name, addr) in endpoints {
        let named = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !named {
            return Err(format!(
                "endpoint name {name:?} is not 1 to 32 of a-z, 0-9, '-', '_'"
            ));
        }
        if addr.len() > 256 {
            return Err(format!("endpoint {name}: address longer than 256 bytes"));
        }
        herd_api::config_file::check_host_port(addr)
            .map_err(|e| format!("endpoint {name}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, run};
    use herd_api::job::{JobSpec, JobType};

    /// A one-instance batch job running `/bin/sleep` with `args`.
    fn spec(name: &str, args: &[&str]) -> JobSpec {
        let mut spec = testkit::spec(name, JobType::Batch, 1);
        spec.task.command = Some("/bin/sleep".to_string());
        spec.task.args = args.iter().map(|s| s.to_string()).collect();
        spec
    }

    #[test]
    fn resubmitting_a_job_versions_it_only_when_it_changed() {
        let mut state = ClusterState::default();
        let (r, ops) = run(
            &mut state,
            1,
            Command::SubmitJob {
                spec: spec("a", &["1"]),
                now_ms: 10,
            },
        );
        assert_eq!(
            r,
            CommandResult::JobSubmitted {
                version: 1,
                changed: true
            }
        );
        assert_eq!(ops.len(), 1);
        let (r, ops) = run(
            &mut state,
            2,
            Command::SubmitJob {
                spec: spec("a", &["1"]),
                now_ms: 20,
            },
        );
        assert_eq!(
            r,
            CommandResult::JobSubmitted {
                version: 1,
                changed: false
            }
        );
        assert!(ops.is_empty(), "an unchanged resubmission writes nothing");
        let (r, _) = run(
            &mut state,
            3,
            Command::SubmitJob {
                spec: spec("a", &["2"]),
                now_ms: 30,
            },
        );
        assert_eq!(
            r,
            CommandResult::JobSubmitted {
                version: 2,
                changed: true
            }
        );
        let job = &state.jobs["a"];
        assert_eq!(
            (job.submitted_at_ms, job.updated_at_ms, job.modify_index),
            (10, 30, 3)
        );
    }

    #[test]
    fn stopping_unknown_job_is_rejected_and_changes_nothing() {
        let mut state = ClusterState::default();
        let before = state.clone();
        let (r, ops) = run(
            &mut state,
            1,
            Command::StopJob {
                name: "nope".into(),
                now_ms: 1,
            },
        );
        assert_eq!(
            r,
            CommandResult::Rejected(Rejection::JobNotFound("nope".into()))
        );
        assert!(ops.is_empty());
        assert_eq!(state, before);
    }

    #[test]
    fn stop_then_resubmit_makes_a_new_pending_version() {
        let mut state = ClusterState::default();
        run(
            &mut state,
            1,
            Command::SubmitJob {
                spec: spec("a", &[]),
                now_ms: 1,
            },
        );
        let (r, _) = run(
            &mut state,
            2,
            Command::StopJob {
                name: "a".into(),
                now_ms: 2,
            },
        );
        assert_eq!(r, CommandResult::JobStopped { version: 2 });
        assert_eq!(state.jobs["a"].status, JobStatus::Stopped);
        let (r, _) = run(
            &mut state,
            3,
            Command::SubmitJob {
                spec: spec("a", &[]),
                now_ms: 3,
            },
        );
        assert_eq!(
            r,
            CommandResult::JobSubmitted {
                version: 3,
                changed: true
            }
        );
        assert_eq!(state.jobs["a"].status, JobStatus::Pending);
    }

    #[test]
    fn compare_and_set_checks_versions() {
        let mut state = ClusterState::default();
        let put = |expected| Command::PutVariable {
            key: "k".into(),
            value: b"v".to_vec(),
            expected_version: expected,
        };
        assert_eq!(
            run(&mut state, 1, put(Some(0))).0,
            CommandResult::VariablePut { version: 1 }
        );
        assert_eq!(
            run(&mut state, 2, put(Some(0))).0,
            CommandResult::Rejected(Rejection::VersionMismatch {
                key: "k".into(),
                expected: 0,
                actual: 1
            })
        );
        assert_eq!(
            run(&mut state, 3, put(Some(1))).0,
            CommandResult::VariablePut { version: 2 }
        );
        assert_eq!(
            run(&mut state, 4, put(None)).0,
            CommandResult::VariablePut { version: 3 }
        );
        let big = Command::PutVariable {
            key: "k".into(),
            value: vec![0; MAX_VARIABLE_BYTES + 1],
            expected_version: None,
        };
        assert!(matches!(
            run(&mut state, 5, big).0,
            CommandResult::Rejected(Rejection::Invalid(_))
        ));
        assert_eq!(state.variables["k"].version, 3);
    }

    #[test]
    fn first_cluster_id_wins() {
        let mut state = ClusterState::default();
        run(
            &mut state,
            1,
            Command::InitCluster {
                cluster_id: "one".into(),
            },
        );
        let (r, ops) = run(
            &mut state,
            2,
            Command::InitCluster {
                cluster_id: "two".into(),
            },
        );
        assert_eq!(
            r,
            CommandResult::ClusterInitialized {
                cluster_id: "one".into()
            }
        );
        assert!(ops.is_empty());
    }

    #[test]
    fn persisted_pairs_rebuild_the_same_state() {
        let mut state = ClusterState::default();
        run(
            &mut state,
            1,
            Command::InitCluster {
                cluster_id: "c".into(),
            },
        );
        run(
            &mut state,
            2,
            Command::SubmitJob {
                spec: spec("a", &["x"]),
                now_ms: 5,
            },
        );
        run(
            &mut state,
            3,
            Command::PutVariable {
                key: "k".into(),
                value: b"v".to_vec(),
                expected_version: None,
            },
        );
        let rebuilt = ClusterState::from_pairs(state.to_pairs()).expect("rebuild");
        assert_eq!(rebuilt, state);
        assert!(
            ClusterState::from_pairs(vec![(b"job/x".to_vec(), vec![9, 1, 2])]).is_err(),
            "unknown format refused"
        );
    }
    #[test]
    fn a_leaders_decision_applies_only_in_the_term_it_was_made_in() {
        use herd_api::node::NodeStatus;
        let mut state = ClusterState::default();
        testkit::run(
            &mut state,
            1,
            Command::RegisterNode {
                node: testkit::node("n1"),
                now_ms: 1,
            },
        );
        let mark_down = || {
            Command::fenced(
                3,
                Command::MarkNodeDown {
                    node: "n1".into(),
                    now_ms: 2,
                },
            )
        };
        let entry = |term| EntryPosition { index: 2, term };

        // The leader of term 3 was deposed; the leader of term 4 appended
        // its verdict (a forwarded proposal): refused, nothing changes.
        let before = state.clone();
        let mut ops = Vec::new();
        let result = apply_entry(
            &mut state,
            entry(4),
            mark_down(),
            &mut ChangeLog::new(&mut ops),
        );
        assert_eq!(
            result,
            CommandResult::Rejected(Rejection::StaleLeader {
                decided_in: 3,
                appended_in: 4
            })
        );
        assert!(ops.is_empty(), "a refused decision persisted {ops:?}");
        assert_eq!(state, before);

        // Appended by the leader that made it: applied as the plain command.
        let result = apply_entry(
            &mut state,
            entry(3),
            mark_down(),
            &mut ChangeLog::new(&mut ops),
        );
        assert!(!matches!(result, CommandResult::Rejected(_)), "{result:?}");
        assert_eq!(state.nodes["n1"].status, NodeStatus::Down);

        // A fence inside a fence is refused, never unwrapped twice.
        let nested = Command::fenced(3, mark_down());
        let result = apply_entry(&mut state, entry(3), nested, &mut ChangeLog::new(&mut ops));
        assert!(
            matches!(result, CommandResult::Rejected(Rejection::Invalid(_))),
            "{result:?}"
        );

        // Unfenced commands apply in any term.
        let result = apply_entry(
            &mut state,
            entry(9),
            Command::SetNodeEligibility {
                node: "n1".into(),
                eligible: false,
            },
            &mut ChangeLog::new(&mut ops),
        );
        assert_eq!(result, CommandResult::NodeUpdated);
    }
    #[test]
    fn a_nodes_http_endpoint_is_stored_checked_and_survives_a_restart() {
        use herd_consensus::storage::WriteOp;
        let set = |endpoints: &[(&str, &str)]| Command::SetNodeEndpoints {
            node: "n1".into(),
            endpoints: endpoints
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut state = ClusterState::default();
        let (result, ops) = run(&mut state, 1, set(&[("http", "127.0.0.1:8000")]));
        assert_eq!(
            result,
            CommandResult::Rejected(Rejection::NodeNotFound("n1".into()))
        );
        assert!(ops.is_empty());
        run(
            &mut state,
            2,
            Command::RegisterNode {
                node: testkit::node("n1"),
                now_ms: 1,
            },
        );
        // None declared (an older agent): nothing written.
        assert!(run(&mut state, 3, set(&[])).1.is_empty());
        let (result, ops) = run(&mut state, 4, set(&[("http", "127.0.0.1:8000")]));
        assert_eq!(result, CommandResult::NodeUpdated);
        assert!(
            matches!(&ops[..], [WriteOp::Put(key, _)] if key == b"endpoints/n1"),
            "{ops:?}"
        );
        assert!(run(&mut state, 5, set(&[("http", "127.0.0.1:8000")]))
            .1
            .is_empty());
        let rebuilt = ClusterState::from_pairs(state.to_pairs()).expect("rebuild");
        assert_eq!(rebuilt, state);
        assert_eq!(rebuilt.node_endpoints["n1"]["http"], "127.0.0.1:8000");
        // Bad declarations are refused, naming what is wrong.
        for bad in [
            set(&[("http", "no-port")]),
            set(&[("HTTP", "h:1")]),
            set(&[("http", &"h".repeat(300))]),
        ] {
            let (result, ops) = run(&mut state, 6, bad);
            assert!(
                matches!(&result, CommandResult::Rejected(Rejection::Invalid(m)) if m.contains("endpoint")),
                "{result:?}"
            );
            assert!(ops.is_empty());
        }
        // An agent restarted without the endpoint forgets it.
        let (_, ops) = run(&mut state, 7, set(&[]));
        assert!(
            matches!(&ops[..], [WriteOp::Delete(key)] if key == b"endpoints/n1"),
            "{ops:?}"
        );
        assert!(!state.node_endpoints.contains_key("n1"));
    }

    #[test]
    fn a_nodes_drivers_are_stored_checked_and_survive_a_restart() {
        use herd_api::capabilities::{DriverCaps, MigrationMode, NodeDrivers, MAX_DRIVERS};
        use herd_consensus::storage::WriteOp;
        let caps = |migration, pause| DriverCaps {
            migration,
            pause,
            power_cap: false,
        };
        let drivers: NodeDrivers = [
            ("exec".to_string(), caps(MigrationMode::None, false)),
            ("vm".to_string(), caps(MigrationMode::LivePreCopy, true)),
        ]
        .into();
        let set = |node: &str, drivers: Option<NodeDrivers>| Command::SetNodeDrivers {
            node: node.into(),
            drivers,
        };
        let mut state = ClusterState::default();

        // An unknown node is refused.
        let (result, ops) = run(&mut state, 1, set("n1", Some(drivers.clone())));
        assert_eq!(
            result,
            CommandResult::Rejected(Rejection::NodeNotFound("n1".into()))
        );
        assert!(ops.is_empty());

        // An older agent's registration: the node works, capabilities unknown.
        run(
            &mut state,
            2,
            Command::RegisterNode {
                node: testkit::node("n1"),
                now_ms: 1,
            },
        );
        assert_eq!(state.nodes["n1"].status, NodeStatus::Ready);
        assert_eq!(state.driver_capabilities("n1", "vm"), None);

        // A newer agent says what its drivers allow: stored as a node change.
        let mut ops = Vec::new();
        let mut touched = crate::state::Changed::default();
        let result = apply(
            &mut state,
            3,
            set("n1", Some(drivers.clone())),
            &mut ChangeLog::recording(&mut ops, &mut touched),
        );
        assert_eq!(result, CommandResult::NodeUpdated);
        assert!(
            matches!(&ops[..], [WriteOp::Put(key, _)] if key == b"drivers/n1"),
            "{ops:?}"
        );
        assert!(touched.nodes.contains("n1"), "{touched:?}");
        assert_eq!(
            state.driver_capabilities("n1", "vm").map(|c| c.migration),
            Some(MigrationMode::LivePreCopy)
        );
        assert_eq!(
            state.driver_capabilities("n1", "exec").map(|c| c.migration),
            Some(MigrationMode::None)
        );
        // The same again writes nothing.
        assert!(run(&mut state, 4, set("n1", Some(drivers.clone())))
            .1
            .is_empty());

        // Snapshot and restart keep them.
        let rebuilt = ClusterState::from_pairs(state.to_pairs()).expect("rebuild");
        assert_eq!(rebuilt, state);
        assert_eq!(rebuilt.node_drivers["n1"], drivers);

        // Bad declarations are refused whole, naming what is wrong.
        let before = state.clone();
        let too_many: NodeDrivers = (0..=MAX_DRIVERS)
            .map(|i| (format!("d{i}"), caps(MigrationMode::None, false)))
            .collect();
        let long: NodeDrivers = [("x".repeat(65), caps(MigrationMode::None, false))].into();
        for (bad, says) in [
            (too_many, "1 to 32 drivers, got 33"),
            (long, "1 to 64 bytes, got 65"),
            (NodeDrivers::new(), "1 to 32 drivers, got 0"),
        ] {
            let (result, ops) = run(&mut state, 5, set("n1", Some(bad)));
            match result {
                CommandResult::Rejected(Rejection::Invalid(e)) => {
                    assert!(e.contains(says) && e.contains("drivers"), "{e}")
                }
                other => panic!("accepted: {other:?}"),
            }
            assert!(ops.is_empty());
        }
        assert_eq!(state, before);

        // An older agent replacing a newer one: what it cannot say is forgotten.
        let (result, ops) = run(&mut state, 6, set("n1", None));
        assert_eq!(result, CommandResult::NodeUpdated);
        assert!(matches!(&ops[..], [WriteOp::Delete(key)] if key == b"drivers/n1"));
        assert_eq!(state.driver_capabilities("n1", "vm"), None);
        assert!(ClusterState::from_pairs(state.to_pairs())
            .expect("rebuild")
            .node_drivers
            .is_empty());
    }

    #[test]
    fn a_spec_an_older_release_accepted_applies_though_todays_rules_refuse_it() {
        let mut state = ClusterState::default();
        let mut logged = spec("old", &["1"]);
        // A driver setting today's rules do not know.
        logged
            .task
            .config
            .insert("retired_setting".into(), "1".into());
        assert!(logged.validate().is_err(), "today's rules must refuse it");
        let (result, _) = run(
            &mut state,
            1,
            Command::SubmitJob {
                spec: logged,
                now_ms: 1,
            },
        );
        assert_eq!(
            result,
            CommandResult::JobSubmitted {
                version: 1,
                changed: true
            }
        );
        // What the state relies on is still checked.
        let mut nameless = spec("x", &[]);
        nameless.name = String::new();
        let (result, _) = run(
            &mut state,
            2,
            Command::SubmitJob {
                spec: nameless,
                now_ms: 2,
            },
        );
        assert!(
            matches!(result, CommandResult::Rejected(Rejection::InvalidSpec(_))),
            "{result:?}"
        );
    }
}
