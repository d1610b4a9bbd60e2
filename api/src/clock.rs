//! Wall-clock time as herd stamps it on records (events, reports, commands).
//!
//! One definition for every crate, so that every stamp means the same
//! thing. Wall-clock stamps are for people and records only: timers that
//! decide anything use the runtime's monotonic clock (`tokio::time`), which
//! the deterministic simulation controls.

/// Milliseconds since the Unix epoch; 0 when the clock is set before it.
pub fn now_ms() -> u64 {
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
