//! Applies entries on a thread of its own and commits several applies in one
//! LMDB transaction (ADR 0019).
//!
//! An apply's answers come from its write transaction, before the commit, so
//! the commit need not follow every apply: it waits while nobody could see
//! the difference, up to [`CommitLimits`]. Readers see only what is
//! committed, so whoever reads asks for the commit first:
//! [`Flusher::flush`] (every read transaction of the server and every
//! snapshot, backup and stop) and [`Flusher::want`] (a linearizable read
//! waiting for an index). Nothing waits while anyone listens for changes
//! (watchers, replication streams), so their latency is unchanged.
//!
//! LMDB ties a write transaction to the thread that began it (its writer
//! lock is a thread's mutex), which is why one thread keeps it open.

use super::types::{LogId, TypeConfig};
use crate::kv::KvError;
use openraft::Entry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long and how far applied entries may wait for their commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitLimits {
    /// The longest the first uncommitted apply waits; zero commits every apply.
    pub delay: Duration,
    /// Entries in one commit at most.
    pub entries: usize,
    /// Their payload bytes at most (as `network::entry_bytes` counts them).
    pub bytes: usize,
}

impl Default for CommitLimits {
    fn default() -> Self {
        CommitLimits {
            delay: Duration::from_millis(50),
            entries: 64,
            bytes: 1024 * 1024,
        }
    }
}

impl CommitLimits {
    /// Every apply committed at once, as a state without this thread would.
    pub fn each_apply() -> Self {
        CommitLimits {
            delay: Duration::ZERO,
            ..CommitLimits::default()
        }
    }
}

/// What the thread applies with: the state machine's side of it.
pub(super) trait Applier: Send + 'static {
    /// The answers of a batch applied in `txn`, and its last log id with
    /// the revision after it.
    type Batch: Send + 'static;
    /// The environment written.
    fn env(&self) -> &'static heed::Env<heed::WithoutTls>;
    /// Held from the first apply of a transaction to its commit, so that a
    /// stop waits for it; an error once the server is stopping.
    fn closed(&self) -> &std::sync::Mutex<bool>;
    /// Applies `entries` in `txn`.
    fn apply(
        &self,
        txn: &mut heed::RwTxn,
        entries: Vec<Entry<TypeConfig>>,
    ) -> Result<Self::Batch, KvError>;
    /// The last log id and revision `batch` applied, if any entry.
    fn last(batch: &Self::Batch) -> Option<(LogId, i64)>;
    /// Records `last` in `txn` as the state's applied log id.
    fn record(&self, txn: &mut heed::RwTxn, last: LogId) -> Result<(), KvError>;
    /// Readers now see everything through `last` (`entries` entries since
    /// the previous commit).
    fn committed(&self, last: LogId, revision: i64, entries: usize);
    /// Whether anyone waits for changes (then every apply commits at once).
    fn listened(&self) -> bool;
    /// How long and how far applies may wait for their commit.
    fn limits(&self) -> CommitLimits;
}

enum Job<B> {
    Apply {
        entries: Vec<Entry<TypeConfig>>,
        bytes: usize,
        reply: oneshot::Sender<Result<B, KvError>>,
    },
    /// From a [`Flusher`].
    Control(Control),
}

/// What a [`Flusher`] asks of the thread.
enum Control {
    /// Commit, then answer.
    Flush(Done),
    /// A reader raised `wanted`.
    Wake,
}

enum Done {
    Async(oneshot::Sender<Result<(), KvError>>),
    Blocking(mpsc::SyncSender<Result<(), KvError>>),
}

impl Done {
    fn send(self, result: Result<(), KvError>) {
        // A waiter that gave up needs no answer.
        let _ = match self {
            Done::Async(tx) => tx.send(result).map_err(|_| ()),
            Done::Blocking(tx) => tx.send(result).map_err(|_| ()),
        };
    }
}

struct Shared {
    /// Whether applied entries wait for their commit.
    open: AtomicBool,
    /// The highest log index a linearizable read waits for.
    wanted: AtomicU64,
    /// The last log index committed.
    committed: AtomicU64,
}

