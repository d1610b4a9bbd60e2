//! The `balance-away` scenario: decentralised balancing with every
//! coordinator stopped. Two `[balance] movable` trainers are placed on one
//! node (the others made ineligible first, so that the coordinators never
//! move them themselves), then one long fault
//! ([`crate::nemesis::Fault::CoordinatorsAway`]) kills every coordinator
//! and, while they are away, kills and restarts node agents; the agents
//! move a trainer among themselves agent to agent (an offline move,
//! journalled in `<data_dir>/balance-moves.json` by both ends). At the heal
//! the coordinators return and reconcile each move. At the end of the run
//! this module records what the offline-move checker
//! ([`crate::check::offline_moves`]) judges: every agent's journal and
//! the trainers as the coordinators list them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use herd_api::client::HerdClient;
use herd_api::proto::v1::allocs_client::AllocsClient;
use herd_api::proto::v1::nodes_client::NodesClient;
use herd_api::proto::v1::{JobSpec, ListAllocsRequest, SetEligibilityRequest};
use serde::{Deserialize, Serialize};

use crate::agents::AgentSet;
use crate::history::{Record, Sample, SeenProcess};
use crate::scenario::Scenario;
use crate::workload::{self, Recorder};

/// The scenario's name on the command line.
pub const NAME: &str = "balance-away";

/// The movable training job of the scenario.
pub const JOB: &str = "chaos-away";

/// How many trainers it runs, all placed on the first node.
pub const COUNT: u32 = 2;

/// Whether `scenario` is this one (the runner's hooks ask).
pub fn applies(scenario: &Scenario) -> bool {
    scenario.name == NAME
}

/// The trainers: the balancing run's movable `dljob` trainers under a name
/// of their own.
pub fn job_spec() -> JobSpec {
    let mut spec = crate::migrate::movable_train_spec();
    spec.name = JOB.to_string();
    spec.count = COUNT;
    spec
}

