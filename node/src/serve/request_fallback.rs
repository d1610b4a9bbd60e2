//! What the SOURCE of a request migration keeps of the request it handed
//! over: its KV blocks and state exactly as they were sent, for a few
//! seconds after the commit.
//!
//! Why: the commit releases the request on the source before the client's
//! relay has claimed it on the target. If the target's agent dies in that
//! gap, its stream of the resumed request dies with it (the target engine
//! cancels the request) and the relay finds no one to follow: the request
//! would be lost. With this copy the relay's recovery
//! ([`crate::infer`], `InferRequest.recover_from_index`) finds the request
//! at its source instead, which imports the copy into its own engine and
//! resumes it there, the same import and resume the target made.
//!
//! Why not keep the request frozen in the source engine until the target
//! confirms: a request is often moved *because* its engine runs out of KV
//! blocks; holding them until a confirmation would keep the pressure the
//! move was meant to relieve. The agent holds the bytes instead, bounded
//! in time ([`FALLBACK_TTL`]) and in size ([`FALLBACK_MAX_BYTES`]).
//!
//! After that the agent keeps the request's *state* alone (its seed,
//! prompt and token counts, a few dozen bytes) for [`STATE_TTL`], at most
//! [`MAX_KEPT`] requests: a target lost later, however long the request
//! decodes there, is taken back by a recompute (below), which needs no KV
//! bytes. A copy whose bytes do not fit is kept as its state alone too.
//!
//! The copy also serves a target that dies after it streamed part of the
//! request to the client: then the KV bytes end before what the client
//! has, so the source resumes the request from its state *as of the
//! client's next position* with no KV, queued for a prefill of its prompt
//! and every position the client has: what an engine does for a request
//! preempted by recompute. The positions the target sent are not decoded
//! again (a real model might not choose the same tokens twice); they are
//! given. (The simulated engine's token is a function of its position, so
//! the position is all it needs; a real engine would need the token ids,
//! which the relay holds.)
//!
//! Exactly one copy runs: the copy is resumed only for a client that needs
//! a position at or past the one it was frozen at, and the target is then
//! told to drop what it resumed (its stream to the lost relay already
//! ended it there).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_api::proto::inference::{
    AbortImportRequest, ImportKvRequest, KvState, ResumeImportedRequest,
};
use tonic::Status;

use crate::infer::{InferStream, Inference};
use crate::migrate::CHUNK_BYTES;

/// How long the source keeps a handed-over request: the client's relay
/// follows the `moved` message at once and gives up on the target after a
/// dial timeout and a few looks (about 3 s); this leaves room for a loaded
/// machine.
pub const FALLBACK_TTL: Duration = Duration::from_secs(10);
/// The most KV bytes an agent keeps for handed-over requests at once; of
/// a request whose bytes do not fit, its state alone is kept (logged).
pub const FALLBACK_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// How long the source keeps a handed-over request's state after its
/// bytes went: longer than almost any request decodes (16,384 tokens at
/// 50 ms each take under 14 minutes).
pub const STATE_TTL: Duration = Duration::from_secs(30 * 60);
/// The most handed-over requests an agent keeps (bytes or state), so
/// that a flood of moves cannot grow it without bound.
pub const MAX_KEPT: usize = 65_536;

/// One handed-over request, as it was sent to the target.
pub struct Fallback {
    /// The KV data sent, in order: (first block, whole blocks of
    /// `block_bytes`; the last piece ends with the partial block). Empty
    /// once [`FALLBACK_TTL`] is up, or if it did not fit: the state alone
    /// is kept.
    pub pieces: Vec<(u32, Vec<u8>)>,
    /// Bytes of one block.
    pub block_bytes: usize,
    /// The state the target resumed it from.
    pub state: KvState,
    /// The migration that handed it over (what the target knows it by).
    pub migration: String,
    /// Where it went.
    pub target: super::request_migration::Target,
}

impl Fallback {
    fn bytes(&self) -> u64 {
        self.pieces.iter().map(|(_, d)| d.len() as u64).sum()
    }
}

#[derive(Default)]
struct Kept {
    by_request: HashMap<(String, u64), Fallback>,
    bytes: u64,
}

/// The copies an agent keeps; cheap to clone.
#[derive(Clone, Default)]
pub struct Fallbacks {
    inner: Arc<Mutex<Kept>>,
}

impl Fallbacks {
    /// Keeps `fallback` for request `request_id` of `alloc_id`: its bytes
    /// for [`FALLBACK_TTL`] (none if the agent already holds
    /// [`FALLBACK_MAX_BYTES`] with them), its state for [`STATE_TTL`].
    pub fn keep(&self, alloc_id: &str, request_id: u64, fallback: Fallback) {
        self.keep_for(alloc_id, request_id, fallback, FALLBACK_TTL, STATE_TTL);
    }