/// Asks the applying thread to commit; cheap to clone.
#[derive(Clone)]
pub struct Flusher {
    /// Sends a job to the thread (false once it has stopped); a closure so
    /// that a Flusher does not carry the thread's batch type.
    send: Arc<dyn Fn(Control) -> bool + Send + Sync>,
    shared: Arc<Shared>,
}

impl Flusher {
    /// Commits whatever is applied and waits for it, blocking the thread:
    /// a read transaction begun afterwards sees every answered write.
    pub fn flush_blocking(&self) -> Result<(), KvError> {
        if !self.shared.open.load(Ordering::SeqCst) {
            return Ok(());
        }
        let (tx, rx) = mpsc::sync_channel(1);
        if !(self.send)(Control::Flush(Done::Blocking(tx))) {
            return Err(stopped());
        }
        rx.recv().unwrap_or_else(|_| Err(stopped()))
    }

    /// Commits whatever is applied and waits for it.
    pub async fn flush(&self) -> Result<(), KvError> {
        if !self.shared.open.load(Ordering::SeqCst) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        if !(self.send)(Control::Flush(Done::Async(tx))) {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// A reader waits until `index` is committed: commit it as soon as it is
    /// applied.
    pub fn want(&self, index: u64) {
        let before = self.shared.wanted.fetch_max(index, Ordering::SeqCst);
        if before < index && self.shared.committed.load(Ordering::SeqCst) < index {
            (self.send)(Control::Wake);
        }
    }
}

fn stopped() -> KvError {
    KvError::Storage("the state machine's applying thread has stopped".into())
}

/// The state machine's side of the thread: sends it entries to apply.
pub(super) struct Committer<B> {
    jobs: mpsc::Sender<Job<B>>,
    flusher: Flusher,
}

impl<B> Clone for Committer<B> {
    fn clone(&self) -> Self {
        Committer {
            jobs: self.jobs.clone(),
            flusher: self.flusher.clone(),
        }
    }
}

impl<B: Send + 'static> Committer<B> {
    /// Starts the thread; `committed` is the state's applied index now.
    pub(super) fn start<A: Applier<Batch = B>>(
        applier: A,
        committed: u64,
    ) -> std::io::Result<Committer<B>> {
        let (jobs, rx) = mpsc::channel::<Job<B>>();
        let shared = Arc::new(Shared {
            open: AtomicBool::new(false),
            wanted: AtomicU64::new(0),
            committed: AtomicU64::new(committed),
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("state-apply".into())
            .spawn(move || run(applier, rx, thread_shared))?;
        let sender = jobs.clone();
        let send = Arc::new(move |control| sender.send(Job::Control(control)).is_ok());
        Ok(Committer {
            jobs,
            flusher: Flusher { send, shared },
        })
    }

    /// Applies `entries` (`bytes` of payload); answers once applied, before
    /// their commit.
    pub(super) async fn apply(
        &self,
        entries: Vec<Entry<TypeConfig>>,
        bytes: usize,
    ) -> Result<B, KvError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Apply {
                entries,
                bytes,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// What readers ask commits through.
    pub(super) fn flusher(&self) -> &Flusher {
        &self.flusher
    }
}

/// The open transaction and what it holds.
struct Open<'a> {
    txn: heed::RwTxn<'static>,
    _writing: std::sync::MutexGuard<'a, bool>,
    last: Option<(LogId, i64)>,
    entries: usize,
    bytes: usize,
    deadline: Instant,
}

fn run<A: Applier>(applier: A, jobs: mpsc::Receiver<Job<A::Batch>>, shared: Arc<Shared>) {
    let mut open: Option<Open> = None;
    // A failed commit or apply stops the state machine: later jobs get it.
    let mut failed: Option<String> = None;
    loop {
        let job = match &open {
            Some(o) => {
                let wait = o.deadline.saturating_duration_since(Instant::now());
                match jobs.recv_timeout(wait) {
                    Ok(job) => Some(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        let _ = commit(&applier, &shared, &mut open);
                        return;
                    }
                }
            }
            None => match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            },
        };
        match job {
            None => {
                if let Err(e) = commit(&applier, &shared, &mut open) {
                    failed = Some(e.to_string());
                }
            }
            Some(Job::Control(Control::Wake)) => {
                if shared.wanted.load(Ordering::SeqCst) > committed(&shared) {
                    if let Err(e) = commit(&applier, &shared, &mut open) {
                        failed = Some(e.to_string());
                    }
                }
            }
            Some(Job::Control(Control::Flush(done))) => {
                let result = match &failed {
                    Some(f) => Err(KvError::Storage(f.clone())),
                    None => commit(&applier, &shared, &mut open),
                };
                if let Err(e) = &result {
                    failed.get_or_insert_with(|| e.to_string());
                }
                done.send(result);
            }
            Some(Job::Apply {
                entries,
                bytes,
                reply,
            }) => {
                if let Some(f) = &failed {
                    let _ = reply.send(Err(KvError::Storage(f.clone())));
                    continue;
                }
                let count = entries.len();
                let limits = applier.limits();
                let result = apply(&applier, &limits, &mut open, entries, bytes);
                match result {
                    Ok(batch) => {
                        if let Some(o) = &mut open {
                            o.entries += count;
                        }
                        // Committed before the answer when due, as every
                        // apply was before commits waited.
                        let due = open.as_ref().is_some_and(|o| {
                            limits.delay.is_zero()
                                || o.entries >= limits.entries
                                || o.bytes >= limits.bytes
                                || shared.wanted.load(Ordering::SeqCst) > committed(&shared)
                                || applier.listened()
                        });
                        if due {
                            if let Err(e) = commit(&applier, &shared, &mut open) {
                                failed = Some(e.to_string());
                                let _ = reply.send(Err(e));
                                continue;
                            }
                        }
                        shared.open.store(open.is_some(), Ordering::SeqCst);
                        let _ = reply.send(Ok(batch));
                    }
                    Err(e) => {
                        // The transaction is dropped (aborted) with whatever
                        // it held, and the state machine stops: the entries
                        // are in the Raft log, applied again when the server
                        // starts over.
                        open = None;
                        shared.open.store(false, Ordering::SeqCst);
                        failed = Some(e.to_string());
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }
}

fn committed(shared: &Shared) -> u64 {
    shared.committed.load(Ordering::SeqCst)
}

/// Applies `entries` in the open transaction, opening one first if none is.
fn apply<'a, A: Applier>(
    applier: &'a A,
    limits: &CommitLimits,
    open: &mut Option<Open<'a>>,
    entries: Vec<Entry<TypeConfig>>,
    bytes: usize,
) -> Result<A::Batch, KvError> {
    if open.is_none() {
        let writing = super::state_machine::writing(applier.closed())?;
        let txn = applier.env().write_txn()?;
        *open = Some(Open {
            txn,
            _writing: writing,
            last: None,
            entries: 0,
            bytes: 0,
            deadline: Instant::now() + limits.delay,
        });
    }
    let Some(o) = open.as_mut() else {
        return Err(stopped());
    };
    let batch = applier.apply(&mut o.txn, entries)?;
    if let Some(last) = A::last(&batch) {
        o.last = Some(last);
    }
    o.bytes += bytes;
    Ok(batch)
}

/// Commits the open transaction, if any, and tells who waits.
fn commit<A: Applier>(
    applier: &A,
    shared: &Shared,
    open: &mut Option<Open>,
) -> Result<(), KvError> {
    let Some(mut o) = open.take() else {
        return Ok(());
    };
    let result = match o.last {
        Some((last, _)) => applier.record(&mut o.txn, last),
        None => Ok(()),
    };
    let result = result.and_then(|()| Ok(o.txn.commit()?));
    // Only now: a reader that finds nothing open must see the commit.
    shared.open.store(false, Ordering::SeqCst);
    result?;
    if let Some((last, revision)) = o.last {
        shared.committed.fetch_max(last.index, Ordering::SeqCst);
        applier.committed(last, revision, o.entries);
    }
    Ok(())
}
