//! Rebuilding `state/` from what is durable, when the machine stopped while
//! it held commits that were never synced (`store::boot`, ADR 0017).
//!
//! Everything the state machine holds is in the last snapshot plus the
//! fsynced Raft log after it: the log is purged only below a snapshot that
//! is on disk. So a state that may be torn is thrown away, the snapshot is
//! installed into a new environment (synced), and openraft applies the log
//! after it again, as after any restart.

use super::snapshot;
use super::state_machine::CURRENT_SNAPSHOT;
use super::{LogId, LogStore};
use crate::kv::KvStore;
use std::path::{Path, PathBuf};

/// A restored backup's contents as a snapshot, kept in the snapshot
/// directory until the server's first snapshot covers them: a restored
/// state is in no Raft log, so it is the base of a rebuild until then.
pub(crate) const RESTORED_SNAPSHOT: &str = "restored.snap";

/// What a state is rebuilt from: a snapshot file (or nothing, for a log
/// that still starts at its first entry), checked against the log.
#[derive(Debug)]
pub struct RebuildBase {
    file: Option<PathBuf>,
    last: Option<LogId>,
}

impl RebuildBase {
    /// Finds the base for rebuilding the state in `data_dir` and checks that
    /// `log` holds every entry after it. Touches nothing.
    pub fn find(data_dir: &Path, log: &LogStore) -> Result<RebuildBase, String> {
        let snapshots = data_dir.join("snapshots");
        let file = [CURRENT_SNAPSHOT, RESTORED_SNAPSHOT]
            .iter()
            .map(|name| snapshots.join(name))
            .find(|path| path.is_file());
        let last = match &file {
            Some(path) => {
                snapshot::verify(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?
                    .last_log_id
            }
            None => None,
        };
        let purged = log.purged();
        if purged.map(|p| p.index) > last.map(|l| l.index) {
            return Err(format!(
                "the Raft log is purged through index {} but the newest snapshot ({}) ends at {}: \
                 the state cannot be rebuilt here; remove the data directory and add the server \
                 again, or restore a backup",
                purged.map_or(0, |p| p.index),
                file.as_ref()
                    .map_or_else(|| "none".to_string(), |f| f.display().to_string()),
                last.map_or(0, |l| l.index),
            ));
        }
        Ok(RebuildBase { file, last })
    }

    /// The last log entry the base covers (None: the log from its start).
    pub fn last_log_id(&self) -> Option<LogId> {
        self.last
    }

    /// Deletes the environment files in `state_dir` (not its marker), so
    /// that the next open creates an empty environment.
    pub fn discard(&self, state_dir: &Path) -> Result<(), String> {
        for name in ["data.mdb", "lock.mdb"] {
            let path = state_dir.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        Ok(())
    }

    /// Fills the new, empty environment of `store` from the base, synced.
    pub fn install(&self, store: &KvStore) -> Result<(), String> {
        match &self.file {
            Some(path) => snapshot::install(store, path)
                .map(|_| ())
                .map_err(|e| format!("{}: {e}", path.display())),
            None => store.env().force_sync().map_err(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::suite::Quiet;
    use crate::raft::testing::{entry, id};
    use crate::store::{open_env, EnvKind};
    use openraft::storage::RaftLogStorage;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_rebuild_starts_from_a_snapshot_that_reaches_the_log_and_refuses_a_gap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path();
        let mut log = LogStore::open(&data_dir.join("log"), 1, Arc::new(Quiet), None).expect("log");
        log.append_durably((1..=10).map(|i| entry(1, i)).collect())
            .await;

        // The log from its first entry: an empty state is the base.
        let base = RebuildBase::find(data_dir, &log).expect("base");
        assert_eq!(base.last_log_id(), None);

        // Purged with no snapshot below: nothing to rebuild from.
        log.purge(id(1, 5)).await.expect("purge");
        let refused = RebuildBase::find(data_dir, &log).expect_err("a gap");
        assert!(refused.contains("purged through index 5"), "{refused}");

        // A snapshot through entry 7 (a state that applied it) is the base,
        // and installing it into a new environment gives that state back.
        let source = open_env(&data_dir.join("source"), EnvKind::State).expect("env");
        let source = KvStore::open(source).expect("store");
        let mut wtxn = source.env().write_txn().expect("txn");
        source
            .meta_put(&mut wtxn, crate::raft::META_APPLIED, &Some(id(1, 7)))
            .expect("applied");
        wtxn.commit().expect("commit");
        let snapshots = data_dir.join("snapshots");
        std::fs::create_dir_all(&snapshots).expect("dir");
        snapshot::write_snapshot(&source, &snapshots.join(CURRENT_SNAPSHOT), |last, m| {
            openraft::SnapshotMeta {
                last_log_id: last,
                last_membership: m,
                snapshot_id: "t".into(),
            }
        })
        .expect("snapshot");
        let base = RebuildBase::find(data_dir, &log).expect("base");
        assert_eq!(base.last_log_id(), Some(id(1, 7)));

        let state_dir = data_dir.join("state");
        open_env(&state_dir, EnvKind::State).expect("env");
        assert!(state_dir.join("data.mdb").exists());
        base.discard(&state_dir).expect("discard");
        assert!(!state_dir.join("data.mdb").exists());
        // (This process keeps the discarded environment mapped, so the new
        // one is opened in a directory of its own.)
        let rebuilt = open_env(&data_dir.join("rebuilt"), EnvKind::State).expect("env");
        let rebuilt = KvStore::open(rebuilt).expect("store");
        base.install(&rebuilt).expect("install");
        let rtxn = rebuilt.env().read_txn().expect("txn");
        assert_eq!(
            crate::raft::state_machine::applied_log_id(&rebuilt, &rtxn).expect("applied"),
            Some(id(1, 7))
        );
    }
}
