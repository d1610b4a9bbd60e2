//! Import and export of the VMR2L instance format (the JSON files of the
//! VMR2L paper's environment: `cluster_list[].host_info/vm_instance`).
//!
//! Exists so herd's solvers can be measured on the paper's own instances and
//! so synthetic instances are written in the same shape. All active PMs of
//! all clusters form one pool, as in the upstream environment.
//!
//! The format has no fixed shape for `deployment_set` (both sample files
//! leave it empty); herd reads each entry as
//! `{"name": "...", "instance_ids": ["vm_1", ...]}` and writes it that way.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::model::{Group, Instance, NumaCap, NumaSet, Placement, Pm, Shape, Vm, MAX_NUMA};
use crate::objective::free_per_node;

/// Why an instance could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be opened or read.
    #[error("{source_name}: {error}")]
    Io {
        /// The file.
        source_name: String,
        /// What failed.
        error: std::io::Error,
    },
    /// The text is not JSON of the expected structure (the message names the
    /// field and line:column).
    #[error("{source_name}: {error}")]
    Json {
        /// The file.
        source_name: String,
        /// serde_json's error, with line and column.
        error: serde_json::Error,
    },
    /// The JSON is well formed but says something impossible.
    #[error("{source_name}: {what}")]
    Invalid {
        /// The file.
        source_name: String,
        /// What is wrong and where (cluster, PM, VM, field).
        what: String,
    },
}

#[derive(Deserialize)]
struct RawFile {
    cluster_list: Vec<RawCluster>,
    #[serde(default)]
    vm_type_list: Vec<RawVmType>,
}

#[derive(Deserialize)]
struct RawCluster {
    #[serde(default)]
    cluster_name: String,
    host_info: Vec<RawHost>,
    vm_instance: Vec<RawVm>,
    #[serde(default)]
    other_requirement: Option<RawOther>,
}

#[derive(Deserialize)]
struct RawHost {
    node_id: String,
    status: String,
    numa: Vec<RawHostNuma>,
}

#[derive(Deserialize)]
struct RawHostNuma {
    node: usize,
    total_cpu: f64,
    memory_huge_total_mb: f64,
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
struct RawVm {
    instance_id: String,
    host_id: String,
    #[serde(default = "default_true")]
    allow_migration: bool,
    numa: Vec<RawVmNuma>,
}

#[derive(Deserialize)]
struct RawVmNuma {
    node: usize,
    cpu: f64,
    mem_mb: f64,
}

#[derive(Deserialize, Default)]
struct RawOther {
    #[serde(default)]
    deployment_set: Vec<RawGroup>,
}

#[derive(Deserialize)]
struct RawGroup {
    #[serde(default)]
    name: String,
    #[serde(alias = "vms")]
    instance_ids: Vec<String>,
}

#[derive(Deserialize)]
struct RawVmType {
    request_cpu: f64,
    #[serde(default)]
    request_mem_mb: f64,
    #[serde(default)]
    numa: u8,
    #[serde(default)]
    weight: f64,
}

/// Reads an instance file.
pub fn import_file(path: &Path) -> Result<Instance, ImportError> {
    let source_name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|error| ImportError::Io {
        source_name: source_name.clone(),
        error,
    })?;
    import_reader(BufReader::new(file), &source_name)
}

/// Reads an instance from `reader` (a streaming parse: the text is never
/// held whole); `source_name` names it in errors.
pub fn import_reader<R: Read>(reader: R, source_name: &str) -> Result<Instance, ImportError> {
    let raw: RawFile = serde_json::from_reader(reader).map_err(|error| ImportError::Json {
        source_name: source_name.to_string(),
        error,
    })?;
    from_raw(raw).map_err(|what| ImportError::Invalid {
        source_name: source_name.to_string(),
        what,
    })
}

/// A whole, non-negative number from a JSON number, or a message.
fn whole(v: f64, what: impl Fn() -> String) -> Result<u64, String> {
    if !v.is_finite() || !(0.0..=9.0e15).contains(&v) {
        return Err(format!("{} is {v} (must be a number >= 0)", what()));
    }
    Ok(v.round() as u64)
}

