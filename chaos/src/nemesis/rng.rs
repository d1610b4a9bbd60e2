//! A small seeded PRNG (SplitMix64): the whole fault schedule and workload
//! follow from one seed, so a failing run can be replayed, without a crate
//! whose stream might change between versions. The one copy lives in
//! `herd_api::rng`, shared with the toy trainer.

/// The run's generator: herd's one SplitMix64 (`herd_api::rng`).
pub use herd_api::rng::SplitMix64 as Rng;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_gives_one_stream() {
        let a: Vec<u64> = (0..5)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..5)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..5)
            .scan(Rng::new(8), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut r = Rng::new(1);
        assert!((0..1000).all(|_| (3..=9).contains(&r.between(3, 9))));
    }
}
