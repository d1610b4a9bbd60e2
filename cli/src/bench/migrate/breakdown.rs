//! Where one herd move's time goes: the timing marks both agents logged for
//! it (`herd_actors::driver::move_timing`), put on one time line that starts
//! at the bench's start request, plus the figures derived from them that
//! docs/benchmarks.md tabulates (when the target was ready, QEMU's own part,
//! the switch-over, how long the guest was really paused).

use std::path::Path;

use herd_actors::driver::move_timing::{self, Mark};

/// One move's marks, on the bench's clock.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Breakdown {
    /// Every mark of the move, in time order: its name and ms since the
    /// start request was sent (negative: a clock step, never expected).
    pub timeline: Vec<(String, f64)>,
    /// QEMU's own `total-time` of herd's move (`migrate` to completed, as
    /// the source's `query-migrate` said).
    pub qemu_total_ms: Option<u64>,
    /// QEMU's own `setup-time` of herd's move.
    pub qemu_setup_ms: Option<u64>,
    /// From the source VM's stop (its completion seen, less QEMU's
    /// downtime) to the target's `cont`: how long the guest ran nowhere.
    pub guest_paused_ms: Option<f64>,
}

impl Breakdown {
    /// When `mark` happened, ms after the start request.
    pub fn at(&self, mark: &str) -> Option<f64> {
        self.timeline
            .iter()
            .find(|(name, _)| name == mark)
            .map(|(_, ms)| *ms)
    }
}

/// The marks of `alloc` in the logs at `logs`, put on a time line from
/// `requested_us` (the wall clock, µs, when the start request was sent).
/// `planned_ms` and `ended_ms` (the record's leader-stamped start and end,
/// ms) join the line as `leader.planned` and `leader.switched`.
pub fn read(
    logs: &[&Path],
    alloc: &str,
    requested_us: u64,
    planned_ms: Option<u64>,
    ended_ms: Option<u64>,
) -> Breakdown {
    let mut marks: Vec<Mark> = Vec::new();
    for log in logs {
        let Ok(text) = std::fs::read_to_string(log) else {
            continue;
        };
        marks.extend(
            text.lines()
                .filter_map(move_timing::parse)
                .filter(|m| m.alloc == alloc),
        );
    }
    from_marks(marks, requested_us, planned_ms, ended_ms)
}

/// [`read`] on marks already parsed.
pub fn from_marks(
    mut marks: Vec<Mark>,
    requested_us: u64,
    planned_ms: Option<u64>,
    ended_ms: Option<u64>,
) -> Breakdown {
    for (name, ms) in [
        ("leader.planned", planned_ms),
        ("leader.switched", ended_ms),
    ] {
        if let Some(ms) = ms {
            marks.push(Mark {
                alloc: String::new(),
                mark: name.to_string(),
                at_us: ms.saturating_mul(1000),
                detail: Vec::new(),
            });
        }
    }
    marks.sort_by_key(|m| m.at_us);
    let since = |at_us: u64| (at_us as f64 - requested_us as f64) / 1000.0;
    let figure = |mark: &Mark, key: &str| -> Option<u64> {
        mark.detail
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse().ok())
    };
    // QEMU leaves `total-time` out of some completed answers (read as 0):
    // unknown, not instant.
    let nonzero = |v: Option<u64>| v.filter(|ms| *ms > 0);
    let completed = marks.iter().find(|m| m.mark == "vm.out.completed");
    let resumed = marks.iter().find(|m| m.mark == "vm.in.resumed");
    let guest_paused_ms = match (completed, resumed) {
        (Some(done), Some(resumed)) => figure(done, "downtime_ms")
            .map(|down| (resumed.at_us as f64 - done.at_us as f64) / 1000.0 + down as f64),
        _ => None,
    };
    Breakdown {
        qemu_total_ms: nonzero(completed.and_then(|m| figure(m, "qemu_total_ms"))),
        qemu_setup_ms: nonzero(completed.and_then(|m| figure(m, "qemu_setup_ms"))),
        guest_paused_ms,
        timeline: marks
            .iter()
            .map(|m| (m.mark.clone(), since(m.at_us)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(name: &str, at_us: u64, detail: &[(&str, &str)]) -> Mark {
        Mark {
            alloc: "a".into(),
            mark: name.into(),
            at_us,
            detail: detail
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn marks_line_up_from_the_request_and_the_pause_runs_to_the_targets_cont() {
        let marks = vec![
            mark("vm.in.resumed", 1_180_000, &[]),
            mark("source.begin", 1_006_000, &[]),
            mark(
                "vm.out.completed",
                1_150_000,
                &[("qemu_total_ms", "60"), ("downtime_ms", "4")],
            ),
        ];
        let b = from_marks(marks, 1_000_000, Some(1_003), Some(1_160));
        let names: Vec<&str> = b.timeline.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "leader.planned",
                "source.begin",
                "vm.out.completed",
                "leader.switched",
                "vm.in.resumed"
            ]
        );
        assert_eq!(b.at("source.begin"), Some(6.0));
        assert_eq!(b.at("leader.switched"), Some(160.0));
        assert_eq!(b.qemu_total_ms, Some(60));
        // 30 ms from the completion seen to cont, plus QEMU's 4 ms before.
        assert_eq!(b.guest_paused_ms, Some(34.0));
    }

    #[test]
    fn only_the_allocs_marks_are_read_from_the_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("node.log");
        std::fs::write(
            &log,
            "t INFO herd::migration_timing: migration timing alloc=a mark=source.begin at_us=2000\n\
             t INFO herd::migration_timing: migration timing alloc=b mark=source.begin at_us=2500\n\
             t INFO herd_node: something else\n",
        )
        .expect("write");
        let b = read(&[log.as_path()], "a", 1000, None, None);
        assert_eq!(b.timeline, vec![("source.begin".to_string(), 1.0)]);
        assert_eq!(b.guest_paused_ms, None);
    }
}