fn from_raw(raw: RawFile) -> Result<Instance, String> {
    let mut pms = Vec::new();
    let mut pm_index: HashMap<String, usize> = HashMap::new();
    for (ci, cluster) in raw.cluster_list.iter().enumerate() {
        let cname = if cluster.cluster_name.is_empty() {
            format!("#{ci}")
        } else {
            cluster.cluster_name.clone()
        };
        for host in &cluster.host_info {
            let at = || format!("cluster {cname}, PM {}", host.node_id);
            if host.numa.is_empty() || host.numa.len() > MAX_NUMA {
                return Err(format!(
                    "{}: numa has {} entries (1 to {MAX_NUMA})",
                    at(),
                    host.numa.len()
                ));
            }
            let mut numa = vec![None; host.numa.len()];
            for n in &host.numa {
                let slot = numa.get_mut(n.node).ok_or_else(|| {
                    format!(
                        "{}: numa node {} out of range (it has {} entries)",
                        at(),
                        n.node,
                        host.numa.len()
                    )
                })?;
                if slot.is_some() {
                    return Err(format!("{}: numa node {} listed twice", at(), n.node));
                }
                let cpu = whole(n.total_cpu, || {
                    format!("{}: numa[{}].total_cpu", at(), n.node)
                })?;
                let mem = whole(n.memory_huge_total_mb, || {
                    format!("{}: numa[{}].memory_huge_total_mb", at(), n.node)
                })?;
                *slot = Some(NumaCap {
                    cpu: u32::try_from(cpu)
                        .map_err(|_| format!("{}: numa[{}].total_cpu too large", at(), n.node))?,
                    mem_mb: mem,
                });
            }
            let numa: Vec<NumaCap> = numa.into_iter().flatten().collect();
            if pm_index.insert(host.node_id.clone(), pms.len()).is_some() {
                return Err(format!("{}: node_id appears twice", at()));
            }
            pms.push(Pm {
                id: host.node_id.clone(),
                active: host.status == "ACTIVE",
                numa,
            });
        }
    }
    let mut vms = Vec::new();
    let mut vm_index: HashMap<String, usize> = HashMap::new();
    for (ci, cluster) in raw.cluster_list.iter().enumerate() {
        let cname = if cluster.cluster_name.is_empty() {
            format!("#{ci}")
        } else {
            cluster.cluster_name.clone()
        };
        for raw_vm in &cluster.vm_instance {
            let at = || format!("cluster {cname}, VM {}", raw_vm.instance_id);
            let &pm = pm_index.get(&raw_vm.host_id).ok_or_else(|| {
                format!(
                    "{}: host_id {} names no PM in host_info",
                    at(),
                    raw_vm.host_id
                )
            })?;
            if raw_vm.numa.is_empty() || raw_vm.numa.len() > 2 {
                return Err(format!(
                    "{}: numa has {} entries (1 or 2)",
                    at(),
                    raw_vm.numa.len()
                ));
            }
            let first = &raw_vm.numa[0];
            let cpu = whole(first.cpu, || format!("{}: numa[0].cpu", at()))?;
            let mem = whole(first.mem_mb, || format!("{}: numa[0].mem_mb", at()))?;
            for (i, n) in raw_vm.numa.iter().enumerate() {
                if n.node >= pms[pm].numa.len() {
                    return Err(format!(
                        "{}: numa[{i}].node is {} but PM {} has {} NUMA nodes",
                        at(),
                        n.node,
                        raw_vm.host_id,
                        pms[pm].numa.len()
                    ));
                }
                if whole(n.cpu, || format!("{}: numa[{i}].cpu", at()))? != cpu
                    || whole(n.mem_mb, || format!("{}: numa[{i}].mem_mb", at()))? != mem
                {
                    return Err(format!(
                        "{}: the two numa entries differ in cpu or mem_mb (must be halves)",
                        at()
                    ));
                }
            }
            let nodes: Vec<usize> = raw_vm.numa.iter().map(|n| n.node).collect();
            let numa = NumaSet::of(&nodes);
            if numa.len() != nodes.len() {
                return Err(format!("{}: numa lists node {} twice", at(), nodes[0]));
            }
            if vm_index
                .insert(raw_vm.instance_id.clone(), vms.len())
                .is_some()
            {
                return Err(format!("{}: instance_id appears twice", at()));
            }
            vms.push(Vm {
                id: raw_vm.instance_id.clone(),
                numa_cpu: u32::try_from(cpu).map_err(|_| format!("{}: cpu too large", at()))?,
                numa_mem_mb: mem,
                span: nodes.len() as u8,
                movable: raw_vm.allow_migration,
                placement: Placement { pm, numa },
                groups: Vec::new(),
            });
        }
    }
    let mut groups = Vec::new();
    for (ci, cluster) in raw.cluster_list.iter().enumerate() {
        let Some(other) = &cluster.other_requirement else {
            continue;
        };
        for (gi, g) in other.deployment_set.iter().enumerate() {
            let name = if g.name.is_empty() {
                format!("cluster{ci}-set{gi}")
            } else {
                g.name.clone()
            };
            let gid = groups.len();
            let mut members = Vec::new();
            for id in &g.instance_ids {
                let &v = vm_index.get(id).ok_or_else(|| {
                    format!("deployment_set {name}: instance_id {id} names no VM")
                })?;
                if !vms[v].groups.contains(&gid) {
                    vms[v].groups.push(gid);
                    members.push(v);
                }
            }
            groups.push(Group { name, vms: members });
        }
    }
    let mut target = Shape::default();
    if let Some(t) = raw
        .vm_type_list
        .iter()
        .find(|t| t.weight == 1.0 && t.numa <= 1 && t.request_cpu >= 1.0)
    {
        target = Shape {
            cpu: u32::try_from(whole(t.request_cpu, || "vm_type_list: request_cpu".into())?)
                .map_err(|_| "vm_type_list: request_cpu too large".to_string())?,
            mem_mb: whole(t.request_mem_mb, || "vm_type_list: request_mem_mb".into())?,
        };
    }
    let inst = Instance {
        pms,
        vms,
        groups,
        target,
    };
    inst.check()?;
    Ok(inst)
}

