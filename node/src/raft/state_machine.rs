//! The Raft state machine: applies committed entries to the MVCC store and
//! records each batch's last log id in the same LMDB write transaction.
//!
//! A server may hold back entries another server proposed (see [`Hold`]):
//! no client of its own waits on them, so it applies several in one
//! transaction, which writes each B-tree page they touch once instead of
//! once per entry. Readers see what is committed; a linearizable read
//! waits for [`Visible`], which releases held entries at once.
//!
//! Entries are applied on a thread of its own ([`super::committer`]), which
//! may commit several applies together while nobody reads (ADR 0019).

use super::committer::{Applier, CommitLimits, Committer, Flusher};
use super::log_store::DurableLog;
use super::snapshot::{self, SnapshotError};
use super::types::{storage_io, LogId, Member, StorageError, StoredMembership, TypeConfig};
use crate::kv::mirror::{self, ReadOnly};
use crate::kv::{Applied, Command, KvError, KvStore, KvWriter, Outcome};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{Entry, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, SnapshotMeta};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Mutex, Notify};

pub(crate) const META_APPLIED: &str = "applied";
pub(crate) const META_MEMBERSHIP: &str = "membership";

/// The log id of the last entry the state holds, as its last commit recorded it.
pub(crate) fn applied_log_id(store: &KvStore, txn: &heed::RoTxn) -> Result<Option<LogId>, KvError> {
    Ok(store
        .meta_get::<Option<LogId>>(txn, META_APPLIED)?
        .flatten())
}

/// The snapshot the state machine serves and rebuilds from, in its snapshot directory.
pub(crate) const CURRENT_SNAPSHOT: &str = "current.snap";
const INCOMING_SNAPSHOT: &str = "incoming.snap";

/// Told about what was applied, after the transaction committed (metrics, and later watches).
pub trait ApplyObserver: Send + Sync + 'static {
    /// A batch of entries was applied; `revision` is the store's revision after it.
    fn applied(&self, last: LogId, revision: i64, entries: usize);
    /// Leases were granted or revoked by the batch just applied.
    fn leases(&self, granted: &[LeaseGranted], revoked: &[i64]);
    /// `entries` entries another server proposed were held back, to be
    /// applied together with later ones.
    fn held(&self, _entries: usize) {}
    /// An installed snapshot replaced the store; `revision` is its revision
    /// (which can be older than the one applied before).
    fn replaced(&self, revision: i64);
    /// A snapshot was built or installed.
    fn snapshot(
        &self,
        installed: bool,
        meta: &SnapshotMeta<u64, Member>,
        duration: std::time::Duration,
    );
}

/// The answers of a batch, and its last log id with the revision after it.
pub(super) type AppliedBatch = (Vec<Vec<Applied>>, Option<(LogId, i64)>, LeaseChanges);

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
    snapshot_dir: PathBuf,
    observer: Arc<dyn ApplyObserver>,
    /// The Raft log's durability: an entry is applied only once the local
    /// log holds it durably (a leader reports its own entries durable
    /// early, see `log_store`).
    durable: Option<tokio::sync::watch::Receiver<DurableLog>>,
    /// The last log index whose writes a new read transaction sees.
    visible: Arc<watch::Sender<u64>>,
    /// Holding back other leaders' entries, when enabled.
    hold: Option<Arc<Hold>>,
    /// Held by every write to the state; true once [`Closer::close`] ran.
    closed: Arc<std::sync::Mutex<bool>>,
    /// The thread that applies entries and commits them.
    committer: Committer<AppliedBatch>,
    /// Settings the applying thread reads.
    settings: Arc<Settings>,
    /// Payload bytes handed to `apply` since the start (the snapshot policy's
    /// measure of the log written, ADR 0020).
    applied_bytes: Arc<std::sync::atomic::AtomicU64>,
}

/// What [`StateMachine::holding`] and [`StateMachine::committing`] set after
/// the applying thread started.
#[derive(Default)]
struct Settings {
    listened: std::sync::OnceLock<Listened>,
    limits: std::sync::OnceLock<CommitLimits>,
}

type Listened = Arc<dyn Fn() -> bool + Send + Sync>;

