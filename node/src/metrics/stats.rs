//! What the agent's actors record as things happen, for its metrics: the
//! link's calls to the coordinators, the migrations that ended here, the
//! driver of each allocation assigned here, and inference requests. Shared
//! by every incarnation of those actors (a restarted one keeps counting).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use herd_actors::workload::DesiredAlloc;
use herd_api::proto::agent::MigrationAssignment;
use herd_metrics::prometheus_client::metrics::counter::Counter;
use herd_metrics::prometheus_client::metrics::family::Family;
use herd_metrics::prometheus_client::registry::Registry;
use tokio::time::Instant;

/// Labels of a counted event.
pub type Labels = Vec<(&'static str, String)>;

/// The agent's counters and link state.
#[derive(Debug)]
pub struct AgentStats {
    started: Instant,
    calls: Family<Labels, Counter>,
    migrations: Family<Labels, Counter>,
    inference: Family<Labels, Counter>,
    balance_moves: Family<Labels, Counter>,
    gossip_bytes: Counter,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Whether the last registration or heartbeat was accepted.
    connected: bool,
    /// When the last accepted one was sent.
    last_contact: Option<Instant>,
    /// The driver of each allocation of the last assignment set.
    drivers: HashMap<String, String>,
    /// Migrations of the last set this node is the source of: id to
    /// (allocation, kind).
    sources: HashMap<String, (String, String)>,
    /// Migrations of the last set this node is the target of: id to
    /// (allocation, the generation the switch-over gives it, kind).
    targets: HashMap<String, (String, u64, String)>,
}

impl Default for AgentStats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            calls: Family::default(),
            migrations: Family::default(),
            inference: Family::default(),
            balance_moves: Family::default(),
            gossip_bytes: Counter::default(),
            inner: Mutex::default(),
        }
    }
}

impl AgentStats {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A registration or heartbeat (`call`) sent at `sent` was accepted.
    pub fn contact(&self, call: &'static str, sent: Instant) {
        self.count_call(call, "ok");
        let mut inner = self.inner();
        inner.connected = true;
        inner.last_contact = Some(inner.last_contact.map_or(sent, |last| last.max(sent)));
    }

    /// A registration or heartbeat failed, or the coordinators asked this
    /// node to register again (`outcome`): not connected until one passes.
    pub fn contact_failed(&self, call: &'static str, outcome: &'static str) {
        self.count_call(call, outcome);
        self.inner().connected = false;
    }

    /// The link starts over (a new link registers first).
    pub fn link_restarted(&self) {
        self.inner().connected = false;
    }

