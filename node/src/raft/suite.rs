//! openraft's storage test suite run against the log store (segment files,
//! write-behind appends) and the state machine, each built on fresh
//! environments in a temporary directory.

use super::types::{LogId, Member, StorageError, TypeConfig};
use super::{ApplyObserver, LeaseGranted, LogObserver, LogStore, StateMachine};
use crate::kv::KvStore;
use crate::store::{open_env, EnvKind};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, SnapshotMeta};
use std::sync::Arc;

/// An observer that ignores everything (for storage tests).
pub(crate) struct Quiet;

impl LogObserver for Quiet {
    fn fsync(&self, _: std::time::Duration) {}
    fn committed(&self, _: u64) {}
}

impl ApplyObserver for Quiet {
    fn applied(&self, _: LogId, _: i64, _: usize) {}
    fn leases(&self, _: &[LeaseGranted], _: &[i64]) {}
    fn replaced(&self, _: i64) {}
    fn snapshot(&self, _: bool, _: &SnapshotMeta<u64, Member>, _: std::time::Duration) {}
}

struct Fresh;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Fresh {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let failed = |e: String| {
            StorageError::from_io_error(
                ErrorSubject::Store,
                ErrorVerb::Write,
                std::io::Error::other(e),
            )
        };
        let dir = tempfile::tempdir().map_err(|e| failed(e.to_string()))?;
        let state_env = open_env(&dir.path().join("state"), EnvKind::State)
            .map_err(|e| failed(e.to_string()))?;
        let log = LogStore::open(&dir.path().join("log"), 0, Arc::new(Quiet), None)
            .map_err(|e| failed(e.to_string()))?;
        let kv = KvStore::open(state_env).map_err(|e| failed(e.to_string()))?;
        let sm = StateMachine::new(
            kv,
            "suite".into(),
            dir.path().join("snapshots"),
            Arc::new(Quiet),
        )
        .map_err(|e| failed(e.to_string()))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Fresh).expect("openraft's storage suite");
}

#[tokio::test]
async fn the_state_machine_applies_an_entry_only_once_the_log_holds_it_durably() {
    use super::testing::{entry, id};
    use super::DurableLog;
    use openraft::storage::RaftStateMachine;
    use std::time::Duration;

    let dir = tempfile::tempdir().expect("tempdir");
    let state_env = open_env(&dir.path().join("state"), EnvKind::State).expect("env");
    let kv = KvStore::open(state_env).expect("kv");
    let (durable, rx) = tokio::sync::watch::channel(DurableLog::default());
    let mut sm = StateMachine::new(
        kv,
        "t".into(),
        dir.path().join("snapshots"),
        Arc::new(Quiet),
    )
    .expect("state machine")
    .after_durable(rx);

    let mut applying = sm.clone();
    let mut apply = tokio::spawn(async move { applying.apply(vec![entry(1, 1)]).await });
    let early = tokio::time::timeout(Duration::from_millis(200), &mut apply).await;
    assert!(early.is_err(), "applied before the log held the entry");
    durable.send_replace(DurableLog {
        last: Some(id(1, 1)),
        failed: false,
    });
    tokio::time::timeout(Duration::from_secs(10), apply)
        .await
        .expect("applied in time")
        .expect("task")
        .expect("applied");
    let (applied, _) = sm.applied_state().await.expect("state");
    assert_eq!(applied, Some(id(1, 1)));

    // A log that failed to write stops the state machine instead of leaving it waiting.
    durable.send_replace(DurableLog {
        last: Some(id(1, 1)),
        failed: true,
    });
    let failed = tokio::time::timeout(Duration::from_secs(10), sm.apply(vec![entry(1, 2)]))
        .await
        .expect("answered in time");
    assert!(failed.is_err());
}