/// Makes every node but the first ineligible, submits [`JOB`] and waits
/// until its trainers run on the first node: a skew that the coordinators
/// keep (they never move work onto an ineligible node) and that the agents
/// even out only once the coordinators are away.
pub async fn prepare(
    client: &HerdClient,
    agents: &AgentSet,
    members: usize,
    recorder: &Recorder,
    limit: Duration,
) -> Result<(), String> {
    let names = agents.names();
    let Some(first) = names.first().cloned() else {
        return Err(format!("scenario {NAME} needs node agents"));
    };
    for name in &names[1..] {
        let started = Instant::now();
        loop {
            let name = name.clone();
            let done = tokio::time::timeout(
                Duration::from_secs(2),
                client.call(|ch| {
                    let name = name.clone();
                    async move {
                        NodesClient::new(ch)
                            .set_eligibility(SetEligibilityRequest {
                                name,
                                eligible: false,
                            })
                            .await
                    }
                }),
            )
            .await;
            if matches!(done, Ok(Ok(_))) {
                break;
            }
            if started.elapsed() > limit {
                return Err(format!("could not make node {name} ineligible: {done:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    workload::submit_setup(client, members, job_spec(), recorder, limit)
        .await
        .map_err(|e| format!("submit {JOB}: {e}"))?;
    let started = Instant::now();
    while started.elapsed() < limit {
        let on_first = agents
            .workloads()
            .iter()
            .filter(|w| w.job == JOB && w.node == first)
            .count();
        let listed = trainers(client).await.unwrap_or_default();
        if on_first == COUNT as usize
            && listed.len() == COUNT as usize
            && listed.iter().all(|t| t.node == first)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "{JOB} did not run its {COUNT} trainers on {first} within {limit:?}"
    ))
}

/// A trainer as the coordinators list it at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedTrainer {
    /// Allocation id.
    pub id: String,
    /// The node they say it runs on.
    pub node: String,
    /// Its generation (one up per accepted move).
    pub generation: u64,
}

/// What the run ends with, for the offline-move checker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfflineState {
    /// The job judged.
    pub job: String,
    /// How many trainers it runs.
    pub count: u32,
    /// Per node, the moves still open in its journal (each as the
    /// journal's JSON), or None where the journal could not be read.
    pub journals: BTreeMap<String, Option<Vec<String>>>,
    /// The trainers that run and should, as the coordinators list them
    /// (None: the list could not be read).
    pub trainers: Option<Vec<ListedTrainer>>,
    /// Workload samples taken once every journal closed (or the wait for
    /// that ran out): after reconciliation.
    pub samples: Vec<Sample>,
}

/// The running trainers of [`JOB`] as the coordinators list them.
async fn trainers(client: &HerdClient) -> Option<Vec<ListedTrainer>> {
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.call(|ch| async move {
            AllocsClient::new(ch)
                .list(ListAllocsRequest {
                    job: JOB.into(),
                    stale: false,
                })
                .await
                .map(|r| r.into_inner())
        }),
    )
    .await
    .ok()?
    .ok()?;
    Some(
        reply
            .allocs
            .into_iter()
            .filter(|a| a.status == "running" && a.desired == "run")
            .map(|a| ListedTrainer {
                id: a.id,
                node: a.node,
                generation: a.generation,
            })
            .collect(),
    )
}

/// The moves open in the journal under `data_dir`; none when there is no
/// journal (nothing was ever moved there), None when it cannot be read.
pub fn open_moves(data_dir: &Path) -> Option<Vec<String>> {
    let path = data_dir.join("balance-moves.json");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(Vec::new()),
        Err(_) => return None,
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(
        value["moves"]
            .as_array()?
            .iter()
            .map(|m| m.to_string())
            .collect(),
    )
}

/// Every agent's open moves.
fn journals(agents: &AgentSet) -> BTreeMap<String, Option<Vec<String>>> {
    agents
        .names()
        .into_iter()
        .map(|name| {
            let open = agents
                .agent(&name)
                .ok()
                .and_then(|a| open_moves(&a.data_dir));
            (name, open)
        })
        .collect()
}

/// How long the coordinators and agents may take, once the cluster
/// converged, to settle every offline move (report, decision, the sets
/// agreeing).
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// Waits (up to [`SETTLE_LIMIT`]) until every agent's journal is empty,
/// then records the journals, the trainers as listed and four workload
/// samples 250 ms apart: what [`crate::check::offline_moves`] judges.
pub async fn record_final(client: &HerdClient, agents: &AgentSet, recorder: &Recorder) {
    let started = Instant::now();
    while started.elapsed() < SETTLE_LIMIT
        && !journals(agents)
            .values()
            .all(|open| open.as_ref().is_some_and(Vec::is_empty))
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut samples = Vec::new();
    for _ in 0..4 {
        samples.push(Sample {
            at_ns: recorder.now_ns(),
            settled: true,
            processes: agents
                .workloads()
                .into_iter()
                .map(SeenProcess::from)
                .collect(),
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    recorder.push(Record::Offline(OfflineState {
        job: JOB.to_string(),
        count: COUNT,
        journals: journals(agents),
        trainers: trainers(client).await,
        samples,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_lists_its_open_moves_and_a_missing_one_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(open_moves(dir.path()), Some(Vec::new()));
        std::fs::write(
            dir.path().join("balance-moves.json"),
            r#"{"moves":[{"id":"off-1","phase":"switched"}],"reservations":[]}"#,
        )
        .expect("write");
        let open = open_moves(dir.path()).expect("readable");
        assert_eq!(open.len(), 1);
        assert!(open[0].contains("off-1"), "{open:?}");
        std::fs::write(dir.path().join("balance-moves.json"), "not json").expect("write");
        assert_eq!(open_moves(dir.path()), None);
    }

    #[test]
    fn the_trainers_are_movable_and_named_for_the_scenario() {
        let spec = job_spec();
        assert_eq!(spec.name, JOB);
        assert_eq!(spec.count, COUNT);
        assert!(spec.balance_movable);
    }
}