    fn count_call(&self, call: &'static str, outcome: &'static str) {
        self.calls
            .get_or_create(&vec![
                ("call", call.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    /// Whether the coordinators accepted the last call, and how long ago
    /// the last accepted one was sent (since the agent started when none was).
    pub fn link(&self) -> (bool, std::time::Duration) {
        let inner = self.inner();
        let since = inner.last_contact.unwrap_or(self.started);
        (inner.connected, since.elapsed())
    }

    /// Takes note of an assignment set as the migration manager acted on
    /// it: `forward`, what goes on to the supervisor (a source's allocation
    /// marked `moving_out`), and `arriving`, what arrives here by migration.
    ///
    /// A migration the previous set named and this one does not has ended:
    /// as its source, completed when the allocation left this node and
    /// aborted when it stays; as its target, completed when the allocation
    /// is now this node's at the generation the switch-over gives it.
    pub fn observe_assignments<'a>(
        &self,
        forward: &[DesiredAlloc],
        arriving: impl IntoIterator<Item = (&'a DesiredAlloc, &'a MigrationAssignment)>,
    ) {
        let sources: HashMap<String, (String, String)> = forward
            .iter()
            .filter_map(|d| {
                let id = d.moving_out.clone()?;
                Some((id, (d.alloc_id.clone(), d.task.driver.clone())))
            })
            .collect();
        let targets: HashMap<String, (String, u64, String)> = arriving
            .into_iter()
            .map(|(d, m)| {
                (
                    m.id.clone(),
                    (d.alloc_id.clone(), d.generation, d.task.driver.clone()),
                )
            })
            .collect();
        let here: BTreeMap<&str, u64> = forward
            .iter()
            .map(|d| (d.alloc_id.as_str(), d.generation))
            .collect();
        let mut inner = self.inner();
        for (id, (alloc, kind)) in &inner.sources {
            if !sources.contains_key(id) {
                let stayed = here.contains_key(alloc.as_str());
                self.count_migration("source", kind, if stayed { "aborted" } else { "completed" });
            }
        }
        for (id, (alloc, generation, kind)) in &inner.targets {
            if !targets.contains_key(id) {
                let switched = here.get(alloc.as_str()) == Some(generation);
                self.count_migration(
                    "target",
                    kind,
                    if switched { "completed" } else { "aborted" },
                );
            }
        }
        inner.sources = sources;
        inner.targets = targets;
        inner.drivers = forward
            .iter()
            .map(|d| (d.alloc_id.clone(), d.task.driver.clone()))
            .collect();
    }

    fn count_migration(&self, role: &'static str, kind: &str, outcome: &'static str) {
        self.migrations
            .get_or_create(&vec![
                ("role", role.to_string()),
                ("kind", kind.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    /// The driver of allocation `alloc_id`, as the last set named it.
    pub fn driver_of(&self, alloc_id: &str) -> Option<String> {
        self.inner().drivers.get(alloc_id).cloned()
    }

    /// An inference request ended its dispatch with `outcome` (`local`,
    /// `relayed` or `refused`).
    pub fn inference(&self, outcome: &'static str) {
        self.inference
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    /// A balancing move this node took part in ended: `direction` `out`
    /// (this node sent the item) or `in`; `outcome` `moved` or `failed`
    /// (only the sender learns of a failure).
    pub fn balance_move(&self, direction: &'static str, outcome: &'static str) {
        self.balance_moves
            .get_or_create(&vec![
                ("direction", direction.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    /// Bytes of balancing packets this node sent (gossip and negotiation).
    pub fn gossip_sent(&self, bytes: u64) {
        self.gossip_bytes.inc_by(bytes);
    }

    /// How many migrations ended so (for tests).
    pub fn migrations(&self, role: &'static str, kind: &str, outcome: &'static str) -> u64 {
        self.migrations
            .get(&vec![
                ("role", role.to_string()),
                ("kind", kind.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .map_or(0, |c| c.get())
    }

    /// Registers the counters in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "agent_coordinator_calls",
            "Registrations and heartbeats this agent sent, by call and outcome (ok, failed, reregister)",
            self.calls.clone(),
        );
        registry.register(
            "agent_migrations",
            "Migrations this node took part in that ended, by role (source, target), kind and outcome (completed, aborted)",
            self.migrations.clone(),
        );
        registry.register(
            "agent_balance_moves",
            "Decentralised balancing moves this node took part in, by direction (out, in) and outcome (moved, failed)",
            self.balance_moves.clone(),
        );
        registry.register(
            "agent_balance_sent_bytes",
            "Bytes of balancing packets (membership, load gossip, negotiation) this agent sent",
            self.gossip_bytes.clone(),
        );
        registry.register(
            "agent_inference_requests",
            "Inference requests this agent dispatched, by outcome (local: this node's engine, relayed: another node's, refused)",
            self.inference.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use herd_api::job::{JobType, TaskSpec};

    use super::*;

    fn desired(
        alloc: &str,
        generation: u64,
        driver: &str,
        moving_out: Option<&str>,
    ) -> DesiredAlloc {
        DesiredAlloc {
            alloc_id: alloc.into(),
            generation,
            job: "j".into(),
            job_type: JobType::Service,
            task: TaskSpec {
                driver: driver.into(),
                command: None,
                args: Vec::new(),
                env: Default::default(),
                workdir: None,
                resources: Default::default(),
                config: Default::default(),
            },
            env: Default::default(),
            stop_after_disconnect: None,
            moving_out: moving_out.map(str::to_string),
        }
    }

    fn assignment(id: &str) -> MigrationAssignment {
        MigrationAssignment {
            id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn migrations_are_counted_when_a_set_stops_naming_them() {
        let stats = AgentStats::default();
        let m2 = assignment("m2");
        let incoming = desired("b", 3, "vm", None);
        stats.observe_assignments(
            &[
                desired("a", 1, "simvm", Some("m1")),
                desired("c", 1, "exec", None),
            ],
            [(&incoming, &m2)],
        );
        assert_eq!(stats.driver_of("c").as_deref(), Some("exec"));
        // m1 ended with "a" gone (moved), m2 with "b" here at generation 3.
        stats.observe_assignments(&[desired("b", 3, "vm", None)], []);
        assert_eq!(stats.migrations("source", "simvm", "completed"), 1);
        assert_eq!(stats.migrations("target", "vm", "completed"), 1);
        // Again, but both give up: "a" stays, "b" never comes.
        let incoming = desired("b2", 5, "vm", None);
        stats.observe_assignments(
            &[desired("a2", 1, "simvm", Some("m3"))],
            [(&incoming, &assignment("m4"))],
        );
        stats.observe_assignments(&[desired("a2", 1, "simvm", None)], []);
        assert_eq!(stats.migrations("source", "simvm", "aborted"), 1);
        assert_eq!(stats.migrations("target", "vm", "aborted"), 1);
        assert_eq!(stats.migrations("source", "simvm", "completed"), 1);
    }

    #[test]
    fn the_link_is_connected_from_an_accepted_call_until_one_fails() {
        let stats = AgentStats::default();
        assert!(!stats.link().0);
        stats.contact("heartbeat", Instant::now());
        assert!(stats.link().0);
        stats.contact_failed("heartbeat", "failed");
        assert!(!stats.link().0);
    }
}
