//! Raft for one datacenter: openraft's type configuration, the log store
//! (segment files), the state machine over the MVCC store, snapshots, the proposer that
//! groups writes into entries, and the network adapter over the peer transport.

mod committer;
mod lmdb_import;
mod log_store;
mod log_tail;
pub(crate) mod network;
mod proposer;
mod rebuild;
pub(crate) mod snapshot;
pub(crate) mod snapshot_policy;
mod state_machine;
#[cfg(test)]
mod suite;
mod types;
mod wal;

pub use committer::{CommitLimits, Flusher};
pub use log_store::{DurableLog, Imported, LogObserver, LogStore};
pub use network::{CommitBound, PeerNetwork, PeerRequest, PeerResponse};
pub use proposer::{ProposeError, Proposer, ProposerLimits};
pub use rebuild::RebuildBase;
pub(crate) use rebuild::RESTORED_SNAPSHOT;
pub use snapshot::{install_here, install_in_child_processes, INSTALL_SUBCOMMAND};
pub use state_machine::{ApplyObserver, Closer, HoldLimits, LeaseGranted, StateMachine, Visible};
pub(crate) use state_machine::{META_APPLIED, META_MEMBERSHIP};
pub use types::*;

/// Opens the Raft log of member `me` in `data_dir/log/`. A log kept in LMDB
/// by an earlier version (`data_dir/raft/`) is carried over first, then removed.
pub fn open_log(
    data_dir: &std::path::Path,
    me: u64,
    observer: std::sync::Arc<dyn LogObserver>,
) -> Result<LogStore, String> {
    let old = data_dir.join("raft");
    let import = lmdb_import::read(&old)?;
    let dir = data_dir.join("log");
    let imported = import.as_ref().map(|i| i.entries.len());
    let log = LogStore::open(&dir, me, observer, import)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Some(entries) = imported {
        tracing::info!(entries, from = %old.display(), to = %dir.display(), "carried the Raft log over from LMDB");
        std::fs::remove_dir_all(&old).map_err(|e| format!("{}: {e}", old.display()))?;
    }
    Ok(log)
}

/// Entries for the storage tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{LogId, TypeConfig};
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    /// The id of entry `index` of `term` (leader 1).
    pub(crate) fn id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    /// A blank entry at `index` of `term`.
    pub(crate) fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: id(term, index),
            payload: EntryPayload::Blank,
        }
    }
}