/// A put of `key` (value `v`) proposed at `index` by the leader of `term`, server `leader`.
fn put_entry(leader: u64, term: u64, index: u64, key: &str) -> openraft::Entry<TypeConfig> {
    use crate::kv::{Command, PutRequest};
    openraft::Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(term, leader), index),
        payload: openraft::EntryPayload::Normal(super::Proposal {
            commands: std::sync::Arc::new(vec![Command::Put(PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                lease: 0,
                prev_kv: false,
                ignore_value: false,
                ignore_lease: false,
            })]),
        }),
    }
}

/// A state machine on a fresh store for server 2, holding other servers'
/// entries and waiting for commits as its limits allow while `listened` is
/// false.
struct Holding {
    _dir: tempfile::TempDir,
    listened: Arc<std::sync::atomic::AtomicBool>,
    kv: KvStore,
    sm: StateMachine,
}

impl Holding {
    /// Holding up to `entries` entries (1 MiB) for `delay`; each apply
    /// committed at once, so that only holding is looked at.
    fn new(entries: usize, delay: std::time::Duration) -> Holding {
        let hold = super::HoldLimits {
            entries,
            bytes: 1 << 20,
            delay,
        };
        Holding::with(hold, super::CommitLimits::each_apply())
    }

    fn with(hold: super::HoldLimits, commit: super::CommitLimits) -> Holding {
        let dir = tempfile::tempdir().expect("tempdir");
        let state_env = open_env(&dir.path().join("state"), EnvKind::State).expect("env");
        let kv = KvStore::open(state_env).expect("kv");
        let listened = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = listened.clone();
        let sm = StateMachine::new(
            kv,
            "t".into(),
            dir.path().join("snapshots"),
            Arc::new(Quiet),
        )
        .expect("state machine")
        .committing(commit)
        .holding(2, hold, move || {
            flag.load(std::sync::atomic::Ordering::SeqCst)
        });
        Holding {
            _dir: dir,
            listened,
            kv,
            sm,
        }
    }
}

fn revision(kv: &KvStore) -> i64 {
    let rtxn = kv.env().read_txn().expect("txn");
    kv.revision(&rtxn).expect("revision")
}

#[tokio::test]
async fn a_follower_holds_other_leaders_entries_until_a_reader_or_its_own_entry_needs_them() {
    use openraft::storage::RaftStateMachine;
    use openraft::RaftSnapshotBuilder;
    use std::time::{Duration, Instant};

    // A delay longer than the test: only readers, limits and own entries release.
    let Holding {
        _dir,
        listened,
        kv,
        mut sm,
    } = Holding::new(3, Duration::from_secs(600));
    let visible = sm.visible();
    let soon = || Instant::now() + Duration::from_secs(10);

    // Server 1's entry is held: answered with no results, not yet readable.
    let answered = sm
        .apply(vec![put_entry(1, 1, 1, "a")])
        .await
        .expect("apply");
    assert_eq!(answered, vec![Vec::new()]);
    assert_eq!(revision(&kv), 1, "a held entry is not written yet");
    // A linearizable read that needs it releases it at once.
    assert!(visible.reach(1, soon()).await);
    assert_eq!(revision(&kv), 2);

    // Held up to the limit (3 entries); the fourth is applied with them.
    for index in 2..=4 {
        sm.apply(vec![put_entry(1, 1, index, &format!("k{index}"))])
            .await
            .expect("apply");
    }
    assert_eq!(revision(&kv), 2, "three entries held");
    sm.apply(vec![put_entry(1, 1, 5, "k5")])
        .await
        .expect("apply");
    assert_eq!(revision(&kv), 6, "the limit releases them all together");
    let (applied, _) = sm.applied_state().await.expect("state");
    assert_eq!(applied.map(|id| id.index), Some(5));

    // This server's own entry (it leads term 2) is never held, and it
    // releases what is held before it; its results are there for its client.
    sm.apply(vec![put_entry(1, 1, 6, "k6")])
        .await
        .expect("apply");
    assert_eq!(revision(&kv), 6);
    let own = sm
        .apply(vec![put_entry(2, 2, 7, "k7")])
        .await
        .expect("apply");
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].len(), 1, "the own entry's put is answered");
    assert_eq!(own[0][0].revision, 8);
    assert_eq!(revision(&kv), 8);

    // A snapshot covers everything handed over, held entries included.
    sm.apply(vec![put_entry(1, 3, 8, "k8")])
        .await
        .expect("apply");
    assert_eq!(revision(&kv), 8);
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), Some(8));
    assert_eq!(revision(&kv), 9);

    // While anyone here listens for changes (watchers), nothing is held.
    listened.store(true, std::sync::atomic::Ordering::SeqCst);
    sm.apply(vec![put_entry(1, 3, 9, "k9")])
        .await
        .expect("apply");
    assert_eq!(revision(&kv), 10);
}

