//! The leader's lease clock. As in etcd, which leases exist and their
//! granted TTLs are replicated state; *when* each one expires lives only in
//! the leader's memory. A new leader restarts every clock at its full TTL plus
//! an election timeout, so a leader change never expires a lease early.
//! Expired leases are handed out in bounded batches for revocation through
//! Raft, so an expiry storm does not crowd out client writes.
//!
//! The extension is for leases an earlier term granted. A lease granted by an
//! entry of the leader's own term keeps the clock it started when applied,
//! even where the clocks learn of the leadership only after that entry (they
//! follow Raft's leadership from outside, a little late), and a leader whose
//! clocks stopped and restarted within one term keeps them as they were.

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
    /// While not leading: expiries started for leases granted, or clocks kept,
    /// in term `recent_term`, for the case that this server turns out to
    /// lead that term. Grants of an older term are dropped.
    recent: HashMap<i64, Instant>,
    recent_term: u64,
}

impl State {
    /// Remembers `expiry` for lease `id` of `term` in case it is led here.
    fn remember(&mut self, id: i64, expiry: Instant, term: u64) {
        if term > self.recent_term {
            self.recent.clear();
            self.recent_term = term;
        }
        if term == self.recent_term {
            self.recent.insert(id, expiry);
        }
    }
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
    /// `extend`, except those this term granted or already ran (see the
    /// module's notes). Does nothing (false) if it leads in `term` already,
    /// so that two callers racing to start the same term leave the first's
    /// clocks.
    pub fn become_leader(&self, term: u64, leases: &[(i64, i64)], extend: Duration) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        if s.term == Some(term) {
            return false;
        }
        let recent = std::mem::take(&mut s.recent);
        let own = if s.recent_term == term {
            recent
        } else {
            HashMap::new()
        };
        let clocks = leases
            .iter()
            .map(|&(id, granted)| {
                let expiry = own.get(&id).copied();
                (id, (expiry.unwrap_or(now + ttl(granted) + extend), granted))
            })
            .collect();
        s.clocks = clocks;
        s.term = Some(term);
        s.revoking.clear();
        true
    }

    /// Stops leading: the clocks are the next leader's business (kept only
    /// in case this server's leadership of the same term is seen again).
    pub fn step_down(&self) {
        let mut s = self.lock();
        if let Some(term) = s.term.take() {
            let clocks = std::mem::take(&mut s.clocks);
            for (id, (expiry, _)) in clocks {
                s.remember(id, expiry, term);
            }
        }
        s.revoking.clear();
    }

    /// Lease `id` was granted (applied) by an entry of `term`; its clock
    /// starts now if this server leads.
    pub fn granted(&self, id: i64, granted: i64, term: u64) {
        let expiry = Instant::now() + ttl(granted);
        let mut s = self.lock();
        if s.term.is_some() {
            s.clocks.insert(id, (expiry, granted));
        }
        if s.term != Some(term) {
            s.remember(id, expiry, term);
        }
    }

    /// A lease was revoked (applied).
    pub fn revoked(&self, id: i64) {
        let mut s = self.lock();
        s.clocks.remove(&id);
        s.revoking.remove(&id);
        s.recent.remove(&id);
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
        l.granted(1, 10, 2);
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
        l.granted(11, 60, 1);
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

    #[test]
    fn a_lease_granted_in_the_leaders_own_term_is_not_extended() {
        let l = Lessor::default();
        let extend = Duration::from_secs(5);
        // Applied before the clocks learned that this server leads term 4:
        // one grant of term 3 (an earlier leader's) and one of term 4.
        l.granted(1, 30, 3);
        l.granted(2, 30, 4);
        assert!(l.become_leader(4, &[(1, 30), (2, 30)], extend));
        assert_eq!(l.clock(1).unwrap().remaining, 35, "an earlier term's lease");
        assert_eq!(l.clock(2).unwrap().remaining, 30, "this term's own grant");
        // Leadership of term 4 seen to stop and start again: the clocks stay.
        assert_eq!(l.keep_alive(1), Some(30));
        l.step_down();
        l.granted(3, 30, 4);
        assert!(l.become_leader(4, &[(1, 30), (2, 30), (3, 30)], extend));
        for id in 1..=3 {
            assert_eq!(l.clock(id).unwrap().remaining, 30, "lease {id}");
        }
        // A later term extends them all, whatever an older term remembered.
        l.step_down();
        l.granted(4, 30, 5);
        l.revoked(3);
        assert!(l.become_leader(6, &[(1, 30), (2, 30), (4, 30)], extend));
        for id in [1, 2, 4] {
            assert_eq!(l.clock(id).unwrap().remaining, 35, "lease {id}");
        }
        assert_eq!(l.clock(3), None);
    }
}
