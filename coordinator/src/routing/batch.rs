//! A small group-commit primitive: callers submit items one by one; items
//! that arrive while earlier batches are in flight are committed together,
//! and each caller gets its own item's result.
//!
//! Used twice: the leader packs commands into shared Raft entries, and a
//! follower packs the writes it forwards into shared RPCs to the leader.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::routing::forward::ForwardError;

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

    /// Items queued behind a blocked first batch are split by weight (a
    /// heavier item than the limit still goes, alone), and every item of a
    /// batch gets its own outcome: its own error, or the batch's error when
    /// the commit answered with the wrong number of results.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn weight_limits_split_batches_and_errors_reach_every_item() {
        let batcher: Batcher<u32, u32> = Batcher::new(BatchLimits {
            max_in_flight: 1,
            max_items: 100,
            max_weight: 10,
        });
        // The first batch waits at the gate until every other item is queued.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let batches: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let commit = {
            let gate = gate.clone();
            let batches = batches.clone();
            move |items: Vec<u32>| {
                let gate = gate.clone();
                let batches = batches.clone();
                async move {
                    if items == [0] {
                        gate.acquire().await.expect("gate open").forget();
                    }
                    batches
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(items.clone());
                    if items == [3, 4] {
                        // One result for two items: both must hear of it.
                        return vec![Ok(0)];
                    }
                    items
                        .into_iter()
                        .map(|x| match x {
                            0 => Ok(0),
                            1 => Err(ForwardError::NotLeader),
                            x => Err(ForwardError::Failed(format!("item {x} refused"))),
                        })
                        .collect()
                }
            }
        };
        let submit = |item: u32, weight: usize| {
            let batcher = batcher.clone();
            let commit = commit.clone();
            tokio::spawn(async move { batcher.submit(item, weight, commit).await })
        };
        // (batches in flight, items waiting)
        let queue = || {
            let queue = batcher.queue.lock().unwrap_or_else(|p| p.into_inner());
            (queue.in_flight, queue.waiting.len())
        };
        let settle = |want: (usize, usize)| async move {
            let started = std::time::Instant::now();
            while queue() != want {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "queue {:?}, expected {want:?}",
                    queue()
                );
                tokio::task::yield_now().await;
            }
        };
        let first = submit(0, 4);
        settle((1, 0)).await;
        // Queued one by one, so the queue holds them in this order.
        let mut rest = Vec::new();
        for (item, weight) in [(1, 4), (2, 4), (3, 4), (4, 4), (5, 4), (6, 15)] {
            rest.push(submit(item, weight));
            settle((1, rest.len())).await;
        }
        gate.add_permits(1);

        assert_eq!(first.await.expect("task").expect("item 0"), 0);
        let mut outcomes = Vec::new();
        for task in rest {
            outcomes.push(format!("{:?}", task.await.expect("task")));
        }
        assert_eq!(
            outcomes,
            [
                "Err(NotLeader)",
                "Err(Failed(\"item 2 refused\"))",
                "Err(Failed(\"a batch of 2 produced 1 results\"))",
                "Err(Failed(\"a batch of 2 produced 1 results\"))",
                "Err(Failed(\"item 5 refused\"))",
                "Err(Failed(\"item 6 refused\"))",
            ]
        );
        // Weight 10: two items of 4 fit, a third does not; 15 goes alone.
        assert_eq!(
            *batches.lock().unwrap_or_else(|p| p.into_inner()),
            [vec![0], vec![1, 2], vec![3, 4], vec![5], vec![6]]
        );
    }
}
