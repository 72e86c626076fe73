//! A linearizability checker for histories of single-key register operations
//! (read, write, compare-and-swap), in the Wing–Gong style with Lowe's
//! memoisation of (linearized set, state) pairs, as Porcupine does.
//!
//! Linearizability is compositional, so a history is checked one key at a
//! time. An operation whose outcome is unknown (the client saw a timeout or
//! a dropped connection) has no return time: it may take effect at any point
//! after its call, or never.

use std::collections::{BTreeMap, HashSet};

/// What a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Read the key's value.
    Read,
    /// Set the key to a value.
    Write(u64),
    /// Set the key to `new` if it holds `expect`.
    Cas {
        /// The value compared against.
        expect: u64,
        /// The value written when the compare holds.
        new: u64,
    },
}

/// What the client saw, if it saw anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Return {
    /// A read answered with this value (`None`: the key was absent).
    Read(Option<u64>),
    /// A write was acknowledged.
    Written,
    /// A compare-and-swap answered whether its compare held.
    Cas(bool),
    /// No answer (timeout, connection lost): the effect may or may not have happened.
    Unknown,
}

/// One operation of a recorded history.
#[derive(Clone, Copy, Debug)]
pub struct Op {
    /// The key operated on.
    pub key: u32,
    /// When the client sent it (any monotonic unit).
    pub call_at: u64,
    /// When the client saw the answer; ignored for [`Return::Unknown`].
    pub return_at: u64,
    /// The request.
    pub call: Call,
    /// The answer.
    pub ret: Return,
}

/// Why a history was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No linearization exists for the operations on this key.
    NotLinearizable {
        /// The key whose history has no linearization.
        key: u32,
    },
    /// The search for this key exceeded its step budget; nothing is concluded.
    TooComplex {
        /// The key whose search was abandoned.
        key: u32,
    },
}

/// Steps the search may take per key before giving up.
pub const STEPS_MAX: usize = 5_000_000;

/// Checks a history; `Ok(())` if every key's operations are linearizable
/// starting from an absent value.
pub fn check(history: &[Op]) -> Result<(), Verdict> {
    let mut by_key: BTreeMap<u32, Vec<Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key).or_default().push(*op);
    }
    for (key, ops) in by_key {
        match check_key(&ops, STEPS_MAX) {
            Some(true) => {}
            Some(false) => return Err(Verdict::NotLinearizable { key }),
            None => return Err(Verdict::TooComplex { key }),
        }
    }
    Ok(())
}

