//! The knobs of membership, load exchange and the move policy, with
//! defaults sized for a LAN fleet of tens to thousands of agents.

use thiserror::Error;

/// Every tunable of an [`crate::Agent`]. All durations are milliseconds in
/// the caller's clock (only differences of the local clock are used).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// How often the caller should call `Agent::tick` (the agent also
    /// gossips its load at most once per tick). 250 ms.
    pub tick_ms: u64,
    /// Peers sent a load exchange per tick. 1: push-pull doubles it.
    pub gossip_fanout: usize,
    /// Entries of the view (besides its own) an exchange carries. 6.
    pub gossip_sample: usize,
    /// Most peers an agent keeps load figures for: its neighbourhood. 24.
    pub max_view: usize,
    /// A peer's load figure older than this (by its view age) leaves the
    /// neighbourhood: balancing on stale figures does more harm than good.
    /// 4 s.
    pub view_ttl_ms: u64,
    /// SWIM probe period: each agent pings one member this often. 1 s.
    pub probe_period_ms: u64,
    /// How long a probe waits for an ack before asking others to probe
    /// indirectly. 400 ms.
    pub probe_rtt_ms: u64,
    /// Members asked to probe indirectly. 3.
    pub indirect_probes: usize,
    /// How long a suspect member has to refute before it is declared down.
    /// 3 s.
    pub suspect_to_down_ms: u64,
    /// Seeds (not yet members) an agent announces itself to per
    /// `Agent::add_seeds` call; the rest are remembered. 3.
    pub seed_announces: usize,
    /// How often an agent announces itself to one remembered peer it does
    /// not currently see (seeds and members declared down): what heals a
    /// partition when no coordinator re-seeds. 5 s.
    pub rejoin_interval_ms: u64,
    /// An agent acts when its score exceeds its neighbourhood mean by more
    /// than `threshold × mean` ... 0.10.
    pub threshold: f64,
    /// ... and by more than `min_excess` score points (so idle fleets and
    /// measurement noise cause no moves). 2.0.
    pub min_excess: f64,
    /// Fraction of the excess over the mean one decision may move: below 1
    /// so that agents acting on the same stale view do not overshoot. 0.5.
    pub damping: f64,
    /// Share of a pair's gap by which a move may leave the recipient above
    /// the sender. 0 would forbid any reversal, but then two coarse items
    /// each a hair over half the gap could never move, though either would
    /// cut the gap to almost nothing (a two-request node beside an empty
    /// one, for ever). A move within the tolerance still leaves the pair's
    /// gap smaller than before, so the fleet's sum of squares falls with
    /// every move and no item ping-pongs. 0.05.
    pub reversal_tolerance: f64,
    /// Most moves an item may ever make (checked against the count the
    /// caller carries and the offer). 3.
    pub move_budget: u32,
    /// An item that moved waits this long before it may move again. 30 s.
    pub item_cooldown_ms: u64,
    /// After one of its moves completes, an agent waits this long before
    /// offering again, so its peers' figures catch up. 250 ms.
    pub agent_cooldown_ms: u64,
    /// Offers an agent has open at once (answered or not; approved moves in
    /// progress count), so a node sheds load while slow moves run. 4.
    pub max_offers_in_flight: usize,
    /// Lighter peers sampled per decision; the lightest of them is offered
    /// the item (power of d choices). 2.
    pub choices: usize,
    /// An offer unanswered for this long is dropped. 1 s.
    pub offer_timeout_ms: u64,
    /// How long a recipient holds a reservation for an accepted offer
    /// waiting for the confirm: the longest move the caller makes. 60 s.
    pub reservation_ttl_ms: u64,
    /// Most reservations a recipient holds at once. 4.
    pub max_reservations: usize,
    /// A peer that rejected an offer is not offered again for this long. 2 s.
    pub reject_backoff_ms: u64,
    /// Largest packet the agent sends or accepts, bytes. 64 KiB.
    pub max_packet_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tick_ms: 250,
            gossip_fanout: 1,
            gossip_sample: 6,
            max_view: 24,
            view_ttl_ms: 4_000,
            probe_period_ms: 1_000,
            probe_rtt_ms: 400,
            indirect_probes: 3,
            suspect_to_down_ms: 3_000,
            seed_announces: 3,
            rejoin_interval_ms: 5_000,
            threshold: 0.10,
            min_excess: 2.0,
            damping: 0.5,
            reversal_tolerance: 0.05,
            move_budget: 3,
            item_cooldown_ms: 30_000,
            agent_cooldown_ms: 250,
            max_offers_in_flight: 4,
            choices: 2,
            offer_timeout_ms: 1_000,
            reservation_ttl_ms: 60_000,
            max_reservations: 4,
            reject_backoff_ms: 2_000,
            max_packet_bytes: crate::wire::MAX_PACKET_BYTES,
        }
    }
}

