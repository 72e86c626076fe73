//! When a server builds a snapshot (ADR 0020).
//!
//! A snapshot copies the whole state, so its cost grows with the state while
//! a rule of "every N entries" makes its frequency grow with the write rate:
//! at 480,000 keys each build took about 1.5 s of a core on every server,
//! and at 1,200 entries/s every 10,000 entries is every 8 s. So a snapshot is
//! due once both hold:
//!
//! - at least `raft.snapshot_logs` entries were applied since the last one
//!   (as before), and
//! - the payload applied since the last one is at least the size of that
//!   snapshot's file: what the next build will about write again.
//!
//! Then snapshots never write more than the log did since the previous one,
//! and the log between two of them is at most about the state's size (or
//! `snapshot_logs` entries, whichever is more).

use super::types::TypeConfig;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Whether a snapshot is due: `entries` applied and `bytes` of payload since
/// the last snapshot, whose file holds `snapshot_bytes` (none yet: `None`).
pub(crate) fn due(entries: u64, bytes: u64, min_entries: u64, snapshot_bytes: Option<u64>) -> bool {
    entries >= min_entries && snapshot_bytes.is_none_or(|s| bytes >= s)
}

/// What the policy watches.
pub(crate) struct Watched {
    /// At least this many entries between snapshots (`raft.snapshot_logs`).
    pub min_entries: u64,
    /// Payload bytes this server has applied since it started.
    pub applied_bytes: Arc<AtomicU64>,
    /// The current snapshot's file.
    pub snapshot_file: PathBuf,
}

/// Asks openraft for a snapshot whenever one is due; returns when Raft stops.
/// Checks at most every `pause`, and only when Raft's metrics change.
pub(crate) async fn drive(raft: openraft::Raft<TypeConfig>, watched: Watched, pause: Duration) {
    let mut metrics = raft.metrics();
    // The applied bytes when the current snapshot was taken; a start counts
    // from zero, so the first snapshot after it may come a little late.
    let mut since = 0u64;
    let mut last_snapshot = metrics.borrow().snapshot;
    while metrics.changed().await.is_ok() {
        let (applied, snapshot) = {
            let m = metrics.borrow_and_update();
            (m.last_applied, m.snapshot)
        };
        let bytes_now = watched.applied_bytes.load(Ordering::Relaxed);
        if snapshot != last_snapshot {
            last_snapshot = snapshot;
            since = bytes_now;
        }
        let applied = applied.map_or(0, |id| id.index);
        let entries = match snapshot {
            Some(id) => applied.saturating_sub(id.index),
            None => applied,
        };
        if entries >= watched.min_entries {
            let snapshot_bytes = match std::fs::metadata(&watched.snapshot_file) {
                Ok(m) => Some(m.len()),
                Err(_) => None,
            };
            if due(
                entries,
                bytes_now.saturating_sub(since),
                watched.min_entries,
                snapshot_bytes,
            ) && raft.trigger().snapshot().await.is_err()
            {
                return;
            }
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::due;

    #[test]
    fn a_snapshot_waits_for_its_entries_and_for_as_much_log_as_it_copies() {
        // The first: entries alone.
        assert!(!due(99, 0, 100, None));
        assert!(due(100, 0, 100, None));
        // Later ones: entries, and as many bytes applied as the last copied.
        assert!(!due(100, 4_999, 100, Some(5_000)));
        assert!(due(100, 5_000, 100, Some(5_000)));
        assert!(!due(99, 1 << 30, 100, Some(5_000)));
    }
}
