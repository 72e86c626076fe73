//! The Raft state machine: applies committed entries to the MVCC store and
//! records each batch's last log id in the same LMDB write transaction.

use super::log_store::DurableLog;
use super::snapshot::{self, SnapshotError};
use super::types::{storage_io, LogId, Member, StorageError, StoredMembership, TypeConfig};
use crate::kv::mirror::{self, ReadOnly};
use crate::kv::{Applied, Command, KvError, KvStore, KvWriter, Outcome};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{Entry, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, SnapshotMeta};
use std::path::PathBuf;
use std::sync::Arc;

pub(crate) const META_APPLIED: &str = "applied";
pub(crate) const META_MEMBERSHIP: &str = "membership";

const CURRENT_SNAPSHOT: &str = "current.snap";
/// Batches up to this many bytes (as `network::entry_bytes` counts them) are
/// applied on the state machine's task; larger ones on a blocking thread.
const INLINE_APPLY_BYTES: usize = 64 * 1024;
const INCOMING_SNAPSHOT: &str = "incoming.snap";

/// Told about what was applied, after the transaction committed (metrics, and later watches).
pub trait ApplyObserver: Send + Sync + 'static {
    /// A batch of entries was applied; `revision` is the store's revision after it.
    fn applied(&self, last: LogId, revision: i64, entries: usize);
    /// Leases were granted or revoked by the batch just applied.
    fn leases(&self, granted: &[LeaseGranted], revoked: &[i64]);
    /// A snapshot was built or installed.
    fn snapshot(
        &self,
        installed: bool,
        meta: &SnapshotMeta<u64, Member>,
        duration: std::time::Duration,
    );
}

/// The answers of a batch, and its last log id with the revision after it.
type AppliedBatch = (Vec<Vec<Applied>>, Option<(LogId, i64)>, LeaseChanges);

/// A lease granted by an applied entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGranted {
    /// The lease.
    pub id: i64,
    /// Its granted TTL in seconds.
    pub ttl: i64,
    /// The term of the entry that granted it (the term its proposer led).
    pub term: u64,
}

/// Leases granted and revoked by a batch.
type LeaseChanges = (Vec<LeaseGranted>, Vec<i64>);

/// The state machine storage; cheap to clone.
#[derive(Clone)]
pub struct StateMachine {
    store: KvStore,
    /// This DC's name: replication rules make it a source or a target.
    datacenter: String,
    snapshot_dir: PathBuf,
    observer: Arc<dyn ApplyObserver>,
    /// The Raft log's durability: an entry is applied only once the local
    /// log holds it durably (a leader reports its own entries durable
    /// early, see `log_store`).
    durable: Option<tokio::sync::watch::Receiver<DurableLog>>,
}

impl StateMachine {
    /// Wraps the store; snapshots are kept in `snapshot_dir`.
    pub fn new(
        store: KvStore,
        datacenter: String,
        snapshot_dir: PathBuf,
        observer: Arc<dyn ApplyObserver>,
    ) -> std::io::Result<StateMachine> {
        std::fs::create_dir_all(&snapshot_dir)?;
        Ok(StateMachine {
            store,
            datacenter,
            snapshot_dir,
            observer,
            durable: None,
        })
    }

    /// Applies entries only once `durable` covers them.
    pub fn after_durable(mut self, durable: tokio::sync::watch::Receiver<DurableLog>) -> Self {
        self.durable = Some(durable);
        self
    }

