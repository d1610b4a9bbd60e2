//! TEMPORARY stand-in until the spec work lands.
use std::collections::BTreeMap;
use serde::{Deserialize, Serialize};
use crate::resources::Resources;
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec { pub name: String, pub job_type: JobType, pub count: u32, pub priority: u32, pub task: TaskSpec }
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobType { Batch, Service }
impl JobType { pub fn as_str(self) -> &'static str { match self { JobType::Batch => "batch", JobType::Service => "service" } }
 pub fn parse(s: &str) -> Option<Self> { match s { "batch" => Some(Self::Batch), "service" => Some(Self::Service), _ => None } } }
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec { pub driver: String, pub command: Option<String>, pub args: Vec<String>, pub env: BTreeMap<String, String>, pub workdir: Option<String>, pub resources: Resources }
