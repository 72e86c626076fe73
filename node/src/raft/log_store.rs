//! The Raft log in the `raft/` LMDB environment: entries by index (u64
//! big-endian), the vote, the committed id and the last purged id.
//!
//! Appends are written behind, as openraft's storage contract allows:
//! `append` keeps the entries in memory ([`LogTail`]), where reads find them,
//! and queues them for the log's writer thread. The writer commits every append that
//! has queued up in one LMDB transaction (one fsync) and only then tells
//! openraft the entries are durable. So replication of a batch starts while
//! its fsync runs, and one fsync carries all the appends that arrived during
//! the previous one. Nothing counts toward a quorum before it is on disk.
//! Durable entries stay in memory within a budget, since replication and
//! apply read them again right after.
//!
//! The committed id is only a hint for the next start (openraft applies up
//! to it before hearing from a leader), so it is kept in memory and written
//! with the next commit instead of costing an fsync of its own.
//!
//! Vote, truncate and purge are awaited: each returns once durable, and the
//! writer runs them in the order they were queued with the appends.

use super::log_tail::LogTail;
use super::types::{storage_io, LogId, StorageError, TypeConfig};
use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{Database, Env, RwTxn, WithoutTls};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, RaftLogReader, Vote};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

const META_VOTE: &str = "vote";
const META_COMMITTED: &str = "committed";
const META_PURGED: &str = "last_purged";

/// Appends the writer folds into one transaction at most.
const APPENDS_PER_COMMIT_MAX: usize = 1024;

/// Encoded bytes of durable entries kept in memory for replication and apply.
const TAIL_BYTES: usize = 8 * 1024 * 1024;

/// The Raft log storage; cheap to clone (every clone shares the environment,
/// the in-memory tail and the writer).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    ops: mpsc::Sender<Op>,
}

/// Told about the log's durable commits and the committed index.
pub trait LogObserver: Send + Sync + 'static {
    /// A durable LMDB commit took `duration`.
    fn fsync(&self, duration: std::time::Duration);
    /// The committed log index advanced to `index`.
    fn committed(&self, index: u64);
}

struct Shared {
    env: &'static Env<WithoutTls>,
    log: Database<'static, U64<BigEndian>, Bytes>,
    meta: Database<'static, Str, Bytes>,
    observer: Arc<dyn LogObserver>,
    /// The newest entries: all that are not durable yet, and more.
    tail: Mutex<LogTail>,
    /// The newest committed id and whether the writer has stored it.
    committed: Mutex<(Option<LogId>, bool)>,
}

type WriteFn = Box<dyn FnOnce(&Shared, &mut RwTxn) -> Result<(), String> + Send>;

