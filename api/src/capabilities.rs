//! What each driver of a node allows beyond start and stop.
//!
//! A node agent says, when it registers, which drivers it offers and what
//! each one's workloads allow (how they move, whether they pause); the
//! coordinators keep that per node in the replicated state, so that a
//! migration is refused when its source or target cannot move that kind
//! live, and operators see it in `herd node list`. One type serves the
//! drivers themselves (`herd_actors` re-exports [`DriverCaps`] as
//! `DriverCapabilities`), the wire, the state and the CLI, so the four can
//! never disagree about what a capability means.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::FieldError;

/// Most drivers one node may declare: herd has five; the bound keeps a
/// registration (and the node's record) small whatever an agent sends.
pub const MAX_DRIVERS: usize = 32;
/// Longest driver name accepted from an agent, in bytes.
pub const MAX_DRIVER_NAME: usize = 64;

/// How a running workload of a driver can move to another node.
///
/// The serde names are the stable lower-case names of
/// [`MigrationMode::as_str`]: they are what the state stores (as JSON) and
/// what scripts read in `herd node list -o json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MigrationMode {
    /// It cannot move while running; it is stopped and started elsewhere.
    #[serde(rename = "none")]
    None,
    /// Checkpoint, copy the checkpoint, resume from it (DL training jobs).
    #[serde(rename = "checkpoint")]
    CheckpointRestart,
    /// Memory copied in rounds while it runs, then a short stop (VMs).
    #[serde(rename = "live")]
    LivePreCopy,
    /// Running requests' KV caches copied while they decode (inference instances).
    #[serde(rename = "kv_cache")]
    RequestKvCache,
}

impl MigrationMode {
    /// Every mode, for parsing and for error messages that list them.
    pub const ALL: [MigrationMode; 4] = [
        MigrationMode::None,
        MigrationMode::CheckpointRestart,
        MigrationMode::LivePreCopy,
        MigrationMode::RequestKvCache,
    ];

    /// The stable lower-case name used on the wire, in the state and in
    /// `--output json`; never renamed, since stored records and scripts read it.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationMode::None => "none",
            MigrationMode::CheckpointRestart => "checkpoint",
            MigrationMode::LivePreCopy => "live",
            MigrationMode::RequestKvCache => "kv_cache",
        }
    }

    /// The mode named `name` (as [`MigrationMode::as_str`] writes it); None
    /// for a name this release does not know.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// Whether a running workload can move at all without being restarted:
    /// the question a migration request asks of both of its nodes.
    pub fn can_move(self) -> bool {
        self != MigrationMode::None
    }

    /// The names this release knows, for error messages.
    pub fn known_names() -> String {
        Self::ALL
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What one driver's workloads allow beyond start and stop.
///
/// Stored as JSON inside the coordinators' bincode records, so a field
/// added later must carry `#[serde(default)]` (an older record lacks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverCaps {
    /// How a running workload can move.
    pub migration: MigrationMode,
    /// Whether it can be paused and resumed in place.
    pub pause: bool,
    /// Whether the driver enforces GPU power caps on it.
    pub power_cap: bool,
}

/// A node's drivers by name (the name job specs use in `task.driver`),
/// each with its capabilities. Ordered, so the state stays deterministic.
pub type NodeDrivers = BTreeMap<String, DriverCaps>;

/// Checks what an agent declared: 1 to [`MAX_DRIVERS`] drivers, each named
/// 1 to [`MAX_DRIVER_NAME`] bytes of `a-z`, `0-9`, `-` and `_`.
///
/// Names are not checked against the drivers this release knows: a newer
/// agent may offer a driver an older coordinator has never heard of, and
/// recording it is harmless (no job of this release can ask for it). These
/// rules are also applied inside `apply`, so they may be loosened in a
/// later release but never tightened (an entry once accepted must apply
/// the same on every release).
pub fn check_drivers(drivers: &NodeDrivers) -> Result<(), FieldError> {
    if drivers.is_empty() || drivers.len() > MAX_DRIVERS {
        return Err(FieldError::new(
            "drivers",
            format!(
                "a node declares 1 to {MAX_DRIVERS} drivers, got {}",
                drivers.len()
            ),
        ));
    }
    for name in drivers.keys() {
        check_driver_name(name).map_err(|message| FieldError::new("drivers", message))?;
    }
    Ok(())
}

