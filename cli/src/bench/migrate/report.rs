//! The rows of `herd bench migrate` and how they are printed: a Markdown
//! table for docs/benchmarks.md, or `-o json`. Pure: no process is started
//! here, so the shapes and the goal arithmetic are unit-tested.

use herd_api::resources::display_memory;
use serde_json::{json, Value};

use super::breakdown::Breakdown;

/// The goal: herd's total time within this factor of QEMU's own.
pub const TOTAL_GOAL: f64 = 1.2;

/// What herd measured for one migration.
#[derive(Debug, Clone, PartialEq)]
pub struct HerdFigures {
    /// Start to switch-over, from the migration record (`total_ms`).
    pub total_ms: u64,
    /// The pause this row reports: for a VM the record's `downtime_ms`
    /// (QEMU's stop-and-copy, as the source agent read it from
    /// `query-migrate`); for a DL job the trainer's stop to its first step
    /// on the target, timed by the bench from the two logs.
    pub downtime_ms: Option<u64>,
    /// The record's own `downtime_ms` (for a DL job: stop to switch-over).
    pub record_downtime_ms: Option<u64>,
    /// Bytes moved, from the record.
    pub bytes: u64,
    /// Rounds (pre-copy passes), from the record.
    pub rounds: u32,
    /// From the bench first seeing the record in `switching` (the source
    /// done) to the workload seen running on the target: the wait for the
    /// switch-over's Raft commit, the target's assignment and its start.
    pub resumed_after_ms: Option<u64>,
    /// Each phase the bench saw the record in, with when it first saw it
    /// (ms from the start request), polling every 10 ms.
    pub phases: Vec<(String, u64)>,
    /// The agents' timing marks of the move, when they logged them.
    pub breakdown: Option<Breakdown>,
}

impl HerdFigures {
    /// How long the guest really ran nowhere: from the source VM's stop to
    /// the target's `cont` (which waits for the switch-over), when the
    /// marks say; QEMU's own downtime ends earlier, when the source has
    /// sent everything.
    pub fn guest_paused_ms(&self) -> Option<u64> {
        self.breakdown
            .as_ref()?
            .guest_paused_ms
            .map(|ms| ms.max(0.0).round() as u64)
    }
}

/// What QEMU alone measured for the same VM (`query-migrate`).
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineFigures {
    /// QEMU's `total-time`: `migrate` to `completed`.
    pub total_ms: u64,
    /// QEMU's `downtime`.
    pub downtime_ms: u64,
    /// Starting the incoming QEMU until it listens (not in `total_ms`;
    /// herd's total includes its equivalent).
    pub setup_ms: u64,
    /// `migrate` sent to `completed` seen, polling as often as herd's
    /// driver polls.
    pub polled_ms: u64,
    /// RAM bytes transferred.
    pub bytes: u64,
    /// Dirty-sync count.
    pub rounds: u32,
}

/// One row: one migration of one kind, size and load.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `vm`, `dljob` or `simvm`.
    pub kind: &'static str,
    /// Memory of the VM, or the checkpoint's padding.
    pub size_bytes: u64,
    /// `idle`, `dirty N MiB/s`, ... (what the workload did meanwhile).
    pub load: String,
    /// Which repetition (1-based).
    pub run: u32,
    /// The downtime limit the migration was given, ms.
    pub downtime_limit_ms: u64,
    /// herd's figures; `None` when the row could not be measured.
    pub herd: Option<HerdFigures>,
    /// QEMU alone's figures, for real-VM rows.
    pub baseline: Option<BaselineFigures>,
    /// Why a figure is missing, or anything a reader must know.
    pub note: Option<String>,
}

/// Whether a real-VM row meets the goal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Goal {
    /// herd's total ≤ [`TOTAL_GOAL`] × QEMU's.
    pub total: bool,
    /// herd's downtime ≤ the limit.
    pub downtime: bool,
}

impl Goal {
    /// Both parts hold.
    pub fn met(self) -> bool {
        self.total && self.downtime
    }
}

impl BaselineFigures {
    /// QEMU alone from end to end, as herd's total counts its own move:
    /// starting the target QEMU until it listens, then `migrate` until
    /// `completed` was seen.
    pub fn start_and_move_ms(&self) -> u64 {
        self.setup_ms.saturating_add(self.polled_ms)
    }
}

impl Row {
    /// herd's total over QEMU alone's `total-time` (the yardstick:
    /// `migrate` between two QEMUs already started), when both were
    /// measured.
    pub fn ratio(&self) -> Option<f64> {
        let herd = self.herd.as_ref()?;
        let base = self.baseline.as_ref()?;
        (base.total_ms > 0).then(|| herd.total_ms as f64 / base.total_ms as f64)
    }

