//! SplitMix64: a tiny PRNG whose whole state is one `u64`, so that a
//! checkpoint can carry it and a resumed run draws exactly the numbers the
//! uninterrupted run would have drawn. Not for cryptography. The one copy
//! lives in `herd_api::rng`, shared with the chaos harness; these tests pin
//! what the trainer relies on.

pub use herd_api::rng::SplitMix64;

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
        let mut a = SplitMix64::new(42);
        a.next_u64();
        let mut b = SplitMix64::new(a.state());
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let x = a.uniform(-1.0, 1.0);
        assert!((-1.0..1.0).contains(&x));
    }
}
