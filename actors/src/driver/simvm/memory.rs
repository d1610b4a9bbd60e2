//! A SIMULATED VM's memory: a real buffer of pages written at a set rate,
//! with the dirty-page tracking a pre-copy migration reads.
//!
//! It stands in for a real guest where thousands are needed (scale tests,
//! the rescheduler): the bytes are real, so copying them costs what copying
//! a VM's memory costs, but nothing executes. Writes are deterministic under
//! a seed, so two runs dirty the same pages in the same order.

/// Bytes per page, as x86 guests use.
pub const PAGE_SIZE: usize = 4096;

/// A page of zeros, to compare with (a `memcmp`, fast in any build).
static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// Asks the kernel to back `buffer` with ordinary 4 KiB pages. The
/// process's allocator may ask for transparent huge pages, and then the
/// first write to each 2 MiB of a guest that writes pages at random zeroes
/// the whole 2 MiB: a 16 GiB simulated VM dirtying 64 MiB/s spent a core
/// zeroing memory, held its lock for seconds (its control socket went
/// unanswered and its migrations failed), and grew by hundreds of MiB a
/// second where it writes 64. A simulated VM's memory should cost what
/// its guest wrote, so that thousands fit on a host. Advice only: a
/// kernel that refuses it changes nothing else.
fn no_huge_pages(buffer: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        let start = buffer.as_ptr() as usize;
        let page = PAGE_SIZE;
        // madvise takes a page-aligned range: the whole pages inside.
        let aligned = start.div_ceil(page) * page;
        let end = (start + buffer.len()) / page * page;
        if end > aligned {
            // SAFETY: the range lies inside `buffer`, which this process
            // owns; MADV_NOHUGEPAGE changes no contents, only how the
            // kernel backs the pages.
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    end - aligned,
                    libc::MADV_NOHUGEPAGE,
                );
            }
        }
    }
}

/// What the simulated guest "executes" besides its memory: where its
/// write pattern stands. A live migration sends it last, with the guest
/// paused (as QEMU sends the vCPUs' state after the last RAM pass), so the
/// target goes on writing the pattern exactly where the source stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuestState {
    /// The write pattern's generator state.
    pub rng: u64,
    /// Pages written so far (each write stamps the page with this count).
    pub written: u64,
    /// Fraction of a page owed (in `[0, 1)`).
    pub carry: f64,
}

impl GuestState {
    /// Whether the values could come from a guest (a state read off the
    /// network is checked before use): a generator state is never zero and
    /// the carry is a fraction.
    pub fn is_valid(&self) -> bool {
        self.rng != 0 && self.carry.is_finite() && (0.0..1.0).contains(&self.carry)
    }
}

