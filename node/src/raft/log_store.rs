//! The Raft log in the `raft/` LMDB environment: entries by index (u64
//! big-endian), the vote, the committed id and the last purged id. An append
//! returns only after its LMDB commit (with fsync) is done; openraft hands
//! over every entry waiting at that moment, so one commit carries a batch.

use super::types::{storage_io, LogId, StorageError, TypeConfig};
use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{Database, Env, WithoutTls};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, RaftLogReader, Vote};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

const META_VOTE: &str = "vote";
const META_COMMITTED: &str = "committed";
const META_PURGED: &str = "last_purged";

/// The Raft log storage; cheap to clone (every clone shares the environment).
#[derive(Clone)]
pub struct LogStore {
    env: &'static Env<WithoutTls>,
    log: Database<'static, U64<BigEndian>, Bytes>,
    meta: Database<'static, Str, Bytes>,
    observer: Arc<dyn LogObserver>,
}

/// Told about the log's durable commits and the committed index.
pub trait LogObserver: Send + Sync + 'static {
    /// A durable LMDB commit took `duration`.
    fn fsync(&self, duration: std::time::Duration);
    /// The committed log index advanced to `index`.
    fn committed(&self, index: u64);
}

impl LogStore {
    /// Creates the tables; `observer` is told of commits and the committed index.
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
        Ok(LogStore {
            env,
            log,
            meta,
            observer,
        })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        subject: ErrorSubject<u64>,
    ) -> Result<Option<T>, StorageError> {
        let rtxn = self
            .env
            .read_txn()
            .map_err(|e| storage_io(subject.clone(), ErrorVerb::Read, e))?;
        match self
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

    /// Runs `f` in a write transaction and commits it durably, off the async threads.
    async fn write<F>(&self, subject: ErrorSubject<u64>, f: F) -> Result<(), StorageError>
    where
        F: FnOnce(&LogStore, &mut heed::RwTxn) -> Result<(), String> + Send + 'static,
    {
        let this = self.clone();
        let sub = subject.clone();
        tokio::task::spawn_blocking(move || {
            let mut wtxn = this.env.write_txn().map_err(|e| e.to_string())?;
            f(&this, &mut wtxn)?;
            let start = std::time::Instant::now();
            wtxn.commit().map_err(|e| e.to_string())?;
            this.observer.fsync(start.elapsed());
            Ok::<(), String>(())
        })
        .await
        .map_err(|e| storage_io(sub.clone(), ErrorVerb::Write, e))?
        .map_err(|e| storage_io(sub, ErrorVerb::Write, e))
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        wtxn: &mut heed::RwTxn,
        name: &str,
        value: &T,
    ) -> Result<(), String> {
        let bytes = postcard::to_allocvec(value).map_err(|e| e.to_string())?;
        self.meta.put(wtxn, name, &bytes).map_err(|e| e.to_string())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let subject = || ErrorSubject::Logs;
        let rtxn = self
            .env
            .read_txn()
            .map_err(|e| storage_io(subject(), ErrorVerb::Read, e))?;
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let mut entries = Vec::new();
        for item in self
            .log
            .range(&rtxn, &bounds)
            .map_err(|e| storage_io(subject(), ErrorVerb::Read, e))?
        {
            let (_, bytes) = item.map_err(|e| storage_io(subject(), ErrorVerb::Read, e))?;
            let entry: Entry<TypeConfig> = postcard::from_bytes(bytes)
                .map_err(|e| storage_io(subject(), ErrorVerb::Read, e))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.read_meta(META_PURGED, ErrorSubject::Store)?;
        let rtxn = self
            .env
            .read_txn()
            .map_err(|e| storage_io(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let last = match self
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
            last_log_id: last,
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
            self.observer.committed(c.index);
        }
        self.write(ErrorSubject::Store, move |s, wtxn| {
            s.put_meta(wtxn, META_COMMITTED, &committed)
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
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
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = postcard::to_allocvec(&entry)
                .map_err(|e| storage_io(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            encoded.push((entry.log_id.index, bytes));
        }
        let result = self
            .write(ErrorSubject::Logs, move |s, wtxn| {
                for (index, bytes) in &encoded {
                    s.log.put(wtxn, index, bytes).map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write(ErrorSubject::Logs, move |s, wtxn| {
            s.log
                .delete_range(wtxn, &(log_id.index..))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
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
