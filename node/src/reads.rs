//! One ReadIndex for every linearizable read waiting at once.
//!
//! A linearizable read needs a log index that was committed when the read
//! arrived, confirmed by the leader with a quorum (a round of heartbeats, or a
//! request to the leader from a follower). Asking once per read puts a
//! quorum round behind each one. As etcd's read loop does, the reads waiting
//! when a round starts share it, and reads that arrive during a round wait
//! for the next: an index fetched after a read arrived serves it, one
//! fetched before does not.

use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Why a round gave no index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundError {
    /// No leader answered; worth asking again until the read's deadline.
    Retry,
    /// The server is stopping.
    Stopped,
}

/// Fetches one read index: the leader's, confirmed by a quorum.
pub type Fetch = Arc<dyn Fn() -> BoxFuture<'static, Result<u64, RoundError>> + Send + Sync>;

type Waiter = oneshot::Sender<Result<u64, RoundError>>;

/// Hands out read indexes, one fetch per round of waiting reads.
#[derive(Clone)]
pub struct ReadIndexes {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl ReadIndexes {
    /// Starts the rounds; `fetch` is called once per round.
    pub fn start(fetch: Fetch) -> ReadIndexes {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(rounds(fetch, rx));
        ReadIndexes { tx }
    }

    /// A read index fetched after this call, or why there is none within `timeout`.
    pub async fn index(&self, timeout: Duration) -> Result<u64, RoundError> {
        let (waiter, answer) = oneshot::channel();
        self.tx.send(waiter).map_err(|_| RoundError::Stopped)?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(RoundError::Stopped),
            Err(_) => Err(RoundError::Retry),
        }
    }
}

async fn rounds(fetch: Fetch, mut rx: mpsc::UnboundedReceiver<Waiter>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        // Every read in `waiters` arrived before this fetch starts.
        let answer = fetch().await;
        for w in waiters {
            let _ = w.send(answer.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::sync::Semaphore;

    #[tokio::test]
    async fn reads_waiting_together_share_a_round_and_later_ones_wait_for_the_next() {
        // Each fetch answers its own number, once the test lets it finish.
        let fetches = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let fetch: Fetch = {
            let (fetches, gate) = (fetches.clone(), gate.clone());
            Arc::new(move || {
                let (fetches, gate) = (fetches.clone(), gate.clone());
                Box::pin(async move {
                    let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
                    gate.acquire().await.expect("gate").forget();
                    Ok(n)
                })
            })
        };
        let reads = ReadIndexes::start(fetch);
        let t = Duration::from_secs(10);
        let first = tokio::spawn({
            let r = reads.clone();
            async move { r.index(t).await }
        });
        // Wait until the first round is under way, then queue three more.
        for _ in 0..1000 {
            if fetches.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        let later: Vec<_> = (0..3)
            .map(|_| {
                let r = reads.clone();
                tokio::spawn(async move { r.index(t).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.add_permits(1);
        assert_eq!(first.await.expect("task"), Ok(1));
        gate.add_permits(1);
        for l in later {
            assert_eq!(
                l.await.expect("task"),
                Ok(2),
                "the round after they arrived"
            );
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "one round for the three");
    }

    #[tokio::test]
    async fn a_failed_round_is_every_waiters_answer() {
        let fetch: Fetch = Arc::new(|| Box::pin(async { Err(RoundError::Retry) }));
        let reads = ReadIndexes::start(fetch);
        assert_eq!(
            reads.index(Duration::from_secs(10)).await,
            Err(RoundError::Retry)
        );
    }
}
