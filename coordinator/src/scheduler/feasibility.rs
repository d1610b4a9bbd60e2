//! The filter stage: which nodes could take the request at all.
//!
//! These checks depend only on the node and the request, never on what runs
//! there, so they are made once per call; the fit against free resources
//! comes later, per instance.

use herd_api::resources::Resources;

use super::index::{amounts, covers, Amounts, DIMS};
use super::{NodeView, PlacementRequest};

/// Why a node can never take the request, in the order the filters run: each
/// node is counted under the first filter it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unfit {
    /// Draining, down or otherwise not eligible.
    Unschedulable,
    /// Fails the request's constraint at this position.
    Constraint(usize),
    /// Has no GPUs of the requested model.
    GpuModel,
    /// Has less than the request in all, in this dimension, even when empty.
    TooSmall(usize),
}

/// The first filter `node` fails for `request` (needing `need`), if any.
pub(crate) fn check_node(
    node: &NodeView,
    request: &PlacementRequest,
    need: &Amounts,
) -> Result<(), Unfit> {
    if !node.schedulable {
        return Err(Unfit::Unschedulable);
    }
    if let Some(failed) = request
        .constraints
        .iter()
        .position(|c| !c.matches(&node.labels))
    {
        return Err(Unfit::Constraint(failed));
    }
    if !gpu_model_matches(&node.capacity, &request.resources) {
        return Err(Unfit::GpuModel);
    }
    let capacity = amounts(&node.capacity);
    match DIMS.into_iter().find(|&d| capacity[d] < need[d]) {
        Some(dim) => Err(Unfit::TooSmall(dim)),
        None => Ok(()),
    }
}

/// Whether a node offering `capacity` could ever hold one instance needing
/// `request`, were it empty: the submit-time check and the filters agree.
pub fn could_hold(capacity: &Resources, request: &Resources) -> bool {
    covers(&amounts(capacity), &amounts(request)) && gpu_model_matches(capacity, request)
}

/// Whether a node offering `capacity` has the GPU model `request` asks for:
/// any model when the request names none or needs no GPUs; otherwise the same
/// name, ignoring case (`"H100"` is `"h100"`).
pub(crate) fn gpu_model_matches(capacity: &Resources, request: &Resources) -> bool {
    match (&request.gpu_model, request.gpus) {
        (Some(wanted), gpus) if gpus > 0 => capacity
            .gpu_model
            .as_deref()
            .is_some_and(|model| model.eq_ignore_ascii_case(wanted)),
        _ => true,
    }
}

/// The verdict of the filters on every node.
pub(crate) struct Feasibility {
    /// Per node id: `None` when it passes every filter.
    pub(crate) unfit: Vec<Option<Unfit>>,
    /// Ids of the nodes that pass every filter, in node order.
    pub(crate) feasible: Vec<usize>,
}

impl Feasibility {
    /// Runs the filters over all `nodes`.
    pub(crate) fn new(nodes: &[NodeView], request: &PlacementRequest, need: &Amounts) -> Self {
        let unfit: Vec<Option<Unfit>> = nodes
            .iter()
            .map(|node| check_node(node, request, need).err())
            .collect();
        let feasible = (0..nodes.len()).filter(|&n| unfit[n].is_none()).collect();
        Self { unfit, feasible }
    }

    /// Whether node `node` passes every filter.
    pub(crate) fn is_feasible(&self, node: usize) -> bool {
        matches!(self.unfit.get(node), Some(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::index::{CPU, GPUS, MEMORY};
    use crate::scheduler::testkit::{gpu_node, gpu_request, node, request};
    use crate::scheduler::Constraint;

    fn check(node: &NodeView, request: &PlacementRequest) -> Result<(), Unfit> {
        check_node(node, request, &amounts(&request.resources))
    }

    #[test]
    fn filters_run_in_order_and_report_the_first_failure() {
        let mut req = request("j", 50, 1, 2, 4);
        req.constraints = vec![Constraint::exists("zone"), Constraint::equals("rack", "r7")];
        let mut n = node("a", 1, 1).with_label("zone", "z1");
        n.schedulable = false;
        assert_eq!(check(&n, &req), Err(Unfit::Unschedulable));
        n.schedulable = true;
        assert_eq!(check(&n, &req), Err(Unfit::Constraint(1)));
        let n = n.with_label("rack", "r7");
        assert_eq!(check(&n, &req), Err(Unfit::TooSmall(MEMORY)));
        let n = node("b", 1, 4)
            .with_label("zone", "z")
            .with_label("rack", "r7");
        assert_eq!(check(&n, &req), Err(Unfit::TooSmall(CPU)));
        let n = node("c", 2, 4)
            .with_label("zone", "z")
            .with_label("rack", "r7");
        assert_eq!(check(&n, &req), Ok(()));
    }

    #[test]
    fn gpu_models_match_ignoring_case_and_any_model_when_unnamed() {
        let h100 = gpu_node("g", 8, 64, 8, "H100");
        let a100 = gpu_node("a", 8, 64, 8, "a100");
        let cpu_only = node("c", 8, 64);
        let wants_h100 = gpu_request("j", 50, 1, 2, Some("h100"));
        let any_gpu = gpu_request("j", 50, 1, 2, None);
        assert_eq!(check(&h100, &wants_h100), Ok(()));
        assert_eq!(check(&a100, &wants_h100), Err(Unfit::GpuModel));
        assert_eq!(check(&cpu_only, &wants_h100), Err(Unfit::GpuModel));
        assert_eq!(check(&a100, &any_gpu), Ok(()));
        assert_eq!(check(&cpu_only, &any_gpu), Err(Unfit::TooSmall(GPUS)));
        // A model named on a request for no GPUs is no restriction.
        let mut no_gpus = gpu_request("j", 50, 1, 0, Some("h100"));
        no_gpus.resources.gpus = 0;
        assert_eq!(check(&cpu_only, &no_gpus), Ok(()));
    }

    #[test]
    fn lists_feasible_nodes_in_node_order() {
        let req = request("j", 50, 1, 2, 4);
        let nodes = [node("z", 4, 8), node("small", 1, 1), node("a", 4, 8)];
        let feas = Feasibility::new(&nodes, &req, &amounts(&req.resources));
        assert_eq!(feas.feasible, vec![0, 2]);
        assert!(feas.is_feasible(2));
        assert!(!feas.is_feasible(1));
        assert!(!feas.is_feasible(3));
    }
}
