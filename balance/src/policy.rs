//! The move policy as pure functions: when an agent pushes, which peer it
//! offers to, which item, and whether a recipient accepts.
//!
//! The rules (why they converge: docs/balancing.md):
//! - **Trigger**: push only when `score − mean > max(threshold × mean,
//!   min_excess)`, the mean taken over the agent and its fresh
//!   neighbourhood.
//! - **Damping**: aim to shed `damping × excess`, never the whole excess,
//!   since peers act on views as stale as ours.
//! - **Recipient**: the lightest of `choices` random peers below the mean
//!   (power of d choices), skipping peers in back-off.
//! - **Item**: the eligible item whose weight is nearest the damped target
//!   without exceeding half the gap to the recipient widened by the
//!   reversal tolerance (so the pair swaps order by at most that share of
//!   its gap, and its gap always shrinks) nor the excess (so the sender does not fall below the
//!   mean); eligible = under its move budget, out of its cool-down, not
//!   already offered.
//! - **Compatibility**: an item naming a service (an inference request)
//!   is offered only to a peer whose load names an instance of that
//!   service, and a recipient that runs none refuses it.
//! - **Acceptance** (the recipient, on fresh local figures and its
//!   reservations): after the move it must stay no heavier than the sender
//!   after the move (give or take the reversal tolerance), and not rise
//!   above its own threshold, unless the item
//!   alone is heavier than the band (it could never land inside it) and
//!   the recipient is not above the mean already, nor heavier by more than
//!   half the item than a fresh peer it knows that could take it instead.

use crate::config::Config;
use crate::item::MovableItem;
use crate::load::LoadSummary;
use crate::wire::{Offer, RejectReason, Verdict};

/// Slack for float comparisons of scores.
const EPS: f64 = 1e-9;

/// The band above the mean within which an agent does nothing.
pub fn band(config: &Config, mean: f64) -> f64 {
    (config.threshold * mean).max(config.min_excess)
}

/// Mean of the agent's own score and its peers'.
pub fn mean_of(own: f64, peers: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, n) = peers
        .into_iter()
        .fold((own, 1usize), |(s, n), x| (s + x, n + 1));
    sum / n as f64
}

/// How far above the band the agent is, if it should push at all: the
/// excess over the mean.
pub fn excess(config: &Config, own: f64, mean: f64) -> Option<f64> {
    let e = own - mean;
    (e > band(config, mean) + EPS).then_some(e)
}

/// Whether `item` may move now: under budget, out of cool-down.
pub fn eligible(config: &Config, item: &MovableItem, now_ms: u64) -> bool {
    item.weight > 0.0
        && item.weight.is_finite()
        && item.moves_so_far < config.move_budget
        && item
            .last_moved_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= config.item_cooldown_ms)
}

/// Whether `item` may go to a node whose load is `recipient`: it needs no
/// particular service, or the node runs an instance of the one it needs.
pub fn compatible(item: &MovableItem, recipient: &LoadSummary) -> bool {
    item.service
        .as_deref()
        .is_none_or(|service| recipient.instance_of(service).is_some())
}

/// The most a move may leave a recipient above its sender, for a pair
/// whose gap is `gap`: moving weight `w` turns the gap into `gap − 2w`, so
/// any `w` below `gap` shrinks it, and this bound keeps the reversal small.
fn reversal_slack(config: &Config, gap: f64) -> f64 {
    config.reversal_tolerance * gap.max(0.0)
}

/// Picks the item to offer a recipient whose effective score is
/// `recipient`, or none if no item fits (see the module docs).
pub fn choose_item<'a>(
    config: &Config,
    items: impl IntoIterator<Item = &'a MovableItem>,
    own: f64,
    excess: f64,
    recipient: f64,
) -> Option<&'a MovableItem> {
    let target = config.damping * excess;
    let gap = own - recipient;
    let cap = ((gap + reversal_slack(config, gap)) / 2.0).min(excess);
    let mut below: Option<&MovableItem> = None;
    let mut above: Option<&MovableItem> = None;
    for item in items {
        let w = item.weight;
        if w > cap + EPS {
            continue;
        }
        if w <= target + EPS {
            if below.is_none_or(|b| w > b.weight || (w == b.weight && item.id < b.id)) {
                below = Some(item);
            }
        } else if above.is_none_or(|a| w < a.weight || (w == a.weight && item.id < a.id)) {
            above = Some(item);
        }
    }
    below.or(above)
}

