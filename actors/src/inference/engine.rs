//! The core of the SIMULATED LLM engine: continuous batching over a paged
//! KV cache, driven by [`Engine::step`] with the caller's clock.
//!
//! The core is pure and deterministic: it never reads a clock or sleeps.
//! The caller passes `now` (µs) to [`Engine::submit`] and [`Engine::step`];
//! a step reports how long it takes in the [`CostModel`] and the tokens it
//! produces, stamped with `now + duration`. Tests run thousands of steps in
//! milliseconds; the engine process sleeps for the modelled durations.
//!
//! One iteration ([`Engine::step`]):
//! 1. swapped-out requests come back while blocks and batch slots allow;
//! 2. waiting requests are admitted (high priority first, then FIFO) while
//!    the batch has room and their prefill fits, keeping one block in reserve
//!    for each running request about to cross a block boundary; a
//!    high-priority request preempts normal ones to get in;
//! 3. each admitted request is prefilled whole (its prompt plus any tokens it
//!    generated before a recompute preemption) and emits one token;
//! 4. every other running request decodes one token; one that needs a new
//!    block when none is free preempts the lowest-priority, most recent
//!    running request (possibly itself).
//!
//! Preemption ([`PreemptionMode`]): `Recompute` frees the victim's blocks
//! and queues it again, keeping its generated tokens, to be re-prefilled;
//! `Swap` copies its blocks to host memory (bounded by `swap_blocks`; when
//! full, recompute is used) and restores them when blocks free up.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::blocks::{blocks_for, BlockId, BlockPool, BLOCK_TOKENS};
use super::cost::CostModel;
use super::error::EngineError;

/// Most tokens a prompt or a generation may ask for (bounds network input
/// before any capacity arithmetic).
pub const MAX_REQUEST_TOKENS: u32 = 1 << 20;

/// A request's id, unique within one engine.
pub type RequestId = u64;

/// Scheduling class of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Served in arrival order, preempted first.
    Normal,
    /// Admitted before normal requests and may preempt them.
    High,
}

/// What happens to a request preempted for lack of KV blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreemptionMode {
    /// Free its blocks; re-prefill prompt + generated tokens later.
    Recompute,
    /// Copy its blocks to host memory; copy them back later.
    Swap,
}

/// The engine's fixed shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// KV blocks of [`BLOCK_TOKENS`] tokens on the (simulated) GPU.
    pub kv_blocks: u32,
    /// Bytes of KV per token (real bytes; small in tests).
    pub bytes_per_token: usize,
    /// Most requests decoding together.
    pub max_batch: usize,
    /// How requests are preempted.
    pub preemption: PreemptionMode,
    /// Host-memory blocks available to swapped-out requests.
    pub swap_blocks: u32,
    /// Durations of prefill, decode and swap.
    pub cost: CostModel,
    /// Whether a high-priority request that does not fit preempts normal
    /// ones to get in (vLLM's priority scheduling); without it, it waits at
    /// the head of the queue for room (FCFS engines), which the agents'
    /// rescheduler can make by moving normal requests to other instances.
    #[serde(default = "priority_preemption_default")]
    pub priority_preemption: bool,
}

/// [`EngineConfig::priority_preemption`] where an older config has none.
fn priority_preemption_default() -> bool {
    true
}

/// A request as a client asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSpec {
    /// Tokens in the prompt (≥ 1).
    pub prompt_tokens: u32,
    /// Tokens to generate (≥ 1).
    pub max_tokens: u32,
    /// Its class.
    pub priority: Priority,
}

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Queued for (re-)prefill; holds no blocks.
    Waiting,
    /// In the batch; holds blocks.
    Running,
    /// Preempted with its blocks in host memory.
    Swapped,
}

/// One generated token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEvent {
    /// Its request.
    pub request: RequestId,
    /// 0-based index among the request's generated tokens.
    pub index: u32,
    /// When it was produced (µs on the caller's clock).
    pub at_us: u64,
    /// Time to first token, on the first token only.
    pub ttft_us: Option<u64>,
    /// Whether it is the request's last token.
    pub last: bool,
}