    /// Makes `file` the incoming snapshot, durably. It normally is the file
    /// [`RaftStateMachine::begin_receiving_snapshot`] opened; any other
    /// handle holding a snapshot is copied there from its start.
    async fn take_incoming(&self, mut file: tokio::fs::File) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        use tokio::io::AsyncSeekExt;
        let path = self.snapshot_dir.join(INCOMING_SNAPSHOT);
        let given = file.metadata().await?;
        let incoming = tokio::fs::metadata(&path).await.ok();
        if incoming.is_some_and(|m| m.dev() == given.dev() && m.ino() == given.ino()) {
            return file.sync_all().await;
        }
        file.seek(std::io::SeekFrom::Start(0)).await?;
        let mut copy = tokio::fs::File::create(&path).await?;
        tokio::io::copy(&mut file, &mut copy).await?;
        copy.sync_all().await
    }

    fn apply_blocking(&self, entries: Vec<Entry<TypeConfig>>) -> Result<AppliedBatch, KvError> {
        let env = self.store.env();
        let mut wtxn = env.write_txn()?;
        let mut results = Vec::with_capacity(entries.len());
        let mut last = None;
        let mut leases: LeaseChanges = (Vec::new(), Vec::new());
        let mut read_only = ReadOnly::load(&self.store, &wtxn, &self.datacenter)?;
        for entry in &entries {
            let applied = match &entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                    self.store.meta_put(&mut wtxn, META_MEMBERSHIP, &stored)?;
                    Vec::new()
                }
                EntryPayload::Normal(proposal) => {
                    let mut applied = Vec::with_capacity(proposal.commands.len());
                    for command in &proposal.commands {
                        let a = match read_only.check(command) {
                            Ok(()) => self.apply_command(&mut wtxn, command)?,
                            Err(e) => Applied {
                                revision: self.store.revision(&wtxn)?,
                                outcome: Err(e),
                            },
                        };
                        if let (Command::SetRule(_), Ok(Outcome::RuleSet { changed: true })) =
                            (command, &a.outcome)
                        {
                            read_only = ReadOnly::load(&self.store, &wtxn, &self.datacenter)?;
                        }
                        match (command, &a.outcome) {
                            (_, Ok(Outcome::LeaseGranted { id, ttl })) => {
                                leases.0.push(LeaseGranted {
                                    id: *id,
                                    ttl: *ttl,
                                    term: entry.log_id.leader_id.term,
                                })
                            }
                            (Command::LeaseRevoke { id }, Ok(_)) => leases.1.push(*id),
                            _ => {}
                        }
                        applied.push(a);
                    }
                    applied
                }
            };
            let revision = match applied.last() {
                Some(a) => a.revision,
                None => self.store.revision(&wtxn)?,
            };
            last = Some((entry.log_id, revision));
            results.push(applied);
        }
        if let Some((log_id, _)) = last {
            self.store
                .meta_put(&mut wtxn, META_APPLIED, &Some(log_id))?;
        }
        wtxn.commit()?;
        Ok((results, last, leases))
    }

    /// Applies one command. A transaction and a replication command run in a
    /// nested LMDB transaction so that one failing halfway leaves nothing
    /// behind; other commands fail, if at all, before their first write.
    fn apply_command(&self, wtxn: &mut heed::RwTxn, command: &Command) -> Result<Applied, KvError> {
        let before = self.store.revision(wtxn)?;
        let store = self.store;
        let result = match command {
            Command::SetRule(rule) => self.nested(wtxn, |t| {
                let changed = mirror::set_rule(&store, t, rule)?;
                Ok((Outcome::RuleSet { changed }, store.revision(t)?))
            }),
            Command::Mirror(batch) => self.nested(wtxn, |t| {
                let revision = mirror::apply_batch(store, t, batch, &self.datacenter)?;
                Ok((Outcome::Mirrored, revision))
            }),
            Command::Txn(_) => self.nested(wtxn, |t| write(store, t, command)),
            Command::SetClusterLevel { level } => {
                let key = crate::version::META_CLUSTER_LEVEL;
                let stored: u32 = store
                    .meta_get(wtxn, key)?
                    .unwrap_or(crate::version::BASE_LEVEL);
                let level = stored.max(*level);
                store.meta_put(wtxn, key, &level)?;
                Ok((Outcome::ClusterLevelSet { level }, before))
            }
            _ => write(store, wtxn, command),
        };
        match result {
            Ok((outcome, revision)) => Ok(Applied {
                revision,
                outcome: Ok(outcome),
            }),
            Err(KvError::Storage(e)) => Err(KvError::Storage(e)),
            Err(e) => Ok(Applied {
                revision: before,
                outcome: Err(e),
            }),
        }
    }

    /// Runs `f` in a transaction nested in `wtxn`, kept only if `f` succeeds.
    fn nested(
        &self,
        wtxn: &mut heed::RwTxn,
        f: impl FnOnce(&mut heed::RwTxn) -> Result<(Outcome, i64), KvError>,
    ) -> Result<(Outcome, i64), KvError> {
        let mut nested = self.store.env().nested_write_txn(wtxn)?;
        let result = f(&mut nested);
        if result.is_ok() {
            nested.commit()?;
        }
        result
    }

    fn current_snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join(CURRENT_SNAPSHOT)
    }
}