/// A configuration that cannot work, and which knob is wrong.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    /// A knob is out of its range.
    #[error("balance config: {field} = {value} is invalid: {why}")]
    Invalid {
        /// The knob.
        field: &'static str,
        /// Its value, printed.
        value: String,
        /// The range it must be in.
        why: &'static str,
    },
}

impl Config {
    /// Checks every knob; the agent refuses a config that fails.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(field: &'static str, value: impl ToString, why: &'static str) -> ConfigError {
            ConfigError::Invalid {
                field,
                value: value.to_string(),
                why,
            }
        }
        let positive = [
            ("tick_ms", self.tick_ms),
            ("view_ttl_ms", self.view_ttl_ms),
            ("probe_period_ms", self.probe_period_ms),
            ("probe_rtt_ms", self.probe_rtt_ms),
            ("suspect_to_down_ms", self.suspect_to_down_ms),
            ("rejoin_interval_ms", self.rejoin_interval_ms),
            ("offer_timeout_ms", self.offer_timeout_ms),
            ("reservation_ttl_ms", self.reservation_ttl_ms),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(bad(field, v, "must be at least 1"));
            }
        }
        let counts = [
            ("gossip_fanout", self.gossip_fanout),
            ("max_view", self.max_view),
            ("indirect_probes", self.indirect_probes),
            ("choices", self.choices),
            ("max_offers_in_flight", self.max_offers_in_flight),
            ("max_reservations", self.max_reservations),
            ("seed_announces", self.seed_announces),
        ];
        for (field, v) in counts {
            if v == 0 {
                return Err(bad(field, v, "must be at least 1"));
            }
        }
        if self.gossip_sample > crate::wire::MAX_ENTRIES - 1 {
            return Err(bad(
                "gossip_sample",
                self.gossip_sample,
                "must be below the wire's entry limit (64)",
            ));
        }
        if self.probe_rtt_ms >= self.probe_period_ms {
            return Err(bad(
                "probe_rtt_ms",
                self.probe_rtt_ms,
                "must be shorter than probe_period_ms",
            ));
        }
        if !(self.threshold.is_finite() && self.threshold >= 0.0) {
            return Err(bad("threshold", self.threshold, "must be a number >= 0"));
        }
        if !(self.min_excess.is_finite() && self.min_excess >= 0.0) {
            return Err(bad("min_excess", self.min_excess, "must be a number >= 0"));
        }
        if !(self.damping > 0.0 && self.damping <= 1.0) {
            return Err(bad("damping", self.damping, "must be in (0, 1]"));
        }
        if !(self.reversal_tolerance.is_finite() && (0.0..1.0).contains(&self.reversal_tolerance)) {
            return Err(bad(
                "reversal_tolerance",
                self.reversal_tolerance,
                "must be in [0, 1)",
            ));
        }
        if !(1024..=crate::wire::MAX_PACKET_BYTES).contains(&self.max_packet_bytes) {
            return Err(bad(
                "max_packet_bytes",
                self.max_packet_bytes,
                "must be 1024 to 65536",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_knobs_are_named() {
        assert_eq!(Config::default().validate(), Ok(()));
        let c = Config {
            damping: 0.0,
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("damping"), "{e}");
        let c = Config {
            probe_rtt_ms: 2_000,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("probe_rtt_ms"));
        let c = Config {
            reversal_tolerance: 1.0,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("reversal_tolerance"));
    }
}