    /// [`Fallbacks::keep`], the bytes for `bytes_ttl`, the state for
    /// `state_ttl` (counted from now, the longer of the two).
    fn keep_for(
        &self,
        alloc_id: &str,
        request_id: u64,
        mut fallback: Fallback,
        bytes_ttl: Duration,
        state_ttl: Duration,
    ) {
        let migration = fallback.migration.clone();
        let key = (alloc_id.to_string(), request_id);
        let Ok(mut kept) = self.inner.lock() else {
            return;
        };
        if kept.by_request.len() >= MAX_KEPT && !kept.by_request.contains_key(&key) {
            tracing::warn!(
                %migration,
                "{MAX_KEPT} handed-over requests kept already: lost if its target dies"
            );
            return;
        }
        let bytes = fallback.bytes();
        if kept.bytes + bytes > FALLBACK_MAX_BYTES {
            tracing::warn!(
                %migration, bytes,
                "no room to keep the KV bytes of the handed-over request: its state only (a recompute if its target dies)"
            );
            fallback.pieces.clear();
        }
        kept.bytes += fallback.bytes();
        if let Some(old) = kept.by_request.insert(key.clone(), fallback) {
            kept.bytes -= old.bytes();
        }
        drop(kept);
        let fallbacks = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(bytes_ttl).await;
            fallbacks.change_if(&key, &migration, |kept, fallback| {
                kept.bytes -= fallback.bytes();
                fallback.pieces.clear();
                false
            });
            tokio::time::sleep(state_ttl.saturating_sub(bytes_ttl)).await;
            fallbacks.change_if(&key, &migration, |kept, fallback| {
                kept.bytes -= fallback.bytes();
                true
            });
        });
    }

    /// Applies `change` to the copy of `key` if it is still the one of
    /// `migration` (a later move of the same request keeps its own);
    /// `change` says whether to drop it.
    fn change_if(
        &self,
        key: &(String, u64),
        migration: &str,
        change: impl FnOnce(&mut Kept, &mut Fallback) -> bool,
    ) {
        let Ok(mut kept) = self.inner.lock() else {
            return;
        };
        let kept = &mut *kept;
        if kept
            .by_request
            .get(key)
            .is_none_or(|f| f.migration != migration)
        {
            return;
        }
        let Some(mut fallback) = kept.by_request.remove(key) else {
            return;
        };
        if !change(kept, &mut fallback) {
            kept.by_request.insert(key.clone(), fallback);
        }
    }

    /// The copy of request `request_id` of `alloc_id`, taken, when a
    /// client that needs position `from` next can go on from it: it was
    /// frozen at `from` or before ([`resume_here`] recomputes the positions
    /// in between). None otherwise: a copy frozen past `from` would repeat
    /// what the client has, and stays until its time is up.
    pub fn take(&self, alloc_id: &str, request_id: u64, from: u32) -> Option<Fallback> {
        let mut kept = self.inner.lock().ok()?;
        let key = (alloc_id.to_string(), request_id);
        if kept.by_request.get(&key)?.state.generated > from {
            return None;
        }
        let taken = kept.by_request.remove(&key)?;
        kept.bytes -= taken.bytes();
        Some(taken)
    }

    /// KV bytes kept now.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.inner.lock().map(|k| k.bytes).unwrap_or_default()
    }
}

/// `data` (whole blocks of `block_bytes` from `from_block`, the last
/// possibly partial) cut into pieces of at most [`CHUNK_BYTES`] on block
/// boundaries, each with its first block: what one message carries,
/// agent to agent or agent to engine.
pub fn block_chunks(data: &[u8], from_block: u32, block_bytes: usize) -> Vec<(u32, &[u8])> {
    if data.is_empty() {
        return vec![(from_block, data)];
    }
    let per_chunk = (CHUNK_BYTES / block_bytes.max(1)).max(1);
    let mut block = from_block;
    data.chunks(per_chunk * block_bytes.max(1))
        .map(|chunk| {
            let at = block;
            block += chunk.len().checked_div(block_bytes).unwrap_or(0) as u32;
            (at, chunk)
        })
        .collect()
}

