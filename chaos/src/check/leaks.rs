//! No leaked processes: after teardown, no process of the run (coordinator,
//! agent, workload) is still alive.

use super::Verdict;
use crate::history::{History, Record};

/// Checks the history's leftover record.
pub fn check_history(history: &History) -> Verdict {
    let leftovers = history.records.iter().rev().find_map(|r| match r {
        Record::Leftovers { processes } => Some(processes.clone()),
        _ => None,
    });
    match leftovers {
        Some(processes) => check(&processes),
        None => Verdict::Unknown("leftover processes were never looked for".into()),
    }
}

/// Passes when `leftovers` is empty.
pub fn check(leftovers: &[String]) -> Verdict {
    if leftovers.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!(
            "{} processes outlived the run: {}",
            leftovers.len(),
            leftovers.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leftover_fails() {
        assert_eq!(check(&[]), Verdict::Pass);
        assert!(check(&["4242 sleep 600".to_string()]).is_fail());
    }
}
