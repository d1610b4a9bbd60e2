//! Small inline SVG charts, where a person would rather look than read: a
//! bar for a share of a whole (a node's CPU in use) and a line over time
//! (the fragment rate). Plain SVG elements, no script, no external asset;
//! every label goes through [`Html::text`].

use super::html::Html;

/// A bar's width, px.
const BAR_W: f64 = 90.0;

/// A line chart's size and margins, px.
const CHART_W: f64 = 640.0;
const CHART_H: f64 = 170.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 8.0;
const BOTTOM: f64 = 22.0;

/// `used` of `total` as a fraction in 0..=1 (0 when `total` is not positive).
pub fn fraction(used: f64, total: f64) -> f64 {
    if total > 0.0 && used.is_finite() {
        (used / total).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The fill of a bar at `fraction` full: green, amber from 70 %, red from 90 %.
fn bar_colour(fraction: f64) -> &'static str {
    if fraction >= 0.9 {
        "#dc2626"
    } else if fraction >= 0.7 {
        "#d97706"
    } else {
        "#16a34a"
    }
}

/// A horizontal bar `used / total` full, titled `label` (shown on hover and
/// read by screen readers).
pub fn bar(used: f64, total: f64, label: &str) -> Html {
    let f = fraction(used, total);
    let mut h = Html::new();
    h.raw("<svg class=\"bar\" width=\"90\" height=\"10\" viewBox=\"0 0 90 10\" role=\"img\" aria-label=\"")
        .text(label)
        .raw("\"><title>")
        .text(label)
        .raw("</title><rect width=\"90\" height=\"10\" rx=\"2\" fill=\"#e5e7eb\"/><rect height=\"10\" rx=\"2\" width=\"")
        .text(format_args!("{:.1}", f * BAR_W))
        .raw("\" fill=\"")
        .raw(bar_colour(f))
        .raw("\"/></svg>");
    h
}

/// One point of a series: when (ms since the epoch) and the value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// ms since the epoch.
    pub at_ms: u64,
    /// The value; non-finite values are drawn as 0.
    pub value: f64,
}

/// How a line chart labels its values.
#[derive(Debug, Clone, Copy)]
pub struct Axis {
    /// The top of the value axis (the bottom is 0); raised to the largest
    /// value when that is higher.
    pub max: f64,
    /// Whether values are fractions shown as percentages.
    pub percent: bool,
}

/// The pixel position of each point in the plot area: time left to right
/// from the first point to the last (one point sits in the middle), value
/// bottom (0) to top (`y_max`).
pub fn positions(points: &[Point], y_max: f64) -> Vec<(f64, f64)> {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return Vec::new();
    };
    let span = last.at_ms.saturating_sub(first.at_ms) as f64;
    let plot_w = CHART_W - LEFT - RIGHT;
    let plot_h = CHART_H - TOP - BOTTOM;
    points
        .iter()
        .map(|p| {
            let x = if span > 0.0 {
                LEFT + plot_w * (p.at_ms.saturating_sub(first.at_ms) as f64 / span)
            } else {
                LEFT + plot_w / 2.0
            };
            let v = if p.value.is_finite() { p.value } else { 0.0 };
            let y = TOP + plot_h * (1.0 - fraction(v, y_max));
            (x, y)
        })
        .collect()
}