/// Runs a client write; returns its outcome and the revision after it.
fn write(
    store: KvStore,
    txn: &mut heed::RwTxn,
    command: &Command,
) -> Result<(Outcome, i64), KvError> {
    let mut writer = KvWriter::new(store, txn)?;
    let outcome = writer.apply(command)?;
    Ok((outcome, writer.finish()?))
}

fn snapshot_error(verb: ErrorVerb, e: SnapshotError) -> StorageError {
    storage_io(ErrorSubject::Snapshot(None), verb, e)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let this = self.clone();
        let start = std::time::Instant::now();
        let meta = tokio::task::spawn_blocking(move || {
            // Everything the snapshot holds must be on disk before the log below it may be purged.
            this.store
                .env()
                .force_sync()
                .map_err(|e| SnapshotError::Storage(e.to_string()))?;
            let tmp = this
                .snapshot_dir
                .join(format!("building-{}.snap", std::process::id()));
            let meta =
                snapshot::write_snapshot(&this.store, &tmp, |last_log_id, last_membership| {
                    let snapshot_id = match last_log_id {
                        Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, now_millis()),
                        None => format!("0-0-{}", now_millis()),
                    };
                    SnapshotMeta {
                        last_log_id,
                        last_membership,
                        snapshot_id,
                    }
                })?
                .meta;
            std::fs::rename(&tmp, this.current_snapshot_path())?;
            Ok::<_, SnapshotError>(meta)
        })
        .await
        .map_err(|e| storage_io(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?
        .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        self.observer.snapshot(false, &meta, start.elapsed());
        let file = tokio::fs::File::open(self.current_snapshot_path())
            .await
            .map_err(|e| storage_io(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

fn now_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let read =
            |e: &dyn std::fmt::Display| storage_io(ErrorSubject::StateMachine, ErrorVerb::Read, e);
        let rtxn = self.store.env().read_txn().map_err(|e| read(&e))?;
        let applied: Option<LogId> = self
            .store
            .meta_get(&rtxn, META_APPLIED)
            .map_err(|e| read(&e))?
            .flatten();
        let membership: StoredMembership = self
            .store
            .meta_get(&rtxn, META_MEMBERSHIP)
            .map_err(|e| read(&e))?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Applied>>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let count = entries.len();
        if let (Some(durable), Some(last)) = (&mut self.durable, entries.last()) {
            let index = last.log_id.index;
            durable
                .wait_for(|d| d.covers(index) != Ok(false))
                .await
                .map_err(|e| storage_io(ErrorSubject::StateMachine, ErrorVerb::Write, e))?
                .covers(index)
                .map_err(|e| storage_io(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        }
        let bytes: usize = entries.iter().map(super::network::entry_bytes).sum();
        let (results, last, leases) = if bytes <= INLINE_APPLY_BYTES {
            self.apply_blocking(entries)
        } else {
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.apply_blocking(entries))
                .await
                .map_err(|e| storage_io(ErrorSubject::StateMachine, ErrorVerb::Write, e))?
        }
        .map_err(|e| storage_io(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        if !leases.0.is_empty() || !leases.1.is_empty() {
            self.observer.leases(&leases.0, &leases.1);
        }
        if let Some((log_id, revision)) = last {
            self.observer.applied(log_id, revision, count);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.snapshot_dir.join(INCOMING_SNAPSHOT);
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| storage_io(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let failed = |e: std::io::Error| {
            storage_io(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                e,
            )
        };
        self.take_incoming(*snapshot).await.map_err(failed)?;
        let this = self.clone();
        let expected = meta.clone();
        let start = std::time::Instant::now();
        let installed = tokio::task::spawn_blocking(move || {
            let path = this.snapshot_dir.join(INCOMING_SNAPSHOT);
            let installed = snapshot::install(&this.store, &path)?;
            if installed.last_log_id != expected.last_log_id {
                return Err(SnapshotError::Corrupt(
                    "snapshot header does not match the leader's meta".into(),
                ));
            }
            std::fs::rename(&path, this.current_snapshot_path())?;
            Ok(installed)
        })
        .await
        .map_err(|e| storage_io(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?
        .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        self.observer.snapshot(true, &installed, start.elapsed());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let path = self.current_snapshot_path();
        if !path.exists() {
            return Ok(None);
        }
        let meta = snapshot::read_meta(&path).map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| storage_io(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}
