//! Any value inside a bincode command or record, as JSON text.
//!
//! The Raft log is bincode, which is not self-describing: a struct that
//! gains a field cannot read the entries written before it. A value that is
//! expected to grow (a node's driver capabilities) travels as one JSON
//! string instead, so a field added later with `#[serde(default)]` still
//! reads old entries, as [`crate::machine::spec_codec`] does for job specs.
//! Use as `#[serde(with = "crate::machine::json_codec")]`.

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Writes `value` as a JSON string.
pub fn serialize<T: Serialize, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    let text = serde_json::to_string(value).map_err(S::Error::custom)?;
    serializer.serialize_str(&text)
}

/// Reads a value written by [`serialize`].
pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    let text = String::deserialize(deserializer)?;
    serde_json::from_str(&text).map_err(|e| D::Error::custom(format!("json value: {e}")))
}

#[cfg(test)]
mod tests {
    use crate::machine::command::Command;
    use herd_api::capabilities::{DriverCaps, MigrationMode};

    #[test]
    fn a_set_node_drivers_entry_round_trips_through_the_log_codec() {
        let caps = DriverCaps {
            migration: MigrationMode::CheckpointRestart,
            pause: false,
            power_cap: true,
        };
        for drivers in [None, Some([("dljob".to_string(), caps)].into())] {
            let command = Command::SetNodeDrivers {
                node: "n1".into(),
                drivers,
            };
            let bytes = herd_consensus::codec::encode(&command).expect("encode");
            let back: Command = herd_consensus::codec::decode(&bytes, "entry").expect("decode");
            assert_eq!(back, command);
        }
    }
}