    /// herd's total over QEMU alone from end to end
    /// ([`BaselineFigures::start_and_move_ms`]): the same work on both
    /// sides, a target QEMU started and the VM moved.
    pub fn ratio_end_to_end(&self) -> Option<f64> {
        let herd = self.herd.as_ref()?;
        let base = self.baseline.as_ref()?.start_and_move_ms();
        (base > 0).then(|| herd.total_ms as f64 / base as f64)
    }

    /// The pause the goal judges: the guest's real pause where the marks
    /// give it, else the recorded downtime.
    pub fn judged_downtime_ms(&self) -> Option<u64> {
        let herd = self.herd.as_ref()?;
        herd.guest_paused_ms().or(herd.downtime_ms)
    }

    /// The goal's verdict, for rows with a baseline.
    pub fn goal(&self) -> Option<Goal> {
        let ratio = self.ratio()?;
        let downtime = self.judged_downtime_ms()?;
        Some(Goal {
            total: ratio <= TOTAL_GOAL,
            downtime: downtime <= self.downtime_limit_ms,
        })
    }

    /// The goal column: `yes`, `no (...)` naming what missed, or `-`.
    pub fn goal_text(&self) -> String {
        let Some(goal) = self.goal() else {
            return "-".to_string();
        };
        if goal.met() {
            return "yes".to_string();
        }
        let mut missed = Vec::new();
        if !goal.total {
            missed.push(format!("total > {TOTAL_GOAL}×"));
        }
        if !goal.downtime {
            missed.push(format!("downtime > {} ms", self.downtime_limit_ms));
        }
        format!("no ({})", missed.join(", "))
    }

    /// The row's `-o json` object (field names are a stable interface).
    pub fn to_json(&self) -> Value {
        let herd = self.herd.as_ref();
        let base = self.baseline.as_ref();
        json!({
            "kind": self.kind,
            "size": display_memory(self.size_bytes),
            "size_bytes": self.size_bytes,
            "load": self.load,
            "run": self.run,
            "downtime_limit_ms": self.downtime_limit_ms,
            "herd_total_ms": herd.map(|h| h.total_ms),
            "herd_downtime_ms": herd.and_then(|h| h.downtime_ms),
            "record_downtime_ms": herd.and_then(|h| h.record_downtime_ms),
            "resumed_after_ms": herd.and_then(|h| h.resumed_after_ms),
            "phases_seen_ms": herd.map(|h| h.phases
                .iter()
                .map(|(phase, ms)| (phase.clone(), json!(ms)))
                .collect::<serde_json::Map<String, Value>>()),
            "guest_paused_ms": herd.and_then(HerdFigures::guest_paused_ms),
            "herd_qemu_total_ms": herd.and_then(|h| h.breakdown.as_ref()?.qemu_total_ms),
            "timeline_ms": herd.and_then(|h| h.breakdown.as_ref()).map(|b| b.timeline
                .iter()
                .map(|(mark, ms)| json!([mark, (ms * 10.0).round() / 10.0]))
                .collect::<Vec<Value>>()),
            "bytes": herd.map(|h| h.bytes),
            "rounds": herd.map(|h| h.rounds),
            "baseline_total_ms": base.map(|b| b.total_ms),
            "baseline_downtime_ms": base.map(|b| b.downtime_ms),
            "baseline_setup_ms": base.map(|b| b.setup_ms),
            "baseline_polled_ms": base.map(|b| b.polled_ms),
            "baseline_start_and_move_ms": base.map(BaselineFigures::start_and_move_ms),
            "baseline_bytes": base.map(|b| b.bytes),
            "baseline_rounds": base.map(|b| b.rounds),
            "ratio": self.ratio().map(|r| (r * 100.0).round() / 100.0),
            "ratio_end_to_end": self.ratio_end_to_end().map(|r| (r * 100.0).round() / 100.0),
            "goal_met": self.goal().map(Goal::met),
            "note": self.note,
        })
    }

