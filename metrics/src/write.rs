//! Writing values read at scrape time from a `prometheus-client`
//! [`Collector`](prometheus_client::collector::Collector): one call per
//! metric, with its help text, unit and rows of labels and values.
//!
//! A family with no rows is left out altogether (a `# TYPE` line with no
//! sample says nothing).

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// One label, as rows name them: `[("status", "ready")]`.
pub type Label<'a> = (&'static str, &'a str);

/// Writes a gauge without labels.
pub fn gauge<V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: V,
) -> std::fmt::Result {
    let metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// Writes a gauge with one sample per row (none when `rows` is empty).
pub fn gauge_family<L: EncodeLabelSet, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl IntoIterator<Item = (L, V)>,
) -> std::fmt::Result {
    let rows: Vec<(L, V)> = rows.into_iter().collect();
    if rows.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes a counter without labels (`name` without `_total`: it is added).
pub fn counter<V: EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> std::fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

/// Writes a counter with one sample per row (none when `rows` is empty).
pub fn counter_family<L: EncodeLabelSet, V: EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, V)>,
) -> std::fmt::Result {
    let rows: Vec<(L, V)> = rows.into_iter().collect();
    if rows.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes `metric` (a histogram or a family of them, kept elsewhere) under
/// `name`; nothing for a family with no member yet.
pub fn metric(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: &impl EncodeMetric,
) -> std::fmt::Result {
    if metric.is_empty() {
        return Ok(());
    }
    let out = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(out)
}

/// The unit of power, which `prometheus-client` does not name.
pub fn watts() -> Unit {
    Unit::Other("watts".to_string())
}

#[cfg(test)]
mod tests {
    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::prometheus_text;

    use super::*;

    #[derive(Debug)]
    struct Demo;

    impl Collector for Demo {
        fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
            gauge(&mut encoder, "demo_up", "Up.", None, 1i64)?;
            gauge_family(
                &mut encoder,
                "demo_power",
                "Power.",
                Some(&watts()),
                [([("gpu", "0")], 300.5f64), ([("gpu", "1")], 250.0)],
            )?;
            gauge_family::<[Label; 1], i64>(&mut encoder, "demo_none", "None.", None, [])?;
            counter_family(
                &mut encoder,
                "demo_moves",
                "Moves.",
                [([("kind", "vm"), ("outcome", "completed")], 3u64)],
            )
        }
    }

    #[test]
    fn rows_become_samples_under_the_prefix_and_empty_families_vanish() {
        let mut registry = crate::exporter::registry();
        registry.register_collector(Box::new(Demo));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).expect("encode");
        for line in [
            "# TYPE herd_demo_up gauge",
            "herd_demo_up 1",
            "# TYPE herd_demo_power_watts gauge",
            "herd_demo_power_watts{gpu=\"0\"} 300.5",
            "herd_demo_power_watts{gpu=\"1\"} 250.0",
            "# TYPE herd_demo_moves_total counter",
            "herd_demo_moves_total{kind=\"vm\",outcome=\"completed\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("demo_none"), "{text}");
    }
}
