//! Reasons a user can act on: why an instance is blocked, counted per filter
//! over all nodes, and why one placement no longer fits.

use std::collections::BTreeMap;

use herd_api::resources::format_memory;

use super::feasibility::{Feasibility, Unfit};
use super::index::{Amounts, ClusterIndex, CPU, DIMS, GPUS, MEMORY};
use super::PlacementRequest;

/// Why no node can take one more instance now, and whether freeing room
/// could help (see [`Blocked`](super::Blocked)). Called only when no feasible
/// node has room and preemption found nothing.
pub(crate) fn blocked_reason(
    index: &ClusterIndex<'_>,
    feas: &Feasibility,
    request: &PlacementRequest,
    need: &Amounts,
) -> (String, bool) {
    let mut unschedulable = 0;
    let mut constraints = vec![0; request.constraints.len()];
    let mut wrong_model = 0;
    let mut too_small = [0; 3];
    let mut lacking = [0; 3];
    // Nodes that fail on GPUs, by how many matching GPUs they have free.
    let mut gpus_free: BTreeMap<u64, usize> = BTreeMap::new();
    let mut fails_elsewhere = false;
    let mut could_help = false;
    // Nodes with room whose power groups cannot take the instance, by the
    // first group's words.
    let mut power: BTreeMap<String, usize> = BTreeMap::new();
    for (n, unfit) in feas.unfit.iter().enumerate() {
        let free = index.free(n);
        match unfit {
            Some(Unfit::Unschedulable) => unschedulable += 1,
            Some(Unfit::Constraint(i)) => constraints[*i] += 1,
            Some(Unfit::GpuModel) => {
                wrong_model += 1;
                *gpus_free.entry(0).or_default() += 1;
            }
            Some(Unfit::TooSmall(d)) => {
                too_small[*d] += 1;
                if *d == GPUS {
                    *gpus_free.entry(free[GPUS]).or_default() += 1;
                } else {
                    fails_elsewhere = true;
                }
            }
            None => {
                could_help = true;
                if let Some(d) = DIMS.into_iter().find(|&d| free[d] < need[d]) {
                    lacking[d] += 1;
                    if d == GPUS {
                        *gpus_free.entry(free[GPUS]).or_default() += 1;
                    } else {
                        fails_elsewhere = true;
                    }
                } else if let Some(why) = index.power_clash(n, index.request_watts(n, request)) {
                    *power.entry(why).or_default() += 1;
                    fails_elsewhere = true;
                }
            }
        }
    }

    let mut items = Vec::new();
    let gpu_headline = need[GPUS] > 0 && !fails_elsewhere && !gpus_free.is_empty();
    let headline = if gpu_headline {
        for (&free, &count) in gpus_free.iter().rev() {
            let have = if free == 0 {
                "none".to_string()
            } else {
                free.to_string()
            };
            items.push(format!("{} {have}", nodes_verb(count, "has", "have")));
        }
        format!(
            "no node with {} free {}",
            need[GPUS],
            gpu_noun(request, need[GPUS])
        )
    } else {
        format!("no node fits {}", describe_need(request, need))
    };
    if unschedulable > 0 {
        items.push(format!(
            "{} not schedulable",
            nodes_verb(unschedulable, "is", "are")
        ));
    }
    for (constraint, &count) in request.constraints.iter().zip(&constraints) {
        if count > 0 {
            let fail = nodes_verb(count, "fails", "fail");
            items.push(format!("{fail} constraint {constraint}"));
        }
    }
    if !gpu_headline {
        if wrong_model > 0 {
            let have = nodes_verb(wrong_model, "has", "have");
            items.push(format!("{have} no {}", gpu_noun(request, 2)));
        }
        for d in DIMS {
            if too_small[d] > 0 {
                let have = nodes_verb(too_small[d], "has", "have");
                items.push(format!("{have} too {} in total", short_of(d)));
            }
        }
        for d in DIMS {
            if lacking[d] > 0 {
                let lack = nodes_verb(lacking[d], "lacks", "lack");
                items.push(format!("{lack} free {}", dim_noun(d)));
            }
        }
    }
    for (why, &count) in &power {
        let held = nodes_verb(count, "is", "are");
        items.push(format!("{held} held back by {why}"));
    }
    if feas.unfit.is_empty() {
        items.push("the cluster has no nodes".to_string());
    }
    let mut reason = headline;
    if !items.is_empty() {
        reason = format!("{reason}: {}", items.join(", "));
    }
    if could_help {
        reason.push_str(&format!(
            "; preemption at priority {} found no lower-priority work to evict that makes room",
            request.priority
        ));
    }
    (reason, could_help)
}