/// A value as its axis labels it.
fn axis_label(value: f64, percent: bool) -> String {
    if percent {
        format!("{:.0}%", value * 100.0)
    } else if value >= 10.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// A span of time as the time axis labels it.
fn ago(ms: u64) -> String {
    let s = ms / 1000;
    if s < 120 {
        format!("{s} s ago")
    } else {
        format!("{} min ago", s / 60)
    }
}

/// A line chart of `points` (oldest first), titled `title`; a note instead
/// when there is nothing to draw yet.
pub fn line_chart(points: &[Point], axis: Axis, title: &str) -> Html {
    let mut h = Html::new();
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        h.raw("<p class=\"muted\" data-k=\"chart-empty\">No samples yet.</p>");
        return h;
    };
    let top = points
        .iter()
        .map(|p| p.value)
        .filter(|v| v.is_finite())
        .fold(axis.max, f64::max);
    let top = if top > 0.0 { top } else { 1.0 };
    h.raw("<svg class=\"chart\" width=\"640\" height=\"170\" viewBox=\"0 0 640 170\" role=\"img\" data-points=\"")
        .text(points.len())
        .raw("\" aria-label=\"")
        .text(title)
        .raw("\"><title>")
        .text(title)
        .raw("</title>");
    // Grid lines and value labels at 0, half and the top.
    for step in [0.0, 0.5, 1.0] {
        let y = TOP + (CHART_H - TOP - BOTTOM) * (1.0 - step);
        h.raw("<line x1=\"48\" x2=\"632\" stroke=\"#e5e7eb\" y1=\"")
            .text(format_args!("{y:.1}"))
            .raw("\" y2=\"")
            .text(format_args!("{y:.1}"))
            .raw("\"/><text x=\"44\" text-anchor=\"end\" font-size=\"11\" fill=\"#6b7280\" y=\"")
            .text(format_args!("{:.1}", y + 4.0))
            .raw("\">")
            .text(axis_label(top * step, axis.percent))
            .raw("</text>");
    }
    // Time labels: the oldest sample's age at the left, "now" at the right.
    let span = last.at_ms.saturating_sub(first.at_ms);
    h.raw("<text x=\"48\" y=\"166\" font-size=\"11\" fill=\"#6b7280\">")
        .text(ago(span))
        .raw("</text><text x=\"632\" y=\"166\" text-anchor=\"end\" font-size=\"11\" fill=\"#6b7280\">latest</text>");
    let coords = positions(points, top);
    h.raw("<polyline fill=\"none\" stroke=\"#2563eb\" stroke-width=\"2\" points=\"");
    for (i, (x, y)) in coords.iter().enumerate() {
        if i > 0 {
            h.raw(" ");
        }
        h.text(format_args!("{x:.1},{y:.1}"));
    }
    h.raw("\"/>");
    if let Some((x, y)) = coords.last() {
        h.raw("<circle r=\"3\" fill=\"#2563eb\" cx=\"")
            .text(format_args!("{x:.1}"))
            .raw("\" cy=\"")
            .text(format_args!("{y:.1}"))
            .raw("\"/>");
    }
    h.raw("</svg>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(at_ms: u64, value: f64) -> Point {
        Point { at_ms, value }
    }

    #[test]
    fn fractions_are_clamped_and_safe_on_an_empty_whole() {
        assert_eq!(fraction(1.0, 4.0), 0.25);
        assert_eq!(fraction(5.0, 4.0), 1.0);
        assert_eq!(fraction(1.0, 0.0), 0.0);
        assert_eq!(fraction(f64::NAN, 4.0), 0.0);
        assert_eq!(fraction(-1.0, 4.0), 0.0);
    }

    #[test]
    fn a_bar_fills_its_share_and_escapes_its_label() {
        let half = bar(2000.0, 4000.0, "cpu <2000> of 4000").into_string();
        assert!(half.contains("width=\"45.0\" fill=\"#16a34a\""), "{half}");
        assert!(half.contains("cpu &lt;2000&gt; of 4000"), "{half}");
        assert!(!half.contains("<2000>"));
        let full = bar(4000.0, 4000.0, "x").into_string();
        assert!(full.contains("width=\"90.0\" fill=\"#dc2626\""), "{full}");
        let empty = bar(0.0, 0.0, "x").into_string();
        assert!(empty.contains("width=\"0.0\""), "{empty}");
    }

    #[test]
    fn points_span_the_plot_left_to_right_and_bottom_to_top() {
        let coords = positions(&[p(1000, 0.0), p(2000, 0.5), p(3000, 1.0)], 1.0);
        let plot_w = CHART_W - LEFT - RIGHT;
        let plot_h = CHART_H - TOP - BOTTOM;
        assert_eq!(coords[0], (LEFT, TOP + plot_h));
        assert_eq!(coords[1], (LEFT + plot_w / 2.0, TOP + plot_h / 2.0));
        assert_eq!(coords[2], (LEFT + plot_w, TOP));
        let one = positions(&[p(5, 0.25)], 1.0);
        assert_eq!(one, vec![(LEFT + plot_w / 2.0, TOP + plot_h * 0.75)]);
        assert!(positions(&[], 1.0).is_empty());
        // Out of range and non-finite values stay inside the plot.
        let odd = positions(&[p(0, f64::INFINITY), p(1, 7.0)], 1.0);
        assert_eq!(odd[0].1, TOP + plot_h);
        assert_eq!(odd[1].1, TOP);
    }

    #[test]
    fn a_chart_draws_every_point_or_says_there_are_none() {
        let empty = line_chart(
            &[],
            Axis {
                max: 1.0,
                percent: true,
            },
            "t",
        )
        .into_string();
        assert!(empty.contains("No samples yet"), "{empty}");
        let chart = line_chart(
            &[p(0, 0.1), p(60_000, 0.2), p(180_000, 0.4)],
            Axis {
                max: 1.0,
                percent: true,
            },
            "fragment <rate>",
        )
        .into_string();
        assert!(chart.contains("data-points=\"3\""), "{chart}");
        assert!(chart.contains("fragment &lt;rate&gt;"), "{chart}");
        assert!(chart.contains("100%") && chart.contains("50%"), "{chart}");
        assert!(chart.contains("3 min ago"), "{chart}");
        let polyline = chart.split("points=\"").nth(2).expect("polyline");
        assert_eq!(
            polyline.split('"').next().map(|s| s.split(' ').count()),
            Some(3)
        );
    }

    #[test]
    fn the_value_axis_grows_to_the_largest_value() {
        let chart = line_chart(
            &[p(0, 3.0), p(1, 12.0)],
            Axis {
                max: 10.0,
                percent: false,
            },
            "n",
        )
        .into_string();
        assert!(chart.contains(">12</text>"), "{chart}");
        // Whole numbers are labelled as such, halves with their decimal.
        assert!(chart.contains(">6</text>"), "{chart}");
        assert_eq!(axis_label(2.5, false), "2.5");
        assert_eq!(axis_label(0.25, true), "25%");
    }
}
