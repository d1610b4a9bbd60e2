//! Wall-clock time as herd stamps it on records (events, reports, commands).
//!
//! One definition for every crate, so that every stamp means the same
//! thing. Wall-clock stamps are for people and records only: timers that
//! decide anything use the runtime's monotonic clock (`tokio::time`), which
//! the deterministic simulation controls.

use std::sync::OnceLock;

/// Where stamps may come from instead of the system clock: a function
/// giving ms since the Unix epoch, or None to read the system clock.
pub type ClockSource = fn() -> Option<u64>;

static SOURCE: OnceLock<ClockSource> = OnceLock::new();

/// Makes [`now_ms`] ask `source` first, for the rest of the process (once:
/// a second call changes nothing and returns false). The deterministic
/// simulation (`chaos/sim`) sets it, so that the stamps of a simulated
/// cluster (migration and drain deadlines, which the leader compares with
/// [`now_ms`]) follow simulated time, as its timers do; outside a
/// simulation its source says None and the system clock is read.
pub fn set_source(source: ClockSource) -> bool {
    SOURCE.set(source).is_ok()
}

/// Milliseconds since the Unix epoch; 0 when the clock is set before it.
pub fn now_ms() -> u64 {
    if let Some(ms) = SOURCE.get().and_then(|source| source()) {
        return ms;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stamps_are_after_2020_and_do_not_go_back_within_a_call_pair() {
        let first = super::now_ms();
        let second = super::now_ms();
        assert!(first > 1_577_836_800_000, "clock before 2020: {first}");
        assert!(second >= first);
    }
}