#[tokio::test]
async fn held_entries_are_applied_once_their_delay_is_up() {
    use openraft::storage::RaftStateMachine;
    use std::time::Duration;

    let Holding {
        _dir, kv, mut sm, ..
    } = Holding::new(100, Duration::from_millis(50));
    sm.apply(vec![put_entry(1, 1, 1, "a")])
        .await
        .expect("apply");
    sm.apply(vec![put_entry(1, 1, 2, "b")])
        .await
        .expect("apply");
    assert_eq!(revision(&kv), 1, "held");
    let mut waited = 0;
    while revision(&kv) != 3 {
        assert!(waited < 200, "the held entries were never applied");
        tokio::time::sleep(Duration::from_millis(25)).await;
        waited += 1;
    }
    let (applied, _) = sm.applied_state().await.expect("state");
    assert_eq!(applied.map(|id| id.index), Some(2));
}

#[tokio::test]
async fn a_snapshot_drops_a_restored_base_and_a_closed_state_machine_writes_nothing_more() {
    use openraft::storage::RaftStateMachine;
    use openraft::RaftSnapshotBuilder;

    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let kv = KvStore::open(open_env(&state_dir, EnvKind::State).expect("env")).expect("kv");
    let snapshots = dir.path().join("snapshots");
    let mut sm = StateMachine::new(kv, "t".into(), snapshots.clone(), Arc::new(Quiet))
        .expect("state machine");
    let restored = snapshots.join(super::RESTORED_SNAPSHOT);
    std::fs::write(&restored, b"a restored backup's contents").expect("write");

    sm.apply(vec![put_entry(1, 1, 1, "a")])
        .await
        .expect("apply");
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    assert!(snapshots
        .join(super::state_machine::CURRENT_SNAPSHOT)
        .is_file());
    assert!(
        !restored.exists(),
        "the first snapshot covers the restored base"
    );

    // A clean stop: synced, marked, and no write after it.
    sm.closer().close(&state_dir).expect("close");
    let marker = std::fs::read_to_string(state_dir.join("boot")).expect("marker");
    assert!(marker.trim_end().ends_with(" synced"), "{marker:?}");
    assert!(sm.apply(vec![put_entry(1, 1, 2, "b")]).await.is_err());
    assert_eq!(revision(&kv), 2, "nothing applied after the close");
}

/// A state machine (server 2, default holding; these tests apply its own
/// entries, which are never held) whose applies wait for their commit as
/// `limits` allow.
fn committing(limits: super::CommitLimits) -> Holding {
    Holding::with(super::HoldLimits::default(), limits)
}

