//! TEMPORARY stand-in until the spec work lands.
use serde::{Deserialize, Serialize};
/// Resources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources { pub cpu_millis: u64, pub memory_bytes: u64, pub gpus: u32, pub gpu_model: Option<String> }
