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
