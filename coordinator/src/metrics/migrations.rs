//! Migrations counted as they end, from the replicated state alone.
//!
//! The state keeps every running migration and the newest few ended ones
//! of each allocation, with their outcome and downtime. At each scrape the
//! ended ones not seen before are counted and their downtime observed, so
//! `apply` counts nothing and every member reports the same figures. An
//! allocation would have to end more migrations than the state keeps of
//! it between two scrapes for one to go uncounted. A member counts, at its
//! first scrape, the ended migrations its state still holds.

use std::collections::{BTreeMap, HashSet};

use herd_api::migration::{Migration, MigrationPhase};
use herd_metrics::prometheus_client::encoding::DescriptorEncoder;
use herd_metrics::prometheus_client::metrics::family::Family;
use herd_metrics::prometheus_client::metrics::histogram::Histogram;
use herd_metrics::prometheus_client::registry::Unit;
use herd_metrics::write;

/// Upper bounds of the downtime buckets, seconds: a live move pauses for
/// milliseconds, a checkpoint move for as long as the restart takes.
pub const DOWNTIME_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Upper bounds of the duration buckets, seconds (start to end).
pub const DURATION_BUCKETS: [f64; 10] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn downtime_histogram() -> Histogram {
    Histogram::new(DOWNTIME_BUCKETS)
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The ended migrations counted so far.
#[derive(Debug)]
pub struct MigrationTally {
    /// Ended migrations counted that the state still holds.
    counted: HashSet<String>,
    /// By (kind, outcome).
    ended: BTreeMap<(String, &'static str), u64>,
    downtime: HistogramFamily,
    duration: HistogramFamily,
}

impl Default for MigrationTally {
    fn default() -> Self {
        Self {
            counted: HashSet::new(),
            ended: BTreeMap::new(),
            downtime: Family::new_with_constructor(downtime_histogram as fn() -> Histogram),
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
        }
    }
}

fn outcome(phase: MigrationPhase) -> &'static str {
    match phase {
        MigrationPhase::Completed => "completed",
        _ => "aborted",
    }
}

impl MigrationTally {
    /// Counts the ended migrations of `migrations` not counted before.
    pub fn observe<'a>(&mut self, migrations: impl IntoIterator<Item = &'a Migration>) {
        let mut held = HashSet::with_capacity(self.counted.len());
        for m in migrations.into_iter().filter(|m| m.phase.is_final()) {
            if !self.counted.contains(&m.id) {
                let outcome = outcome(m.phase);
                *self.ended.entry((m.kind.clone(), outcome)).or_default() += 1;
                if let (MigrationPhase::Completed, Some(ms)) = (m.phase, m.downtime_ms) {
                    self.downtime
                        .get_or_create(&vec![("kind", m.kind.clone())])
                        .observe(ms as f64 / 1000.0);
                }
                if let Some(ms) = m.total_ms() {
                    self.duration
                        .get_or_create(&vec![
                            ("kind", m.kind.clone()),
                            ("outcome", outcome.to_string()),
                        ])
                        .observe(ms as f64 / 1000.0);
                }
            }
            held.insert(m.id.clone());
        }
        self.counted = held;
    }

    /// How many migrations of `kind` ended with `outcome` (for tests).
    pub fn ended(&self, kind: &str, outcome: &'static str) -> u64 {
        self.ended
            .get(&(kind.to_string(), outcome))
            .copied()
            .unwrap_or(0)
    }

    /// Writes the counter and the histograms.
    pub fn encode(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        write::counter_family(
            encoder,
            "migrations_ended",
            "Live migrations ended, by kind (the driver moving the workload) and outcome (completed, aborted).",
            self.ended.iter().map(|((kind, outcome), n)| {
                (
                    [("kind", kind.as_str()), ("outcome", *outcome)],
                    *n,
                )
            }),
        )?;
        write::metric(
            encoder,
            "migration_downtime",
            "How long completed migrations paused their workload, by kind.",
            Some(&Unit::Seconds),
            &self.downtime,
        )?;
        write::metric(
            encoder,
            "migration_duration",
            "How long ended migrations took from start to end, by kind and outcome.",
            Some(&Unit::Seconds),
            &self.duration,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(
        id: &str,
        kind: &str,
        phase: MigrationPhase,
        downtime_ms: Option<u64>,
    ) -> Migration {
        Migration {
            id: id.into(),
            alloc_id: "a".into(),
            job: "j".into(),
            kind: kind.into(),
            source: "n1".into(),
            target: "n2".into(),
            phase,
            phase_deadline_ms: 0,
            started_at_ms: 1_000,
            ended_at_ms: phase.is_final().then_some(3_000),
            bytes: 0,
            rounds: 0,
            downtime_ms,
            downtime_limit_ms: 1_000,
            bandwidth_bytes_per_sec: None,
            error: None,
            from_generation: 1,
            create_index: 1,
            modify_index: 1,
            target_gpu_indices: vec![],
            gang: None,
        }
    }

    #[test]
    fn each_ended_migration_is_counted_once_even_after_the_state_forgets_it() {
        let mut tally = MigrationTally::default();
        let running = migration("m1", "vm", MigrationPhase::Transferring, None);
        let done = migration("m2", "vm", MigrationPhase::Completed, Some(40));
        let aborted = migration("m3", "dljob", MigrationPhase::Aborted, None);
        tally.observe([&running, &done]);
        tally.observe([&running, &done, &aborted]);
        assert_eq!(tally.ended("vm", "completed"), 1);
        assert_eq!(tally.ended("dljob", "aborted"), 1);
        assert_eq!(
            tally.ended("vm", "aborted"),
            0,
            "a running one is not counted"
        );
        // m2 pruned from the state, then m1 completes: only m1 is new.
        let m1_done = migration("m1", "vm", MigrationPhase::Completed, Some(20));
        tally.observe([&m1_done, &aborted]);
        assert_eq!(tally.ended("vm", "completed"), 2);
        let text = render(tally);
        for line in [
            "herd_migrations_ended_total{kind=\"vm\",outcome=\"completed\"} 2",
            "herd_migrations_ended_total{kind=\"dljob\",outcome=\"aborted\"} 1",
            "herd_migration_downtime_seconds_count{kind=\"vm\"} 2",
            "herd_migration_downtime_seconds_bucket{kind=\"vm\",le=\"0.025\"} 1",
            "herd_migration_downtime_seconds_bucket{kind=\"vm\",le=\"0.05\"} 2",
            "herd_migration_duration_seconds_count{kind=\"dljob\",outcome=\"aborted\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    /// The tally as a scrape shows it.
    fn render(tally: MigrationTally) -> String {
        #[derive(Debug)]
        struct Show(std::sync::Mutex<MigrationTally>);
        impl herd_metrics::prometheus_client::collector::Collector for Show {
            fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
                self.0.lock().expect("lock").encode(&mut encoder)
            }
        }
        let mut registry = herd_metrics::exporter::registry();
        registry.register_collector(Box::new(Show(std::sync::Mutex::new(tally))));
        let mut text = String::new();
        herd_metrics::prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
            .expect("encode");
        text
    }
}