/// What a recipient knows when it judges an offer: its own figures and
/// what its neighbourhood view says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecipientView {
    /// Its effective score: its load plus what it has reserved already.
    pub own: f64,
    /// Its neighbourhood mean.
    pub mean: f64,
    /// Reservations it holds.
    pub reservations: usize,
    /// The lowest effective score of a fresh peer, other than the sender,
    /// that could take the item (None: it knows of none).
    pub lightest_other: Option<f64>,
}

/// The recipient's verdict on `offer` given its own load figures `load`:
/// refused if the item needs a service it runs no instance of, otherwise
/// as [`judge_offer`].
pub fn judge_offer_on(
    config: &Config,
    offer: &Offer,
    load: &LoadSummary,
    view: &RecipientView,
) -> Verdict {
    if let Some(service) = &offer.service {
        if load.instance_of(service).is_none() {
            return Verdict::Rejected(RejectReason::NoInstance);
        }
    }
    judge_offer(config, offer, view)
}

/// The recipient's verdict on `offer`, from what it knows (`view`).
pub fn judge_offer(config: &Config, offer: &Offer, view: &RecipientView) -> Verdict {
    let (own, mean) = (view.own, view.mean);
    if offer.moves_so_far >= config.move_budget {
        return Verdict::Rejected(RejectReason::OverBudget);
    }
    if view.reservations >= config.max_reservations {
        return Verdict::Rejected(RejectReason::TooManyReservations);
    }
    let after = own + offer.weight;
    let sender_after = offer.sender_score - offer.weight;
    let slack = reversal_slack(config, offer.sender_score - own);
    if after > sender_after + slack + EPS {
        return Verdict::Rejected(RejectReason::WouldReverse);
    }
    // Judge against the higher of the two means, so that a recipient in a
    // lighter neighbourhood still takes work from a heavier one.
    let m = mean.max(offer.sender_mean);
    // An item heavier than the band can never land inside it: such coarse
    // items (a VM that is a fifth of a node, a long request) are judged by
    // the pair rule alone, which still lowers the fleet's spread with every
    // move — but only by a recipient not above the mean already (its
    // reservations counted; the lower of the two means), so that one light node does not take two
    // coarse items at once while others stay empty.
    // "Not above the mean" takes the lower of the two means: either view
    // may be stale, and a wrong refusal only delays a move.
    let band = band(config, m);
    let coarse = offer.weight > band + EPS;
    let low = mean.min(offer.sender_mean);
    if after > m + band + EPS && (!coarse || own > low + EPS) {
        return Verdict::Rejected(RejectReason::Overloaded);
    }
    // A coarse item belongs on the lightest node that can take it: a
    // recipient heavier by more than half the item than a fresh peer it
    // knows leaves it to that peer (the sender offers elsewhere), since a
    // coarse item that lands on the wrong node sits out its cool-down
    // there while the lighter node stays empty. Seen in
    // `balance_requests`: a sender's stale view made a node that had just
    // received one request accept a second while another node held none.
    if coarse
        && view
            .lightest_other
            .is_some_and(|lightest| own > lightest + offer.weight / 2.0 + EPS)
    {
        return Verdict::Rejected(RejectReason::Overloaded);
    }
    Verdict::Accepted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::ItemKind;

    /// A recipient's view with no lighter peer known.
    fn at(own: f64, mean: f64, reservations: usize) -> RecipientView {
        RecipientView {
            own,
            mean,
            reservations,
            lightest_other: None,
        }
    }

    fn item(id: &str, w: f64) -> MovableItem {
        MovableItem {
            id: id.into(),
            kind: ItemKind::BatchInstance,
            weight: w,
            moves_so_far: 0,
            last_moved_ms: None,
            service: None,
        }
    }

    #[test]
    fn trigger_needs_both_the_relative_and_absolute_band() {
        let c = Config::default();
        assert_eq!(excess(&c, 10.5, 10.0), None, "under min_excess");
        assert_eq!(excess(&c, 105.0, 100.0), None, "under 10 %");
        assert!(excess(&c, 120.0, 100.0).is_some());
    }

    #[test]
    fn item_choice_is_damped_and_never_reverses_the_pair() {
        let c = Config::default();
        let items = [item("a", 1.0), item("b", 8.0), item("c", 30.0)];
        // excess 20 → target 10 → b (8); cap = min((120-70)/2, 20) = 20.
        assert_eq!(choose_item(&c, &items, 120.0, 20.0, 70.0).unwrap().id, "b");
        // a recipient close to us: cap (120-115)/2 = 2.5 → only a fits.
        assert_eq!(choose_item(&c, &items, 120.0, 20.0, 115.0).unwrap().id, "a");
        // nothing fits under a cap of 0.5.
        assert!(choose_item(&c, &items, 120.0, 20.0, 119.0).is_none());
    }

    #[test]
    fn an_item_a_hair_over_half_the_gap_still_moves() {
        // Seen in `balance_requests`: a node holding two requests (29.0)
        // beside an idle one (0.5), each request weighing 14.45, a hair
        // over half the gap (14.25). Without the reversal tolerance the
        // sender never offered it and the recipient would have refused it
        // (14.95 > 14.55), so the pair stayed 29.0/0.5 for ever.
        let c = Config::default();
        let items = [item("r1", 14.45), item("r2", 14.45)];
        let mean = (29.0 + 2.0 * 0.5 + 5.0 * 14.95) / 8.0;
        let excess = excess(&c, 29.0, mean).expect("29.0 is far above the mean");
        let chosen = choose_item(&c, &items, 29.0, excess, 0.5).expect("an item fits");
        let offer = Offer {
            offer_id: 1,
            item: chosen.id.clone(),
            kind: ItemKind::InferenceRequest,
            weight: chosen.weight,
            moves_so_far: 0,
            sender_score: 29.0,
            sender_mean: mean,
            service: None,
        };
        assert_eq!(
            judge_offer(&c, &offer, &at(0.5, mean, 0)),
            Verdict::Accepted
        );
        // With no tolerance both sides refuse, as before the mend.
        let strict = Config {
            reversal_tolerance: 0.0,
            ..Config::default()
        };
        assert!(choose_item(&strict, &items, 29.0, excess, 0.5).is_none());
        assert_eq!(
            judge_offer(&strict, &offer, &at(0.5, mean, 0)),
            Verdict::Rejected(RejectReason::WouldReverse)
        );
        // The tolerance is a small share: an item that would swap the pair
        // by more than 5 % of its gap still does not move (gap 28.5, so
        // at most 14.96).
        let big = [item("r3", 15.0)];
        assert!(choose_item(&c, &big, 29.0, excess, 0.5).is_none());
        let big_offer = Offer {
            weight: 15.0,
            ..offer
        };
        assert_eq!(
            judge_offer(&c, &big_offer, &at(0.5, mean, 0)),
            Verdict::Rejected(RejectReason::WouldReverse)
        );
    }

    #[test]
    fn budget_and_cooldown_make_items_ineligible() {
        let c = Config::default();
        let mut i = item("a", 1.0);
        assert!(eligible(&c, &i, 0));
        i.moves_so_far = c.move_budget;
        assert!(!eligible(&c, &i, 0));
        i.moves_so_far = 0;
        i.last_moved_ms = Some(1_000);
        assert!(!eligible(&c, &i, 1_000 + c.item_cooldown_ms - 1));
        assert!(eligible(&c, &i, 1_000 + c.item_cooldown_ms));
    }

    #[test]
    fn recipient_refuses_reversal_overload_and_pile_on() {
        let c = Config::default();
        let offer = Offer {
            offer_id: 1,
            item: "x".into(),
            kind: ItemKind::BatchInstance,
            weight: 10.0,
            moves_so_far: 0,
            sender_score: 100.0,
            sender_mean: 60.0,
            service: None,
        };
        assert_eq!(
            judge_offer(&c, &offer, &at(40.0, 60.0, 0)),
            Verdict::Accepted
        );
        assert_eq!(
            judge_offer(&c, &offer, &at(85.0, 60.0, 0)),
            Verdict::Rejected(RejectReason::WouldReverse)
        );
        // An item within the band (5 ≤ 6) must not lift the recipient
        // above it (65 + 5 > 60 + 6).
        let fine = Offer {
            weight: 5.0,
            ..offer.clone()
        };
        assert_eq!(
            judge_offer(&c, &fine, &at(65.0, 50.0, 0)),
            Verdict::Rejected(RejectReason::Overloaded)
        );
        assert_eq!(
            judge_offer(&c, &offer, &at(40.0, 60.0, c.max_reservations)),
            Verdict::Rejected(RejectReason::TooManyReservations)
        );
    }

    #[test]
    fn a_request_goes_only_to_a_node_running_its_service() {
        use crate::load::ServiceLoad;
        let c = Config::default();
        let mut request = item("r", 5.0);
        request.service = Some("llm".into());
        let with = LoadSummary {
            services: vec![ServiceLoad {
                service: "llm".into(),
                kv_blocks_total: 64,
                instance: "a2".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let other = LoadSummary {
            services: vec![ServiceLoad {
                service: "chat".into(),
                kv_blocks_total: 64,
                instance: "a3".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(compatible(&request, &with));
        assert!(!compatible(&request, &other));
        assert!(!compatible(&request, &LoadSummary::default()));
        assert!(compatible(&item("vm", 5.0), &LoadSummary::default()));
        let offer = Offer {
            offer_id: 1,
            item: "r".into(),
            kind: ItemKind::InferenceRequest,
            weight: 5.0,
            moves_so_far: 0,
            sender_score: 100.0,
            sender_mean: 60.0,
            service: Some("llm".into()),
        };
        assert_eq!(
            judge_offer_on(&c, &offer, &other, &at(10.0, 60.0, 0)),
            Verdict::Rejected(RejectReason::NoInstance)
        );
        assert_eq!(
            judge_offer_on(&c, &offer, &with, &at(10.0, 60.0, 0)),
            Verdict::Accepted
        );
        // Compatible but over budget: still refused.
        let spent = Offer {
            moves_so_far: c.move_budget,
            ..offer
        };
        assert_eq!(
            judge_offer_on(&c, &spent, &with, &at(10.0, 60.0, 0)),
            Verdict::Rejected(RejectReason::OverBudget)
        );
    }

    #[test]
    fn a_coarse_item_moves_when_it_narrows_the_pair_even_past_the_band() {
        // Three nodes at 44, 0, 0 (mean 14.7, band 2): an item of 20 can
        // never land within the band, yet 44/0 -> 24/20 lowers the spread.
        let c = Config::default();
        let offer = Offer {
            offer_id: 1,
            item: "vm".into(),
            kind: ItemKind::Allocation,
            weight: 20.0,
            moves_so_far: 0,
            sender_score: 44.0,
            sender_mean: 44.0 / 3.0,
            service: None,
        };
        assert_eq!(
            judge_offer(&c, &offer, &at(0.0, 44.0 / 3.0, 0)),
            Verdict::Accepted
        );
        // A recipient already above the mean (a reservation for another
        // coarse item) takes no second one, though the pair rule would
        // allow it: 15 + 20 ≤ 44 + 20 − 20 but 15 > 14.7.
        let heavier = Offer {
            sender_score: 64.0,
            ..offer.clone()
        };
        assert_eq!(
            judge_offer(&c, &heavier, &at(15.0, 44.0 / 3.0, 1)),
            Verdict::Rejected(RejectReason::Overloaded)
        );
        // Nor does one that knows a fresh peer lighter by more than half
        // the item: 7.53 > 0.5 + 6.64 / 2 (the two-requests-on-one-node
        // case of `balance_requests`); within half the item it does.
        let request = Offer {
            weight: 6.64,
            sender_score: 20.4,
            sender_mean: 8.0,
            ..offer.clone()
        };
        let knows = |lightest| RecipientView {
            lightest_other: Some(lightest),
            ..at(7.53, 8.0, 1)
        };
        assert_eq!(
            judge_offer(&c, &request, &at(7.53, 8.0, 1)),
            Verdict::Accepted
        );
        assert_eq!(
            judge_offer(&c, &request, &knows(0.5)),
            Verdict::Rejected(RejectReason::Overloaded)
        );
        assert_eq!(judge_offer(&c, &request, &knows(5.0)), Verdict::Accepted);
        // The empty node itself takes it, whoever else it knows.
        assert_eq!(
            judge_offer(
                &c,
                &request,
                &RecipientView {
                    lightest_other: Some(0.5),
                    ..at(0.5, 8.0, 0)
                }
            ),
            Verdict::Accepted
        );
        // The pair rule still holds for it: 30 + 20 > 44 - 20.
        assert_eq!(
            judge_offer(&c, &offer, &at(30.0, 44.0 / 3.0, 0)),
            Verdict::Rejected(RejectReason::WouldReverse)
        );
    }
}