/// The instance in the VMR2L format, as one cluster (VMs at their current
/// placements; free CPU and memory fields consistent with them).
pub fn export(inst: &Instance) -> Value {
    let placements: Vec<Placement> = inst.vms.iter().map(|v| v.placement).collect();
    let free = free_per_node(inst, &placements);
    let hosts: Vec<Value> = inst
        .pms
        .iter()
        .zip(&free)
        .map(|(pm, free)| {
            let numa: Vec<Value> = pm
                .numa
                .iter()
                .enumerate()
                .map(|(n, cap)| {
                    json!({
                        "node": n,
                        "total_cpu": cap.cpu,
                        "free_cpu": free[n].0 as f64,
                        "memory_huge_total_mb": cap.mem_mb as f64,
                        "memory_huge_free_mb": free[n].1 as f64,
                    })
                })
                .collect();
            json!({
                "node_id": pm.id,
                "status": if pm.active { "ACTIVE" } else { "DISABLED" },
                "node_cpu": pm.numa.iter().map(|n| n.cpu).sum::<u32>(),
                "node_mem_mb": pm.numa.iter().map(|n| n.mem_mb).sum::<u64>() as f64,
                "rack_id": 0,
                "numa": numa,
            })
        })
        .collect();
    let vms: Vec<Value> = inst
        .vms
        .iter()
        .map(|vm| {
            let numa: Vec<Value> = vm
                .placement
                .numa
                .iter()
                .map(|n| json!({"node": n, "cpu": vm.numa_cpu, "mem_mb": vm.numa_mem_mb as f64}))
                .collect();
            json!({
                "instance_id": vm.id,
                "instance_type": format!("herd.{}c.{}numa", vm.cpu(), vm.span),
                "host_id": inst.pms[vm.placement.pm].id,
                "numa": numa,
                "allow_migration": vm.movable,
            })
        })
        .collect();
    let sets: Vec<Value> = inst
        .groups
        .iter()
        .map(|g| {
            let ids: Vec<&str> = g.vms.iter().map(|&v| inst.vms[v].id.as_str()).collect();
            json!({"name": g.name, "instance_ids": ids})
        })
        .collect();
    json!({
        "cluster_list": [{
            "cluster_name": "synthetic",
            "host_info": hosts,
            "vm_type_info": [],
            "vm_instance": vms,
            "other_requirement": {"deployment_set": sets},
        }],
        "vm_type_list": [{
            "vm_type": "herd.target",
            "request_cpu": inst.target.cpu,
            "request_mem_mb": inst.target.mem_mb as f64,
            "numa": 1,
            "expected_newly_created_num": 0,
            "weight": 1.0,
        }],
        "general_requirement": {"optimization_objective": 1},
    })
}
