//! SplitMix64: a tiny seeded PRNG whose whole state is one `u64`.
//!
//! One copy for every crate: the chaos harness draws its fault schedule and
//! workload from it (a failing run replays from its seed), and the toy
//! trainer saves its state in checkpoints (a resumed run draws exactly the
//! numbers the uninterrupted one would have). A crate's generator might
//! change its stream between versions; this one never does. Not for
//! cryptography.

/// SplitMix64 (Steele, Lea, Flood 2014), as in `java.util.SplittableRandom`.
///
/// Not `Copy`: a generator copied by accident would draw the same numbers
/// twice; cloning one says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose state is `state` (a seed, or a state saved by
    /// [`SplitMix64::state`]): its whole stream follows from it.
    pub fn new(state: u64) -> Self {
        Self { state }
    }

    /// The state to save; `SplitMix64::new(g.state())` continues where `g` is.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform `f64` in `[0, 1)` from the top 53 bits (exact: no rounding).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform `f64` in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// One element of `items` (None when empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// An independent generator for a sub-task (a client), derived from
    /// this one, so sub-tasks draw without disturbing each other's streams.
    pub fn fork(&mut self) -> SplitMix64 {
        SplitMix64::new(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_sequence() {
        // First outputs of SplitMix64 seeded with 0 (reference implementation).
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn a_saved_state_continues_the_sequence() {
        // What a checkpointed trainer relies on to resume bit for bit.
        let mut a = SplitMix64::new(42);
        a.next_u64();
        let mut b = SplitMix64::new(a.state());
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn ranges_hold_and_shuffles_keep_every_item() {
        let mut r = SplitMix64::new(1);
        assert!((0..1000).all(|_| (3..=9).contains(&r.between(3, 9))));
        assert_eq!(r.below(0), 0);
        assert_eq!(r.pick::<u8>(&[]), None);
        let mut items: Vec<u32> = (0..50).collect();
        r.shuffle(&mut items);
        assert_ne!(items, (0..50).collect::<Vec<_>>());
        items.sort();
        assert_eq!(items, (0..50).collect::<Vec<_>>());
        let x = r.uniform(-1.0, 1.0);
        assert!((-1.0..1.0).contains(&x));
    }
}
