//! A seeded schedule of fault windows: when each fault starts, how long it
//! lasts, and which kind it is.

use std::time::Duration;

use super::rng::Rng;
use super::Fault;

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// When to inject it, from the start of the run.
    pub start: Duration,
    /// How long to leave it before healing.
    pub length: Duration,
    /// What to inject.
    pub fault: Fault,
}

/// Timing of a schedule.
#[derive(Debug, Clone)]
pub struct ScheduleShape {
    /// Quiet time before the first fault (a baseline for availability).
    pub warmup: Duration,
    /// Shortest and longest fault, ms.
    pub fault_ms: (u64, u64),
    /// Shortest and longest quiet gap after a heal, ms (room to recover).
    pub gap_ms: (u64, u64),
}

/// Faults of 1.5-4 s: long enough for an election, short enough for
/// several in a run.
pub const SHORT_FAULTS_MS: (u64, u64) = (1500, 4000);

impl Default for ScheduleShape {
    fn default() -> Self {
        Self {
            warmup: Duration::from_secs(2),
            fault_ms: SHORT_FAULTS_MS,
            gap_ms: (2500, 4500),
        }
    }
}

/// Plans fault windows from `faults` until `duration`; every window heals
/// before `duration`, and at least one is planned when anything fits.
pub fn plan(
    rng: &mut Rng,
    faults: &[Fault],
    duration: Duration,
    shape: &ScheduleShape,
) -> Vec<Window> {
    let mut windows = Vec::new();
    if faults.is_empty() {
        return windows;
    }
    let end = duration.as_millis() as u64;
    let mut at = shape.warmup.as_millis() as u64;
    loop {
        let length = rng.between(shape.fault_ms.0, shape.fault_ms.1);
        let Some(fault) = rng.pick(faults).copied() else {
            break;
        };
        if at + length > end {
            // A short run still gets one (shorter) fault if there is room.
            if windows.is_empty() && at + shape.fault_ms.0 <= end {
                windows.push(Window {
                    start: Duration::from_millis(at),
                    length: Duration::from_millis(end - at),
                    fault,
                });
            }
            break;
        }
        windows.push(Window {
            start: Duration::from_millis(at),
            length: Duration::from_millis(length),
            fault,
        });
        at += length + rng.between(shape.gap_ms.0, shape.gap_ms.1);
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_follows_from_its_seed_and_fits_the_run() {
        let faults = [Fault::KillLeader, Fault::PauseOne];
        let shape = ScheduleShape::default();
        let a = plan(&mut Rng::new(3), &faults, Duration::from_secs(30), &shape);
        let b = plan(&mut Rng::new(3), &faults, Duration::from_secs(30), &shape);
        assert_eq!(a, b);
        assert!(a.len() >= 3, "{a:?}");
        for pair in a.windows(2) {
            assert!(pair[0].start + pair[0].length < pair[1].start);
        }
        let last = a.last().unwrap();
        assert!(last.start + last.length <= Duration::from_secs(30));
        let short = plan(&mut Rng::new(3), &faults, Duration::from_secs(4), &shape);
        assert_eq!(short.len(), 1);
    }
}
