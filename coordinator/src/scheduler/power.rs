//! Power headroom: placement never commits a power group's GPUs past the
//! group's hard budget (issue 20).
//!
//! A group's *committed* power is the idle draw of all its GPUs plus, for
//! every allocation on its nodes, what its GPUs are expected to draw above
//! idle (its job's [`PowerClass`] as a fraction of the node's GPU model's
//! TDP). It is computed from the placement inputs only, never from measured
//! draw: the same on every coordinator and at every replay, so the leader's
//! plan and `apply`'s re-check ([`verify_plan`](super::verify_plan)) agree,
//! and two plans built on one snapshot cannot together overshoot. Measured
//! draw is the PowerGovernor's business, at run time.

use herd_api::power::{gpu_nameplate, PowerGroup};
use herd_api::power_class::PowerClass;
use herd_api::resources::Resources;

use super::NodeView;

/// A power group's hard budget as placement sees it.
///
/// Built by the caller from the replicated budgets; groups whose nodes are
/// not all among the call's nodes carry what those unseen nodes commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerLimit {
    /// Which nodes the budget covers.
    pub group: PowerGroup,
    /// The budget, in watts.
    pub budget_watts: u64,
    /// The hard threshold, thousandths of the budget: the committed power
    /// placement may reach.
    pub hard_permille: u32,
    /// Watts committed on the group's nodes that the call is not given:
    /// their GPUs' idle draw and their allocations' expected draw above
    /// idle. 0 when every node of the group is among the call's nodes.
    pub unseen_watts: u64,
}

impl PowerLimit {
    /// The most the group's GPUs may be committed to, in watts.
    pub fn hard_watts(&self) -> u64 {
        self.budget_watts
            .saturating_mul(u64::from(self.hard_permille))
            / 1000
    }
}

/// Why a placement would push a group past its hard budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PowerClash {
    /// Position of the group in the limits.
    pub(crate) limit: usize,
    /// What the group would commit with the placement, in watts.
    pub(crate) would: u64,
}

/// The GPU model a node offers, lower case ("" when it reports none).
fn model(capacity: &Resources) -> String {
    capacity
        .gpu_model
        .as_deref()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// What the GPUs of a node offering `capacity` draw with nothing running,
/// in whole watts.
pub(crate) fn idle_watts_of(capacity: &Resources) -> u64 {
    let idle = gpu_nameplate(&model(capacity)).idle_watts;
    u64::from(capacity.gpus).saturating_mul(u64::from(idle))
}

/// What `gpus` GPUs of a node offering `capacity`, running work of
/// `class`, are expected to draw above their idle draw, in whole watts.
pub(crate) fn extra_watts_of(capacity: &Resources, class: PowerClass, gpus: u64) -> u64 {
    if gpus == 0 {
        return 0;
    }
    let model = model(capacity);
    let idle = u64::from(gpu_nameplate(&model).idle_watts);
    gpus.saturating_mul(class.gpu_watts(&model).saturating_sub(idle))
}

/// [`idle_watts_of`] a node.
fn idle_watts(node: &NodeView) -> u64 {
    idle_watts_of(&node.capacity)
}

/// [`extra_watts_of`] a node.
pub(crate) fn extra_watts(node: &NodeView, class: PowerClass, gpus: u64) -> u64 {
    extra_watts_of(&node.capacity, class, gpus)
}

/// Committed power per group, and the groups each node belongs to.
pub(crate) struct PowerIndex<'a> {
    limits: &'a [PowerLimit],
    committed: Vec<u64>,
    groups_of: Vec<Vec<usize>>,
}

