//! Converged within bound: after the last fault healed, the cluster was
//! whole again (a leader, every node ready, every service at its count)
//! within the scenario's bound.

use super::Verdict;
use crate::history::{History, Record};

/// Checks the history's convergence record.
pub fn check_history(history: &History) -> Verdict {
    let record = history.records.iter().rev().find_map(|r| match r {
        Record::Converged {
            healed_ns,
            at_ns,
            bound_ns,
        } => Some((*healed_ns, *at_ns, *bound_ns)),
        _ => None,
    });
    match record {
        Some((healed, at, bound)) => check(healed, at, bound),
        None => Verdict::Unknown("convergence was never measured".into()),
    }
}

/// Whether convergence at `at_ns` (None: never seen) was within `bound_ns` of `healed_ns`.
pub fn check(healed_ns: u64, at_ns: Option<u64>, bound_ns: u64) -> Verdict {
    match at_ns {
        Some(at) if at.saturating_sub(healed_ns) <= bound_ns => Verdict::Pass,
        Some(at) => Verdict::Fail(format!(
            "converged {} ms after the heal, bound {} ms",
            at.saturating_sub(healed_ns) / 1_000_000,
            bound_ns / 1_000_000
        )),
        None => Verdict::Fail(format!(
            "not converged within {} ms of the heal",
            bound_ns / 1_000_000
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_the_bound_passes_and_beyond_fails() {
        assert_eq!(check(100, Some(150), 100), Verdict::Pass);
        assert!(check(100, Some(250), 100).is_fail());
        assert!(check(100, None, 100).is_fail());
        assert!(matches!(
            check_history(&History::default()),
            Verdict::Unknown(_)
        ));
    }
}
