//! Looking again and again for what another process does (a file it
//! writes, a socket it opens), quickly at first.
//!
//! Why not a fixed interval: a start that takes 6 ms is seen at 10 ms with
//! a 10 ms tick, and every move's target waits on two such starts (the
//! executor's report, then QEMU's QMP socket). Intervals that double from
//! 1 ms see it at 7 ms, and one that takes seconds is still looked at no
//! more often than the longest interval.

use std::time::Duration;

/// Pauses between looks: `first`, then each twice the last, at most `most`.
#[derive(Debug, Clone)]
pub struct Patience {
    next: Duration,
    most: Duration,
}

impl Patience {
    /// Pauses from `first` doubling up to `most`.
    pub fn new(first: Duration, most: Duration) -> Self {
        Self {
            next: first.min(most),
            most,
        }
    }

    /// The pause before the next look; the one after it is longer, up to
    /// the most.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.most);
        pause
    }

    /// Sleeps for [`Patience::next_pause`].
    pub async fn pause(&mut self) {
        tokio::time::sleep(self.next_pause()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_most() {
        let ms = Duration::from_millis;
        let mut patience = Patience::new(ms(1), ms(10));
        let pauses: Vec<Duration> = (0..6).map(|_| patience.next_pause()).collect();
        assert_eq!(pauses, [ms(1), ms(2), ms(4), ms(8), ms(10), ms(10)]);
        assert_eq!(Patience::new(ms(50), ms(10)).next_pause(), ms(10));
    }
}