/// The state machine's side of the applying thread.
struct StateApplier {
    store: KvStore,
    datacenter: String,
    observer: Arc<dyn ApplyObserver>,
    visible: Arc<watch::Sender<u64>>,
    closed: Arc<std::sync::Mutex<bool>>,
    settings: Arc<Settings>,
}

/// Raises the visible index to `index` (never lowers it), waking its
/// waiters only when it moved.
fn raise(visible: &watch::Sender<u64>, index: u64) {
    visible.send_if_modified(|v| {
        let newer = index > *v;
        if newer {
            *v = index;
        }
        newer
    });
}

/// Ends the state's writes at a clean stop, leaving it synced.
#[derive(Clone)]
pub struct Closer {
    store: KvStore,
    closed: Arc<std::sync::Mutex<bool>>,
    flusher: Flusher,
}

impl Closer {
    /// Waits for a write under way, refuses every later one, syncs the
    /// environment and marks it synced in `state_dir` (`store::boot`): the
    /// next start trusts it whatever happens to the machine meanwhile.
    pub fn close(&self, state_dir: &std::path::Path) -> std::io::Result<()> {
        // Applied entries waiting for their commit are committed first.
        self.flusher
            .flush_blocking()
            .map_err(std::io::Error::other)?;
        let mut closed = lock_closed(&self.closed);
        *closed = true;
        self.store
            .env()
            .force_sync()
            .map_err(std::io::Error::other)?;
        crate::store::boot::mark_synced(state_dir)
    }
}

fn lock_closed(m: &std::sync::Mutex<bool>) -> std::sync::MutexGuard<'_, bool> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Held while writing to the state, so that [`Closer::close`] waits for the
/// write; an error once it has run.
pub(super) fn writing(
    closed: &std::sync::Mutex<bool>,
) -> Result<std::sync::MutexGuard<'_, bool>, KvError> {
    let guard = lock_closed(closed);
    if *guard {
        return Err(KvError::Storage(
            "the server is stopping: nothing more is written to its state".into(),
        ));
    }
    Ok(guard)
}

/// How much a server holds back of the entries other servers proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldLimits {
    /// Entries held at most.
    pub entries: usize,
    /// Their payload bytes at most (as `network::entry_bytes` counts them).
    pub bytes: usize,
    /// How long the first of them waits at most.
    pub delay: Duration,
}

impl Default for HoldLimits {
    fn default() -> Self {
        HoldLimits {
            entries: 32,
            bytes: 1024 * 1024,
            delay: Duration::from_millis(50),
        }
    }
}

/// Entries another server proposed, held back to be applied together.
///
/// Only a server's own entries have clients waiting on their results (the
/// proposer's); an entry of another leader's term is answered by that
/// leader. So a follower may apply such entries later, several in one LMDB
/// transaction, as long as every reader that must see them does: a
/// linearizable read raises `wanted` and releases them at once
/// ([`Visible::reach`]), snapshots release them first, and so does the
/// server's first own entry. Serializable reads and watchers on this
/// server may see them up to [`HoldLimits::delay`] later, so nothing is
/// held while anyone listens for changes here (`listened`).
struct Hold {
    /// This server's id: its own entries are never held.
    me: u64,
    limits: HoldLimits,
    /// Whether anyone here is waiting for changes (watchers, replication
    /// streams, blocking queries); nothing is held while so.
    listened: Listened,
    held: Mutex<Held>,
    /// The highest index a linearizable read on this server waits for;
    /// nothing is held while it is above the visible index.
    wanted: AtomicU64,
    /// Releases the held entries before their delay is up.
    now: Notify,
    /// Why releasing held entries failed; the next apply reports it.
    failed: std::sync::Mutex<Option<String>>,
}

#[derive(Default)]
struct Held {
    entries: Vec<Entry<TypeConfig>>,
    /// Their payload bytes, as `network::entry_bytes` counts them.
    bytes: usize,
}

impl Held {
    /// Everything held, and its payload bytes, leaving nothing held.
    fn take(&mut self) -> (Vec<Entry<TypeConfig>>, usize) {
        (
            std::mem::take(&mut self.entries),
            std::mem::take(&mut self.bytes),
        )
    }
}

