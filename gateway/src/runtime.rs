//! quinn's tokio runtime with one change: each of quinn's driver tasks (the
//! endpoint's, and one per connection) steps aside once every time it is
//! woken, so that the tasks already waiting to run go first.
//!
//! Why: a task that writes to a QUIC stream wakes its connection's driver,
//! and tokio runs a task woken that way next (its "LIFO slot"), before the
//! other tasks that are ready. When a Raft entry is applied, the leader
//! answers every forwarded write it carried at once: each answer's task
//! wrote, the driver ran straight after, and each answer left in a datagram
//! of its own (and drew an ACK of its own). Stepping aside once puts the
//! driver behind the tasks that are ready, so it finds all their data and
//! packs it into as few datagrams as fit. Under light load nothing else is
//! waiting and the driver runs at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// The runtime the endpoint gives quinn.
#[derive(Debug)]
pub(crate) struct CoalescingRuntime(quinn::TokioRuntime);

impl CoalescingRuntime {
    pub(crate) fn new() -> CoalescingRuntime {
        CoalescingRuntime(quinn::TokioRuntime)
    }
}

impl quinn::Runtime for CoalescingRuntime {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        self.0.new_timer(at)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        tokio::spawn(StepAside::new(future));
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        self.0.wrap_udp_socket(socket)
    }

    fn now(&self) -> Instant {
        self.0.now()
    }
}

/// A future that, each time it is polled after a wake-up, first asks to be
/// polled again and returns: tokio puts a task that wakes itself behind the
/// tasks already waiting, rather than running it next.
pub(crate) struct StepAside<F> {
    inner: F,
    stepped: bool,
}

impl<F> StepAside<F> {
    pub(crate) fn new(inner: F) -> StepAside<F> {
        StepAside {
            inner,
            stepped: false,
        }
    }
}

impl<F: Future + Unpin> Future for StepAside<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if !self.stepped {
            self.stepped = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.stepped = false;
        Pin::new(&mut self.inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::task::Waker;

    /// Writers that become ready together each wake a driver wrapped in
    /// [`StepAside`]; the driver records how many writes it finds when it
    /// first runs.
    fn first_look() -> usize {
        const WRITERS: usize = 5;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            tokio::spawn(async move {
                let written = Arc::new(AtomicUsize::new(0));
                let waker: Arc<Mutex<Option<Waker>>> = Arc::default();
                let (w, k) = (written.clone(), waker.clone());
                let driver = Box::pin(std::future::poll_fn(move |cx| {
                    let seen = w.load(Ordering::SeqCst);
                    if seen > 0 {
                        return Poll::Ready(seen);
                    }
                    *k.lock().expect("waker") = Some(cx.waker().clone());
                    Poll::Pending
                }));
                let driver = tokio::spawn(StepAside::new(driver));
                // Let the driver register its waker.
                while waker.lock().expect("waker").is_none() {
                    tokio::task::yield_now().await;
                }
                let mut starts = Vec::new();
                for _ in 0..WRITERS {
                    let (start, started) = tokio::sync::oneshot::channel::<()>();
                    starts.push(start);
                    let (written, waker) = (written.clone(), waker.clone());
                    tokio::spawn(async move {
                        let _ = started.await;
                        written.fetch_add(1, Ordering::SeqCst);
                        if let Some(w) = waker.lock().expect("waker").as_ref() {
                            w.wake_by_ref();
                        }
                    });
                }
                // Let every writer wait on its start.
                for _ in 0..WRITERS {
                    tokio::task::yield_now().await;
                }
                for start in starts {
                    let _ = start.send(());
                }
                driver.await.expect("driver")
            })
            .await
            .expect("test task")
        })
    }

    #[test]
    fn a_woken_driver_runs_after_the_tasks_already_ready() {
        assert_eq!(first_look(), 5, "the driver ran before the writers");
    }
}