/// Resumes `fallback` (request `request_id` of this node's `alloc_id`,
/// handed over and taken back) on that allocation's engine, for a client
/// that needs position `from` next, and tells the target to drop its copy;
/// the request's token stream from `from`. At the position it was frozen
/// at, the copy's KV blocks are imported and it decodes on; past it (the
/// target streamed part of it before it was lost), or once its bytes are
/// gone, it is queued with no KV for a prefill of everything up to `from`
/// ([`resumed_as`]).
pub async fn resume_here(
    inference: &Inference,
    alloc_id: &str,
    request_id: u64,
    fallback: Fallback,
    from: u32,
) -> Result<InferStream, Status> {
    let engine = inference.engines().find(alloc_id, "")?;
    let mut client = inference.moves().engine(&engine.addr)?;
    let migration = format!("{alloc_id}.{request_id}.{}", uuid::Uuid::new_v4().simple());
    let (pieces, state) = resumed_as(&fallback, from);
    let resumed = async {
        for (from_block, data) in pieces {
            for (at, chunk) in block_chunks(data, *from_block, fallback.block_bytes) {
                if chunk.is_empty() {
                    continue;
                }
                client
                    .import_kv(ImportKvRequest {
                        migration_id: migration.clone(),
                        from_block: at,
                        data: chunk.to_vec(),
                    })
                    .await?;
            }
        }
        client
            .resume_imported(ResumeImportedRequest {
                migration_id: migration.clone(),
                state: Some(state),
            })
            .await
    }
    .await;
    let answer = match resumed {
        Ok(answer) => answer,
        Err(status) => {
            let abort = AbortImportRequest {
                migration_id: migration.clone(),
            };
            if let Err(e) = client.abort_import(abort).await {
                tracing::warn!(%migration, error = %e, "could not drop the staged copy");
            }
            return Err(Status::unavailable(format!(
                "taking back request {request_id} of {alloc_id}: {}",
                status.message()
            )));
        }
    };
    let id = super::request_migration::request_id_of(answer.metadata());
    let stream = super::request_migration::relayed_tokens(
        answer.into_inner(),
        alloc_id.to_string(),
        inference.moves().clone(),
        id,
    );
    tracing::warn!(
        alloc = alloc_id, request_id, target = %fallback.target.alloc_id,
        frozen_at = fallback.state.generated, from,
        "the target of a handed-over request was lost: resumed here"
    );
    // The target may still hold the request resumed (reachable from here,
    // not from the client's relay): only one copy may run.
    let (inference, target, handed_over) = (
        inference.clone(),
        fallback.target.clone(),
        fallback.migration.clone(),
    );
    tokio::spawn(async move {
        super::request_migration::abort_on_target(&inference, &handed_over, &target).await;
    });
    Ok(stream)
}

/// What `fallback` is resumed from for a client that needs position
/// `from` next: its KV pieces and frozen state where it was frozen there
/// and kept its bytes, else no pieces and the state as of `from`
/// ([`recomputed_from`]).
fn resumed_as(fallback: &Fallback, from: u32) -> (&[(u32, Vec<u8>)], KvState) {
    if from > fallback.state.generated || fallback.pieces.is_empty() {
        (&[], recomputed_from(&fallback.state, from))
    } else {
        (&fallback.pieces, fallback.state.clone())
    }
}