/// Work for the writer thread.
enum Op {
    /// Encoded entries, and whom to tell once they are durable.
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    /// Any other durable change, answered when committed.
    Write {
        change: WriteFn,
        done: oneshot::Sender<Result<(), String>>,
    },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LogStore {
    /// Creates the tables and starts the writer thread; `observer` is told
    /// of commits and the committed index.
    pub fn open(
        env: &'static Env<WithoutTls>,
        observer: Arc<dyn LogObserver>,
    ) -> Result<LogStore, heed::Error> {
        let wtxn = env.write_txn()?;
        let (log, meta) = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
                let log = opener.create_database::<U64<BigEndian>, Bytes>(wtxn, Some("log"))?;
                let meta = opener.create_database::<Str, Bytes>(wtxn, Some("meta"))?;
                Ok(heed::CommitOrAbort::<_, ()>::Commit((log, meta)))
            })?
            .unwrap_commit();
        let shared = Arc::new(Shared {
            env,
            log,
            meta,
            observer,
            tail: Mutex::new(LogTail::new(TAIL_BYTES)),
            committed: Mutex::new((None, true)),
        });
        let (ops, rx) = mpsc::channel();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_behind(&writer, &rx))
            .map_err(heed::Error::Io)?;
        Ok(LogStore { shared, ops })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        subject: ErrorSubject<u64>,
    ) -> Result<Option<T>, StorageError> {
        let s = &self.shared;
        let rtxn = s
            .env
            .read_txn()
            .map_err(|e| storage_io(subject.clone(), ErrorVerb::Read, e))?;
        match s
            .meta
            .get(&rtxn, name)
            .map_err(|e| storage_io(subject.clone(), ErrorVerb::Read, e))?
        {
            Some(bytes) => postcard::from_bytes(bytes)
                .map(Some)
                .map_err(|e| storage_io(subject, ErrorVerb::Read, e)),
            None => Ok(None),
        }
    }

    /// Has the writer run `change` in its own durable transaction, after
    /// everything queued before it; returns once it is committed.
    async fn write<F>(&self, subject: ErrorSubject<u64>, change: F) -> Result<(), StorageError>
    where
        F: FnOnce(&Shared, &mut RwTxn) -> Result<(), String> + Send + 'static,
    {
        let (done, answer) = oneshot::channel();
        let op = Op::Write {
            change: Box::new(change),
            done,
        };
        let stopped = || storage_io(subject.clone(), ErrorVerb::Write, "the log writer stopped");
        self.ops.send(op).map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(|e| storage_io(subject.clone(), ErrorVerb::Write, e))
    }
}

impl Shared {
    fn put_meta<T: serde::Serialize>(
        &self,
        wtxn: &mut RwTxn,
        name: &str,
        value: &T,
    ) -> Result<(), String> {
        let bytes = postcard::to_allocvec(value).map_err(|e| e.to_string())?;
        self.meta.put(wtxn, name, &bytes).map_err(|e| e.to_string())
    }

    /// Adds the committed id to `wtxn` if it changed since last written;
    /// returns what to mark as written once `wtxn` commits.
    fn carry_committed(&self, wtxn: &mut RwTxn) -> Result<Option<Option<LogId>>, String> {
        let (committed, written) = *lock(&self.committed);
        if written {
            return Ok(None);
        }
        self.put_meta(wtxn, META_COMMITTED, &committed)?;
        Ok(Some(committed))
    }

    /// Runs `change` in one durable transaction that also carries the
    /// committed id if it changed, timing the commit.
    fn transact(
        &self,
        change: impl FnOnce(&mut RwTxn) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut wtxn = self.env.write_txn().map_err(|e| e.to_string())?;
        change(&mut wtxn)?;
        let carried = self.carry_committed(&mut wtxn)?;
        let start = std::time::Instant::now();
        wtxn.commit().map_err(|e| e.to_string())?;
        self.observer.fsync(start.elapsed());
        if let Some(c) = carried {
            let mut committed = lock(&self.committed);
            if committed.0 == c {
                committed.1 = true;
            }
        }
        Ok(())
    }
}

