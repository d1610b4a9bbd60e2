//! The periodic self-message an actor keeps while it runs, ended with it.

use tokio::task::JoinHandle;

/// The task behind an actor's `send_interval`, aborted when this is dropped.
///
/// Why: an actor that keeps one in its state stops its tick when it stops
/// (ractor drops the state then), so no actor needs a `post_stop` of its own
/// just to abort the interval, and none can forget to.
#[derive(Debug, Default)]
pub struct Ticker(Option<JoinHandle<()>>);

impl Ticker {
    /// Keeps `interval` (what `send_interval` returned) running until this
    /// ticker is dropped; an interval kept before is aborted, so there is
    /// never more than one tick.
    pub fn start(&mut self, interval: JoinHandle<()>) {
        if let Some(before) = self.0.replace(interval) {
            before.abort();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        if let Some(interval) = self.0.take() {
            interval.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// A task counting up every millisecond, and its count.
    fn counting() -> (JoinHandle<()>, Arc<AtomicU32>) {
        let count = Arc::new(AtomicU32::new(0));
        let counter = count.clone();
        let task = tokio::spawn(async move {
            loop {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        (task, count)
    }

    #[tokio::test]
    async fn dropping_the_ticker_or_starting_another_ends_the_interval() {
        let (first, first_count) = counting();
        let (second, second_count) = counting();
        let mut ticker = Ticker::default();
        ticker.start(first);
        tokio::time::sleep(Duration::from_millis(20)).await;
        ticker.start(second);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let first_seen = first_count.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(first_seen > 0);
        assert_eq!(
            first_count.load(Ordering::SeqCst),
            first_seen,
            "replaced: aborted"
        );
        drop(ticker);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second_seen = second_count.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            second_count.load(Ordering::SeqCst),
            second_seen,
            "dropped: aborted"
        );
    }
}