/// Why node `name` cannot take the request although it passed planning:
/// the filter it now fails, or (with `unfit` `None`) the resource it lacks.
pub(crate) fn node_reason(
    name: &str,
    unfit: Option<Unfit>,
    request: &PlacementRequest,
    need: &Amounts,
    capacity: &Amounts,
    free: &Amounts,
) -> String {
    match unfit {
        Some(Unfit::Unschedulable) => format!("node {name} is not schedulable"),
        Some(Unfit::Constraint(i)) => match request.constraints.get(i) {
            Some(c) => format!("node {name} fails constraint {c}"),
            None => format!("node {name} fails a constraint"),
        },
        Some(Unfit::GpuModel) => format!("node {name} has no {}", gpu_noun(request, 2)),
        Some(Unfit::TooSmall(d)) => format!(
            "node {name} has too {} in total: needs {}, has {}",
            short_of(d),
            amount(d, need[d]),
            amount(d, capacity[d])
        ),
        None => match DIMS.into_iter().find(|&d| free[d] < need[d]) {
            Some(d) => format!(
                "node {name} lacks free {}: needs {}, {} free",
                dim_noun(d),
                amount(d, need[d]),
                amount(d, free[d])
            ),
            None => format!("node {name} has room"),
        },
    }
}

/// What one instance needs, as in `"2 h100 GPUs, 64GiB memory and 8 cpu"`.
pub(crate) fn describe_need(request: &PlacementRequest, need: &Amounts) -> String {
    let mut parts: Vec<String> = Vec::new();
    if need[GPUS] > 0 {
        parts.push(format!("{} {}", need[GPUS], gpu_noun(request, need[GPUS])));
    }
    if need[MEMORY] > 0 {
        parts.push(format!("{} memory", amount(MEMORY, need[MEMORY])));
    }
    if need[CPU] > 0 {
        parts.push(amount(CPU, need[CPU]));
    }
    match parts.split_last() {
        None => "an instance that needs no resources".to_string(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// `"1 node has"`, `"3 nodes have"`.
fn nodes_verb(count: usize, singular: &str, plural: &str) -> String {
    if count == 1 {
        format!("1 node {singular}")
    } else {
        format!("{count} nodes {plural}")
    }
}

/// `"h100 GPUs"`, `"GPU"`: the request's model, if any, and the plural.
fn gpu_noun(request: &PlacementRequest, count: u64) -> String {
    let plural = if count == 1 { "GPU" } else { "GPUs" };
    match &request.resources.gpu_model {
        Some(model) => format!("{model} {plural}"),
        None => plural.to_string(),
    }
}

fn dim_noun(d: usize) -> &'static str {
    match d {
        GPUS => "GPUs",
        MEMORY => "memory",
        _ => "cpu",
    }
}

fn short_of(d: usize) -> &'static str {
    match d {
        GPUS => "few GPUs",
        MEMORY => "little memory",
        _ => "little cpu",
    }
}

/// An amount as users write it: `"2 GPUs"`, `"64GiB"`, `"1.5 cpu"`.
fn amount(d: usize, value: u64) -> String {
    match d {
        GPUS => format!("{value} GPU{}", if value == 1 { "" } else { "s" }),
        MEMORY => format_memory(value),
        _ => format!("{} cpu", cores(value)),
    }
}

/// Millicores as cores: `8`, `1.5`, `0.25`.
fn cores(millis: u64) -> String {
    let (whole, frac) = (millis / 1000, millis % 1000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::index::amounts;
    use crate::scheduler::testkit::{alloc, gpu_alloc, gpu_node, gpu_request, node, request};
    use crate::scheduler::{place, AllocView, Constraint, NodeView};

    fn blocked(nodes: &[NodeView], allocs: &[AllocView], req: &PlacementRequest) -> (String, bool) {
        let plan = place(nodes, allocs, req);
        assert!(plan.placements.is_empty(), "{plan:?}");
        let b = &plan.blocked[0];
        (b.reason.clone(), b.preemption_could_help)
    }

    const NO_VICTIMS: &str =
        "; preemption at priority 50 found no lower-priority work to evict that makes room";

    #[test]
    fn counts_each_node_under_the_first_filter_it_fails() {
        let mut down = node("n1", 16, 128).with_label("rack", "r7");
        down.schedulable = false;
        let mut nodes = vec![
            down,
            node("n2", 16, 128).with_label("rack", "r8"),
            node("n3", 16, 128),
            node("n7", 16, 32).with_label("rack", "r7"),
        ];
        let mut allocs = Vec::new();
        for name in ["n4", "n5", "n6"] {
            nodes.push(node(name, 16, 128).with_label("rack", "r7"));
            allocs.push(alloc(&format!("{name}-a"), "db", name, 1, 100, 50));
        }
        let mut req = request("web", 50, 1, 8, 64);
        req.constraints = vec![Constraint::equals("rack", "r7")];
        let expected = format!(
            "no node fits 64GiB memory and 8 cpu: 1 node is not schedulable, 2 nodes fail \
             constraint rack=r7, 1 node has too little memory in total, 3 nodes lack free \
             memory{NO_VICTIMS}"
        );
        assert_eq!(blocked(&nodes, &allocs, &req), (expected, true));
    }

    #[test]
    fn gpu_shortages_list_how_many_gpus_nodes_have_free() {
        let mut nodes = vec![gpu_node("a100", 16, 64, 8, "a100")];
        let mut allocs = Vec::new();
        for i in 0..6 {
            let name = format!("h{i}");
            nodes.push(gpu_node(&name, 16, 64, 2, "H100"));
            let used = if i == 5 { 2 } else { 1 };
            allocs.push(gpu_alloc(&format!("x{i}"), "other", &name, used, 60));
        }
        let req = gpu_request("train", 50, 1, 2, Some("h100"));
        let expected =
            format!("no node with 2 free h100 GPUs: 5 nodes have 1, 2 nodes have none{NO_VICTIMS}");
        assert_eq!(blocked(&nodes, &allocs, &req), (expected, true));
    }

    #[test]
    fn says_when_preemption_cannot_help() {
        let mut down = gpu_node("h", 16, 64, 8, "h100");
        down.schedulable = false;
        let nodes = [
            gpu_node("a1", 16, 64, 8, "a100"),
            gpu_node("a2", 16, 64, 8, "a100"),
            node("c", 16, 64),
            down,
        ];
        let req = gpu_request("train", 50, 1, 1, Some("h100"));
        let expected = "no node with 1 free h100 GPU: 3 nodes have none, 1 node is not schedulable";
        assert_eq!(blocked(&nodes, &[], &req), (expected.to_string(), false));

        let nodes = [
            gpu_node("a", 16, 64, 8, "a100"),
            gpu_node("h", 16, 32, 8, "h100"),
        ];
        let mut req = gpu_request("train", 50, 1, 2, Some("h100"));
        req.resources.memory_bytes = 64 * herd_api::resources::GIB;
        let expected = "no node fits 2 h100 GPUs, 64GiB memory and 1 cpu: 1 node has no h100 \
             GPUs, 1 node has too little memory in total";
        assert_eq!(blocked(&nodes, &[], &req), (expected.to_string(), false));

        let expected = "no node fits 1GiB memory and 1 cpu: the cluster has no nodes";
        assert_eq!(
            blocked(&[], &[], &request("web", 50, 1, 1, 1)),
            (expected.to_string(), false)
        );
    }

    #[test]
    fn needs_and_single_nodes_read_as_users_write_them() {
        let mut req = gpu_request("j", 50, 1, 1, None);
        req.resources.cpu_millis = 1500;
        let need = amounts(&req.resources);
        assert_eq!(describe_need(&req, &need), "1 GPU, 1GiB memory and 1.5 cpu");
        req.resources = Default::default();
        req.resources.cpu_millis = 250;
        assert_eq!(describe_need(&req, &amounts(&req.resources)), "0.25 cpu");
        req.resources.cpu_millis = 0;
        assert_eq!(
            describe_need(&req, &[0; 3]),
            "an instance that needs no resources"
        );

        let req = request("j", 50, 1, 4, 8);
        let need = amounts(&req.resources);
        let gib = herd_api::resources::GIB;
        let (cap, free) = ([0, 16 * gib, 8000], [0, 2 * gib, 8000]);
        assert_eq!(
            node_reason("n1", None, &req, &need, &cap, &free),
            "node n1 lacks free memory: needs 8GiB, 2GiB free"
        );
        assert_eq!(
            node_reason(
                "n1",
                Some(Unfit::TooSmall(CPU)),
                &req,
                &need,
                &[0, 0, 2000],
                &free
            ),
            "node n1 has too little cpu in total: needs 4 cpu, has 2 cpu"
        );
        assert_eq!(
            node_reason("n1", Some(Unfit::Unschedulable), &req, &need, &cap, &free),
            "node n1 is not schedulable"
        );
    }
}
