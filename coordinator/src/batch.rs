//! A small group-commit primitive: callers submit items one by one; items
//! that arrive while earlier batches are in flight are committed together,
//! and each caller gets its own item's result.
//!
//! Used twice: the leader packs commands into shared Raft entries, and a
//! follower packs the writes it forwards into shared RPCs to the leader.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::forward::ForwardError;

type Reply<R> = oneshot::Sender<Result<R, ForwardError>>;

struct Queue<T, R> {
    in_flight: usize,
    waiting: Vec<(T, usize, Reply<R>)>,
}

/// Limits of one [`Batcher`].
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Batches committing at once.
    pub max_in_flight: usize,
    /// Most items in one batch.
    pub max_items: usize,
    /// Most total weight (bytes) in one batch; a single heavier item still goes alone.
    pub max_weight: usize,
}

/// Coalesces concurrent submissions into batches.
pub struct Batcher<T, R> {
    queue: Arc<Mutex<Queue<T, R>>>,
    limits: BatchLimits,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            limits: self.limits,
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// An empty batcher.
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            queue: Arc::new(Mutex::new(Queue {
                in_flight: 0,
                waiting: Vec::new(),
            })),
            limits,
        }
    }

    /// Submits `item` of `weight` and waits for its result. `commit` turns a
    /// batch into one result per item, in order; it runs on a spawned task.
    pub async fn submit<F, Fut>(&self, item: T, weight: usize, commit: F) -> Result<R, ForwardError>
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Result<R, ForwardError>>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.waiting.push((item, weight, tx));
            if queue.in_flight < self.limits.max_in_flight {
                queue.in_flight += 1;
                true
            } else {
                false
            }
        };
        if start {
            tokio::spawn(self.clone().drain(commit));
        }
        rx.await
            .unwrap_or_else(|_| Err(ForwardError::Failed("batched request was dropped".into())))
    }

    fn next_batch(&self) -> Option<Vec<(T, usize, Reply<R>)>> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.waiting.is_empty() {
            queue.in_flight -= 1;
            return None;
        }
        let mut weight = 0;
        let mut take = 0;
        for (_, w, _) in &queue.waiting {
            if take > 0 && (take == self.limits.max_items || weight + w > self.limits.max_weight) {
                break;
            }
            weight += w;
            take += 1;
        }
        Some(queue.waiting.drain(..take).collect())
    }

    async fn drain<F, Fut>(self, commit: F)
    where
        F: Fn(Vec<T>) -> Fut,
        Fut: Future<Output = Vec<Result<R, ForwardError>>>,
    {
        while let Some(batch) = self.next_batch() {
            let mut items = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            for (item, _, reply) in batch {
                items.push(item);
                replies.push(reply);
            }
            let expected = replies.len();
            let results = commit(items).await;
            if results.len() != expected {
                let error = ForwardError::Failed(format!(
                    "a batch of {expected} produced {} results",
                    results.len()
                ));
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
                continue;
            }
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_items_share_batches_and_get_their_own_results() {
        let batcher: Batcher<u32, u32> = Batcher::new(BatchLimits {
            max_in_flight: 1,
            max_items: 100,
            max_weight: usize::MAX,
        });
        let batches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..50u32 {
            let batcher = batcher.clone();
            let batches = batches.clone();
            tasks.push(tokio::spawn(async move {
                batcher
                    .submit(i, 1, move |items| {
                        let batches = batches.clone();
                        async move {
                            batches.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            items.into_iter().map(|x| Ok(x * 10)).collect()
                        }
                    })
                    .await
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.expect("task").expect("result"), i as u32 * 10);
        }
        let used = batches.load(Ordering::SeqCst);
        assert!(
            (1..50).contains(&used),
            "50 concurrent items used {used} batches"
        );
    }

    #[tokio::test]
    async fn weight_limits_split_batches_and_errors_reach_every_item() {
        let batcher: Batcher<u32, u32> = Batcher::new(BatchLimits {
            max_in_flight: 1,
            max_items: 100,
            max_weight: 10,
        });
        let first = batcher.submit(1, 8, |items| async move {
            assert_eq!(items.len(), 1);
            vec![Err(ForwardError::NotLeader)]
        });
        assert!(matches!(first.await, Err(ForwardError::NotLeader)));
    }
}