#[tokio::test]
async fn applies_wait_for_their_commit_until_someone_reads() {
    use openraft::storage::RaftStateMachine;
    use std::time::{Duration, Instant};

    // Limits far beyond the test: only readers and listeners commit.
    let Holding {
        _dir,
        kv,
        mut sm,
        listened,
    } = committing(super::CommitLimits {
        delay: Duration::from_secs(600),
        entries: 1000,
        bytes: 1 << 30,
    });
    let flusher = sm.flusher();
    let visible = sm.visible();
    let soon = || Instant::now() + Duration::from_secs(10);

    // This server's own entries are answered from the open transaction,
    // and nothing of them is committed yet.
    for index in 1..=3 {
        let answered = sm
            .apply(vec![put_entry(2, 1, index, &format!("k{index}"))])
            .await
            .expect("apply");
        assert_eq!(answered[0][0].revision, index as i64 + 1);
    }
    assert_eq!(revision(&kv), 1, "applied, not committed");
    assert_eq!(visible.index(), 0);

    // A reader's flush commits them, all in one transaction.
    flusher.flush_blocking().expect("flush");
    assert_eq!(revision(&kv), 4);
    assert_eq!(visible.index(), 3);

    // A linearizable read waiting for an index commits it.
    sm.apply(vec![put_entry(2, 1, 4, "k4")])
        .await
        .expect("apply");
    assert_eq!(revision(&kv), 4);
    assert!(visible.reach(4, soon()).await);
    assert_eq!(revision(&kv), 5);
    // ... and an index not applied yet is committed as soon as it is.
    let waiting = {
        let visible = visible.clone();
        tokio::spawn(async move {
            visible
                .reach(5, Instant::now() + Duration::from_secs(10))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    sm.apply(vec![put_entry(2, 1, 5, "k5")])
        .await
        .expect("apply");
    assert!(
        waiting.await.expect("task"),
        "the read's index was committed"
    );
    assert_eq!(revision(&kv), 6);

    // The applied state openraft reads back, and a snapshot, cover every apply.
    sm.apply(vec![put_entry(2, 1, 6, "k6")])
        .await
        .expect("apply");
    let (applied, _) = sm.applied_state().await.expect("state");
    assert_eq!(applied.map(|id| id.index), Some(6));
    assert_eq!(revision(&kv), 7);

    // While anyone listens for changes, every apply is committed at once.
    listened.store(true, std::sync::atomic::Ordering::SeqCst);
    sm.apply(vec![put_entry(2, 1, 7, "k7")])
        .await
        .expect("apply");
    assert_eq!(revision(&kv), 8);
}

#[tokio::test]
async fn uncommitted_applies_are_committed_by_their_limits() {
    use openraft::storage::RaftStateMachine;
    use std::time::Duration;

    // The entry limit: the third apply commits all three.
    let Holding {
        _dir, kv, mut sm, ..
    } = committing(super::CommitLimits {
        delay: Duration::from_secs(600),
        entries: 3,
        bytes: 1 << 30,
    });
    for index in 1..=2 {
        sm.apply(vec![put_entry(2, 1, index, "k")])
            .await
            .expect("apply");
    }
    assert_eq!(revision(&kv), 1);
    sm.apply(vec![put_entry(2, 1, 3, "k")])
        .await
        .expect("apply");
    assert_eq!(revision(&kv), 4, "the entry limit commits");

    // The delay: an apply nobody reads is committed once it is up.
    let Holding {
        _dir, kv, mut sm, ..
    } = committing(super::CommitLimits {
        delay: Duration::from_millis(50),
        entries: 1000,
        bytes: 1 << 30,
    });
    sm.apply(vec![put_entry(2, 1, 1, "k")])
        .await
        .expect("apply");
    let mut committed = false;
    for _ in 0..200 {
        if revision(&kv) == 2 {
            committed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(committed, "committed once the delay was up");

    // A stop commits what waits, then refuses further writes.
    let Holding {
        _dir: dir,
        kv,
        mut sm,
        ..
    } = committing(super::CommitLimits {
        delay: Duration::from_secs(600),
        entries: 1000,
        bytes: 1 << 30,
    });
    sm.apply(vec![put_entry(2, 1, 1, "k")])
        .await
        .expect("apply");
    assert_eq!(revision(&kv), 1);
    let state_dir = dir.path().join("state");
    let closer = sm.closer();
    tokio::task::spawn_blocking(move || closer.close(&state_dir))
        .await
        .expect("task")
        .expect("closed");
    assert_eq!(revision(&kv), 2, "the stop committed the apply");
    assert!(sm.apply(vec![put_entry(2, 1, 2, "k")]).await.is_err());
}
