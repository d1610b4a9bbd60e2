//! A SIMULATED VM's memory: a real buffer of pages written at a set rate,
//! with the dirty-page tracking a pre-copy migration reads.
//!
//! It stands in for a real guest where thousands are needed (scale tests,
//! the rescheduler): the bytes are real, so copying them costs what copying
//! a VM's memory costs, but nothing executes. Writes are deterministic under
//! a seed, so two runs dirty the same pages in the same order.

/// Bytes per page, as x86 guests use.
pub const PAGE_SIZE: usize = 4096;

/// The memory of one simulated VM.
pub struct SimulatedMemory {
    bytes: Vec<u8>,
    dirty: Vec<u64>,
    dirty_count: usize,
    rng: u64,
    /// Pages written per second.
    rate: f64,
    /// Fraction of a page owed from earlier calls (rates below one page per tick).
    carry: f64,
    written: u64,
}

impl SimulatedMemory {
    /// `pages` pages, `rate_pages_per_sec` of them written every second,
    /// choices drawn from `seed`.
    pub fn new(pages: usize, rate_pages_per_sec: f64, seed: u64) -> Self {
        Self {
            bytes: vec![0; pages * PAGE_SIZE],
            dirty: vec![0; pages.div_ceil(64)],
            dirty_count: 0,
            rng: seed | 1,
            rate: rate_pages_per_sec.max(0.0),
            carry: 0.0,
            written: 0,
        }
    }

    /// How many pages it has.
    pub fn pages(&self) -> usize {
        self.bytes.len() / PAGE_SIZE
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: fast, and enough to spread writes over the pages.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Runs the guest for `seconds`: writes the pages its rate owes, each
    /// with a new value, and marks them dirty. Returns how many it wrote.
    pub fn advance(&mut self, seconds: f64) -> usize {
        let pages = self.pages();
        if pages == 0 {
            return 0;
        }
        let owed = self.rate * seconds.max(0.0) + self.carry;
        let count = owed.floor();
        self.carry = owed - count;
        let count = count as usize;
        for _ in 0..count {
            let page = (self.next() % pages as u64) as usize;
            self.written += 1;
            let stamp = self.written.to_le_bytes();
            let start = page * PAGE_SIZE;
            self.bytes[start..start + 8].copy_from_slice(&stamp);
            let word = &mut self.dirty[page / 64];
            let bit = 1u64 << (page % 64);
            if *word & bit == 0 {
                *word |= bit;
                self.dirty_count += 1;
            }
        }
        count
    }

    /// Pages written since the last call (and clears the record), in page
    /// order: what one pre-copy round must send again.
    pub fn take_dirty(&mut self) -> Vec<usize> {
        let mut pages = Vec::with_capacity(self.dirty_count);
        for (i, word) in self.dirty.iter_mut().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                pages.push(i * 64 + bit);
                bits &= bits - 1;
            }
            *word = 0;
        }
        self.dirty_count = 0;
        pages
    }

    /// How many pages are dirty now.
    pub fn dirty_pages(&self) -> usize {
        self.dirty_count
    }

    /// One page's bytes.
    pub fn page(&self, page: usize) -> Option<&[u8]> {
        self.bytes.get(page * PAGE_SIZE..(page + 1) * PAGE_SIZE)
    }

    /// Pages written since creation (counting rewrites).
    pub fn writes(&self) -> u64 {
        self.written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_dirtied_at_the_rate_and_tracked_until_taken() {
        let mut memory = SimulatedMemory::new(1024, 100.0, 7);
        assert_eq!(memory.advance(0.5), 50);
        assert_eq!(memory.advance(0.004), 0, "less than a page owed");
        assert_eq!(memory.advance(0.006), 1, "the fraction carried over");
        assert!(memory.dirty_pages() <= 51 && memory.dirty_pages() > 40);
        let dirty = memory.take_dirty();
        assert_eq!(dirty.len(), 51usize.min(dirty.len()));
        assert!(dirty.windows(2).all(|w| w[0] < w[1]));
        assert!(dirty
            .iter()
            .all(|p| memory.page(*p).is_some_and(|b| b[..8] != [0; 8])));
        assert_eq!(memory.dirty_pages(), 0);
        assert!(memory.take_dirty().is_empty());
        assert_eq!(memory.writes(), 51);
    }

    #[test]
    fn the_same_seed_dirties_the_same_pages() {
        let mut a = SimulatedMemory::new(4096, 1000.0, 42);
        let mut b = SimulatedMemory::new(4096, 1000.0, 42);
        a.advance(1.0);
        b.advance(1.0);
        assert_eq!(a.take_dirty(), b.take_dirty());
        let mut c = SimulatedMemory::new(4096, 1000.0, 43);
        c.advance(1.0);
        a.advance(1.0);
        assert_ne!(a.take_dirty(), c.take_dirty());
    }
}
