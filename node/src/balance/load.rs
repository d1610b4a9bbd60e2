//! This node's load as balancing counts it, and the items it may move.
//!
//! Load is what the work assigned here *reserves* (CPU, memory, GPUs of
//! its allocations) over what the node offers, the share of its inference
//! engines' KV-cache blocks in use, plus what waits in their queues: the figures placement reasons with, rather
//! than momentary host busyness, so that a move's effect is known the
//! moment it is made and agents sharing one host (tests, `herd dev`) are
//! told apart.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use herd_actors::resources::HostReport;
use herd_api::proto::agent::AllocEngineStats;
use herd_balance::{ItemKind, LoadSummary, MovableItem, ServiceLoad};

use super::assigned::AssignedWork;

/// What a node offers, after what is kept back for the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// CPU, millicores.
    pub cpu_millis: u64,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// GPUs.
    pub gpus: u32,
}

impl Capacity {
    /// The capacity in `host`, less the reserved CPU and memory.
    pub fn of(host: &HostReport, reserved_cpu_millis: u64, reserved_memory_bytes: u64) -> Self {
        Capacity {
            cpu_millis: (u64::from(host.cpus) * 1000).saturating_sub(reserved_cpu_millis),
            memory_bytes: host
                .memory_total_bytes
                .saturating_sub(reserved_memory_bytes),
            gpus: host.gpus.len() as u32,
        }
    }
}

/// The load summary of a node with `capacity` running `work`, whose
/// inference engines last reported `engines`.
pub fn summary(
    work: &[AssignedWork],
    capacity: Capacity,
    engines: &[AllocEngineStats],
) -> LoadSummary {
    let cpu: u64 = work.iter().map(|w| w.resources.cpu_millis).sum();
    let memory: u64 = work.iter().map(|w| w.resources.memory_bytes).sum();
    let gpus: u32 = work.iter().map(|w| w.resources.gpus).sum();
    let mut services: BTreeMap<String, ServiceLoad> = BTreeMap::new();
    for engine in engines {
        let Some(stats) = &engine.stats else { continue };
        let entry = services
            .entry(engine.job.clone())
            .or_insert_with(|| ServiceLoad {
                service: engine.job.clone(),
                ..Default::default()
            });
        entry.queued = entry.queued.saturating_add(stats.queue_len);
        entry.running = entry.running.saturating_add(stats.batch_size);
        let total = stats.total_blocks;
        entry.kv_blocks_total = entry.kv_blocks_total.saturating_add(total);
        entry.kv_blocks_used = entry
            .kv_blocks_used
            .saturating_add(total.saturating_sub(stats.free_blocks.min(total)));
    }
    for (service, (_, instance)) in super::requests::instances_by_service(engines) {
        if let Some(entry) = services.get_mut(&service) {
            entry.instance = instance;
        }
    }
    let gpu_util_permille = if capacity.gpus == 0 {
        0
    } else {
        (u64::from(gpus.min(capacity.gpus)) * 1000 / u64::from(capacity.gpus)) as u32
    };
    LoadSummary {
        cpu_used_milli: cpu,
        cpu_total_milli: capacity.cpu_millis,
        memory_used_bytes: memory,
        memory_total_bytes: capacity.memory_bytes,
        gpus: capacity.gpus,
        gpu_util_permille,
        services: services.into_values().collect(),
        queued_batch: 0,
    }
}

/// How often and when each item moved, as far as this node knows: carried
/// with an item when it arrives, so its move budget holds across nodes.
pub type MoveHistory = HashMap<String, (u32, Option<u64>)>;

/// The allocations the policy may move: of jobs with `[balance] movable`,
/// whose driver can move live (`movable_drivers`), and not already moving.
/// Each weighs what it adds to this node's score: its dominant share of
/// the node, in score points.
pub fn movable_items(
    work: &[AssignedWork],
    capacity: Capacity,
    movable_drivers: &BTreeSet<String>,
    history: &MoveHistory,
) -> Vec<MovableItem> {
    let share = |used: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            used as f64 / total as f64
        }
    };
    work.iter()
        .filter(|w| w.movable && !w.migrating && movable_drivers.contains(&w.driver))
        .map(|w| {
            let gpu = share(u64::from(w.resources.gpus), u64::from(capacity.gpus));
            let dominant = share(w.resources.cpu_millis, capacity.cpu_millis)
                .max(share(w.resources.memory_bytes, capacity.memory_bytes))
                .max(gpu);
            let (moves_so_far, last_moved_ms) =
                history.get(&w.alloc_id).copied().unwrap_or((0, None));
            MovableItem {
                id: w.alloc_id.clone(),
                kind: ItemKind::Allocation,
                weight: 100.0 * dominant,
                moves_so_far,
                last_moved_ms,
                service: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use herd_api::proto::inference::EngineStats;
    use herd_api::resources::Resources;

    use super::*;

    fn work(id: &str, cpu: u64, movable: bool, driver: &str) -> AssignedWork {
        AssignedWork {
            alloc_id: id.into(),
            generation: 1,
            job: "j".into(),
            driver: driver.into(),
            resources: Resources {
                cpu_millis: cpu,
                memory_bytes: 1 << 20,
                gpus: 0,
                gpu_model: None,
            },
            movable,
            migrating: false,
            gpu_indices: Vec::new(),
        }
    }

    const CAPACITY: Capacity = Capacity {
        cpu_millis: 4000,
        memory_bytes: 8 << 30,
        gpus: 0,
    };

    #[test]
    fn load_counts_reservations_and_engine_queues() {
        let engines = vec![AllocEngineStats {
            alloc_id: "a".into(),
            job: "chat".into(),
            at_ms: 1,
            stats: Some(EngineStats {
                queue_len: 3,
                batch_size: 2,
                free_blocks: 30,
                total_blocks: 100,
                ..Default::default()
            }),
        }];
        let load = summary(
            &[
                work("a", 1000, false, "inference"),
                work("b", 1000, true, "simvm"),
            ],
            CAPACITY,
            &engines,
        );
        assert_eq!(load.cpu_used_milli, 2000);
        assert_eq!(load.cpu_total_milli, 4000);
        assert_eq!(load.services.len(), 1);
        assert_eq!((load.services[0].queued, load.services[0].running), (3, 2));
        assert_eq!(
            (
                load.services[0].kv_blocks_used,
                load.services[0].kv_blocks_total
            ),
            (70, 100)
        );
        assert_eq!(load.services[0].instance, "a");
        // Half the CPU, plus 70 % of the KV cache, plus the queue.
        assert!(load.score() > 120.0, "{}", load.score());
        assert!(
            load.score() > 50.0,
            "half the CPU plus a queue: {}",
            load.score()
        );
    }

    #[test]
    fn only_movable_work_of_live_drivers_not_already_moving_is_offered() {
        let drivers: BTreeSet<String> = ["simvm".to_string()].into();
        let mut moving = work("c", 1000, true, "simvm");
        moving.migrating = true;
        let mut history = MoveHistory::new();
        history.insert("b".into(), (2, Some(77)));
        let items = movable_items(
            &[
                work("a", 1000, false, "simvm"),
                work("b", 1000, true, "simvm"),
                moving,
                work("d", 1000, true, "exec"),
            ],
            CAPACITY,
            &drivers,
            &history,
        );
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].id, "b");
        assert_eq!(
            (items[0].moves_so_far, items[0].last_moved_ms),
            (2, Some(77))
        );
        assert!((items[0].weight - 25.0).abs() < 1e-9, "{}", items[0].weight);
    }
}