/// The writer thread: runs queued work in order, folding consecutive
/// appends into one transaction. Ends when every [`LogStore`] is dropped.
fn write_behind(shared: &Shared, rx: &mpsc::Receiver<Op>) {
    let mut next = None;
    loop {
        let op = match next.take() {
            Some(op) => op,
            None => match rx.recv() {
                Ok(op) => op,
                Err(_) => return,
            },
        };
        match op {
            Op::Write { change, done } => {
                let _ = done.send(shared.transact(|wtxn| change(shared, wtxn)));
            }
            Op::Append { entries, callback } => {
                let mut appends = vec![(entries, callback)];
                while appends.len() < APPENDS_PER_COMMIT_MAX {
                    match rx.try_recv() {
                        Ok(Op::Append { entries, callback }) => appends.push((entries, callback)),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let result = shared.transact(|wtxn| {
                    for (log_id, bytes) in appends.iter().flat_map(|(entries, _)| entries) {
                        shared
                            .log
                            .put(wtxn, &log_id.index, bytes)
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                });
                if result.is_ok() {
                    // Durable now: the tail may let them go to LMDB alone.
                    let ids = appends
                        .iter()
                        .flat_map(|(entries, _)| entries.iter().map(|(id, _)| *id));
                    lock(&shared.tail).durable(ids);
                }
                for (_, callback) in appends {
                    callback.log_io_completed(match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(std::io::Error::other(e.clone())),
                    });
                }
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let subject = || ErrorSubject::Logs;
        let s = &self.shared;
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        // The tail first, then LMDB for what lies before it: an entry leaves
        // the tail only once durable, so an entry the tail lets go in
        // between is in LMDB.
        let held = lock(&s.tail).range(bounds);
        let first_held = held.first().map(|e| e.log_id.index);
        if first_held.is_some_and(|f| bounds.0 == Bound::Included(f)) {
            return Ok(held);
        }
        let rtxn = s
            .env
            .read_txn()
            .map_err(|e| storage_io(subject(), ErrorVerb::Read, e))?;
        let mut entries = Vec::new();
        for item in s
            .log
            .range(&rtxn, &bounds)
            .map_err(|e| storage_io(subject(), ErrorVerb::Read, e))?
        {
            let (index, bytes) = item.map_err(|e| storage_io(subject(), ErrorVerb::Read, e))?;
            if first_held.is_some_and(|f| index >= f) {
                break;
            }
            let entry: Entry<TypeConfig> = postcard::from_bytes(bytes)
                .map_err(|e| storage_io(subject(), ErrorVerb::Read, e))?;
            entries.push(entry);
        }
        entries.extend(held);
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.read_meta(META_PURGED, ErrorSubject::Store)?;
        let last_held = lock(&self.shared.tail).last();
        let s = &self.shared;
        let rtxn = s
            .env
            .read_txn()
            .map_err(|e| storage_io(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let last_durable = match s
            .log
            .last(&rtxn)
            .map_err(|e| storage_io(ErrorSubject::Logs, ErrorVerb::Read, e))?
        {
            Some((_, bytes)) => {
                let entry: Entry<TypeConfig> = postcard::from_bytes(bytes)
                    .map_err(|e| storage_io(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                Some(entry.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last_held.or(last_durable),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let vote = *vote;
        self.write(ErrorSubject::Vote, move |s, wtxn| {
            s.put_meta(wtxn, META_VOTE, &vote)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.read_meta(META_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            self.shared.observer.committed(c.index);
        }
        *lock(&self.shared.committed) = (committed, false);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let (committed, _) = *lock(&self.shared.committed);
        if committed.is_some() {
            return Ok(committed);
        }
        Ok(self
            .read_meta::<Option<LogId>>(META_COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let mut encoded = Vec::with_capacity(entries.len());
        for entry in &entries {
            let bytes = postcard::to_allocvec(entry)
                .map_err(|e| storage_io(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            encoded.push((entry.log_id, bytes));
        }
        {
            let mut tail = lock(&self.shared.tail);
            for (entry, (_, bytes)) in entries.into_iter().zip(&encoded) {
                tail.insert(entry, bytes.len());
            }
        }
        let op = Op::Append {
            entries: encoded,
            callback,
        };
        self.ops.send(op).map_err(|_| {
            storage_io(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                "the log writer stopped",
            )
        })
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Appends already queued are written first, then deleted here.
        lock(&self.shared.tail).truncate(log_id.index);
        self.write(ErrorSubject::Logs, move |s, wtxn| {
            s.log
                .delete_range(wtxn, &(log_id.index..))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        lock(&self.shared.tail).purge(log_id.index);
        self.write(ErrorSubject::Logs, move |s, wtxn| {
            s.put_meta(wtxn, META_PURGED, &log_id)?;
            s.log
                .delete_range(wtxn, &(..=log_id.index))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
    }
}
