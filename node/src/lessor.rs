//! The leader's lease clock. As in etcd, which leases exist and their
//! granted TTLs are replicated state; *when* each one expires lives only in
//! the leader's memory. A new leader restarts every clock at its full TTL plus
//! an election timeout, so a leader change never expires a lease early.
//! Expired leases are handed out in bounded batches for revocation through
//! Raft, so an expiry storm does not crowd out client writes.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The largest TTL a lease may have (etcd's `MaxLeaseTTL`), in seconds.
pub const TTL_MAX: i64 = 9_000_000_000;

#[derive(Default)]
struct State {
    /// The term this server leads in, if it leads.
    term: Option<u64>,
    /// Lease id → (expiry, granted TTL in seconds).
    clocks: HashMap<i64, (Instant, i64)>,
    /// Leases handed out for revocation and not yet gone.
    revoking: HashSet<i64>,
}

/// A lease's clock as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Seconds left (rounded up), 0 once expired.
    pub remaining: i64,
    /// The granted TTL.
    pub granted: i64,
}

/// The lease clocks of the server while it leads.
#[derive(Default)]
pub struct Lessor {
    state: Mutex<State>,
}

fn ttl(secs: i64) -> Duration {
    Duration::from_secs(secs.max(0) as u64)
}

impl Lessor {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every update is a single insert or remove), so recover the guard.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The term this server leads in, if it does.
    pub fn leading(&self) -> Option<u64> {
        self.lock().term
    }

    /// Starts leading in `term`: every lease's clock restarts at its TTL plus
    /// `extend`. Does nothing (false) if it leads in `term` already, so that
    /// two callers racing to start the same term leave the first's clocks.
    pub fn become_leader(&self, term: u64, leases: &[(i64, i64)], extend: Duration) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        if s.term == Some(term) {
            return false;
        }
        s.term = Some(term);
        s.revoking.clear();
        s.clocks = leases
            .iter()
            .map(|&(id, granted)| (id, (now + ttl(granted) + extend, granted)))
            .collect();
        true
    }

    /// Stops leading: the clocks are the next leader's business.
    pub fn step_down(&self) {
        let mut s = self.lock();
        s.term = None;
        s.clocks.clear();
        s.revoking.clear();
    }

    /// A lease was granted (applied); its clock starts now if this server leads.
    pub fn granted(&self, id: i64, granted: i64) {
        let mut s = self.lock();
        if s.term.is_some() {
            s.clocks
                .insert(id, (Instant::now() + ttl(granted), granted));
        }
    }

    /// A lease was revoked (applied).
    pub fn revoked(&self, id: i64) {
        let mut s = self.lock();
        s.clocks.remove(&id);
        s.revoking.remove(&id);
    }

    /// Restarts a lease's clock; its TTL, or None if this leader does not know it.
    pub fn keep_alive(&self, id: i64) -> Option<i64> {
        let mut s = self.lock();
        if s.revoking.contains(&id) {
            return None;
        }
        let (expiry, granted) = s.clocks.get_mut(&id)?;
        *expiry = Instant::now() + ttl(*granted);
        Some(*granted)
    }

    /// Starts the clock of a lease known to storage but not yet to the clocks
    /// (granted by an entry this leader is still applying).
    pub fn adopt(&self, id: i64, granted: i64) {
        let mut s = self.lock();
        if s.term.is_some() {
            s.clocks
                .entry(id)
                .or_insert((Instant::now() + ttl(granted), granted));
        }
    }

    /// A lease's clock, if this leader knows it.
    pub fn clock(&self, id: i64) -> Option<Clock> {
        let s = self.lock();
        let (expiry, granted) = s.clocks.get(&id)?;
        let left = expiry.saturating_duration_since(Instant::now());
        Some(Clock {
            remaining: left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0),
            granted: *granted,
        })
    }

    /// Up to `max` expired leases not yet handed out; they are marked as
    /// being revoked until [`Lessor::revoked`] or [`Lessor::retry`].
    pub fn expired(&self, max: usize) -> Vec<i64> {
        let now = Instant::now();
        let mut s = self.lock();
        let due: Vec<i64> = s
            .clocks
            .iter()
            .filter(|(id, (expiry, _))| *expiry <= now && !s.revoking.contains(id))
            .map(|(id, _)| *id)
            .take(max)
            .collect();
        s.revoking.extend(due.iter().copied());
        due
    }

    /// A revocation did not go through; hand the lease out again later.
    pub fn retry(&self, id: i64) {
        self.lock().revoking.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_leader_keeps_clocks_and_a_new_leader_extends_them() {
        let l = Lessor::default();
        l.granted(1, 10);
        assert_eq!(l.clock(1), None, "a follower keeps no clocks");
        l.become_leader(3, &[(1, 10), (2, 0)], Duration::from_secs(2));
        let c = l.clock(1).unwrap();
        assert_eq!((c.remaining, c.granted), (12, 10));
        assert_eq!(l.keep_alive(1), Some(10));
        assert_eq!(l.clock(1).unwrap().remaining, 10);
        // Starting the same term again (a racing caller) changes nothing.
        assert!(!l.become_leader(3, &[(1, 10)], Duration::from_secs(2)));
        assert_eq!(l.clock(1).unwrap().remaining, 10);
        assert!(l.clock(2).is_some());
        assert_eq!(l.keep_alive(9), None);
        l.step_down();
        assert_eq!(l.clock(1), None);
        assert_eq!(l.leading(), None);
    }

    #[test]
    fn expired_leases_are_handed_out_once_in_bounded_batches() {
        let l = Lessor::default();
        let leases: Vec<(i64, i64)> = (1..=10).map(|id| (id, 0)).collect();
        l.become_leader(1, &leases, Duration::ZERO);
        l.granted(11, 60);
        let first = l.expired(4);
        assert_eq!(first.len(), 4);
        let second = l.expired(100);
        assert_eq!(second.len(), 6, "the rest, not the ones already out");
        assert!(!second.iter().any(|id| first.contains(id)));
        assert!(l.expired(100).is_empty());
        assert_eq!(l.keep_alive(first[0]), None, "being revoked");
        l.retry(first[0]);
        assert_eq!(l.expired(100), vec![first[0]]);
        l.revoked(first[0]);
        assert_eq!(l.clock(first[0]), None);
        assert!(l.clock(11).is_some(), "unexpired leases stay");
    }
}
