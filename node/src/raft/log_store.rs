//! The Raft log in `log/`: segment files of checksummed records ([`wal`]),
//! one `fdatasync` per batch of appends (ADR 0013).
//!
//! Appends are written behind, as openraft's storage contract allows:
//! `append` keeps the entries in memory ([`LogTail`]), where reads find them,
//! and queues them for the log's writer thread. The writer writes every
//! append that has queued up as one run of records, syncs once, and only
//! then tells openraft the entries are durable, so one sync carries all the
//! appends that arrived during the previous one. Durable entries stay in
//! memory within a budget, since replication and apply read them again
//! right after; older ones are read from their segment.
//!
//! The leader's own entries are the exception (ADR 0014). openraft 0.9
//! waits for each append to be durable before it replicates it, so a
//! leader that answered honestly would sync, then replicate, then wait for
//! a follower's sync: two syncs in a row. Entries this server made as the
//! leader of its current vote are reported durable as soon as they are
//! queued, and replication overlaps the sync. What keeps that safe is
//! [`LogStore::durable`]: a leader's entry is not applied, and its commit
//! is not passed to followers, before it is durable here, so nothing acts
//! on a commit until a majority including the leader really holds it.
//! Followers' appends are always answered only once durable.
//!
//! After a failed write the writer stops: entries already reported durable
//! cannot be taken back, so the log takes no more, [`DurableLog::failed`]
//! is set, and openraft stops on the next error.
//!
//! The committed id is only a hint for the next start (openraft applies up
//! to it before hearing from a leader), so it is kept in memory and written
//! with the next batch instead of costing a sync of its own.
//!
//! Vote, truncate and purge are awaited: each returns once durable, and the
//! writer runs them in the order they were queued with the appends. A purge
//! deletes the oldest segments once every entry they hold is purged.
//!
//! [`wal`]: super::wal

use super::log_tail::LogTail;
use super::types::{storage_io, LogId, StorageError, TypeConfig};
use super::wal::{self, Active, Loc, LogMeta, Record, RECORD_OVERHEAD};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, RaftLogReader, Vote};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use tokio::sync::{oneshot, watch};

/// Appends the writer folds into one sync at most.
const APPENDS_PER_SYNC_MAX: usize = 1024;

/// Encoded bytes of durable entries kept in memory for replication and
/// apply, which read them right after they are durable. A follower further
/// behind than this is sent entries read back from the segments. The tail
/// stays full once written, so this is memory held for good.
const TAIL_BYTES: usize = 1024 * 1024;

/// The Raft log storage; cheap to clone (every clone shares the files, the
/// in-memory tail and the writer).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    ops: mpsc::Sender<Op>,
}

/// How far the log is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DurableLog {
    /// The last entry on disk (or the last purged, if none is left).
    pub last: Option<LogId>,
    /// A write failed: nothing more becomes durable.
    pub failed: bool,
}

impl DurableLog {
    /// Whether everything through `index` is durable; an error once the
    /// log has failed.
    pub fn covers(&self, index: u64) -> Result<bool, &'static str> {
        if self.failed {
            return Err("the Raft log failed to write");
        }
        Ok(self.last.is_some_and(|l| l.index >= index))
    }
}

/// Told about the log's durable writes and the committed index.
pub trait LogObserver: Send + Sync + 'static {
    /// A sync of the log took `duration`.
    fn fsync(&self, duration: std::time::Duration);
    /// The committed log index advanced to `index`.
    fn committed(&self, index: u64);
}

struct Shared {
    dir: PathBuf,
    /// This server's member id: its own entries as leader are answered early.
    me: u64,
    /// How far the log is durable, for those who must not run ahead of it.
    durable: watch::Sender<DurableLog>,
    /// A segment is closed once a write would take it past this size.
    segment_bytes: u64,
    observer: Arc<dyn LogObserver>,
    /// The newest entries: all that are not durable yet, and more.
    tail: Mutex<LogTail>,
    /// The newest committed id and whether the writer has stored it.
    committed: Mutex<(Option<LogId>, bool)>,
    /// What is on disk, as the writer left it.
    disk: Mutex<Disk>,
}