/// The register's state after applying `op` to `state`, if `op`'s answer is
/// possible there.
fn step(state: Option<u64>, op: &Op) -> Option<Option<u64>> {
    match (op.call, op.ret) {
        (Call::Read, Return::Read(seen)) => (seen == state).then_some(state),
        (Call::Read, Return::Unknown) => Some(state),
        (Call::Write(v), Return::Written | Return::Unknown) => Some(Some(v)),
        (Call::Cas { expect, new }, ret) => {
            let holds = state == Some(expect);
            match ret {
                Return::Cas(answer) if answer != holds => None,
                Return::Cas(_) | Return::Unknown => Some(if holds { Some(new) } else { state }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Searches one key's history. `Some(answer)`, or `None` past `budget` steps.
fn check_key(ops: &[Op], budget: usize) -> Option<bool> {
    const NEVER: u64 = u64::MAX;
    let n = ops.len();
    let ret_at: Vec<u64> = ops
        .iter()
        .map(|o| {
            if o.ret == Return::Unknown {
                NEVER
            } else {
                o.return_at
            }
        })
        .collect();
    // Operations in call order, so candidates are a prefix scan.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| ops[i].call_at);
    let must = ret_at.iter().filter(|&&r| r != NEVER).count();

    let words = n.div_ceil(64).max(1);
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    // Depth-first search over (linearized set, state, number of determinate ops done).
    let mut stack: Vec<(Vec<u64>, Option<u64>, usize)> = vec![(vec![0; words], None, 0)];
    let mut steps = 0usize;
    while let Some((done, state, finished)) = stack.pop() {
        if finished == must {
            return Some(true);
        }
        steps += 1;
        if steps > budget {
            return None;
        }
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        // An op may go next only if no pending op returned before it was called.
        let horizon = (0..n)
            .filter(|&i| !is_done(i))
            .map(|i| ret_at[i])
            .min()
            .unwrap_or(NEVER);
        for &i in &order {
            if ops[i].call_at > horizon {
                break;
            }
            if is_done(i) {
                continue;
            }
            if let Some(next) = step(state, &ops[i]) {
                let mut d = done.clone();
                d[i / 64] |= 1 << (i % 64);
                if seen.insert((d.clone(), next)) {
                    let f = finished + usize::from(ret_at[i] != NEVER);
                    stack.push((d, next, f));
                }
            }
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call_at: u64, return_at: u64, call: Call, ret: Return) -> Op {
        Op {
            key: 0,
            call_at,
            return_at,
            call,
            ret,
        }
    }

    #[test]
    fn a_sequential_history_is_linearizable() {
        let h = [
            op(0, 1, Call::Read, Return::Read(None)),
            op(2, 3, Call::Write(1), Return::Written),
            op(4, 5, Call::Read, Return::Read(Some(1))),
            op(6, 7, Call::Cas { expect: 1, new: 2 }, Return::Cas(true)),
            op(8, 9, Call::Cas { expect: 1, new: 3 }, Return::Cas(false)),
            op(10, 11, Call::Read, Return::Read(Some(2))),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_not() {
        let h = [
            op(0, 1, Call::Write(1), Return::Written),
            op(2, 3, Call::Write(2), Return::Written),
            op(4, 5, Call::Read, Return::Read(Some(1))),
        ];
        assert_eq!(check(&h), Err(Verdict::NotLinearizable { key: 0 }));
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        for seen in [Some(1), Some(2)] {
            let h = [
                op(0, 1, Call::Write(1), Return::Written),
                op(2, 6, Call::Write(2), Return::Written),
                op(3, 4, Call::Read, Return::Read(seen)),
            ];
            assert_eq!(check(&h), Ok(()), "{seen:?}");
        }
    }

    #[test]
    fn two_successful_cas_from_the_same_value_are_not() {
        let h = [
            op(0, 1, Call::Write(1), Return::Written),
            op(2, 5, Call::Cas { expect: 1, new: 2 }, Return::Cas(true)),
            op(3, 6, Call::Cas { expect: 1, new: 3 }, Return::Cas(true)),
        ];
        assert_eq!(check(&h), Err(Verdict::NotLinearizable { key: 0 }));
        // One of them failing is fine, in either order.
        let h = [
            op(0, 1, Call::Write(1), Return::Written),
            op(2, 5, Call::Cas { expect: 1, new: 2 }, Return::Cas(true)),
            op(3, 6, Call::Cas { expect: 1, new: 3 }, Return::Cas(false)),
            op(7, 8, Call::Read, Return::Read(Some(2))),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        let unknown = op(0, 0, Call::Write(7), Return::Unknown);
        // Never seen.
        let h = [unknown, op(5, 6, Call::Read, Return::Read(None))];
        assert_eq!(check(&h), Ok(()));
        // Seen long after the client gave up on it.
        let h = [
            unknown,
            op(5, 6, Call::Read, Return::Read(None)),
            op(9, 10, Call::Read, Return::Read(Some(7))),
        ];
        assert_eq!(check(&h), Ok(()));
        // But once seen, it cannot be unseen without another write.
        let h = [
            unknown,
            op(5, 6, Call::Read, Return::Read(Some(7))),
            op(9, 10, Call::Read, Return::Read(None)),
        ];
        assert_eq!(check(&h), Err(Verdict::NotLinearizable { key: 0 }));
    }

    #[test]
    fn a_lost_acknowledged_write_or_an_invented_value_is_caught() {
        let h = [
            op(0, 1, Call::Write(1), Return::Written),
            op(2, 3, Call::Read, Return::Read(None)),
        ];
        assert_eq!(check(&h), Err(Verdict::NotLinearizable { key: 0 }));
        let h = [
            op(0, 1, Call::Write(1), Return::Written),
            op(2, 3, Call::Read, Return::Read(Some(9))),
        ];
        assert_eq!(check(&h), Err(Verdict::NotLinearizable { key: 0 }));
    }

    #[test]
    fn a_failed_cas_must_have_seen_another_value() {
        let h = [
            op(0, 1, Call::Write(1), Return::Written),
            op(2, 3, Call::Cas { expect: 1, new: 2 }, Return::Cas(false)),
        ];
        assert_eq!(check(&h), Err(Verdict::NotLinearizable { key: 0 }));
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut a = op(0, 1, Call::Write(1), Return::Written);
        let mut b = op(2, 3, Call::Read, Return::Read(None));
        a.key = 1;
        b.key = 2;
        assert_eq!(check(&[a, b]), Ok(()));
        b.key = 1;
        assert_eq!(check(&[a, b]), Err(Verdict::NotLinearizable { key: 1 }));
    }

    #[test]
    fn many_concurrent_clients_are_checked_within_budget() {
        // Eight clients, 400 operations, each write seen by the next read.
        let mut h = Vec::new();
        let mut t = 0;
        for i in 0..50u64 {
            for c in 0..4u64 {
                h.push(op(
                    t + c,
                    t + 10 + c,
                    Call::Write(i * 4 + c + 1),
                    Return::Written,
                ));
            }
            // Concurrent reads may see any of the four.
            for c in 0..4u64 {
                h.push(op(
                    t + c,
                    t + 10 + c,
                    Call::Read,
                    Return::Read(Some(i * 4 + 1)),
                ));
            }
            t += 20;
        }
        assert_eq!(check(&h), Ok(()));
    }
}
