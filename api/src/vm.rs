//! The settings of a `vm` task (`[task.config]`), checked at submit time and
//! read again by the node's VM driver.
//!
//! Memory comes from `task.resources.memory` and vCPUs from
//! `task.resources.cpu` (rounded up to whole CPUs), so the scheduler's view
//! and the VM's size never disagree.

use std::collections::BTreeMap;

use crate::resources::{parse_memory, Resources, MIB};
use crate::validate::FieldError;

/// Keys a `vm` task may set.
pub const VM_KEYS: &[&str] = &[
    "kernel",
    "initrd",
    "append",
    "disk",
    "disk_size",
    "accel",
    "numa",
];

/// How QEMU executes the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when `/dev/kvm` can be opened, else TCG.
    Auto,
    /// KVM only (fails to start without it).
    Kvm,
    /// TCG software emulation (slow, works everywhere; also where nested KVM misbehaves).
    Tcg,
}

/// Where the VM's memory sits on the host, for the rescheduler: on one
/// NUMA node, or split evenly across two. QEMU gets the same topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumaPlacement {
    /// All memory and vCPUs on this host NUMA node.
    One(u32),
    /// Half on each of two host NUMA nodes.
    Split(u32, u32),
}

/// A validated `vm` task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSettings {
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// Guest vCPUs.
    pub vcpus: u32,
    /// Kernel to boot directly (with `initrd` and `append`).
    pub kernel: Option<String>,
    /// Initial ramdisk for `kernel`.
    pub initrd: Option<String>,
    /// Kernel command line.
    pub append: Option<String>,
    /// Disk image to attach (qcow2 or raw; must exist on the node).
    pub disk: Option<String>,
    /// Size of a fresh qcow2 disk created in the allocation directory, bytes.
    pub disk_size: Option<u64>,
    /// How the guest is executed.
    pub accel: Accel,
    /// NUMA placement, when given.
    pub numa: Option<NumaPlacement>,
}

fn field(key: &str) -> String {
    format!("task.config.{key}")
}

fn absolute(config: &BTreeMap<String, String>, key: &str) -> Result<Option<String>, FieldError> {
    match config.get(key) {
        None => Ok(None),
        Some(path) if path.starts_with('/') => Ok(Some(path.clone())),
        Some(path) => Err(FieldError::new(
            field(key),
            format!("must be an absolute path on the node, got {path:?}"),
        )),
    }
}

impl VmSettings {
    /// Reads and checks a `vm` task's settings and resources.
    pub fn parse(
        config: &BTreeMap<String, String>,
        resources: &Resources,
    ) -> Result<Self, FieldError> {
        if let Some(unknown) = config.keys().find(|k| !VM_KEYS.contains(&k.as_str())) {
            return Err(FieldError::new(
                field(unknown),
                format!("unknown VM setting; known: {}", VM_KEYS.join(", ")),
            ));
        }
        let memory_mib = resources.memory_bytes / MIB;
        if memory_mib < 32 || !resources.memory_bytes.is_multiple_of(MIB) {
            return Err(FieldError::new(
                "task.resources.memory",
                "a VM needs at least 32MiB, in whole MiB",
            ));
        }
        let vcpus = u32::try_from(resources.cpu_millis.div_ceil(1000).max(1))
            .ok()
            .filter(|v| *v <= 256)
            .ok_or_else(|| FieldError::new("task.resources.cpu", "a VM has at most 256 vCPUs"))?;
        let kernel = absolute(config, "kernel")?;
        let initrd = absolute(config, "initrd")?;
        let disk = absolute(config, "disk")?;
        if initrd.is_some() && kernel.is_none() {
            return Err(FieldError::new(
                field("initrd"),
                "needs a kernel to go with it",
            ));
        }
        if config.contains_key("append") && kernel.is_none() {
            return Err(FieldError::new(
                field("append"),
                "needs a kernel to go with it",
            ));
        }
        let disk_size = match config.get("disk_size") {
            None => None,
            Some(_) if disk.is_some() => {
                return Err(FieldError::new(
                    field("disk_size"),
                    "creates a fresh disk; give either disk or disk_size",
                ))
            }
            Some(text) => {
                Some(parse_memory(text).map_err(|e| FieldError::new(field("disk_size"), e))?)
            }
        };
        if kernel.is_none() && disk.is_none() {
            return Err(FieldError::new(
                "task.config",
                "a VM boots a kernel (kernel = \"/path\") or a disk image (disk = \"/path\")",
            ));
        }
        let accel = match config.get("accel").map(String::as_str) {
            None | Some("auto") => Accel::Auto,
            Some("kvm") => Accel::Kvm,
            Some("tcg") => Accel::Tcg,
            Some(other) => {
                return Err(FieldError::new(
                    field("accel"),
                    format!("must be \"auto\", \"kvm\" or \"tcg\", got {other:?}"),
                ))
            }
        };
        let numa = match config.get("numa") {
            None => None,
            Some(text) => Some(parse_numa(text).map_err(|m| FieldError::new(field("numa"), m))?),
        };
        if matches!(numa, Some(NumaPlacement::Split(..))) && (vcpus < 2 || memory_mib < 64) {
            return Err(FieldError::new(
                field("numa"),
                "a split VM needs at least 2 vCPUs and 64MiB",
            ));
        }
        Ok(VmSettings {
            memory_mib,
            vcpus,
            kernel,
            initrd,
            append: config.get("append").cloned(),
            disk,
            disk_size,
            accel,
            numa,
        })
    }
}

