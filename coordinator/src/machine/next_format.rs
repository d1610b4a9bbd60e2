//! The next command format, read by this release and written on request:
//! how a rolling upgrade changes what goes into the Raft log.
//!
//! During a rolling upgrade members of two releases share one log, and an
//! entry the newer release writes must apply identically on the older one
//! (or the two diverge: `apply` would reject on one what it applies on the
//! other). bincode cannot read a variant it does not know, so a new format
//! ships in two steps: one release learns to *read* it, and a later one
//! *writes* it, once every release it may be mixed with reads it.
//!
//! [`Command::PutVariableJson`] is such a format: a variable write with its
//! fields as JSON inside the bincode command (as migrations and GPU plans
//! already are), so fields can be added later without a new variant. This
//! release reads it and writes the older [`Command::PutVariable`], unless
//! `HERD_TEST_COMMAND_FORMAT=next` is set: then it writes the new one, as
//! the next release will. The rolling-upgrade test
//! (`cli/tests/rolling_upgrade.rs`) starts its "newer binary" that way and
//! replaces the members one at a time while clients write through all of
//! them, so entries of the new format are applied by members that do not
//! write it.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::machine::command::Command;

/// The environment variable that makes this member write the next format.
pub const FORMAT_ENV: &str = "HERD_TEST_COMMAND_FORMAT";

/// A variable write, as [`Command::PutVariableJson`] carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariablePut {
    /// Variable key.
    pub key: String,
    /// New value.
    pub value: Vec<u8>,
    /// Only write if the current version is this (0: only if absent).
    #[serde(default)]
    pub expected_version: Option<u64>,
}

impl VariablePut {
    /// The same write in the older shape, which `apply` applies.
    pub fn into_command(self) -> Command {
        Command::PutVariable {
            key: self.key,
            value: self.value,
            expected_version: self.expected_version,
        }
    }
}

/// Whether this member writes the next format (read once).
pub fn writes_next_format() -> bool {
    static NEXT: OnceLock<bool> = OnceLock::new();
    *NEXT.get_or_init(|| {
        let next = std::env::var(FORMAT_ENV).is_ok_and(|v| v == "next");
        if next {
            tracing::info!(
                "{FORMAT_ENV}=next: this member writes variables in the next command format"
            );
        }
        next
    })
}

/// The command for a variable write, in the format this member writes.
pub fn put_variable(key: String, value: Vec<u8>, expected_version: Option<u64>) -> Command {
    if writes_next_format() {
        Command::PutVariableJson {
            put: VariablePut {
                key,
                value,
                expected_version,
            },
        }
    } else {
        Command::PutVariable {
            key,
            value,
            expected_version,
        }
    }
}

#[cfg(test)]
mod tests {
    use herd_consensus::state_machine::EntryPosition;

    use super::*;
    use crate::machine::apply::apply_entry;
    use crate::state::{ChangeLog, ClusterState};

    /// Applies `commands` (through the log's encoding) to a fresh state.
    fn run(commands: Vec<Command>) -> (ClusterState, Vec<String>) {
        let mut state = ClusterState::default();
        let mut results = Vec::new();
        for (i, command) in commands.into_iter().enumerate() {
            let bytes = herd_consensus::codec::encode(&command).expect("encode");
            let decoded = crate::machine::legacy::decode_command(&bytes).expect("decode");
            let mut ops = Vec::new();
            let at = EntryPosition {
                index: i as u64 + 1,
                term: 1,
            };
            let result = apply_entry(&mut state, at, decoded, &mut ChangeLog::new(&mut ops));
            results.push(format!("{result:?}"));
        }
        (state, results)
    }

    #[test]
    fn both_formats_apply_the_same() {
        let puts = [
            ("a", "1", None),
            ("a", "2", Some(1)),
            ("a", "3", Some(1)), // a failed compare-and-set
            ("b", "x", Some(0)),
            ("", "bad key", None),
        ];
        let old = puts
            .iter()
            .map(|(k, v, e)| Command::PutVariable {
                key: k.to_string(),
                value: v.as_bytes().to_vec(),
                expected_version: *e,
            })
            .collect();
        let next = puts
            .iter()
            .map(|(k, v, e)| Command::PutVariableJson {
                put: VariablePut {
                    key: k.to_string(),
                    value: v.as_bytes().to_vec(),
                    expected_version: *e,
                },
            })
            .collect();
        let (old_state, old_results) = run(old);
        let (next_state, next_results) = run(next);
        assert_eq!(old_results, next_results);
        assert_eq!(old_state.digest(), next_state.digest());
        assert_eq!(next_state.variables["a"].value, b"2");
    }
}
