//! The seeded random source: `fastrand` for the agent's own choices, and
//! the same generator behind the `rand_core` trait foca draws from, so one
//! seed makes a whole agent deterministic.

use core::convert::Infallible;

/// A seeded `fastrand::Rng` that foca can use.
#[derive(Debug, Clone)]
pub struct SeededRng(pub fastrand::Rng);

impl SeededRng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRng(fastrand::Rng::with_seed(seed))
    }
}

impl rand_core::TryRng for SeededRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.0.u32(..))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.0.u64(..))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill(dst);
        Ok(())
    }
}