fn parse_numa(text: &str) -> Result<NumaPlacement, String> {
    let node = |s: &str| {
        s.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n < 64)
            .ok_or_else(|| format!("{s:?} is not a NUMA node number (0..63)"))
    };
    match text.split_once(',') {
        None => Ok(NumaPlacement::One(node(text)?)),
        Some((a, b)) => {
            let (a, b) = (node(a)?, node(b)?);
            if a == b {
                return Err(format!(
                    "a split VM needs two different nodes, got {a} twice"
                ));
            }
            Ok(NumaPlacement::Split(a, b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(cpu: u64, mib: u64) -> Resources {
        Resources {
            cpu_millis: cpu,
            memory_bytes: mib * MIB,
            gpus: 0,
            gpu_model: None,
        }
    }

    fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_kernel_vm_takes_its_size_from_the_resources() {
        let vm = VmSettings::parse(
            &config(&[
                ("kernel", "/k"),
                ("initrd", "/i"),
                ("accel", "tcg"),
                ("numa", "0,1"),
            ]),
            &resources(1500, 256),
        )
        .expect("valid");
        assert_eq!((vm.vcpus, vm.memory_mib), (2, 256));
        assert_eq!(vm.accel, Accel::Tcg);
        assert_eq!(vm.numa, Some(NumaPlacement::Split(0, 1)));
    }

    #[test]
    fn bad_settings_name_their_field() {
        for (pairs, res, field) in [
            (
                vec![("kernel", "/k"), ("colour", "red")],
                resources(1000, 128),
                "task.config.colour",
            ),
            (
                vec![("kernel", "k")],
                resources(1000, 128),
                "task.config.kernel",
            ),
            (
                vec![("initrd", "/i"), ("disk", "/d")],
                resources(1000, 128),
                "task.config.initrd",
            ),
            (vec![], resources(1000, 128), "task.config"),
            (
                vec![("disk", "/d"), ("disk_size", "1GiB")],
                resources(1000, 128),
                "task.config.disk_size",
            ),
            (
                vec![("disk_size", "lots")],
                resources(1000, 128),
                "task.config.disk_size",
            ),
            (
                vec![("kernel", "/k"), ("accel", "hvf")],
                resources(1000, 128),
                "task.config.accel",
            ),
            (
                vec![("kernel", "/k"), ("numa", "1,1")],
                resources(2000, 128),
                "task.config.numa",
            ),
            (
                vec![("kernel", "/k"), ("numa", "0,1")],
                resources(1000, 128),
                "task.config.numa",
            ),
            (
                vec![("kernel", "/k")],
                resources(1000, 16),
                "task.resources.memory",
            ),
        ] {
            let err = VmSettings::parse(&config(&pairs), &res).expect_err(field);
            assert_eq!(err.field, field, "{pairs:?}: {err}");
        }
    }
}

/// Keys a `simvm` task may set.
pub const SIM_VM_KEYS: &[&str] = &["dirty_rate", "seed"];

/// A validated `simvm` task: a SIMULATED VM whose memory (the task's
/// `memory`) is a real buffer written at `dirty_rate` bytes per second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimVmSettings {
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Bytes written per second.
    pub dirty_bytes_per_sec: u64,
    /// Seed of the write pattern.
    pub seed: u64,
}

impl SimVmSettings {
    /// Reads and checks a `simvm` task's settings and resources.
    pub fn parse(
        config: &BTreeMap<String, String>,
        resources: &Resources,
    ) -> Result<Self, FieldError> {
        if let Some(unknown) = config.keys().find(|k| !SIM_VM_KEYS.contains(&k.as_str())) {
            return Err(FieldError::new(
                field(unknown),
                format!(
                    "unknown simulated-VM setting; known: {}",
                    SIM_VM_KEYS.join(", ")
                ),
            ));
        }
        let memory_mib = resources.memory_bytes / MIB;
        if memory_mib == 0 {
            return Err(FieldError::new(
                "task.resources.memory",
                "a simulated VM needs at least 1MiB",
            ));
        }
        let dirty_bytes_per_sec = match config.get("dirty_rate") {
            None => 0,
            Some(text) => parse_memory(text).map_err(|e| {
                FieldError::new(field("dirty_rate"), format!("{e} (bytes per second)"))
            })?,
        };
        let seed = match config.get("seed") {
            None => 1,
            Some(text) => text.parse().map_err(|_| {
                FieldError::new(field("seed"), format!("{text:?} is not a whole number"))
            })?,
        };
        Ok(SimVmSettings {
            memory_mib,
            dirty_bytes_per_sec,
            seed,
        })
    }
}

#[cfg(test)]
mod sim_tests {
    use super::*;

    #[test]
    fn simulated_vm_settings_parse_and_name_bad_fields() {
        let resources = Resources {
            cpu_millis: 100,
            memory_bytes: 64 * MIB,
            gpus: 0,
            gpu_model: None,
        };
        let config: BTreeMap<String, String> = [("dirty_rate", "8MiB"), ("seed", "9")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let sim = SimVmSettings::parse(&config, &resources).expect("valid");
        assert_eq!(
            (sim.memory_mib, sim.dirty_bytes_per_sec, sim.seed),
            (64, 8 * MIB, 9)
        );
        for (key, value, field) in [
            ("dirty_rate", "fast", "task.config.dirty_rate"),
            ("seed", "-1", "task.config.seed"),
            ("kernel", "/k", "task.config.kernel"),
        ] {
            let config = BTreeMap::from([(key.to_string(), value.to_string())]);
            let err = SimVmSettings::parse(&config, &resources).expect_err(field);
            assert_eq!(err.field, field);
        }
    }
}
