//! A closed-loop load generator: N clients, each with one request in flight,
//! for a fixed time; reports throughput and latency percentiles.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Concurrent clients.
    pub clients: usize,
    /// Successful operations in the measured window.
    pub ok: u64,
    /// Failed operations in the measured window.
    pub errors: u64,
    /// Operations per second.
    pub throughput: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// First error seen, for the report.
    pub first_error: Option<String>,
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Runs `op(client_index, sequence)` from `clients` concurrent loops: a
/// warm-up, then `duration` measured.
pub async fn closed_loop<F, Fut>(
    clients: usize,
    warmup: Duration,
    duration: Duration,
    op: F,
) -> LoadReport
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut first_error = None;
            let mut seq = 0u64;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let result = op(client, seq).await;
                seq += 1;
                let finished = Instant::now();
                if began < measure_from || finished > end {
                    continue;
                }
                match result {
                    Ok(()) => latencies.push(finished - began),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        if let Ok((latencies, errs, first)) = task.await {
            all.extend(latencies);
            errors += errs;
            if first_error.is_none() {
                first_error = first;
            }
        }
    }
    all.sort_unstable();
    LoadReport {
        clients,
        ok: all.len() as u64,
        errors,
        throughput: all.len() as f64 / duration.as_secs_f64(),
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        first_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.99), Duration::ZERO);
    }

    #[tokio::test]
    async fn counts_only_the_measured_window() {
        let report = closed_loop(
            2,
            Duration::from_millis(50),
            Duration::from_millis(200),
            |_, _| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(())
            },
        )
        .await;
        // Two clients at ~10 ms per op over 200 ms: roughly 40 ops, never the warm-up's.
        assert!(report.ok > 10 && report.ok <= 42, "{report:?}");
        assert!(report.p50 >= Duration::from_millis(10));
        assert_eq!(report.errors, 0);
    }
}