/// What one iteration did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Modelled duration (µs); 0 when there was nothing to do.
    pub duration_us: u64,
    /// Requests prefilled.
    pub prefilled: Vec<RequestId>,
    /// Requests that decoded.
    pub decoded: usize,
    /// Requests preempted, and how.
    pub preempted: Vec<(RequestId, PreemptionMode)>,
    /// Requests swapped back in.
    pub swapped_in: Vec<RequestId>,
    /// Tokens produced, stamped `now + duration_us`.
    pub tokens: Vec<TokenEvent>,
}

/// One request's progress, for stats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestProgress {
    /// Its id.
    pub id: RequestId,
    /// Its class.
    pub priority: Priority,
    /// Where it is.
    pub phase: Phase,
    /// Tokens generated so far.
    pub generated: u32,
    /// Tokens it will generate.
    pub max_tokens: u32,
    /// Blocks it holds on the GPU.
    pub blocks: u32,
    /// Times it was preempted.
    pub preemptions: u32,
    /// Tokens in its prompt (with `generated`, what a waiting request
    /// needs in KV blocks: the dispatcher's virtual usage counts it).
    #[serde(default)]
    pub prompt_tokens: u32,
}

/// A snapshot of the engine, reported several times a second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStats {
    /// Requests in the batch.
    pub batch_size: u32,
    /// Requests waiting for (re-)prefill.
    pub queue_len: u32,
    /// Requests swapped out to host memory.
    pub swapped: u32,
    /// Free KV blocks.
    pub free_blocks: u32,
    /// All KV blocks.
    pub total_blocks: u32,
    /// Preemptions since the engine started.
    pub preemptions_total: u64,
    /// Requests completed since the engine started.
    pub completed_total: u64,
    /// Every request in the engine.
    pub requests: Vec<RequestProgress>,
}

/// A request and its KV cache lifted out of an engine, to be imported into
/// another (KV-cache migration, Llumnix-style).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedRequest {
    /// Seed of its KV content (kept across engines so bytes verify).
    pub seed: u64,
    /// The request.
    pub spec: RequestSpec,
    /// Tokens generated so far.
    pub generated: u32,
    /// KV entries held (`kv` covers `blocks_for(cached_tokens)` blocks).
    pub cached_tokens: u32,
    /// The KV bytes, block after block.
    pub kv: Vec<u8>,
    /// Bytes of one token's KV entry in `kv`.
    pub bytes_per_token: usize,
    /// TTFT already observed, if the first token was produced.
    pub ttft_us: Option<u64>,
}

/// What a migrating request resumes from on its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvState {
    /// Seed of its KV content (kept across engines so bytes verify).
    pub seed: u64,
    /// The request.
    pub spec: RequestSpec,
    /// Tokens generated so far (the next one has this position).
    pub generated: u32,
    /// KV entries held.
    pub cached_tokens: u32,
    /// TTFT already observed.
    pub ttft_us: Option<u64>,
    /// Bytes of one token's KV entry.
    pub bytes_per_token: usize,
}

/// One migration stage's blocks, from an engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvExport {
    /// Index of the first block in `data`.
    pub from_block: u32,
    /// The blocks, one after the other.
    pub data: Vec<u8>,
    /// How many.
    pub blocks: u32,
    /// KV entries the request holds now.
    pub cached_tokens: u32,
    /// With a freeze: the state to resume from.
    pub state: Option<KvState>,
}

#[derive(Debug)]
struct Request {
    seed: u64,
    spec: RequestSpec,
    seq: u64,
    phase: Phase,
    generated: u32,
    cached: usize,
    table: Vec<BlockId>,
    host: Option<Vec<u8>>,
    submitted_us: u64,
    ttft_us: Option<u64>,
    preemptions: u32,
    /// Stopped for the last stage of a migration: holds its blocks but is
    /// not scheduled.
    frozen: bool,
}

impl Request {
    fn context(&self) -> usize {
        self.spec.prompt_tokens as usize + self.generated as usize
    }

