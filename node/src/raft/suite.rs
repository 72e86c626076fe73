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
        let log = LogStore::open(&dir.path().join("log"), Arc::new(Quiet), None)
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
