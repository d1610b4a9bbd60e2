//! SplitMix64: a tiny PRNG whose whole state is one `u64`, so that a
//! checkpoint can carry it and a resumed run draws exactly the numbers the
//! uninterrupted run would have drawn. Not for cryptography. The one copy
//! lives in `herd_api::rng`, shared with the chaos harness, whose tests pin
//! what the trainer relies on (the reference sequence, resuming from a state).

pub use herd_api::rng::SplitMix64;
