//! What happens to the node agents while every coordinator is away
//! ([`super::Fault::CoordinatorsAway`]): a seeded plan of agent kills
//! (`kill -9` of the agent alone, its workloads running on) and restarts
//! inside the window, so that agents restart with no coordinator to ask
//! and must find the fleet, and their journals, by themselves.
//!
//! The plan: 1.5 s in, kill an agent that runs none of the movable
//! trainers (a would-be recipient), restart it 3 s later; 16 s in (by then
//! the agents have been moving work agent to agent for a few seconds: they
//! do so once the coordinators have been silent for 10 s), kill any agent,
//! restart it 3 s later. A window shorter than a step's time leaves it to
//! the heal, which restarts every agent still down.

use std::fmt;
use std::time::Duration;

use crate::agents::AgentSet;
use crate::process_cluster::ClusterError;

use super::rng::Rng;

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// When, from the start of the window.
    pub at: Duration,
    /// The agent acted on.
    pub agent: String,
    /// Kill (true) or restart (false).
    pub kill: bool,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.kill {
            "kill -9 agent"
        } else {
            "restart agent"
        };
        write!(
            f,
            "{verb} {} at +{:.1} s",
            self.agent,
            self.at.as_secs_f64()
        )
    }
}

/// The agent kills and restarts of one window, and how far they got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Churn {
    steps: Vec<Step>,
    done: usize,
}

/// How long a killed agent stays down.
const DOWN: Duration = Duration::from_secs(3);

impl Churn {
    /// Draws the plan for `agents` (see the module's doc).
    pub fn plan(agents: &AgentSet, rng: &mut Rng) -> Self {
        let names = agents.names();
        let busy: Vec<String> = agents
            .workloads()
            .into_iter()
            .filter(|w| w.job == crate::away::JOB)
            .map(|w| w.node)
            .collect();
        let idle: Vec<String> = names
            .iter()
            .filter(|n| !busy.contains(n))
            .cloned()
            .collect();
        let first = rng
            .pick(if idle.is_empty() { &names } else { &idle })
            .cloned();
        let second = rng.pick(&names).cloned();
        let mut steps = Vec::new();
        for (at, agent) in [(1500, first), (16_000, second)] {
            let Some(agent) = agent else { continue };
            let at = Duration::from_millis(at);
            steps.push(Step {
                at,
                agent: agent.clone(),
                kill: true,
            });
            steps.push(Step {
                at: at + DOWN,
                agent,
                kill: false,
            });
        }
        Self { steps, done: 0 }
    }

    /// Carries out the steps due `elapsed` into the window; returns them.
    pub fn due(
        &mut self,
        elapsed: Duration,
        agents: &mut AgentSet,
    ) -> Result<Vec<Step>, ClusterError> {
        let mut taken = Vec::new();
        while let Some(step) = self.steps.get(self.done).filter(|s| s.at <= elapsed) {
            let step = step.clone();
            self.done += 1;
            if step.kill {
                agents.kill_agent(&step.agent)?;
            } else {
                agents.restart(&step.agent)?;
            }
            taken.push(step);
        }
        Ok(taken)
    }

    /// At the heal: restarts every agent the plan killed and has not
    /// restarted yet (restarting one that runs is a no-op).
    pub fn finish(&mut self, agents: &mut AgentSet) -> Result<(), ClusterError> {
        let pending: Vec<Step> = self.steps[self.done.min(self.steps.len())..].to_vec();
        self.done = self.steps.len();
        for step in pending.iter().filter(|s| !s.kill) {
            agents.restart(&step.agent)?;
        }
        Ok(())
    }

    /// The planned steps.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }
}

impl fmt::Display for Churn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps: Vec<String> = self.steps.iter().map(Step::to_string).collect();
        write!(f, "{}", steps.join(", "))
    }
}