    /// Whether its next decode writes a KV entry outside its blocks.
    fn needs_block(&self) -> bool {
        self.cached + 1 > self.table.len() * BLOCK_TOKENS
    }

    /// Queue order: high priority first, then arrival.
    fn rank(&self) -> (std::cmp::Reverse<Priority>, u64) {
        (std::cmp::Reverse(self.spec.priority), self.seq)
    }
}

/// The SIMULATED engine; see the module documentation.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    pool: BlockPool,
    requests: BTreeMap<RequestId, Request>,
    next_id: RequestId,
    next_seq: u64,
    host_used: u32,
    preemptions_total: u64,
    completed_total: u64,
    /// Blocks staged for incoming request migrations, by migration id.
    staged: HashMap<String, Vec<BlockId>>,
}

impl Engine {
    /// An empty engine. The caller validated `config` (see
    /// [`super::settings::EngineSettings`]).
    pub fn new(config: EngineConfig) -> Self {
        let pool = BlockPool::new(config.kv_blocks, config.bytes_per_token);
        Self {
            config,
            pool,
            requests: BTreeMap::new(),
            next_id: 1,
            next_seq: 0,
            host_used: 0,
            preemptions_total: 0,
            completed_total: 0,
            staged: HashMap::new(),
        }
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Checks a request against the bounds and this engine's KV capacity,
    /// without queueing it.
    pub fn check(&self, spec: &RequestSpec) -> Result<(), EngineError> {
        for (field, value) in [
            ("prompt_tokens", spec.prompt_tokens),
            ("max_tokens", spec.max_tokens),
        ] {
            if value == 0 || value > MAX_REQUEST_TOKENS {
                return Err(EngineError::Invalid {
                    field,
                    message: format!("must be between 1 and {MAX_REQUEST_TOKENS}, got {value}"),
                });
            }
        }
        let needed_tokens = spec.prompt_tokens as u64 + spec.max_tokens as u64 - 1;
        let needed_blocks = (needed_tokens as usize).div_ceil(BLOCK_TOKENS) as u64;
        let capacity_blocks = self.pool.total() as u64;
        if needed_blocks > capacity_blocks {
            return Err(EngineError::OverCapacity {
                needed_tokens,
                needed_blocks,
                capacity_tokens: capacity_blocks * BLOCK_TOKENS as u64,
                capacity_blocks,
            });
        }
        Ok(())
    }

    /// Queues a request at `now` (µs), or refuses it when it is out of
    /// bounds or could never fit in the KV cache.
    pub fn submit(&mut self, spec: RequestSpec, now: u64) -> Result<RequestId, EngineError> {
        self.check(&spec)?;
        let id = self.next_id;
        self.next_id += 1;
        let seq = self.take_seq();
        self.requests.insert(
            id,
            Request {
                seed: id,
                spec,
                seq,
                phase: Phase::Waiting,
                generated: 0,
                cached: 0,
                table: Vec::new(),
                host: None,
                submitted_us: now,
                ttft_us: None,
                preemptions: 0,
                frozen: false,
            },
        );
        Ok(id)
    }

    /// Drops a request (its client went away), freeing what it holds.
    pub fn cancel(&mut self, id: RequestId) -> Result<(), EngineError> {
        let request = self
            .requests
            .remove(&id)
            .ok_or(EngineError::UnknownRequest(id))?;
        self.release(request);
        Ok(())
    }

    /// Whether any request is in the engine.
    pub fn is_idle(&self) -> bool {
        self.requests.is_empty()
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn release(&mut self, request: Request) {
        self.pool.release(request.table);
        if let Some(host) = request.host {
            self.host_used = self
                .host_used
                .saturating_sub((host.len() / self.pool.block_bytes()) as u32);
        }
    }

    fn ids_in(&self, phase: Phase) -> Vec<RequestId> {
        let mut ids: Vec<(_, RequestId)> = self
            .requests
            .iter()
            .filter(|(_, r)| r.phase == phase && !r.frozen)
            .map(|(id, r)| (r.rank(), *id))
            .collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// The running request to preempt: lowest priority, most recent.
    fn victim(&self, among: &[RequestId], below: Option<Priority>) -> Option<RequestId> {
        among
            .iter()
            .filter_map(|id| self.requests.get(id).map(|r| (id, r)))
            .filter(|(_, r)| below.is_none_or(|p| r.spec.priority < p))
            .min_by_key(|(_, r)| (r.spec.priority, std::cmp::Reverse(r.seq)))
            .map(|(id, _)| *id)
    }

    /// Preempts `id`; returns the modelled swap-out time (µs).
    fn preempt(&mut self, id: RequestId, report: &mut StepReport) -> u64 {
        let block_bytes = self.pool.block_bytes();
        let Some(request) = self.requests.get_mut(&id) else {
            return 0;
        };
        let used = blocks_for(request.cached);
        let host_left = self.config.swap_blocks.saturating_sub(self.host_used) as usize;
        // A request not prefilled yet has nothing worth swapping.
        let mode = if self.config.preemption == PreemptionMode::Swap
            && request.cached > 0
            && used <= host_left
        {
            PreemptionMode::Swap
        } else {
            PreemptionMode::Recompute
        };
        let table = std::mem::take(&mut request.table);
        request.preemptions += 1;
        let mut cost = 0;
        match mode {
            PreemptionMode::Swap => {
                let mut host = Vec::with_capacity(used * block_bytes);
                for &block in &table[..used.min(table.len())] {
                    host.extend_from_slice(self.pool.block(block));
                }
                request.host = Some(host);
                request.phase = Phase::Swapped;
                self.host_used += used as u32;
                cost = self.config.cost.swap_us(used as u64);
            }
            PreemptionMode::Recompute => {
                request.cached = 0;
                request.phase = Phase::Waiting;
            }
        }
        self.pool.release(table);
        self.preemptions_total += 1;
        report.preempted.push((id, mode));
        cost
    }

    /// Runs one iteration at `now` (µs); see the module documentation.
    pub fn step(&mut self, now: u64) -> StepReport {
        let mut report = StepReport::default();
        let mut extra_us = 0;
        let mut running = self.ids_in(Phase::Running);

        // 1. Swap-in, in queue order, while it fits.
        for id in self.ids_in(Phase::Swapped) {
            if running.len() >= self.config.max_batch {
                break;
            }
            let Some(request) = self.requests.get(&id) else {
                continue;
            };
            let need = blocks_for(request.cached + 1);
            let Some(table) = self.pool.allocate(need) else {
                break;
            };
            let host = self
                .requests
                .get_mut(&id)
                .and_then(|r| r.host.take())
                .unwrap_or_default();
            let block_bytes = self.pool.block_bytes();
            for (i, chunk) in host.chunks(block_bytes).enumerate() {
                if let Some(&block) = table.get(i) {
                    self.pool.write_block(block, chunk);
                }
            }
            let swapped = host.len() / block_bytes;
            self.host_used = self.host_used.saturating_sub(swapped as u32);
            extra_us += self.config.cost.swap_us(swapped as u64);
            if let Some(request) = self.requests.get_mut(&id) {
                request.table = table;
                request.phase = Phase::Running;
            }
            running.push(id);
            report.swapped_in.push(id);
        }
        let swapped_left = !self.ids_in(Phase::Swapped).is_empty();

        // 2. Admission.
        let mut prefill: Vec<RequestId> = Vec::new();
        for id in self.ids_in(Phase::Waiting) {
            let Some(request) = self.requests.get(&id) else {
                continue;
            };
            let priority = request.spec.priority;
            // Swapped requests come back before new normal ones start.
            if swapped_left && priority == Priority::Normal {
                break;
            }
            let need = blocks_for(request.context());
            let admitted = loop {
                let reserve = running
                    .iter()
                    .filter(|r| self.requests.get(r).is_some_and(Request::needs_block))
                    .count();
                let fits_batch = running.len() + prefill.len() < self.config.max_batch;
                let fits_blocks = self.pool.free() as usize >= need + reserve;
                if fits_batch && fits_blocks {
                    break true;
                }
                // Only a high-priority request makes room, and only from normal ones.
                let mut candidates = running.clone();
                candidates.extend(&prefill);
                let Some(victim) = (priority == Priority::High && self.config.priority_preemption)
                    .then(|| self.victim(&candidates, Some(priority)))
                    .flatten()
                else {
                    break false;
                };
                extra_us += self.preempt(victim, &mut report);
                running.retain(|r| *r != victim);
                prefill.retain(|r| *r != victim);
            };
            if !admitted {
                break;
            }
            let Some(table) = self.pool.allocate(need) else {
                break;
            };
            if let Some(request) = self.requests.get_mut(&id) {
                request.table = table;
                request.phase = Phase::Running;
            }
            prefill.push(id);
        }

        // 3. Blocks for the decodes, preempting when none is free.
        let mut decode: Vec<RequestId> = Vec::new();
        for id in running.clone() {
            if !running.contains(&id) {
                continue; // preempted earlier in this loop
            }
            while let Some(request) = self.requests.get(&id) {
                if !request.needs_block() {
                    decode.push(id);
                    break;
                }
                if let Some(mut block) = self.pool.allocate(1) {
                    if let Some(request) = self.requests.get_mut(&id) {
                        request.table.append(&mut block);
                    }
                    decode.push(id);
                    break;
                }
                let mut candidates = running.clone();
                candidates.extend(&prefill);
                let Some(victim) = self.victim(&candidates, None) else {
                    break;
                };
                extra_us += self.preempt(victim, &mut report);
                running.retain(|r| *r != victim);
                prefill.retain(|r| *r != victim);
                decode.retain(|r| *r != victim);
                if victim == id {
                    break;
                }
            }
        }

        // 4. The modelled time, then the work.
        let prefill_us: u64 = prefill
            .iter()
            .filter_map(|id| self.requests.get(id))
            .map(|r| self.config.cost.prefill_us(r.context() as u64))
            .sum();
        let context: u64 = decode
            .iter()
            .filter_map(|id| self.requests.get(id))
            .map(|r| r.context() as u64)
            .sum();
        let decode_us = self.config.cost.decode_us(decode.len() as u64, context);
        report.duration_us = prefill_us + decode_us + extra_us;
        let at_us = now + report.duration_us;

        for id in &prefill {
            if let Some(request) = self.requests.get_mut(id) {
                let context = request.context();
                for position in 0..context {
                    self.pool
                        .write_token(&request.table, request.seed, position);
                }
                request.cached = context;
            }
            self.emit(*id, at_us, &mut report);
        }
        for id in &decode {
            if let Some(request) = self.requests.get_mut(id) {
                let position = request.cached;
                self.pool
                    .write_token(&request.table, request.seed, position);
                request.cached += 1;
            }
            self.emit(*id, at_us, &mut report);
        }
        report.prefilled = prefill;
        report.decoded = decode.len();
        report
    }

    /// Records one generated token; retires the request after its last.
    fn emit(&mut self, id: RequestId, at_us: u64, report: &mut StepReport) {
        let Some(request) = self.requests.get_mut(&id) else {
            return;
        };
        let index = request.generated;
        request.generated += 1;
        let ttft_us = if request.ttft_us.is_none() {
            let ttft = at_us.saturating_sub(request.submitted_us);
            request.ttft_us = Some(ttft);
            Some(ttft)
        } else {
            None
        };
        let last = request.generated >= request.spec.max_tokens;
        report.tokens.push(TokenEvent {
            request: id,
            index,
            at_us,
            ttft_us,
            last,
        });
        if last {
            if let Some(request) = self.requests.remove(&id) {
                self.release(request);
            }
            self.completed_total += 1;
        }
    }

    /// The engine now: batch, queue, blocks and every request's progress.
    pub fn stats(&self) -> EngineStats {
        let count = |phase| self.requests.values().filter(|r| r.phase == phase).count() as u32;
        EngineStats {
            batch_size: count(Phase::Running),
            queue_len: count(Phase::Waiting),
            swapped: count(Phase::Swapped),
            free_blocks: self.pool.free(),
            total_blocks: self.pool.total(),
            preemptions_total: self.preemptions_total,
            completed_total: self.completed_total,
            requests: self
                .requests
                .iter()
                .map(|(id, r)| RequestProgress {
                    id: *id,
                    priority: r.spec.priority,
                    phase: r.phase,
                    generated: r.generated,
                    max_tokens: r.spec.max_tokens,
                    blocks: r.table.len() as u32,
                    preemptions: r.preemptions,
                    prompt_tokens: r.spec.prompt_tokens,
                })
                .collect(),
        }
    }

    /// Whether the KV cache of a running or swapped request holds exactly
    /// the bytes its tokens should have (after swaps and imports).
    pub fn verify_request(&self, id: RequestId) -> Result<bool, EngineError> {
        let request = self
            .requests
            .get(&id)
            .ok_or(EngineError::UnknownRequest(id))?;
        Ok(match &request.host {
            Some(host) => {
                let bpt = self.pool.bytes_per_token();
                (0..request.cached).all(|p| {
                    let start = p * bpt;
                    host.get(start..start + bpt)
                        == Some(&super::blocks::kv_bytes(request.seed, p as u64, bpt)[..])
                })
            }
            None => self
                .pool
                .verify(&request.table, request.seed, request.cached),
        })
    }

    /// Takes a request and its KV cache out of this engine (for migration to
    /// another instance); its blocks are freed here.
    pub fn export_request(&mut self, id: RequestId) -> Result<ExportedRequest, EngineError> {
        let mut request = self
            .requests
            .remove(&id)
            .ok_or(EngineError::UnknownRequest(id))?;
        let kv = match request.host.take() {
            Some(host) => {
                let blocks = (host.len() / self.pool.block_bytes()) as u32;
                self.host_used = self.host_used.saturating_sub(blocks);
                host
            }
            None => {
                let used = blocks_for(request.cached).min(request.table.len());
                let mut kv = Vec::with_capacity(used * self.pool.block_bytes());
                for &block in &request.table[..used] {
                    kv.extend_from_slice(self.pool.block(block));
                }
                kv
            }
        };
        let exported = ExportedRequest {
            seed: request.seed,
            spec: request.spec,
            generated: request.generated,
            cached_tokens: request.cached as u32,
            kv,
            bytes_per_token: self.pool.bytes_per_token(),
            ttft_us: request.ttft_us,
        };
        self.release(request);
        Ok(exported)
    }

    /// Adds a request exported from another engine, its KV cache copied into
    /// free blocks here (no preemption: an import that does not fit now is
    /// refused). It keeps decoding from where it was; `now` is its
    /// submission time here.
    pub fn import_request(
        &mut self,
        exported: ExportedRequest,
        now: u64,
    ) -> Result<RequestId, EngineError> {
        self.check(&exported.spec)?;
        if exported.bytes_per_token != self.pool.bytes_per_token() {
            return Err(EngineError::Import(format!(
                "{} bytes per token, this engine uses {}",
                exported.bytes_per_token,
                self.pool.bytes_per_token()
            )));
        }
        let cached = exported.cached_tokens as usize;
        let blocks = blocks_for(cached);
        if exported.kv.len() != blocks * self.pool.block_bytes()
            || exported.generated >= exported.spec.max_tokens
            || (cached > 0
                && cached + 1 != exported.spec.prompt_tokens as usize + exported.generated as usize)
        {
            return Err(EngineError::Import(format!(
                "inconsistent state: {} KV bytes for {cached} tokens, {} of {} generated",
                exported.kv.len(),
                exported.generated,
                exported.spec.max_tokens
            )));
        }
        let need = if cached == 0 {
            0
        } else {
            blocks_for(cached + 1)
        };
        let table = self.pool.allocate(need).ok_or(EngineError::NoFreeBlocks {
            needed: need as u64,
            free: self.pool.free() as u64,
        })?;
        for (i, chunk) in exported.kv.chunks(self.pool.block_bytes()).enumerate() {
            if let Some(&block) = table.get(i) {
                self.pool.write_block(block, chunk);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let seq = self.take_seq();
        self.requests.insert(
            id,
            Request {
                seed: exported.seed,
                spec: exported.spec,
                seq,
                phase: if cached == 0 {
                    Phase::Waiting
                } else {
                    Phase::Running
                },
                generated: exported.generated,
                cached,
                table,
                host: None,
                submitted_us: now,
                ttft_us: exported.ttft_us,
                preemptions: 0,
                frozen: false,
            },
        );
        Ok(id)
    }

    /// A migration stage: the KV blocks of running request `id` from
    /// `from_block` on. Without `freeze` only full blocks (immutable while
    /// it decodes); with `freeze` the request stops decoding first, and
    /// every block it holds comes with the state to resume it from. A
    /// waiting request (queued for its prefill) has no blocks: its freeze
    /// keeps it from being admitted, and its state has no cached token.
    pub fn export_kv(
        &mut self,
        id: RequestId,
        from_block: u32,
        freeze: bool,
    ) -> Result<KvExport, EngineError> {
        let block_bytes = self.pool.block_bytes();
        let request = self
            .requests
            .get_mut(&id)
            .ok_or(EngineError::UnknownRequest(id))?;
        // A waiting request (queued for its prefill) holds no blocks: it
        // migrates with none, and is queued on the target.
        if request.phase == Phase::Swapped || request.host.is_some() {
            return Err(EngineError::Migration(format!(
                "request {id} is {:?}, only a running or waiting request migrates",
                request.phase
            )));
        }
        if freeze {
            request.frozen = true;
        }
        let end = if freeze {
            blocks_for(request.cached)
        } else {
            request.cached / BLOCK_TOKENS
        };
        let end = end.min(request.table.len());
        let from = (from_block as usize).min(end);
        let mut data = Vec::with_capacity((end - from) * block_bytes);
        for &block in &request.table[from..end] {
            data.extend_from_slice(self.pool.block(block));
        }
        let state = freeze.then(|| KvState {
            seed: request.seed,
            spec: request.spec,
            generated: request.generated,
            cached_tokens: request.cached as u32,
            ttft_us: request.ttft_us,
            bytes_per_token: self.pool.bytes_per_token(),
        });
        Ok(KvExport {
            from_block: from as u32,
            data,
            blocks: (end - from) as u32,
            cached_tokens: request.cached as u32,
            state,
        })
    }

    /// Gives a migration up on the source: frozen request `id` decodes
    /// again where it stopped.
    pub fn thaw(&mut self, id: RequestId) -> Result<(), EngineError> {
        let request = self
            .requests
            .get_mut(&id)
            .ok_or(EngineError::UnknownRequest(id))?;
        request.frozen = false;
        Ok(())
    }

    /// Commits a migration on the source: frozen request `id` leaves this
    /// engine and its blocks are freed; returns how many.
    pub fn release_frozen(&mut self, id: RequestId) -> Result<u32, EngineError> {
        match self.requests.get(&id) {
            None => return Err(EngineError::UnknownRequest(id)),
            Some(r) if !r.frozen => {
                return Err(EngineError::Migration(format!(
                    "request {id} is not frozen for a migration"
                )))
            }
            Some(_) => {}
        }
        let request = self
            .requests
            .remove(&id)
            .ok_or(EngineError::UnknownRequest(id))?;
        let blocks = request.table.len() as u32;
        self.release(request);
        Ok(blocks)
    }

    /// Stages blocks of incoming migration `migration` into free blocks of
    /// this engine; they must follow what is staged (`from_block`).
    /// Returns the blocks staged so far.
    pub fn stage_kv(
        &mut self,
        migration: &str,
        from_block: u32,
        data: &[u8],
    ) -> Result<u32, EngineError> {
        let block_bytes = self.pool.block_bytes();
        if block_bytes == 0 || !data.len().is_multiple_of(block_bytes) {
            return Err(EngineError::Migration(format!(
                "{} bytes is not a whole number of {block_bytes}-byte blocks",
                data.len()
            )));
        }
        let held = self.staged.get(migration).map_or(0, Vec::len);
        if from_block as usize != held {
            return Err(EngineError::Migration(format!(
                "blocks from {from_block} sent, {held} staged for migration {migration}"
            )));
        }
        let n = data.len() / block_bytes;
        let table = self.pool.allocate(n).ok_or(EngineError::NoFreeBlocks {
            needed: n as u64,
            free: self.pool.free() as u64,
        })?;
        for (chunk, &block) in data.chunks(block_bytes).zip(&table) {
            self.pool.write_block(block, chunk);
        }
        let staged = self.staged.entry(migration.to_string()).or_default();
        staged.extend(table);
        Ok(staged.len() as u32)
    }

    /// Drops what is staged for `migration`; returns the blocks freed.
    pub fn abort_import(&mut self, migration: &str) -> u32 {
        let table = self.staged.remove(migration).unwrap_or_default();
        let n = table.len() as u32;
        self.pool.release(table);
        n
    }

    /// Ends migration `migration` on the target: its staged blocks, checked
    /// byte for byte, become a running request in `state`, decoding from
    /// its next token at `now` (a request with no cached token, moved while
    /// it waited, is queued for its prefill instead). Any failure frees
    /// what was staged.
    pub fn resume_imported(
        &mut self,
        migration: &str,
        state: KvState,
        now: u64,
    ) -> Result<RequestId, EngineError> {
        let table = self.staged.remove(migration).unwrap_or_default();
        match self.resume_checked(table.clone(), migration, state, now) {
            Ok(id) => Ok(id),
            Err(e) => {
                self.pool.release(table);
                Err(e)
            }
        }
    }

    fn resume_checked(
        &mut self,
        mut table: Vec<BlockId>,
        migration: &str,
        state: KvState,
        now: u64,
    ) -> Result<RequestId, EngineError> {
        self.check(&state.spec)?;
        let cached = state.cached_tokens as usize;
        if state.bytes_per_token != self.pool.bytes_per_token() {
            return Err(EngineError::Import(format!(
                "{} bytes per token, this engine uses {}",
                state.bytes_per_token,
                self.pool.bytes_per_token()
            )));
        }
        // A request that waited for its (re-)prefill comes with no KV and
        // is queued here; one that ran comes with its KV and decodes on.
        let waiting = cached == 0;
        if state.generated >= state.spec.max_tokens
            || (!waiting
                && cached + 1 != state.spec.prompt_tokens as usize + state.generated as usize)
            || table.len() != blocks_for(cached)
        {
            return Err(EngineError::Import(format!(
                "inconsistent state for migration {migration}: {} blocks staged for {cached} \
                 tokens, {} of {} generated",
                table.len(),
                state.generated,
                state.spec.max_tokens
            )));
        }
        if !self.pool.verify(&table, state.seed, cached) {
            return Err(EngineError::Migration(format!(
                "the KV bytes of migration {migration} do not verify"
            )));
        }
        let extra = if waiting {
            0
        } else {
            blocks_for(cached + 1) - table.len()
        };
        let mut more = self.pool.allocate(extra).ok_or(EngineError::NoFreeBlocks {
            needed: extra as u64,
            free: self.pool.free() as u64,
        })?;
        table.append(&mut more);
        let id = self.next_id;
        self.next_id += 1;
        let seq = self.take_seq();
        self.requests.insert(
            id,
            Request {
                seed: state.seed,
                spec: state.spec,
                seq,
                phase: if waiting {
                    Phase::Waiting
                } else {
                    Phase::Running
                },
                generated: state.generated,
                cached,
                table,
                host: None,
                submitted_us: now,
                ttft_us: state.ttft_us,
                preemptions: 0,
                frozen: false,
            },
        );
        Ok(id)
    }

    /// Requests by id with their phase (tests, stats consumers).
    pub fn phases(&self) -> HashMap<RequestId, Phase> {
        self.requests.iter().map(|(id, r)| (*id, r.phase)).collect()
    }
}