/// Checks one driver name (see [`check_drivers`]); the message quotes it,
/// cut to [`MAX_DRIVER_NAME`] characters so that an error stays small.
pub fn check_driver_name(name: &str) -> Result<(), String> {
    let shown: String = name.chars().take(MAX_DRIVER_NAME).collect();
    if name.is_empty() || name.len() > MAX_DRIVER_NAME {
        return Err(format!(
            "driver names are 1 to {MAX_DRIVER_NAME} bytes, got {} ({shown:?})",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "driver name {shown:?} may hold only a-z, 0-9, '-' and '_'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(migration: MigrationMode) -> DriverCaps {
        DriverCaps {
            migration,
            pause: false,
            power_cap: false,
        }
    }

    #[test]
    fn mode_names_are_stable_lower_case_and_parse_back() {
        let names: Vec<_> = MigrationMode::ALL.iter().map(|m| m.as_str()).collect();
        assert_eq!(names, ["none", "checkpoint", "live", "kv_cache"]);
        for mode in MigrationMode::ALL {
            assert_eq!(MigrationMode::parse(mode.as_str()), Some(mode));
            // The serde name is the same one, so the stored JSON reads as scripts do.
            assert_eq!(
                serde_json::to_value(mode).expect("json"),
                serde_json::json!(mode.as_str())
            );
        }
        assert_eq!(MigrationMode::parse("Live"), None);
        assert_eq!(MigrationMode::parse("teleport"), None);
        assert!(!MigrationMode::None.can_move());
        assert!(MigrationMode::LivePreCopy.can_move());
    }

    #[test]
    fn caps_read_json_with_fields_they_do_not_know() {
        // What a newer release may write: an extra field is ignored.
        let newer = r#"{"migration":"live","pause":true,"power_cap":false,"later":1}"#;
        let read: DriverCaps = serde_json::from_str(newer).expect("reads");
        assert_eq!(
            read,
            DriverCaps {
                migration: MigrationMode::LivePreCopy,
                pause: true,
                power_cap: false
            }
        );
    }

    #[test]
    fn declarations_are_bounded_and_names_checked() {
        let one: NodeDrivers = [("exec".to_string(), caps(MigrationMode::None))].into();
        assert!(check_drivers(&one).is_ok());

        let e = check_drivers(&NodeDrivers::new()).expect_err("empty");
        assert_eq!(e.field, "drivers");
        let many: NodeDrivers = (0..=MAX_DRIVERS)
            .map(|i| (format!("d{i}"), caps(MigrationMode::None)))
            .collect();
        let e = check_drivers(&many).expect_err("too many");
        assert!(e.message.contains("1 to 32 drivers, got 33"), "{e}");

        let long: NodeDrivers =
            [("x".repeat(MAX_DRIVER_NAME + 1), caps(MigrationMode::None))].into();
        assert!(check_drivers(&long)
            .expect_err("long")
            .message
            .contains("1 to 64 bytes, got 65"));
        let odd: NodeDrivers = [("Exec/1".to_string(), caps(MigrationMode::None))].into();
        assert!(check_drivers(&odd)
            .expect_err("odd")
            .message
            .contains("\"Exec/1\""));
        // A driver this release does not know is accepted (a newer agent).
        let newer: NodeDrivers =
            [("firecracker".to_string(), caps(MigrationMode::LivePreCopy))].into();
        assert!(check_drivers(&newer).is_ok());
    }
}