/// `state` (frozen at an earlier position) as of position `from`, with
/// no KV: the engine queues it for a prefill of its prompt and the `from`
/// positions the client has, and decodes on from `from`. Its first
/// token's time stays the one it had.
fn recomputed_from(state: &KvState, from: u32) -> KvState {
    KvState {
        generated: from,
        cached_tokens: 0,
        ..state.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::request_migration::Target;

    fn fallback(migration: &str, generated: u32, bytes: usize) -> Fallback {
        Fallback {
            pieces: vec![(0, vec![7; bytes])],
            block_bytes: 16,
            state: KvState {
                generated,
                ..Default::default()
            },
            migration: migration.into(),
            target: Target {
                alloc_id: "dst".into(),
                agent: "127.0.0.1:1".into(),
                node: None,
            },
        }
    }

    #[tokio::test]
    async fn a_copy_is_taken_once_and_never_past_the_client() {
        let kept = Fallbacks::default();
        kept.keep("src", 7, fallback("m1", 40, 64));
        assert_eq!(kept.bytes(), 64);
        assert!(
            kept.take("src", 7, 39).is_none(),
            "frozen past what the client needs: a gap"
        );
        assert!(kept.take("src", 8, 40).is_none(), "another request");
        let taken = kept.take("src", 7, 40).expect("where it was frozen");
        assert_eq!(taken.migration, "m1");
        assert!(kept.take("src", 7, 40).is_none(), "taken once");
        assert_eq!(kept.bytes(), 0);
        // A client the target already streamed to takes it too.
        kept.keep("src", 7, fallback("m2", 40, 64));
        let taken = kept.take("src", 7, 55).expect("the client is past it");
        assert_eq!(taken.migration, "m2");
    }

    #[tokio::test]
    async fn bytes_beyond_the_bound_are_not_kept_but_the_state_is() {
        let kept = Fallbacks::default();
        let half = (FALLBACK_MAX_BYTES / 2) as usize;
        kept.keep("src", 1, fallback("m1", 0, half));
        kept.keep("src", 2, fallback("m2", 0, half));
        kept.keep("src", 3, fallback("m3", 0, 1));
        assert_eq!(kept.bytes(), FALLBACK_MAX_BYTES);
        let state_only = kept.take("src", 3, 0).expect("its state, over the bound");
        assert!(state_only.pieces.is_empty());
        assert!(kept.take("src", 1, 0).is_some());
        kept.keep("src", 3, fallback("m3", 0, 1));
        let whole = kept.take("src", 3, 0).expect("room again");
        assert_eq!(whole.bytes(), 1, "with its bytes");
    }

    #[tokio::test]
    async fn bytes_lapse_then_the_state_unless_a_newer_copy_replaced_it() {
        let kept = Fallbacks::default();
        let (bytes_ttl, state_ttl) = (Duration::from_millis(50), Duration::from_millis(400));
        kept.keep_for("src", 7, fallback("m1", 3, 16), bytes_ttl, state_ttl);
        kept.keep_for("src", 8, fallback("m2", 5, 16), bytes_ttl, state_ttl);
        // A later migration of request 8 (moved back, moved again) keeps
        // its own copy for its own time.
        let long = Duration::from_secs(60);
        kept.keep_for("src", 8, fallback("m3", 9, 32), long, long);
        assert_eq!(kept.bytes(), 48);
        tokio::time::sleep(bytes_ttl * 4).await;
        assert_eq!(kept.bytes(), 32, "request 7's bytes lapsed");
        let state = kept.take("src", 7, 3).expect("its state stays");
        assert!(state.pieces.is_empty());
        kept.keep_for("src", 7, fallback("m4", 3, 16), bytes_ttl, state_ttl);
        tokio::time::sleep(state_ttl + bytes_ttl * 4).await;
        assert!(kept.take("src", 7, 3).is_none(), "its state lapsed too");
        assert_eq!(kept.bytes(), 32);
        let newer = kept.take("src", 8, 9).expect("the newer copy stays");
        assert_eq!(newer.migration, "m3");
        assert_eq!(newer.bytes(), 32, "with its bytes");
    }

    #[test]
    fn a_copy_resumes_from_its_bytes_only_at_its_position_and_while_it_has_them() {
        let copy = fallback("m1", 40, 64);
        let (pieces, state) = resumed_as(&copy, 40);
        assert_eq!((pieces.len(), state.generated), (1, 40), "decodes on");
        let (pieces, state) = resumed_as(&copy, 55);
        assert_eq!(
            (pieces.len(), state.generated, state.cached_tokens),
            (0, 55, 0),
            "past it: a recompute"
        );
        let mut stripped = fallback("m1", 40, 64);
        stripped.pieces.clear();
        let (pieces, state) = resumed_as(&stripped, 40);
        assert_eq!(
            (pieces.len(), state.generated, state.cached_tokens),
            (0, 40, 0),
            "its bytes gone: a recompute"
        );
    }

    #[test]
    fn a_copy_past_its_position_is_recomputed_from_the_clients_position() {
        let frozen = KvState {
            seed: 9,
            prompt_tokens: 100,
            max_tokens: 400,
            generated: 40,
            cached_tokens: 139,
            ttft_us: Some(1_500),
            ..Default::default()
        };
        let state = recomputed_from(&frozen, 55);
        assert_eq!((state.generated, state.cached_tokens), (55, 0));
        assert_eq!(
            (
                state.seed,
                state.prompt_tokens,
                state.max_tokens,
                state.ttft_us
            ),
            (9, 100, 400, Some(1_500)),
            "the same request, its first token's time kept"
        );
    }

    #[test]
    fn chunks_cut_on_block_boundaries_and_name_their_first_block() {
        let block = 1000;
        let per_chunk = CHUNK_BYTES / block;
        let data = vec![1u8; block * per_chunk * 2 + 10];
        let chunks = block_chunks(&data, 5, block);
        let at: Vec<u32> = chunks.iter().map(|(b, _)| *b).collect();
        assert_eq!(at, vec![5, 5 + per_chunk as u32, 5 + 2 * per_chunk as u32]);
        assert_eq!(chunks[2].1.len(), 10, "the partial block last");
        assert_eq!(
            chunks.iter().map(|(_, c)| c.len()).sum::<usize>(),
            data.len()
        );
        assert_eq!(
            block_chunks(&[], 3, block),
            vec![(3, &[][..])],
            "one empty piece"
        );
    }
}
