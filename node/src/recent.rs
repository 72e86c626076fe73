//! The recent changes every synced watcher shares: one task reads each new
//! revision's events from storage once and keeps the latest few megabytes of
//! them in memory; watchers that are current take their events from here.
//! A watcher further behind than this window reads storage itself (catching
//! up), as etcd's unsynced watchers do. While nobody is subscribed to the
//! feed, the window is not filled: it starts over at each new revision.

use crate::kv::Event;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// A window of whole revisions of events.
pub struct Recent {
    inner: Mutex<Window>,
    bytes_max: usize,
}

struct Window {
    /// First revision the window covers completely.
    first: i64,
    /// Last revision covered (`first - 1` when empty).
    last: i64,
    events: VecDeque<Arc<Event>>,
    bytes: usize,
}

/// Memory an event takes in the window: its payload plus bookkeeping.
fn size(e: &Event) -> usize {
    64 + e.payload_bytes()
}

impl Recent {
    /// An empty window starting after revision `after`, holding at most `bytes_max`.
    pub fn new(after: i64, bytes_max: usize) -> Recent {
        Recent {
            inner: Mutex::new(Window {
                first: after + 1,
                last: after,
                events: VecDeque::new(),
                bytes: 0,
            }),
            bytes_max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // Every update leaves the window consistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last revision covered.
    pub fn last(&self) -> i64 {
        self.lock().last
    }

    /// Appends the events of revisions up to `last` (whole revisions, in
    /// order), dropping the oldest revisions beyond the byte budget.
    pub fn push(&self, events: Vec<Event>, last: i64) {
        let mut w = self.lock();
        for e in events {
            w.bytes += size(&e);
            w.events.push_back(Arc::new(e));
        }
        w.last = last.max(w.last);
        while w.bytes > self.bytes_max {
            let Some(oldest) = w.events.front().map(|e| e.kv.mod_revision) else {
                break;
            };
            while w
                .events
                .front()
                .is_some_and(|e| e.kv.mod_revision == oldest)
            {
                if let Some(e) = w.events.pop_front() {
                    w.bytes -= size(&e);
                }
            }
            w.first = oldest + 1;
        }
    }

    /// Starts over after revision `after` (history was replaced or compacted away).
    pub fn reset(&self, after: i64) {
        let mut w = self.lock();
        w.events.clear();
        w.bytes = 0;
        w.first = after + 1;
        w.last = after;
    }

    /// The events from revision `from` on, whole revisions, about `max`
    /// events or `max_bytes`; with the last revision they cover. None if
    /// `from` is before the window (the caller reads storage).
    pub fn from(&self, from: i64, max: usize, max_bytes: usize) -> Option<(Vec<Arc<Event>>, i64)> {
        let w = self.lock();
        if from < w.first {
            return None;
        }
        if from > w.last {
            return Some((Vec::new(), from - 1));
        }
        let start = w.events.partition_point(|e| e.kv.mod_revision < from);
        let mut out: Vec<Arc<Event>> = Vec::new();
        let mut last = from - 1;
        let mut bytes = 0;
        for e in w.events.range(start..) {
            let rev = e.kv.mod_revision;
            if rev != last && (out.len() >= max || bytes >= max_bytes) {
                return Some((out, last));
            }
            last = rev;
            bytes += e.payload_bytes();
            out.push(e.clone());
        }
        Some((out, w.last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{EventKind, KeyValue};

    fn ev(rev: i64, bytes: usize) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: b"k".to_vec(),
                mod_revision: rev,
                value: vec![0; bytes],
                ..Default::default()
            },
            prev_kv: None,
        }
    }

    #[test]
    fn the_window_serves_whole_revisions_and_forgets_the_oldest() {
        let r = Recent::new(1, 10_000);
        assert_eq!(r.from(2, 10, usize::MAX).unwrap().0.len(), 0);
        r.push(vec![ev(2, 100), ev(3, 100), ev(3, 100), ev(4, 100)], 4);
        let (got, last) = r.from(3, 10, usize::MAX).unwrap();
        assert_eq!((got.len(), last), (3, 4));
        // A limit never splits revision 3.
        let (got, last) = r.from(2, 2, usize::MAX).unwrap();
        assert_eq!((got.len(), last), (3, 3));
        assert!(
            r.from(1, 10, usize::MAX).is_none(),
            "before the window: read storage"
        );
        let (got, last) = r.from(2, 10, 1).unwrap();
        assert_eq!(
            (got.len(), last),
            (1, 2),
            "a byte budget ends after a whole revision"
        );
        // Past the budget, whole oldest revisions go (2 and 3 here).
        r.push(vec![ev(5, 9_500)], 5);
        assert!(r.from(3, 10, usize::MAX).is_none());
        assert_eq!(r.from(4, 10, usize::MAX).unwrap().0.len(), 2);
        r.reset(9);
        assert!(r.from(5, 10, usize::MAX).is_none());
        assert_eq!(r.from(10, 10, usize::MAX).unwrap(), (Vec::new(), 9));
    }
}