/// Waits until reads see the state machine's writes through a log index.
#[derive(Clone)]
pub struct Visible {
    visible: watch::Receiver<u64>,
    hold: Option<Arc<Hold>>,
    flusher: Flusher,
}

impl Visible {
    /// The last log index whose writes a read transaction begun now sees.
    pub fn index(&self) -> u64 {
        *self.visible.borrow()
    }

    /// Waits until a read transaction begun now sees every entry through
    /// `index` (released at once if held back), or `deadline` passes.
    pub async fn reach(&self, index: u64, deadline: Instant) -> bool {
        let mut visible = self.visible.clone();
        if *visible.borrow() >= index {
            return true;
        }
        if let Some(hold) = &self.hold {
            hold.wanted.fetch_max(index, Ordering::SeqCst);
            hold.now.notify_one();
        }
        self.flusher.want(index);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let reached = tokio::time::timeout(remaining, visible.wait_for(|v| *v >= index)).await;
        matches!(reached, Ok(Ok(_)))
    }
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
        let applied = {
            let rtxn = store.env().read_txn().map_err(std::io::Error::other)?;
            applied_log_id(&store, &rtxn).map_err(std::io::Error::other)?
        };
        let applied = applied.map_or(0, |id| id.index);
        let visible = Arc::new(watch::channel(applied).0);
        let closed = Arc::new(std::sync::Mutex::new(false));
        let settings = Arc::new(Settings::default());
        let applier = StateApplier {
            store,
            datacenter,
            observer: observer.clone(),
            visible: visible.clone(),
            closed: closed.clone(),
            settings: settings.clone(),
        };
        let committer = Committer::start(applier, applied)?;
        Ok(StateMachine {
            store,
            snapshot_dir,
            observer,
            durable: None,
            visible,
            hold: None,
            closed,
            committer,
            settings,
            applied_bytes: Arc::default(),
        })
    }

    /// What ends this state machine's writes at a clean stop.
    pub fn closer(&self) -> Closer {
        Closer {
            store: self.store,
            closed: self.closed.clone(),
            flusher: self.flusher(),
        }
    }

    /// Holds back entries other servers proposed (see [`Hold`]): `me` is
    /// this server's id, `listened` says whether anyone here waits for
    /// changes.
    pub fn holding(
        mut self,
        me: u64,
        limits: HoldLimits,
        listened: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        let listened: Listened = Arc::new(listened);
        // Set once: a state machine is built holding or not.
        let _ = self.settings.listened.set(listened.clone());
        self.hold = Some(Arc::new(Hold {
            me,
            limits,
            listened,
            held: Mutex::new(Held::default()),
            wanted: AtomicU64::new(0),
            now: Notify::new(),
            failed: std::sync::Mutex::new(None),
        }));
        self
    }

    /// How long and how far applies may wait for their commit; set once,
    /// before the first apply ([`CommitLimits::default`] otherwise).
    pub fn committing(self, limits: CommitLimits) -> Self {
        let _ = self.settings.limits.set(limits);
        self
    }

    /// What readers ask commits through: a read transaction begun after
    /// [`Flusher::flush`] sees every write answered before it.
    pub fn flusher(&self) -> Flusher {
        self.committer.flusher().clone()
    }

    /// What linearizable reads wait on.
    pub fn visible(&self) -> Visible {
        Visible {
            visible: self.visible.subscribe(),
            hold: self.hold.clone(),
            flusher: self.flusher(),
        }
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

    /// Applies `entries` (`bytes` of payload) on the applying thread and
    /// tells the observer of leases; the commit (and what readers see) may
    /// come later.
    async fn apply_now(
        &self,
        entries: Vec<Entry<TypeConfig>>,
        bytes: usize,
    ) -> Result<Vec<Vec<Applied>>, StorageError> {
        let (results, _, leases) = self
            .committer
            .apply(entries, bytes)
            .await
            .map_err(|e| storage_io(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        if !leases.0.is_empty() || !leases.1.is_empty() {
            self.observer.leases(&leases.0, &leases.1);
        }
        Ok(results)
    }

    /// Commits whatever is applied, for a reader of the whole state.
    async fn flush(&self) -> Result<(), StorageError> {
        self.committer
            .flusher()
            .flush()
            .await
            .map_err(|e| storage_io(ErrorSubject::StateMachine, ErrorVerb::Write, e))
    }

    /// Readers now see the writes through `index`.
    fn show(&self, index: u64) {
        raise(&self.visible, index);
    }

    /// Holds `entries` back if [`Hold`] allows, answering them with no
    /// results (nobody here waits on them); otherwise applies whatever is
    /// held together with them.
    async fn apply_or_hold(
        &self,
        hold: &Arc<Hold>,
        entries: Vec<Entry<TypeConfig>>,
        bytes: usize,
    ) -> Result<Vec<Vec<Applied>>, StorageError> {
        let mut held = hold.held.lock().await;
        if let Some(e) = hold.failure() {
            return Err(storage_io(ErrorSubject::StateMachine, ErrorVerb::Write, e));
        }
        if hold.may_hold(&held, &entries, bytes, *self.visible.borrow()) {
            let count = entries.len();
            let first = held.entries.is_empty();
            held.entries.extend(entries);
            held.bytes += bytes;
            self.observer.held(count);
            if first {
                tokio::spawn(release_later(self.clone(), hold.clone()));
            }
            return Ok((0..count).map(|_| Vec::new()).collect());
        }
        let (mut all, held_bytes) = held.take();
        let earlier = all.len();
        all.extend(entries);
        let mut results = self.apply_now(all, held_bytes + bytes).await?;
        Ok(results.split_off(earlier))
    }

    /// Applies whatever entries are held back.
    async fn release(&self) -> Result<(), StorageError> {
        let Some(hold) = &self.hold else {
            return Ok(());
        };
        let mut held = hold.held.lock().await;
        if held.entries.is_empty() {
            return Ok(());
        }
        let (all, bytes) = held.take();
        self.apply_now(all, bytes).await.map(|_| ())
    }

    fn current_snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join(CURRENT_SNAPSHOT)
    }

    /// What the snapshot policy watches (ADR 0020): the payload applied and
    /// the current snapshot's file, with at least `min_entries` between two.
    pub(crate) fn snapshot_watch(&self, min_entries: u64) -> super::snapshot_policy::Watched {
        super::snapshot_policy::Watched {
            min_entries,
            applied_bytes: self.applied_bytes.clone(),
            snapshot_file: self.current_snapshot_path(),
        }
    }

    /// Makes a new current snapshot's name durable before openraft may purge
    /// the log below it (a rebuild after a machine crash starts from it, ADR
    /// 0017), then drops a restored backup's base, which it covers.
    fn settle_current(&self) -> std::io::Result<()> {
        crate::store::sync_dir(&self.snapshot_dir)?;
        match std::fs::remove_file(self.snapshot_dir.join(super::RESTORED_SNAPSHOT)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl StateApplier {
    fn apply_in(
        &self,
        wtxn: &mut heed::RwTxn,
        entries: Vec<Entry<TypeConfig>>,
    ) -> Result<AppliedBatch, KvError> {
        let mut results = Vec::with_capacity(entries.len());
        let mut last = None;
        let mut leases: LeaseChanges = (Vec::new(), Vec::new());
        let mut read_only = ReadOnly::load(&self.store, wtxn, &self.datacenter)?;
        for entry in &entries {
            let applied = match &entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                    self.store.meta_put(wtxn, META_MEMBERSHIP, &stored)?;
                    Vec::new()
                }
                EntryPayload::Normal(proposal) => {
                    let mut applied = Vec::with_capacity(proposal.commands.len());
                    for command in proposal.commands.iter() {
                        let a = match read_only.check(command) {
                            Ok(()) => self.apply_command(wtxn, command)?,
                            Err(e) => Applied {
                                revision: self.store.revision(wtxn)?,
                                outcome: Err(e),
                            },
                        };
                        if let (Command::SetRule(_), Ok(Outcome::RuleSet { changed: true })) =
                            (command, &a.outcome)
                        {
                            read_only = ReadOnly::load(&self.store, wtxn, &self.datacenter)?;
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
                None => self.store.revision(wtxn)?,
            };
            last = Some((entry.log_id, revision));
            results.push(applied);
        }
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
}

impl Applier for StateApplier {
    type Batch = AppliedBatch;

    fn env(&self) -> &'static heed::Env<heed::WithoutTls> {
        self.store.env()
    }

    fn closed(&self) -> &std::sync::Mutex<bool> {
        &self.closed
    }

    fn apply(
        &self,
        txn: &mut heed::RwTxn,
        entries: Vec<Entry<TypeConfig>>,
    ) -> Result<AppliedBatch, KvError> {
        self.apply_in(txn, entries)
    }

    fn last(batch: &AppliedBatch) -> Option<(LogId, i64)> {
        batch.1
    }

    fn record(&self, txn: &mut heed::RwTxn, last: LogId) -> Result<(), KvError> {
        self.store.meta_put(txn, META_APPLIED, &Some(last))
    }

    fn committed(&self, last: LogId, revision: i64, entries: usize) {
        raise(&self.visible, last.index);
        self.observer.applied(last, revision, entries);
    }

    fn listened(&self) -> bool {
        self.settings.listened.get().is_some_and(|l| l())
    }

    fn limits(&self) -> CommitLimits {
        self.settings.limits.get().copied().unwrap_or_default()
    }
}

impl Hold {
    /// Whether `entries` may join `held` (see [`Hold`]).
    fn may_hold(
        &self,
        held: &Held,
        entries: &[Entry<TypeConfig>],
        bytes: usize,
        visible: u64,
    ) -> bool {
        entries.iter().all(|e| {
            e.log_id.leader_id.node_id != self.me
                && matches!(e.payload, EntryPayload::Normal(_) | EntryPayload::Blank)
        }) && held.entries.len() + entries.len() <= self.limits.entries
            && held.bytes + bytes <= self.limits.bytes
            && self.wanted.load(Ordering::SeqCst) <= visible
            && !(self.listened)()
    }

    fn failure(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }
}

/// Applies the entries held from now on once their delay is up, or sooner
/// when a reader needs them.
async fn release_later(sm: StateMachine, hold: Arc<Hold>) {
    tokio::select! {
        _ = tokio::time::sleep(hold.limits.delay) => {}
        _ = hold.now.notified() => {}
    }
    if let Err(e) = sm.release().await {
        tracing::error!(error = %e, "applying held entries failed; the state machine stops");
        if let Ok(mut failed) = hold.failed.lock() {
            *failed = Some(e.to_string());
        }
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
        // The snapshot then covers everything openraft has handed over.
        self.release().await?;
        self.flush().await?;
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
            this.settle_current()?;
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
        self.flush().await?;
        let rtxn = self.store.env().read_txn().map_err(|e| read(&e))?;
        let applied = applied_log_id(&self.store, &rtxn).map_err(|e| read(&e))?;
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
        self.applied_bytes
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        match &self.hold {
            Some(hold) => self.apply_or_hold(hold, entries, bytes).await,
            None => self.apply_now(entries, bytes).await,
        }
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
        self.release().await?;
        self.flush().await?;
        self.take_incoming(*snapshot).await.map_err(failed)?;
        let this = self.clone();
        let expected = meta.clone();
        let start = std::time::Instant::now();
        let (installed, revision) = tokio::task::spawn_blocking(move || {
            let path = this.snapshot_dir.join(INCOMING_SNAPSHOT);
            let writing =
                writing(&this.closed).map_err(|e| SnapshotError::Storage(e.to_string()))?;
            let installed = snapshot::install(&this.store, &path)?;
            drop(writing);
            if installed.last_log_id != expected.last_log_id {
                return Err(SnapshotError::Corrupt(
                    "snapshot header does not match the leader's meta".into(),
                ));
            }
            std::fs::rename(&path, this.current_snapshot_path())?;
            this.settle_current()?;
            let revision = this
                .store
                .env()
                .read_txn()
                .map_err(KvError::from)
                .and_then(|rtxn| this.store.revision(&rtxn))
                .map_err(|e| SnapshotError::Storage(e.to_string()))?;
            Ok((installed, revision))
        })
        .await
        .map_err(|e| storage_io(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?
        .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        if let Some(last) = installed.last_log_id {
            self.show(last.index);
        }
        self.observer.replaced(revision);
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