    fn cells(&self) -> Vec<String> {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let herd = self.herd.as_ref();
        let base = self.baseline.as_ref();
        let times = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}×"));
        vec![
            self.kind.to_string(),
            display_memory(self.size_bytes),
            self.load.clone(),
            opt(herd.map(|h| h.total_ms)),
            opt(herd.and_then(|h| h.downtime_ms)),
            opt(herd.and_then(HerdFigures::guest_paused_ms)),
            opt(herd.and_then(|h| h.resumed_after_ms)),
            herd.map_or("-".to_string(), |h| mib(h.bytes)),
            opt(herd.map(|h| u64::from(h.rounds))),
            opt(base.map(|b| b.total_ms)),
            opt(base.map(|b| b.downtime_ms)),
            opt(base.map(|b| b.setup_ms)),
            opt(base.map(BaselineFigures::start_and_move_ms)),
            times(self.ratio()),
            times(self.ratio_end_to_end()),
            self.goal_text(),
            self.note.clone().unwrap_or_default(),
        ]
    }

    /// The row's breakdown line: where herd's time went (see
    /// [`breakdown_lines`]); None without marks.
    fn breakdown_line(&self) -> Option<String> {
        let herd = self.herd.as_ref()?;
        let b = herd.breakdown.as_ref()?;
        if b.timeline.is_empty() {
            return None;
        }
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        let target_ready = b.at("source.target_ready");
        let sent = b.at("vm.out.migrate_sent");
        let seen = b.at("vm.out.completed");
        Some(format!(
            "- {} {} {}: planned committed {} · target readies {} (QEMU runs {} → QMP up {} → listening {}) · source sees it ready {} · `migrate` sent {} · completion seen {} (QEMU's own total-time {}) · target confirmed {} · switch-over committed {} · target resumed {} ms after the request (the record's phases seen by the bench: {})",
            self.kind,
            display_memory(self.size_bytes),
            self.load,
            ms(b.at("leader.planned")),
            ms(b.at("vm.in.begin")),
            ms(b.at("vm.in.spawned")),
            ms(b.at("vm.in.qmp_up")),
            ms(b.at("vm.in.listening")),
            ms(target_ready),
            ms(sent),
            ms(seen),
            b.qemu_total_ms.map_or("-".to_string(), |t| t.to_string()),
            ms(b.at("source.target_confirmed")),
            ms(b.at("leader.switched")),
            ms(b.at("vm.in.resumed")),
            phases_text(&herd.phases),
        ))
    }
}

/// `prep 12 · xfer 150 · switch 330 · done 350`: when each phase was
/// first seen.
fn phases_text(phases: &[(String, u64)]) -> String {
    phases
        .iter()
        .filter(|(phase, _)| phase != "planned")
        .map(|(phase, ms)| {
            let short = match phase.as_str() {
                "preparing" => "prep",
                "transferring" => "xfer",
                "switching" => "switch",
                "completed" => "done",
                other => other,
            };
            format!("{short} {ms}")
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1u32 << 20))
}

/// The table's header.
pub const HEADER: [&str; 17] = [
    "kind",
    "size",
    "load",
    "herd total ms",
    "herd downtime ms",
    "guest paused ms",
    "resumed +ms",
    "MiB moved",
    "rounds",
    "QEMU total ms",
    "QEMU downtime ms",
    "QEMU setup ms",
    "QEMU start+move ms",
    "ratio",
    "ratio (start+move)",
    "goal",
    "note",
];

/// The rows as one Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = format!("| {} |\n", HEADER.join(" | "));
    out.push_str(&format!("|{}\n", "---|".repeat(HEADER.len())));
    for row in rows {
        out.push_str(&format!("| {} |\n", row.cells().join(" | ")));
    }
    out
}

/// One line per row with marks: when each step of herd's move happened,
/// in ms after the start request (the agents' timing marks and the
/// record's leader-stamped start and end, on one host's clock).
pub fn breakdown_lines(rows: &[Row]) -> String {
    rows.iter()
        .filter_map(Row::breakdown_line)
        .map(|line| line + "\n")
        .collect()
}