/// The memory of one simulated VM.
///
/// Pages never written are known to be zero without reading them
/// (`touched`): the buffer is allocated lazily, and reading a page the
/// guest never wrote would make the kernel map one for it, a page fault
/// each. A migration's first round and its checksum read only what the
/// guest wrote, not every page of a 16 GiB VM.
pub struct SimulatedMemory {
    bytes: Vec<u8>,
    /// One bit per page ever written (by the guest or by a migration).
    touched: Vec<u64>,
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
        let bytes = vec![0; pages * PAGE_SIZE];
        no_huge_pages(&bytes);
        Self {
            bytes,
            touched: vec![0; pages.div_ceil(64)],
            dirty: vec![0; pages.div_ceil(64)],
            dirty_count: 0,
            rng: seed | 1,
            rate: rate_pages_per_sec.max(0.0),
            carry: 0.0,
            written: 0,
        }
    }

    /// Pages it writes per second of guest time.
    pub fn rate(&self) -> f64 {
        self.rate
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
            self.mark_touched(page);
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
        if page >= self.pages() {
            return None;
        }
        self.bytes.get(page * PAGE_SIZE..(page + 1) * PAGE_SIZE)
    }

    /// Pages written since creation (counting rewrites).
    pub fn writes(&self) -> u64 {
        self.written
    }

    /// Whether a page holds only zeros (a migration sends such a page as a
    /// mark, not its bytes, as QEMU does); false for a page out of range.
    pub fn page_is_zero(&self, page: usize) -> bool {
        page < self.pages() && (!self.is_touched(page) || self.page(page) == Some(&ZERO_PAGE[..]))
    }

    /// Notes that page `page` (in range) was written.
    fn mark_touched(&mut self, page: usize) {
        self.touched[page / 64] |= 1u64 << (page % 64);
    }

    /// Whether page `page` was ever written (an untouched one is zero).
    fn is_touched(&self, page: usize) -> bool {
        self.touched
            .get(page / 64)
            .is_some_and(|word| word & (1u64 << (page % 64)) != 0)
    }

    /// Overwrites one page with `bytes` (an incoming migration's page); not
    /// marked dirty. False when the page is out of range or `bytes` is not
    /// one page long.
    pub fn set_page(&mut self, page: usize, bytes: &[u8]) -> bool {
        if bytes.len() != PAGE_SIZE || page >= self.pages() {
            return false;
        }
        match self.bytes.get_mut(page * PAGE_SIZE..(page + 1) * PAGE_SIZE) {
            Some(target) => {
                target.copy_from_slice(bytes);
                self.mark_touched(page);
                true
            }
            None => false,
        }
    }

    /// Zeroes one page (an incoming zero page), writing only if it is not
    /// zero already so that untouched memory stays unmapped. False when
    /// the page is out of range.
    pub fn zero_page(&mut self, page: usize) -> bool {
        if page >= self.pages() {
            return false;
        }
        if !self.page_is_zero(page) {
            self.bytes[page * PAGE_SIZE..(page + 1) * PAGE_SIZE].fill(0);
        }
        true
    }

    /// CRC-32C of the whole memory: what the two sides of a migration
    /// compare to show that the target holds the source's memory exactly.
    /// Untouched pages are taken as the zero page they are, unread.
    pub fn checksum(&self) -> u32 {
        (0..self.pages()).fold(0, |crc, page| {
            let bytes = if self.is_touched(page) {
                self.page(page).unwrap_or(&ZERO_PAGE[..])
            } else {
                &ZERO_PAGE[..]
            };
            crc32c::crc32c_append(crc, bytes)
        })
    }

    /// Where the write pattern stands (sent at a migration's end).
    pub fn guest_state(&self) -> GuestState {
        GuestState {
            rng: self.rng,
            written: self.written,
            carry: self.carry,
        }
    }

    /// Continues the write pattern from `state` (a migrated guest's); an
    /// invalid state is refused and nothing changes.
    pub fn restore_guest_state(&mut self, state: GuestState) -> bool {
        if !state.is_valid() {
            return false;
        }
        self.rng = state.rng;
        self.written = state.written;
        self.carry = state.carry;
        true
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
    fn a_copy_made_page_by_page_with_the_guest_state_goes_on_identically() {
        let mut source = SimulatedMemory::new(256, 5000.0, 3);
        source.advance(0.1);
        let mut target = SimulatedMemory::new(256, 5000.0, 99);
        assert_ne!(source.checksum(), target.checksum());
        for page in 0..source.pages() {
            if source.page_is_zero(page) {
                assert!(target.zero_page(page));
            } else {
                let bytes = source.page(page).expect("in range").to_vec();
                assert!(target.set_page(page, &bytes));
            }
        }
        assert_eq!(source.checksum(), target.checksum());
        assert_eq!(target.dirty_pages(), 0, "arrivals are not dirt");
        assert!(target.restore_guest_state(source.guest_state()));
        source.take_dirty();
        source.advance(0.05);
        target.advance(0.05);
        assert_eq!(source.checksum(), target.checksum());
        assert_eq!(source.take_dirty(), target.take_dirty());
        // Out of range or malformed: refused, nothing written.
        assert!(!target.set_page(256, &[0; PAGE_SIZE]));
        assert!(!target.set_page(0, &[1; 10]));
        assert!(!target.zero_page(256));
        let bad = GuestState {
            rng: 0,
            written: 1,
            carry: 0.5,
        };
        assert!(!target.restore_guest_state(bad));
        let bad = GuestState {
            rng: 1,
            written: 1,
            carry: f64::NAN,
        };
        assert!(!target.restore_guest_state(bad));
        assert_eq!(source.checksum(), target.checksum());
    }

    #[test]
    fn untouched_pages_read_as_zero_and_the_checksum_is_of_every_byte() {
        let mut m = SimulatedMemory::new(300, 1000.0, 7);
        assert!(m.page_is_zero(5) && !m.page_is_zero(300));
        assert_eq!(m.checksum(), crc32c::crc32c(&m.bytes));
        m.advance(0.05);
        let mut page = vec![0u8; PAGE_SIZE];
        page[17] = 9;
        assert!(m.set_page(299, &page));
        assert!(!m.page_is_zero(299));
        // A page set to zeros by a migration reads as zero, touched or not.
        assert!(m.set_page(298, &ZERO_PAGE));
        assert!(m.page_is_zero(298));
        let written = (0..300).filter(|p| !m.page_is_zero(*p)).count();
        assert!(written > 1, "the guest wrote pages");
        assert_eq!(m.checksum(), crc32c::crc32c(&m.bytes));
        assert!(m.zero_page(299) && m.page_is_zero(299));
        assert_eq!(m.checksum(), crc32c::crc32c(&m.bytes));
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
