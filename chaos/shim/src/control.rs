//! The control file: what faults are in force, re-read as it changes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;

/// How often, at most, the control file is read again.
const RELOAD_EVERY_NS: u64 = 25_000_000;

/// The faults a control file asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added before every fsync-like call, ms.
    pub fsync_delay_ms: u64,
    /// Added to every wall-clock reading, ms.
    pub clock_offset_ms: i64,
}

/// Parses a control file: `key=value` lines, `#` comments. Lines it cannot
/// read are skipped: a library inside someone else's process has nobody to
/// report to, and a half-written value must not crash the process.
pub fn parse(text: &str) -> Faults {
    let mut faults = Faults::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key.trim() {
            "fsync_delay_ms" => {
                if let Ok(ms) = value.trim().parse() {
                    faults.fsync_delay_ms = ms;
                }
            }
            "clock_offset_ms" => {
                if let Ok(ms) = value.trim().parse() {
                    faults.clock_offset_ms = ms;
                }
            }
            _ => {}
        }
    }
    faults
}

static FSYNC_DELAY_MS: AtomicU64 = AtomicU64::new(0);
static CLOCK_OFFSET_MS: AtomicI64 = AtomicI64::new(0);
/// Monotonic time of the next read of the file; 0 before the first.
static NEXT_RELOAD_NS: AtomicU64 = AtomicU64::new(0);

fn control_path() -> Option<&'static PathBuf> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| std::env::var_os("HERD_SHIM_CONTROL").map(PathBuf::from))
        .as_ref()
}

/// The faults in force now.
pub fn current() -> Faults {
    refresh();
    Faults {
        fsync_delay_ms: FSYNC_DELAY_MS.load(Ordering::Relaxed),
        clock_offset_ms: CLOCK_OFFSET_MS.load(Ordering::Relaxed),
    }
}

/// Re-reads the control file when the last read is old enough. One thread
/// reads; the others use the values they find meanwhile.
fn refresh() {
    let Some(path) = control_path() else {
        return;
    };
    let now = crate::real::monotonic_ns();
    let due = NEXT_RELOAD_NS.load(Ordering::Relaxed);
    if now < due {
        return;
    }
    if NEXT_RELOAD_NS
        .compare_exchange(
            due,
            now + RELOAD_EVERY_NS,
            Ordering::Relaxed,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return;
    }
    // A missing file means no faults (the harness may not have written one).
    let faults = std::fs::read_to_string(path)
        .map(|text| parse(&text))
        .unwrap_or_default();
    FSYNC_DELAY_MS.store(faults.fsync_delay_ms, Ordering::Relaxed);
    CLOCK_OFFSET_MS.store(faults.clock_offset_ms, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_settings_and_skips_what_it_cannot_read() {
        let faults =
            parse("# set by the harness\nfsync_delay_ms=250\nclock_offset_ms = -3600000\n");
        assert_eq!(
            faults,
            Faults {
                fsync_delay_ms: 250,
                clock_offset_ms: -3_600_000
            }
        );
        let faults = parse("fsync_delay_ms=lots\nnonsense\nclock_offset_ms=5\nwho=cares\n");
        assert_eq!(
            faults,
            Faults {
                fsync_delay_ms: 0,
                clock_offset_ms: 5
            }
        );
        assert_eq!(parse(""), Faults::default());
    }
}
