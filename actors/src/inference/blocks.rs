//! The KV cache of the SIMULATED engine: fixed-size blocks of
//! [`BLOCK_TOKENS`] tokens carved out of one real byte arena, and the bytes
//! each token's KV entry holds.
//!
//! The bytes are real (the arena is allocated) but their content is a
//! deterministic function of the request's seed and the token's position
//! ([`kv_bytes`]), so a cache that was swapped out and back, or exported to
//! another engine, can be checked byte for byte.

/// Tokens per KV block (vLLM's default block size).
pub const BLOCK_TOKENS: usize = 16;

/// Index of a block in the arena.
pub type BlockId = u32;

/// A fixed pool of KV blocks over one byte arena.
#[derive(Debug)]
pub struct BlockPool {
    arena: Vec<u8>,
    bytes_per_token: usize,
    total: u32,
    free: Vec<BlockId>,
}

impl BlockPool {
    /// A pool of `blocks` blocks of `BLOCK_TOKENS × bytes_per_token` bytes.
    /// The caller bounds both (settings validation), so the arena fits.
    pub fn new(blocks: u32, bytes_per_token: usize) -> Self {
        let size = blocks as usize * BLOCK_TOKENS * bytes_per_token;
        Self {
            arena: vec![0; size],
            bytes_per_token,
            total: blocks,
            // Popped from the end: block 0 is handed out first.
            free: (0..blocks).rev().collect(),
        }
    }

    /// Blocks in the pool.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Blocks not held by any request.
    pub fn free(&self) -> u32 {
        self.free.len() as u32
    }

    /// Bytes of one block.
    pub fn block_bytes(&self) -> usize {
        BLOCK_TOKENS * self.bytes_per_token
    }

    /// Bytes of one token's KV entry.
    pub fn bytes_per_token(&self) -> usize {
        self.bytes_per_token
    }

    /// Takes `n` blocks, or none when fewer are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.free.len() {
            return None;
        }
        let at = self.free.len() - n;
        Some(self.free.split_off(at))
    }

    /// Gives blocks back.
    pub fn release(&mut self, blocks: impl IntoIterator<Item = BlockId>) {
        self.free.extend(blocks);
    }

    fn slot(&mut self, block: BlockId, offset: usize) -> &mut [u8] {
        let start = (block as usize * BLOCK_TOKENS + offset) * self.bytes_per_token;
        &mut self.arena[start..start + self.bytes_per_token]
    }

    /// Writes the KV entry of token `position` of the request `seed`, in the
    /// request's block table `table`.
    pub fn write_token(&mut self, table: &[BlockId], seed: u64, position: usize) {
        let Some(&block) = table.get(position / BLOCK_TOKENS) else {
            return;
        };
        let bytes = kv_bytes(seed, position as u64, self.bytes_per_token);
        self.slot(block, position % BLOCK_TOKENS)
            .copy_from_slice(&bytes);
    }

    /// The bytes of one block.
    pub fn block(&self, block: BlockId) -> &[u8] {
        let size = self.block_bytes();
        let start = block as usize * size;
        &self.arena[start..start + size]
    }

    /// Overwrites one block (swap-in, import).
    pub fn write_block(&mut self, block: BlockId, bytes: &[u8]) {
        let size = self.block_bytes();
        let start = block as usize * size;
        let n = bytes.len().min(size);
        self.arena[start..start + n].copy_from_slice(&bytes[..n]);
    }

    /// Whether the first `tokens` KV entries in `table` are those of `seed`.
    pub fn verify(&self, table: &[BlockId], seed: u64, tokens: usize) -> bool {
        (0..tokens).all(|position| {
            let Some(&block) = table.get(position / BLOCK_TOKENS) else {
                return false;
            };
            let start =
                (block as usize * BLOCK_TOKENS + position % BLOCK_TOKENS) * self.bytes_per_token;
            self.arena[start..start + self.bytes_per_token]
                == kv_bytes(seed, position as u64, self.bytes_per_token)[..]
        })
    }
}

/// Blocks needed to hold `tokens` tokens.
pub fn blocks_for(tokens: usize) -> usize {
    tokens.div_ceil(BLOCK_TOKENS)
}

/// The simulated KV entry of token `position` of the request `seed`: a
/// splitmix64 stream, so every byte depends on both.
pub fn kv_bytes(seed: u64, position: u64, len: usize) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(position.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        for b in z.to_le_bytes() {
            if out.len() < len {
                out.push(b);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_bounded_and_released_blocks_come_back() {
        let mut pool = BlockPool::new(4, 2);
        assert_eq!(pool.block_bytes(), 32);
        let a = pool.allocate(3).expect("3 of 4");
        assert_eq!(pool.free(), 1);
        assert!(pool.allocate(2).is_none());
        pool.release(a);
        assert_eq!(pool.free(), 4);
    }

    #[test]
    fn written_tokens_verify_and_differ_by_request() {
        let mut pool = BlockPool::new(4, 3);
        let table = pool.allocate(2).expect("blocks");
        for p in 0..20 {
            pool.write_token(&table, 7, p);
        }
        assert!(pool.verify(&table, 7, 20));
        assert!(!pool.verify(&table, 8, 20));
        assert_ne!(kv_bytes(7, 0, 8), kv_bytes(7, 1, 8));
        assert_eq!(blocks_for(16), 1);
        assert_eq!(blocks_for(17), 2);
    }
}
