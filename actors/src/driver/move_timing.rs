//! Timing marks of a migration's steps, written to the agent's log so that
//! `herd bench migrate` can say where a move's time goes (docs/benchmarks.md,
//! the breakdown of the real-VM rows) without a debugger or extra API.
//!
//! Each mark is one log line at `info` on the target [`TARGET`]:
//!
//! ```text
//! ... INFO herd::migration_timing: migration timing alloc=web-0-3 mark=vm.in.qmp_up at_us=1765012345678901
//! ```
//!
//! `at_us` is the wall clock in microseconds since the Unix epoch: the two
//! agents of a move and the bench read the same clock on one host, so marks
//! from both sides line up. A mark costs one log line; a move writes about
//! twenty, so they are always on.

use std::time::{SystemTime, UNIX_EPOCH};

/// The `tracing` target of every mark (filter it with
/// `HERD_LOG=info,herd::migration_timing=off` to silence them).
pub const TARGET: &str = "herd::migration_timing";
/// The message every mark carries, which the bench looks for.
pub const MESSAGE: &str = "migration timing";

/// Microseconds since the Unix epoch, now (0 before it).
pub fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Logs `mark` for the move of `alloc`, stamped now; `detail` carries
/// figures that belong to the mark (QEMU's own times), `key=value` pairs
/// separated by spaces, or nothing.
pub fn mark(alloc: &str, mark: &str, detail: &str) {
    if detail.is_empty() {
        tracing::info!(target: TARGET, alloc = %alloc, mark = %mark, at_us = wall_us(), "{MESSAGE}");
    } else {
        tracing::info!(target: TARGET, alloc = %alloc, mark = %mark, at_us = wall_us(), detail = %detail, "{MESSAGE}");
    }
}

/// One mark read back from a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The allocation that moved.
    pub alloc: String,
    /// Which step.
    pub mark: String,
    /// When, µs since the Unix epoch.
    pub at_us: u64,
    /// The mark's `key=value` figures, if any.
    pub detail: Vec<(String, String)>,
}

/// Reads a mark from one line of an agent's log (as [`mark`] writes it);
/// None for any other line.
pub fn parse(line: &str) -> Option<Mark> {
    let rest = &line[line.find(MESSAGE)? + MESSAGE.len()..];
    let field = |name: &str| -> Option<&str> {
        let key = format!(" {name}=");
        let start = rest.find(&key)? + key.len();
        let value = &rest[start..];
        Some(value.split(' ').next().unwrap_or(value))
    };
    let detail = match rest.find(" detail=") {
        Some(start) => rest[start + " detail=".len()..]
            .split(' ')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        None => Vec::new(),
    };
    Some(Mark {
        alloc: field("alloc")?.to_string(),
        mark: field("mark")?.to_string(),
        at_us: field("at_us")?.parse().ok()?,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_line_reads_back_with_its_figures_and_others_do_not() {
        let line = "2026-12-06T07:00:00.123456Z  INFO herd::migration_timing: migration timing alloc=web-0-3 mark=vm.out.completed at_us=1765012345678901 detail=qemu_total_ms=61 downtime_ms=2";
        let m = parse(line).expect("a mark");
        assert_eq!(m.alloc, "web-0-3");
        assert_eq!(m.mark, "vm.out.completed");
        assert_eq!(m.at_us, 1_765_012_345_678_901);
        assert_eq!(
            m.detail,
            vec![
                ("qemu_total_ms".to_string(), "61".to_string()),
                ("downtime_ms".to_string(), "2".to_string())
            ]
        );
        let bare =
            "x INFO herd::migration_timing: migration timing alloc=a mark=source.begin at_us=7";
        assert_eq!(parse(bare).map(|m| (m.at_us, m.detail.len())), Some((7, 0)));
        assert_eq!(parse("INFO herd_node: migrated out alloc=a"), None);
        assert_eq!(parse("migration timing alloc=a mark=b at_us=soon"), None);
    }
}