/// The rows as the `-o json` array.
pub fn json_rows(rows: &[Row]) -> Value {
    Value::Array(rows.iter().map(Row::to_json).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_row(herd_total: u64, herd_down: u64, base_total: u64) -> Row {
        Row {
            kind: "vm",
            size_bytes: 128 << 20,
            load: "idle".into(),
            run: 1,
            downtime_limit_ms: 300,
            herd: Some(HerdFigures {
                total_ms: herd_total,
                downtime_ms: Some(herd_down),
                record_downtime_ms: Some(herd_down),
                bytes: 3 << 20,
                rounds: 4,
                resumed_after_ms: Some(40),
                phases: vec![
                    ("planned".into(), 3),
                    ("preparing".into(), 12),
                    ("transferring".into(), 150),
                    ("completed".into(), 350),
                ],
                breakdown: None,
            }),
            baseline: Some(BaselineFigures {
                total_ms: base_total,
                downtime_ms: 20,
                setup_ms: 150,
                polled_ms: 200,
                bytes: 3 << 20,
                rounds: 3,
            }),
            note: None,
        }
    }

    #[test]
    fn the_ratio_and_the_goal_follow_the_figures() {
        let met = vm_row(1100, 250, 1000);
        assert_eq!(met.ratio(), Some(1.1));
        assert_eq!(met.goal_text(), "yes");
        let slow = vm_row(1300, 250, 1000);
        assert_eq!(slow.goal_text(), "no (total > 1.2×)");
        let both = vm_row(2500, 301, 1000);
        assert_eq!(both.goal_text(), "no (total > 1.2×, downtime > 300 ms)");
        // At the bound exactly, the goal holds.
        assert!(vm_row(1200, 300, 1000).goal().is_some_and(Goal::met));
        // The end-to-end ratio counts QEMU alone's start of its target.
        assert_eq!(met.ratio_end_to_end(), Some(1100.0 / 350.0));
        // The guest's real pause, where marks give it, is what is judged.
        let mut paused = vm_row(1100, 250, 1000);
        paused.herd.as_mut().expect("herd").breakdown = Some(Breakdown {
            guest_paused_ms: Some(320.4),
            ..Breakdown::default()
        });
        assert_eq!(paused.judged_downtime_ms(), Some(320));
        assert_eq!(paused.goal_text(), "no (downtime > 300 ms)");
        // No baseline (or a zero one): no ratio, no verdict.
        let mut lone = vm_row(1000, 10, 0);
        assert_eq!(lone.ratio(), None);
        lone.baseline = None;
        assert_eq!(lone.goal_text(), "-");
    }

    #[test]
    fn json_rows_carry_the_documented_fields_with_nulls_for_what_is_missing() {
        let missing = Row {
            kind: "simvm",
            size_bytes: 1 << 30,
            load: "dirty 64 MiB/s".into(),
            run: 1,
            downtime_limit_ms: 300,
            herd: None,
            baseline: None,
            note: Some("not available: ...".into()),
        };
        let value = json_rows(&[vm_row(1500, 200, 1000), missing]);
        let rows = value.as_array().expect("an array");
        assert_eq!(rows.len(), 2);
        for key in [
            "kind",
            "size",
            "load",
            "herd_total_ms",
            "herd_downtime_ms",
            "bytes",
            "rounds",
            "baseline_total_ms",
            "baseline_downtime_ms",
            "ratio",
        ] {
            assert!(rows[0].get(key).is_some(), "{key} in {}", rows[0]);
            assert!(rows[1].get(key).is_some(), "{key} in {}", rows[1]);
        }
        assert_eq!(rows[0]["ratio"], json!(1.5));
        assert_eq!(rows[0]["goal_met"], json!(false));
        assert_eq!(rows[0]["size"], json!("128MiB"));
        assert_eq!(rows[0]["phases_seen_ms"]["transferring"], json!(150));
        assert_eq!(rows[1]["herd_total_ms"], Value::Null);
        assert_eq!(rows[1]["ratio"], Value::Null);
        assert_eq!(rows[1]["note"], json!("not available: ..."));
    }

    #[test]
    fn the_table_has_one_line_per_row_under_its_header() {
        let text = markdown(&[vm_row(1100, 250, 1000)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("| kind | size | load |"), "{text}");
        assert_eq!(
            lines[2],
            "| vm | 128MiB | idle | 1100 | 250 | - | 40 | 3.0 | 4 | 1000 | 20 | 150 | 350 | 1.10× | 3.14× | yes |  |"
        );
        // Every line has as many cells as the header.
        let cells = |l: &str| l.matches('|').count();
        assert!(lines.iter().all(|l| cells(l) == cells(lines[0])), "{text}");
    }

    #[test]
    fn a_breakdown_line_names_each_step_with_its_time() {
        let mut row = vm_row(150, 2, 60);
        assert_eq!(breakdown_lines(std::slice::from_ref(&row)), "");
        row.herd.as_mut().expect("herd").breakdown = Some(Breakdown {
            timeline: vec![
                ("leader.planned".into(), 2.4),
                ("vm.in.spawned".into(), 20.0),
                ("vm.in.qmp_up".into(), 55.2),
                ("vm.out.completed".into(), 120.0),
            ],
            qemu_total_ms: Some(58),
            ..Breakdown::default()
        });
        let line = breakdown_lines(&[row]);
        assert!(line.starts_with("- vm 128MiB idle: planned committed 2 · target readies - (QEMU runs 20 → QMP up 55"), "{line}");
        assert!(
            line.contains("completion seen 120 (QEMU's own total-time 58)"),
            "{line}"
        );
        assert!(line.contains("listening -"), "{line}");
        assert!(
            line.ends_with(
                "(the record's phases seen by the bench: prep 12 · xfer 150 · done 350)\n"
            ),
            "{line}"
        );
    }
}
