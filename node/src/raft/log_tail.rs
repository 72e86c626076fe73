//! The newest entries of the Raft log, kept in memory.
//!
//! Entries wait here for the log's writer and stay after they are durable,
//! up to a byte budget, because they are about to be read again: the leader
//! sends them to followers and every server applies them once committed.
//! Reading them here instead of from LMDB saves decoding them, and keeps
//! the log's file pages out of the server's memory map (LMDB reads through
//! mmap, so every log page read would stay resident).

use super::types::{LogId, TypeConfig};
use openraft::Entry;
use std::collections::BTreeMap;
use std::ops::Bound;

/// A contiguous run of the log's newest entries: the ones not yet durable,
/// and before them durable ones within the budget.
pub(crate) struct LogTail {
    entries: BTreeMap<u64, Kept>,
    /// Encoded bytes of all entries held.
    bytes: usize,
    /// Durable entries are dropped from the front while `bytes` exceeds this.
    budget: usize,
}

struct Kept {
    entry: Entry<TypeConfig>,
    bytes: usize,
    durable: bool,
}

impl LogTail {
    /// An empty tail keeping durable entries up to `budget` encoded bytes.
    pub(crate) fn new(budget: usize) -> LogTail {
        LogTail {
            entries: BTreeMap::new(),
            bytes: 0,
            budget,
        }
    }

    /// Adds an entry that is not durable yet (`bytes`: its encoded size),
    /// replacing one at the same index.
    pub(crate) fn insert(&mut self, entry: Entry<TypeConfig>, bytes: usize) {
        let index = entry.log_id.index;
        let kept = Kept {
            entry,
            bytes,
            durable: false,
        };
        self.bytes += bytes;
        if let Some(old) = self.entries.insert(index, kept) {
            self.bytes -= old.bytes;
        }
    }

    /// Marks these entries durable (an entry replaced meanwhile is not),
    /// then drops durable entries from the front down to the budget.
    pub(crate) fn durable(&mut self, ids: impl IntoIterator<Item = LogId>) {
        for id in ids {
            if let Some(kept) = self.entries.get_mut(&id.index) {
                if kept.entry.log_id == id {
                    kept.durable = true;
                }
            }
        }
        while self.bytes > self.budget {
            match self.entries.first_entry() {
                Some(first) if first.get().durable => {
                    self.bytes -= first.remove().bytes;
                }
                _ => break,
            }
        }
    }

    /// Copies of the entries held within `bounds`, in order.
    pub(crate) fn range(&self, bounds: (Bound<u64>, Bound<u64>)) -> Vec<Entry<TypeConfig>> {
        self.entries
            .range(bounds)
            .map(|(_, k)| k.entry.clone())
            .collect()
    }

    /// The id of the newest entry held.
    pub(crate) fn last(&self) -> Option<LogId> {
        self.entries.last_key_value().map(|(_, k)| k.entry.log_id)
    }

    /// Drops the entries from `index` on (a truncation).
    pub(crate) fn truncate(&mut self, index: u64) {
        let dropped = self.entries.split_off(&index);
        self.bytes -= dropped.values().map(|k| k.bytes).sum::<usize>();
    }

    /// Drops the entries up to and including `index` (a purge).
    pub(crate) fn purge(&mut self, index: u64) {
        let kept = match index.checked_add(1) {
            Some(next) => self.entries.split_off(&next),
            None => BTreeMap::new(),
        };
        let dropped = std::mem::replace(&mut self.entries, kept);
        self.bytes -= dropped.values().map(|k| k.bytes).sum::<usize>();
    }

    /// Encoded bytes held (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::testing::{entry, id};

    fn indexes(tail: &LogTail) -> Vec<u64> {
        tail.range((Bound::Unbounded, Bound::Unbounded))
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    #[test]
    fn keeps_what_is_not_durable_and_durable_entries_within_the_budget() {
        let mut tail = LogTail::new(300);
        for i in 1..=5 {
            tail.insert(entry(1, i), 100);
        }
        // Nothing is durable: everything stays, over budget or not.
        tail.durable([]);
        assert_eq!(indexes(&tail), vec![1, 2, 3, 4, 5]);
        // 1-3 durable: the oldest go until the budget holds.
        tail.durable([id(1, 1), id(1, 2), id(1, 3)]);
        assert_eq!(indexes(&tail), vec![3, 4, 5]);
        assert_eq!(tail.bytes(), 300);
        // A durable entry is dropped only from the front.
        tail.insert(entry(1, 6), 100);
        tail.durable([id(1, 5)]);
        assert_eq!(indexes(&tail), vec![4, 5, 6]);
        assert_eq!(tail.last(), Some(id(1, 6)));
    }

    #[test]
    fn a_replaced_entry_is_not_marked_durable_by_its_predecessor() {
        let mut tail = LogTail::new(0);
        tail.insert(entry(1, 1), 10);
        tail.insert(entry(1, 2), 10);
        tail.truncate(2);
        tail.insert(entry(2, 2), 10);
        assert_eq!(tail.bytes(), 20);
        tail.durable([id(1, 1), id(1, 2)]);
        assert_eq!(indexes(&tail), vec![2]);
        assert_eq!(tail.last(), Some(id(2, 2)));
        tail.durable([id(2, 2)]);
        assert_eq!(indexes(&tail), Vec::<u64>::new());
        assert_eq!(tail.bytes(), 0);
    }

    #[test]
    fn purge_and_truncate_drop_their_ends() {
        let mut tail = LogTail::new(1000);
        for i in 1..=6 {
            tail.insert(entry(1, i), 10);
        }
        tail.purge(2);
        tail.truncate(5);
        assert_eq!(indexes(&tail), vec![3, 4]);
        assert_eq!(tail.bytes(), 20);
        tail.purge(u64::MAX);
        assert_eq!(tail.bytes(), 0);
        let r = tail.range((Bound::Included(3), Bound::Excluded(4)));
        assert!(r.is_empty());
    }
}
