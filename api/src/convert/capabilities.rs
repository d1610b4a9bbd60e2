//! A node's driver capabilities between the wire and [`NodeDrivers`].
//!
//! The agent's registration carries them as a list (field names can be
//! quoted with their position); the state keeps them as a map by driver
//! name. What comes off the wire is untrusted: the list is bounded before
//! anything is read, each name is checked, a name given twice is refused,
//! and an unknown migration mode is refused naming the field and listing
//! the modes this release knows.

use crate::capabilities::{check_driver_name, DriverCaps, MigrationMode, NodeDrivers, MAX_DRIVERS};
use crate::proto::v1 as proto;
use crate::validate::FieldError;

/// Reads the drivers an agent declared. An empty list (an agent older than
/// the field) gives an empty map: the node's capabilities are unknown.
pub fn drivers_from_proto(list: Vec<proto::DriverCapabilities>) -> Result<NodeDrivers, FieldError> {
    if list.len() > MAX_DRIVERS {
        return Err(FieldError::new(
            "drivers",
            format!(
                "a node declares at most {MAX_DRIVERS} drivers, got {}",
                list.len()
            ),
        ));
    }
    let mut drivers = NodeDrivers::new();
    for (i, entry) in list.into_iter().enumerate() {
        check_driver_name(&entry.driver)
            .map_err(|message| FieldError::new(format!("drivers[{i}].driver"), message))?;
        let migration = MigrationMode::parse(&entry.migration).ok_or_else(|| {
            FieldError::new(
                format!("drivers[{i}].migration"),
                format!(
                    "unknown migration mode {:?} for driver {:?}; this coordinator knows {}",
                    entry.migration.chars().take(64).collect::<String>(),
                    entry.driver,
                    MigrationMode::known_names()
                ),
            )
        })?;
        let caps = DriverCaps {
            migration,
            pause: entry.pause,
            power_cap: entry.power_cap,
        };
        if drivers.insert(entry.driver.clone(), caps).is_some() {
            return Err(FieldError::new(
                format!("drivers[{i}].driver"),
                format!("driver {:?} is declared twice", entry.driver),
            ));
        }
    }
    Ok(drivers)
}

/// The wire form of a node's drivers, in name order.
pub fn drivers_to_proto(drivers: &NodeDrivers) -> Vec<proto::DriverCapabilities> {
    drivers
        .iter()
        .map(|(name, caps)| proto::DriverCapabilities {
            driver: name.clone(),
            migration: caps.migration.as_str().to_string(),
            pause: caps.pause,
            power_cap: caps.power_cap,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(driver: &str, migration: &str) -> proto::DriverCapabilities {
        proto::DriverCapabilities {
            driver: driver.into(),
            migration: migration.into(),
            pause: true,
            power_cap: false,
        }
    }

    #[test]
    fn drivers_round_trip_through_the_wire() {
        let list = vec![entry("vm", "live"), entry("exec", "none")];
        let drivers = drivers_from_proto(list).expect("reads");
        assert_eq!(drivers["vm"].migration, MigrationMode::LivePreCopy);
        assert!(drivers["vm"].pause);
        let back = drivers_to_proto(&drivers);
        assert_eq!(back, vec![entry("exec", "none"), entry("vm", "live")]);
        assert_eq!(drivers_from_proto(back).expect("reads"), drivers);
        // An older agent says nothing: unknown, not an error.
        assert!(drivers_from_proto(vec![]).expect("reads").is_empty());
    }

    #[test]
    fn bad_declarations_are_refused_naming_the_field() {
        let e = drivers_from_proto(vec![entry("exec", "none"), entry("vm", "teleport")])
            .expect_err("unknown mode");
        assert_eq!(e.field, "drivers[1].migration");
        assert!(e.message.contains("\"teleport\""), "{e}");
        assert!(
            e.message.contains("none, checkpoint, live, kv_cache"),
            "{e}"
        );

        let many = (0..=MAX_DRIVERS)
            .map(|i| entry(&format!("d{i}"), "none"))
            .collect();
        let e = drivers_from_proto(many).expect_err("too many");
        assert_eq!(e.field, "drivers");
        assert!(e.message.contains("at most 32 drivers, got 33"), "{e}");

        let e = drivers_from_proto(vec![entry("exec", "none"), entry("exec", "live")])
            .expect_err("twice");
        assert_eq!(e.field, "drivers[1].driver");
        assert!(e.message.contains("declared twice"), "{e}");

        let e = drivers_from_proto(vec![entry("", "none")]).expect_err("nameless");
        assert_eq!(e.field, "drivers[0].driver");
        let e = drivers_from_proto(vec![entry(&"v".repeat(65), "none")]).expect_err("long");
        assert!(e.message.contains("got 65"), "{e}");
    }
}