/// The durable log: where each entry lies, the segments, and the state.
struct Disk {
    meta: LogMeta,
    entries: BTreeMap<u64, Loc>,
    segments: BTreeMap<u64, wal::Segment>,
}

impl Disk {
    /// The last durable entry, or the last purged if none is left.
    fn last(&self) -> Option<LogId> {
        self.entries
            .last_key_value()
            .map(|(_, loc)| loc.id)
            .or(self.meta.purged)
    }
}

/// A durable change other than an append.
enum Change {
    Vote(Vote<u64>),
    Truncate(u64),
    Purge(LogId),
}

/// Work for the writer thread.
enum Op {
    /// Encoded entries, and what to call once they are durable.
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        done: Flushed,
    },
    /// Any other durable change, answered once durable.
    Write {
        change: Change,
        done: oneshot::Sender<io::Result<()>>,
    },
}

/// Told once an append is durable (or failed).
type Flushed = Box<dyn FnOnce(io::Result<()>) + Send>;
/// Queued appends: encoded entries and what to call once they are durable.
type Appends = [(Vec<(LogId, Vec<u8>)>, Flushed)];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LogStore {
    /// Opens the log of member `me` in `dir` (creating it), recovering what
    /// a crash left; `import` may first seed a new log (a server upgraded
    /// from the LMDB log). Starts the writer thread; `observer` is told of
    /// syncs and the committed index.
    pub fn open(
        dir: &Path,
        me: u64,
        observer: Arc<dyn LogObserver>,
        import: Option<Imported>,
    ) -> io::Result<LogStore> {
        LogStore::open_sized(dir, me, observer, import, wal::SEGMENT_BYTES)
    }

    /// [`LogStore::open`] with segments closed at `segment_bytes`.
    fn open_sized(
        dir: &Path,
        me: u64,
        observer: Arc<dyn LogObserver>,
        import: Option<Imported>,
        segment_bytes: u64,
    ) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let mut replayed = wal::replay(dir)?;
        if let Some(imported) = import {
            if replayed.segments.is_empty() {
                write_imported(dir, &imported)?;
                replayed = wal::replay(dir)?;
            }
        }
        let seq = replayed.segments.keys().next_back().map_or(1, |s| s + 1);
        let active = Active::create(dir, seq, &replayed.meta)?;
        let mut segments = replayed.segments;
        segments.insert(
            seq,
            wal::Segment {
                file: active.file.clone(),
                max_index: None,
            },
        );
        let committed = replayed.meta.committed;
        let disk = Disk {
            meta: replayed.meta,
            entries: replayed.entries,
            segments,
        };
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            me,
            durable: watch::channel(DurableLog {
                last: disk.last(),
                failed: false,
            })
            .0,
            segment_bytes,
            observer,
            tail: Mutex::new(LogTail::new(TAIL_BYTES)),
            committed: Mutex::new((committed, true)),
            disk: Mutex::new(disk),
        });
        let (ops, rx) = mpsc::channel();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || {
                Writer {
                    shared: &writer,
                    active,
                }
                .run(&rx)
            })?;
        Ok(LogStore { shared, ops })
    }

    /// The last entry purged from the log (None: it starts at its first).
    pub fn purged(&self) -> Option<LogId> {
        lock(&self.shared.disk).meta.purged
    }

    /// How far the log is durable, as it advances.
    pub fn durable(&self) -> watch::Receiver<DurableLog> {
        self.shared.durable.subscribe()
    }

    /// Has the writer make `change` durable after everything queued before
    /// it; returns once it is.
    async fn write(&self, subject: ErrorSubject<u64>, change: Change) -> Result<(), StorageError> {
        let (done, answer) = oneshot::channel();
        let stopped = || storage_io(subject.clone(), ErrorVerb::Write, "the log writer stopped");
        self.ops
            .send(Op::Write { change, done })
            .map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(|e| storage_io(subject.clone(), ErrorVerb::Write, e))
    }

    /// Reads the durable entries in `bounds` below `before` from their segments.
    fn read_disk(
        &self,
        bounds: (Bound<u64>, Bound<u64>),
        before: Option<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let wanted: Vec<(Loc, Arc<File>)> = {
            let disk = lock(&self.shared.disk);
            let mut wanted = Vec::new();
            for (&index, loc) in disk.entries.range(bounds) {
                if before.is_some_and(|b| index >= b) {
                    break;
                }
                let file = disk.segments.get(&loc.segment).ok_or_else(|| {
                    storage_io(
                        ErrorSubject::Log(loc.id),
                        ErrorVerb::Read,
                        "the entry's segment was deleted",
                    )
                })?;
                wanted.push((*loc, file.file.clone()));
            }
            wanted
        };
        let mut entries = Vec::with_capacity(wanted.len());
        for (loc, file) in wanted {
            let bytes = wal::read_at(&file, &loc)?;
            let entry: Entry<TypeConfig> = postcard::from_bytes(&bytes)
                .map_err(|e| storage_io(ErrorSubject::Log(loc.id), ErrorVerb::Read, e))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl LogStore {
    /// Whether `entries` are this server's own as the leader of its current
    /// vote (so they may be answered before they are durable).
    fn own(&self, entries: &[Entry<TypeConfig>]) -> bool {
        let vote = lock(&self.shared.disk).meta.vote;
        vote.is_some_and(|v| {
            v.leader_id.node_id == self.shared.me
                && entries.iter().all(|e| e.log_id.leader_id == v.leader_id)
        })
    }

    /// Puts `entries` in the tail and queues them for the writer, which
    /// calls `done` once they are durable; the leader's own are answered at
    /// once (see the module's notes).
    fn enqueue(&self, entries: Vec<Entry<TypeConfig>>, done: Flushed) -> Result<(), StorageError> {
        let early = self.own(&entries);
        let mut encoded = Vec::with_capacity(entries.len());
        for entry in &entries {
            let hint = super::network::entry_bytes(entry);
            let bytes = postcard::to_extend(entry, Vec::with_capacity(hint))
                .map_err(|e| storage_io(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            encoded.push((entry.log_id, bytes));
        }
        {
            let mut tail = lock(&self.shared.tail);
            for (entry, (_, bytes)) in entries.into_iter().zip(&encoded) {
                tail.insert(entry, bytes.len());
            }
        }
        let (done, answered): (Flushed, Option<Flushed>) = if early {
            (Box::new(|_| {}), Some(done))
        } else {
            (done, None)
        };
        let op = Op::Append {
            entries: encoded,
            done,
        };
        self.ops.send(op).map_err(|_| {
            storage_io(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                "the log writer stopped",
            )
        })?;
        if let Some(done) = answered {
            done(Ok(()));
        }
        Ok(())
    }
}

/// A log read from elsewhere, written as the first segment of a new log.
pub struct Imported {
    /// The vote.
    pub vote: Option<Vote<u64>>,
    /// The committed id (a hint for the start).
    pub committed: Option<LogId>,
    /// The last purged id.
    pub purged: Option<LogId>,
    /// Entries in index order, postcard-encoded.
    pub entries: Vec<(LogId, Vec<u8>)>,
}

/// Writes `imported` as segment 1 of the empty log in `dir`, durably and
/// all at once (a crash midway leaves no segment, so the import runs again).
fn write_imported(dir: &Path, imported: &Imported) -> io::Result<()> {
    let meta = LogMeta {
        vote: imported.vote,
        committed: imported.committed,
        purged: imported.purged,
    };
    let mut active = Active::begin(dir, 1, &meta)?;
    let mut buf = Vec::new();
    for (id, bytes) in &imported.entries {
        wal::encode(&Record::Entry(*id, bytes), &mut buf)?;
        if buf.len() >= 1 << 20 {
            active.write(&buf)?;
            buf.clear();
        }
    }
    active.write(&buf)?;
    active.publish(dir)
}

/// The writer thread's side: the segment being written.
struct Writer<'a> {
    shared: &'a Shared,
    active: Active,
}

impl Writer<'_> {
    /// Runs queued work in order, folding consecutive appends into one sync.
    /// Ends when every [`LogStore`] is dropped.
    fn run(mut self, rx: &mpsc::Receiver<Op>) {
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
                    let result = self.change(change);
                    let ok = self.publish(result.is_ok());
                    let _ = done.send(result);
                    if !ok {
                        return;
                    }
                }
                Op::Append { entries, done } => {
                    let mut appends = vec![(entries, done)];
                    while appends.len() < APPENDS_PER_SYNC_MAX {
                        match rx.try_recv() {
                            Ok(Op::Append { entries, done }) => appends.push((entries, done)),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let result = self.append(&appends);
                    if result.is_ok() {
                        // Durable now: the tail may let them go to disk alone.
                        let ids = appends
                            .iter()
                            .flat_map(|(entries, _)| entries.iter().map(|(id, _)| *id));
                        lock(&self.shared.tail).durable(ids);
                    }
                    let ok = self.publish(result.is_ok());
                    for (_, done) in appends {
                        done(match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                        });
                    }
                    if !ok {
                        return;
                    }
                }
            }
        }
    }

    /// Tells [`LogStore::durable`]'s watchers how far the log now is, or
    /// that it failed (`ok` false: the writer then stops); returns `ok`.
    fn publish(&self, ok: bool) -> bool {
        if !ok {
            tracing::error!(dir = %self.shared.dir.display(), "the Raft log failed to write; it takes no more");
            self.shared.durable.send_modify(|d| d.failed = true);
            return false;
        }
        let last = lock(&self.shared.disk).last();
        self.shared.durable.send_if_modified(|d| {
            let changed = d.last != last;
            d.last = last;
            changed
        });
        true
    }

    /// Adds the committed id to `buf` if it changed since last written,
    /// but no further than `upto`, the last entry on disk once `buf` is (a
    /// leader's commit may run ahead of its own log, see the module's
    /// notes); returns what to mark as written once `buf` is durable.
    fn carry_committed(
        &self,
        buf: &mut Vec<u8>,
        upto: Option<LogId>,
    ) -> io::Result<Option<Option<LogId>>> {
        let (committed, written) = *lock(&self.shared.committed);
        if written {
            return Ok(None);
        }
        let hint = match (committed, upto) {
            (Some(c), Some(u)) if u.index < c.index => Some(u),
            (Some(_), None) => return Ok(None),
            (c, _) => c,
        };
        wal::encode(&Record::Committed(hint), buf)?;
        Ok(Some(hint))
    }

    /// Writes `buf` (records, plus the committed id if it changed) and syncs,
    /// moving to a new segment first if this one is full; returns the
    /// segment and offset `buf` was written at. `upto` is the last entry on
    /// disk after it.
    fn write_durably(&mut self, mut buf: Vec<u8>, upto: Option<LogId>) -> io::Result<(u64, u64)> {
        let carried = self.carry_committed(&mut buf, upto)?;
        if self.active.len() + buf.len() as u64 > self.shared.segment_bytes {
            self.roll()?;
        }
        let at = self.active.write(&buf)?;
        let start = std::time::Instant::now();
        self.active.sync()?;
        self.shared.observer.fsync(start.elapsed());
        if let Some(c) = carried {
            lock(&self.shared.disk).meta.committed = c;
            let mut committed = lock(&self.shared.committed);
            if committed.0 == c {
                committed.1 = true;
            }
        }
        Ok((self.active.seq, at))
    }

    /// Starts the next segment, opening with the log's state.
    fn roll(&mut self) -> io::Result<()> {
        let meta = lock(&self.shared.disk).meta;
        let seq = self.active.seq + 1;
        let active = Active::create(&self.shared.dir, seq, &meta)?;
        // The closed segment's zeroes written ahead are not needed.
        self.active.trim()?;
        lock(&self.shared.disk).segments.insert(
            seq,
            wal::Segment {
                file: active.file.clone(),
                max_index: None,
            },
        );
        self.active = active;
        Ok(())
    }

    fn append(&mut self, appends: &Appends) -> io::Result<()> {
        let entries = appends.iter().flat_map(|(entries, _)| entries);
        // Each record adds a head, a kind and a log id of a few bytes; the
        // committed index may be carried after them (`carry_committed`).
        let (count, bytes) = entries.clone().fold((0, 0), |(n, size), (_, b)| {
            (n + 1, size + b.len() + RECORD_OVERHEAD)
        });
        let mut buf = Vec::with_capacity(bytes + RECORD_OVERHEAD);
        let mut at = Vec::with_capacity(count);
        for (id, bytes) in entries {
            let offset = wal::encode(&Record::Entry(*id, bytes), &mut buf)?;
            at.push((*id, offset as u64, bytes.len() as u32));
        }
        let upto = at.last().map(|(id, _, _)| *id);
        let (segment, base) = self.write_durably(buf, upto)?;
        let mut disk = lock(&self.shared.disk);
        for (id, offset, len) in at {
            // An entry written over others drops them and all after; the
            // check spares the usual append the split's allocations.
            if disk.entries.range(id.index..).next().is_some() {
                disk.entries.split_off(&id.index);
            }
            disk.entries.insert(
                id.index,
                Loc {
                    id,
                    segment,
                    offset: base + offset,
                    len,
                },
            );
            if let Some(s) = disk.segments.get_mut(&segment) {
                s.max_index = s.max_index.max(Some(id.index));
            }
        }
        Ok(())
    }

    fn change(&mut self, change: Change) -> io::Result<()> {
        let mut buf = Vec::new();
        match &change {
            Change::Vote(v) => wal::encode(&Record::Vote(*v), &mut buf)?,
            Change::Truncate(index) => wal::encode(&Record::Truncate(*index), &mut buf)?,
            Change::Purge(id) => wal::encode(&Record::Purge(*id), &mut buf)?,
        };
        let upto = lock(&self.shared.disk).last();
        self.write_durably(buf, upto)?;
        let mut disk = lock(&self.shared.disk);
        match change {
            Change::Vote(v) => disk.meta.vote = Some(v),
            Change::Truncate(index) => {
                disk.entries.split_off(&index);
            }
            Change::Purge(id) => {
                disk.meta.purged = Some(id);
                wal::drop_through(&mut disk.entries, id.index);
                // Delete the oldest segments while all they hold is purged;
                // only from the front, so no truncation a later segment
                // relies on goes missing. The state they held is in every
                // later segment's first record.
                let mut gone = Vec::new();
                for (&seq, segment) in &disk.segments {
                    if seq == self.active.seq || segment.max_index.is_some_and(|m| m > id.index) {
                        break;
                    }
                    gone.push(seq);
                }
                for seq in &gone {
                    disk.segments.remove(seq);
                }
                drop(disk);
                for seq in &gone {
                    wal::remove(&self.shared.dir, *seq)?;
                }
                if !gone.is_empty() {
                    crate::store::sync_dir(&self.shared.dir)?;
                }
            }
        }
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        // The tail first, then the segments for what lies before it: an
        // entry leaves the tail only once durable, and the writer records
        // where it lies before that, so an entry the tail lets go in
        // between is found on disk.
        let held = lock(&self.shared.tail).range(bounds);
        let first_held = held.first().map(|e| e.log_id.index);
        if first_held.is_some_and(|f| bounds.0 == Bound::Included(f)) {
            return Ok(held);
        }
        let mut entries = self.read_disk(bounds, first_held)?;
        entries.extend(held);
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_held = lock(&self.shared.tail).last();
        let disk = lock(&self.shared.disk);
        Ok(LogState {
            last_purged_log_id: disk.meta.purged,
            last_log_id: last_held.or(disk.last()),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.write(ErrorSubject::Vote, Change::Vote(*vote)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(lock(&self.shared.disk).meta.vote)
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
        Ok(lock(&self.shared.disk).meta.committed)
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
        self.enqueue(
            entries.into_iter().collect(),
            Box::new(move |result| callback.log_io_completed(result)),
        )
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Appends already queued are written first, then cut off here.
        lock(&self.shared.tail).truncate(log_id.index);
        self.write(ErrorSubject::Logs, Change::Truncate(log_id.index))
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        lock(&self.shared.tail).purge(log_id.index);
        self.write(ErrorSubject::Logs, Change::Purge(log_id)).await
    }
}

#[cfg(test)]
impl LogStore {
    /// Appends `entries` and waits until they are durable (storage tests).
    pub(crate) async fn append_durably(&self, entries: Vec<Entry<TypeConfig>>) {
        let (tx, rx) = oneshot::channel();
        self.enqueue(
            entries,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .expect("queued");
        rx.await.expect("answered").expect("durable");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::suite::Quiet;
    use crate::raft::testing::{entry, id};
    use crate::store::{open_env, EnvKind};
    use heed::byteorder::BigEndian;
    use heed::types::{Bytes, Str, U64};

    async fn append(log: &LogStore, entries: Vec<Entry<TypeConfig>>) {
        log.append_durably(entries).await;
    }

    async fn ids(log: &mut LogStore) -> Vec<(u64, u64)> {
        log.try_get_log_entries(..)
            .await
            .expect("read")
            .iter()
            .map(|e| (e.log_id.index, e.log_id.leader_id.term))
            .collect()
    }

    fn segments(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .expect("dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
            })
            .count()
    }

    #[tokio::test]
    async fn the_log_reopens_as_written_across_segments_and_purges_delete_whole_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        // Small segments, so the log spans many.
        let mut log = LogStore::open_sized(&path, 1, Arc::new(Quiet), None, 512).expect("open");
        for batch in 0..20u64 {
            append(&log, (1..=10).map(|i| entry(1, batch * 10 + i)).collect()).await;
        }
        log.save_vote(&Vote::new(2, 3)).await.expect("vote");
        log.truncate(id(1, 191)).await.expect("truncate");
        append(&log, (191..=195).map(|i| entry(2, i)).collect()).await;
        log.save_committed(Some(id(2, 193)))
            .await
            .expect("committed");
        append(&log, vec![entry(2, 196)]).await;
        let many = segments(&path);
        assert!(many > 4, "{many} segments");
        log.purge(id(1, 150)).await.expect("purge");
        let after_purge = segments(&path);
        assert!(after_purge < many, "{after_purge} of {many} segments left");
        let expected: Vec<(u64, u64)> = (151..=190)
            .map(|i| (i, 1))
            .chain((191..=196).map(|i| (i, 2)))
            .collect();
        assert_eq!(ids(&mut log).await, expected);
        drop(log);

        // Restarted: the same log, vote, committed hint and purge point,
        // read from the segments (the in-memory tail starts empty).
        let mut log = LogStore::open_sized(&path, 1, Arc::new(Quiet), None, 512).expect("reopen");
        assert_eq!(ids(&mut log).await, expected);
        assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(2, 3)));
        assert_eq!(
            log.read_committed().await.expect("committed"),
            Some(id(2, 193))
        );
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(id(1, 150)));
        assert_eq!(state.last_log_id, Some(id(2, 196)));
        // It goes on where it was.
        append(&log, vec![entry(2, 197)]).await;
        let r = log.try_get_log_entries(196..198).await.expect("read");
        assert_eq!(r.len(), 2);

        // Purging everything leaves the state in the newest segment only.
        log.purge(id(2, 197)).await.expect("purge all");
        drop(log);
        let mut log = LogStore::open_sized(&path, 1, Arc::new(Quiet), None, 512).expect("reopen");
        assert_eq!(ids(&mut log).await, Vec::<(u64, u64)>::new());
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(id(2, 197)));
        assert_eq!(state.last_log_id, Some(id(2, 197)));
        assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(2, 3)));
    }

    /// Queues `entries` and answers whether they were reported durable before
    /// `enqueue` returned, and whether the log was durable through them
    /// when they were.
    async fn answered(log: &LogStore, entries: Vec<Entry<TypeConfig>>) -> (bool, bool) {
        let last = entries.last().expect("entries").log_id.index;
        let durable = log.durable();
        let (tx, mut rx) = oneshot::channel();
        log.enqueue(
            entries,
            Box::new(move |r| {
                let covered = durable.borrow().covers(last) == Ok(true);
                let _ = tx.send((r.is_ok(), covered));
            }),
        )
        .expect("queued");
        let at_once = rx.try_recv().ok();
        let (ok, covered) = match at_once {
            Some(a) => a,
            None => rx.await.expect("answered"),
        };
        assert!(ok);
        (at_once.is_some(), covered)
    }

    #[tokio::test]
    async fn a_leaders_own_entries_are_answered_when_queued_and_no_one_elses_before_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let mut log = LogStore::open(&path, 1, Arc::new(Quiet), None).expect("open");
        let mut durable = log.durable();
        assert_eq!(durable.borrow().last, None);

        // Following leader 2 in term 2: answered only once durable.
        log.save_vote(&Vote::new_committed(2, 2))
            .await
            .expect("vote");
        let theirs = |i| Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(2, 2), i),
            payload: openraft::EntryPayload::Blank,
        };
        let (_, covered) = answered(&log, (1..=3).map(theirs).collect()).await;
        assert!(covered, "a follower's entries are durable when answered");
        assert_eq!(durable.borrow_and_update().last.map(|l| l.index), Some(3));

        // Leading term 3: this server's own entries are answered at once.
        log.save_vote(&Vote::new_committed(3, 1))
            .await
            .expect("vote");
        let (at_once, _) = answered(&log, vec![entry(3, 4), entry(3, 5)]).await;
        assert!(at_once, "the leader's own entries are answered when queued");
        let upto5 = durable.wait_for(|d| d.covers(5) == Ok(true));
        tokio::time::timeout(std::time::Duration::from_secs(10), upto5)
            .await
            .expect("durable in time")
            .expect("watch");
        // Entries this server did not make as the leader of its vote are
        // not its own.
        let (_, covered) = answered(&log, vec![theirs(6)]).await;
        assert!(covered);

        // A commit ahead of the log (the leader's own entries counted early)
        // is stored no further than the log reaches.
        log.save_committed(Some(id(3, 9))).await.expect("committed");
        log.save_vote(&Vote::new_committed(4, 1))
            .await
            .expect("vote");
        drop(log);
        let mut log = LogStore::open(&path, 1, Arc::new(Quiet), None).expect("reopen");
        let committed = log.read_committed().await.expect("committed");
        assert_eq!(committed.map(|c| c.index), Some(6));
        assert_eq!(log.durable().borrow().last.map(|l| l.index), Some(6));
    }

    #[tokio::test]
    async fn a_log_kept_in_lmdb_is_carried_over_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raft = dir.path().join("raft");
        // The layout earlier versions wrote, made elsewhere and copied in
        // (heed opens a path once per process).
        let env = open_env(&dir.path().join("made"), EnvKind::Raft).expect("env");
        let wtxn = env.write_txn().expect("txn");
        let (log, meta) = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
                let log = opener.create_database::<U64<BigEndian>, Bytes>(wtxn, Some("log"))?;
                let meta = opener.create_database::<Str, Bytes>(wtxn, Some("meta"))?;
                Ok(heed::CommitOrAbort::<_, ()>::Commit((log, meta)))
            })
            .expect("tables")
            .unwrap_commit();
        let mut wtxn = env.write_txn().expect("txn");
        for i in 4..=9 {
            let bytes = postcard::to_allocvec(&entry(3, i)).expect("encode");
            log.put(&mut wtxn, &i, &bytes).expect("put");
        }
        let vote = Vote::new(3, 1);
        let put = |wtxn: &mut heed::RwTxn, name: &str, bytes: Vec<u8>| {
            meta.put(wtxn, name, &bytes).expect("meta");
        };
        put(
            &mut wtxn,
            "vote",
            postcard::to_allocvec(&vote).expect("encode"),
        );
        put(
            &mut wtxn,
            "committed",
            postcard::to_allocvec(&Some(id(3, 8))).expect("encode"),
        );
        put(
            &mut wtxn,
            "last_purged",
            postcard::to_allocvec(&id(3, 3)).expect("encode"),
        );
        wtxn.commit().expect("commit");
        std::fs::create_dir_all(&raft).expect("mkdir");
        env.copy_to_path(raft.join("data.mdb"), heed::CompactionOption::Disabled)
            .expect("copy");

        for _ in 0..2 {
            let mut log = super::super::open_log(dir.path(), 1, Arc::new(Quiet)).expect("open");
            assert_eq!(
                ids(&mut log).await,
                (4..=9).map(|i| (i, 3)).collect::<Vec<_>>()
            );
            assert_eq!(log.read_vote().await.expect("vote"), Some(vote));
            assert_eq!(log.read_committed().await.expect("c"), Some(id(3, 8)));
            let state = log.get_log_state().await.expect("state");
            assert_eq!(state.last_purged_log_id, Some(id(3, 3)));
            assert!(!raft.exists(), "the LMDB log is removed once carried over");
        }
    }
}
