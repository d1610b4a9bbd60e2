//! A timeline of a run as hand-written SVG: one row per client with each
//! operation as a bar from invocation to completion (green ok, red failed,
//! orange unknown), fault windows shaded behind them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::history::{History, Outcome};

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders `history` as an SVG document.
pub fn timeline(history: &History, title: &str) -> String {
    let mut rows: BTreeMap<u64, Vec<(u64, u64, Outcome)>> = BTreeMap::new();
    let mut end_ns = 1u64;
    for op in history.ops() {
        rows.entry(op.process)
            .or_default()
            .push((op.invoke_ns, op.complete_ns, op.outcome));
        end_ns = end_ns.max(op.complete_ns);
    }
    for fault in history.faults() {
        end_ns = end_ns.max(fault.end_ns.unwrap_or(fault.start_ns));
    }
    let (left, width, row_h, top) = (90.0, 1100.0, 18.0, 40.0);
    let height = top + row_h * rows.len().max(1) as f64 + 40.0;
    let x = |ns: u64| left + width * ns as f64 / end_ns as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="11">"#,
        left + width + 20.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="16" font-size="13">{}</text>"#,
        escape(title)
    );
    for fault in history.faults() {
        let (a, b) = (
            x(fault.start_ns),
            x(fault.end_ns.unwrap_or(end_ns)).max(x(fault.start_ns) + 1.0),
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{a:.1}" y="{}" width="{:.1}" height="{:.1}" fill="#f4a6a6" opacity="0.45"><title>{}</title></rect>"##,
            top - 8.0,
            b - a,
            height - top - 24.0,
            escape(&fault.what)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{a:.1}" y="{}" font-size="9">{}</text>"#,
            top - 10.0,
            escape(&fault.what)
        );
    }
    for (row, (process, ops)) in rows.iter().enumerate() {
        let y = top + row_h * row as f64;
        let _ = writeln!(
            svg,
            r#"<text x="4" y="{:.1}">client {process}</text>"#,
            y + 11.0
        );
        for (invoke, complete, outcome) in ops {
            let color = match outcome {
                Outcome::Ok => "#2e9e44",
                Outcome::Fail => "#d62728",
                Outcome::Unknown => "#ff9f0e",
            };
            let (a, b) = (x(*invoke), x(*complete));
            let _ = writeln!(
                svg,
                r#"<rect x="{a:.1}" y="{:.1}" width="{:.1}" height="10" fill="{color}"/>"#,
                y + 2.0,
                (b - a).max(0.8)
            );
        }
    }
    let axis_y = height - 20.0;
    let seconds = end_ns / 1_000_000_000;
    let step = (seconds / 10).max(1);
    let mut s = 0;
    while s <= seconds {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{axis_y}">{s} s</text>"#,
            x(s * 1_000_000_000)
        );
        s += step;
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{FaultWindow, Op, OpKind, Record};

    #[test]
    fn a_timeline_is_one_svg_document_with_every_op_and_fault() {
        let history = History {
            records: vec![
                Record::Op(Op {
                    id: 1,
                    process: 1,
                    kind: OpKind::Read,
                    key: "k".into(),
                    value: None,
                    expected: None,
                    version: Some(0),
                    invoke_ns: 0,
                    complete_ns: 2_000_000_000,
                    outcome: Outcome::Ok,
                    error: None,
                    member: None,
                }),
                Record::Fault(FaultWindow {
                    what: "kill <leader>".into(),
                    start_ns: 1,
                    end_ns: Some(5),
                    recovered_after_ns: None,
                    lost_node: None,
                    unsupervised_node: None,
                    new_leader_after_ns: None,
                }),
            ],
        };
        let svg = timeline(&history, "t");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("kill &lt;leader&gt;"));
        assert!(svg.contains("#2e9e44"));
    }
}
