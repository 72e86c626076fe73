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
//!
//! The members of a datacenter apply the same entries at about the same
//! time, so under one rule they would all build their snapshots at once,
//! and for as long as a build takes no quorum would be free of one. Each
//! member therefore stretches both thresholds by its rank among the
//! members' ids ([`stagger`]): the lowest id by nothing, the next by a
//! sixth, the third by a third (in a datacenter of three), so that while
//! one member builds, the others still make a quorum that is not busy.

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

/// `threshold` stretched for the member at `rank` (0-based) among `members`:
/// by `rank / (2 × members)` of itself, so that the last member waits about
/// half as long again as the first, at most.
pub(crate) fn stagger(threshold: u64, rank: usize, members: usize) -> u64 {
    if members == 0 {
        return threshold;
    }
    let extra = u128::from(threshold) * rank as u128 / (2 * members as u128);
    threshold.saturating_add(u64::try_from(extra).unwrap_or(u64::MAX))
}

/// This server's rank among the members' ids, and how many members there are.
fn rank_of(m: &openraft::RaftMetrics<u64, super::types::Member>) -> (usize, usize) {
    let membership = m.membership_config.membership();
    let rank = membership.nodes().filter(|(id, _)| **id < m.id).count();
    (rank, membership.nodes().count())
}

/// The size of the current snapshot's file; `None` if there is none.
fn file_size(path: &std::path::Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
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
    // Read again only when the snapshot changes: its file is written before
    // openraft reports it.
    let mut snapshot_bytes = file_size(&watched.snapshot_file);
    while metrics.changed().await.is_ok() {
        let (applied, snapshot, (rank, members)) = {
            let m = metrics.borrow_and_update();
            (m.last_applied, m.snapshot, rank_of(&m))
        };
        let min_entries = stagger(watched.min_entries, rank, members);
        let bytes_now = watched.applied_bytes.load(Ordering::Relaxed);
        if snapshot != last_snapshot {
            last_snapshot = snapshot;
            since = bytes_now;
            snapshot_bytes = file_size(&watched.snapshot_file);
        }
        let applied = applied.map_or(0, |id| id.index);
        let entries = match snapshot {
            Some(id) => applied.saturating_sub(id.index),
            None => applied,
        };
        let due_now = due(
            entries,
            bytes_now.saturating_sub(since),
            min_entries,
            snapshot_bytes.map(|b| stagger(b, rank, members)),
        );
        if due_now && raft.trigger().snapshot().await.is_err() {
            return;
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{due, stagger};

    #[test]
    fn members_wait_longer_by_their_rank_so_that_they_do_not_build_at_once() {
        // Three members: nothing, a sixth, a third more.
        assert_eq!(stagger(600, 0, 3), 600);
        assert_eq!(stagger(600, 1, 3), 700);
        assert_eq!(stagger(600, 2, 3), 800);
        // A lone server is never held back; nothing overflows.
        assert_eq!(stagger(600, 0, 1), 600);
        assert_eq!(stagger(600, 0, 0), 600);
        assert_eq!(stagger(u64::MAX, 2, 3), u64::MAX);
    }

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