impl<'a> PowerIndex<'a> {
    /// Each group's unseen watts plus the idle draw of its nodes among
    /// `nodes` (allocations are added by the caller).
    pub(crate) fn new(nodes: &[NodeView], limits: &'a [PowerLimit]) -> Self {
        let mut committed: Vec<u64> = limits.iter().map(|l| l.unseen_watts).collect();
        let groups_of = if limits.is_empty() {
            Vec::new()
        } else {
            nodes
                .iter()
                .map(|node| {
                    let groups: Vec<usize> = limits
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| l.group.contains(&node.labels))
                        .map(|(g, _)| g)
                        .collect();
                    let idle = idle_watts(node);
                    for &g in &groups {
                        committed[g] = committed[g].saturating_add(idle);
                    }
                    groups
                })
                .collect()
        };
        Self {
            limits,
            committed,
            groups_of,
        }
    }

    fn groups(&self, node: usize) -> &[usize] {
        self.groups_of.get(node).map_or(&[], Vec::as_slice)
    }

    /// Counts `watts` more on every group of node `node`.
    pub(crate) fn take(&mut self, node: usize, watts: u64) {
        self.adjust(node, |c| c.saturating_add(watts));
    }

    /// Counts `watts` less on every group of node `node`.
    pub(crate) fn release(&mut self, node: usize, watts: u64) {
        self.adjust(node, |c| c.saturating_sub(watts));
    }

    /// Applies `change` to the committed watts of every group of `node`.
    fn adjust(&mut self, node: usize, change: impl Fn(u64) -> u64) {
        let Self {
            groups_of,
            committed,
            ..
        } = self;
        for &g in groups_of.get(node).map_or(&[][..], Vec::as_slice) {
            committed[g] = change(committed[g]);
        }
    }

    /// The first group of node `node` (in the limits' order) that `watts`
    /// more would push past its hard budget. Work that adds nothing (no
    /// GPUs) never clashes, even in a group already over its budget.
    pub(crate) fn clash(&self, node: usize, watts: u64) -> Option<PowerClash> {
        if watts == 0 {
            return None;
        }
        self.groups(node).iter().find_map(|&g| {
            let would = self.committed[g].saturating_add(watts);
            (would > self.limits[g].hard_watts()).then_some(PowerClash { limit: g, would })
        })
    }

    /// For each group of node `node` (in the limits' order), how many
    /// watts must be freed in it before `watts` more fit: `(group, watts)`,
    /// 0 where the group has room. Empty when no budget covers the node.
    pub(crate) fn shortfall(&self, node: usize, watts: u64) -> Vec<(usize, u64)> {
        self.groups(node)
            .iter()
            .map(|&g| {
                let would = self.committed[g].saturating_add(watts);
                (g, would.saturating_sub(self.limits[g].hard_watts()))
            })
            .collect()
    }

    /// Whether node `node` belongs to group `group` (a position in the
    /// limits).
    pub(crate) fn in_group(&self, node: usize, group: usize) -> bool {
        self.groups(node).contains(&group)
    }

    /// Watts left under the hard budget of node `node`'s tightest group,
    /// 0 when one is already over, `u64::MAX` when no budget covers it.
    pub(crate) fn headroom(&self, node: usize) -> u64 {
        self.groups(node)
            .iter()
            .map(|&g| {
                self.limits[g]
                    .hard_watts()
                    .saturating_sub(self.committed[g])
            })
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The words for `clash`, as `blocked` and rejections show them.
    pub(crate) fn describe(&self, clash: &PowerClash) -> String {
        let limit = &self.limits[clash.limit];
        format!(
            "power: group {} would commit {} W of GPU power, over its hard budget of {} W \
             ({} % of {} W)",
            limit.group,
            clash.would,
            limit.hard_watts(),
            fmt_percent(limit.hard_permille),
            limit.budget_watts
        )
    }
}

/// Thousandths as a percentage: `97`, `97.5`.
fn fmt_percent(permille: u32) -> String {
    if permille.is_multiple_of(10) {
        (permille / 10).to_string()
    } else {
        format!("{}.{}", permille / 10, permille % 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testkit::{gpu_node, node};

    fn rack(name: &str, value: &str) -> NodeView {
        gpu_node(name, 16, 64, 8, "h100").with_label("rack", value)
    }

    fn limit(group: &str, watts: u64) -> PowerLimit {
        PowerLimit {
            group: PowerGroup::parse(group).expect("group"),
            budget_watts: watts,
            hard_permille: 970,
            unseen_watts: 0,
        }
    }

    #[test]
    fn committed_power_starts_at_idle_and_clashes_past_the_hard_budget() {
        let nodes = [rack("a", "r1"), rack("b", "r2"), node("c", 4, 8)];
        let limits = [limit("rack=r1", 2000), limit("cluster", 3000)];
        let mut power = PowerIndex::new(&nodes, &limits);
        // Idle: 8 × 80 W per H100 node.
        assert_eq!(power.committed, [640, 1280]);
        assert_eq!(limits[0].hard_watts(), 1940);
        // One H100 at TDP adds 620 W above idle.
        let one = extra_watts(&nodes[0], PowerClass::Max, 1);
        assert_eq!(one, 620);
        assert_eq!(extra_watts(&nodes[0], PowerClass::Low, 2), 540);
        assert_eq!(extra_watts(&nodes[2], PowerClass::Max, 0), 0);
        assert_eq!(power.clash(0, 2 * one), None, "640 + 1240 <= 1940");
        power.take(0, 2 * one);
        let clash = power.clash(0, one).expect("r1 is full");
        assert_eq!((clash.limit, clash.would), (0, 2500));
        assert_eq!(
            power.describe(&clash),
            "power: group rack=r1 would commit 2500 W of GPU power, over its hard budget of \
             1940 W (97 % of 2000 W)"
        );
        // b is not in r1 but in the cluster: 1280 + 1240 + 620 > 2910.
        let clash = power.clash(1, one).expect("the cluster is full");
        assert_eq!((clash.limit, clash.would), (1, 3140));
        assert_eq!(power.clash(2, 0), None, "no GPUs, no power");
        power.release(0, 2 * one);
        assert_eq!(power.clash(1, one), None);
        assert_eq!(fmt_percent(975), "97.5");
    }
}
