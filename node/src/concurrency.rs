//! etcd's v3lock and v3election services, built from keys, leases and
//! revisions exactly as etcd's `concurrency` package builds them: a
//! contender's key is `<name>/<lease id in hex>`, attached to its lease;
//! contenders are ordered by create_revision; the first holds the lock (or
//! leads). The key's create_revision is the fencing token: every later holder
//! has a larger one. A holder whose lease ends loses its key, and with it
//! the lock.

use crate::kv::*;
use crate::server::{Header, Node, NodeError};
use std::time::Duration;

/// Why a lock or election request failed.
#[derive(Debug, thiserror::Error)]
pub enum ConcurrencyError {
    /// The contender's key is gone (its lease expired or was revoked).
    #[error("session expired: the lease of {0} is gone")]
    SessionExpired(String),
    /// The caller does not lead the election (or no longer does).
    #[error("election: not leader")]
    NotLeader,
    /// Nobody leads the election.
    #[error("election: no leader")]
    NoLeader,
    /// The request itself failed.
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// A contender's key, as etcd lays it out.
pub fn contender_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.extend_from_slice(format!("/{lease:x}").as_bytes());
    key
}

fn prefix(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// The first-created key under `name/`, read locally.
fn first_creator(node: &Node, name: &[u8]) -> Result<Option<KeyValue>, NodeError> {
    let p = prefix(name);
    let (_, r) = node.range_local(RangeRequest {
        range_end: prefix_end(&p),
        key: p,
        sort_order: SortOrder::Ascend,
        sort_target: SortTarget::Create,
        limit: 1,
        ..Default::default()
    })?;
    Ok(r.kvs.into_iter().next())
}

/// Creates the contender's key if it does not exist (with `value`, or keeps
/// the existing one); returns its create revision.
async fn enter(
    node: &Node,
    key: &[u8],
    lease: i64,
    value: &[u8],
) -> Result<(Header, i64), NodeError> {
    let (h, r) = node
        .txn(TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal,
                target: CompareTarget::Create(0),
                key: key.to_vec(),
                range_end: Vec::new(),
            }],
            success: vec![RequestOp::Put(PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                lease,
                ..Default::default()
            })],
            failure: vec![RequestOp::Range(RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })],
        })
        .await?;
    let rev = if r.succeeded {
        h.revision
    } else {
        match r.responses.first() {
            Some(ResponseOp::Range(range)) => range.kvs.first().map_or(0, |kv| kv.create_revision),
            _ => 0,
        }
    };
    Ok((h, rev))
}

/// A contender's key that is withdrawn (deleted, if it is still the one
/// created at `rev`) unless the wait for it succeeds: a client that gives up
/// waiting, or disconnects, must not leave a key that later becomes the
/// holder with nobody holding (etcd's `Mutex.Lock` and `Campaign` do the same).
struct Withdraw {
    node: Node,
    key: Vec<u8>,
    rev: i64,
    armed: bool,
}

impl Withdraw {
    fn new(node: &Node, key: &[u8], rev: i64) -> Withdraw {
        Withdraw {
            node: node.clone(),
            key: key.to_vec(),
            rev,
            armed: true,
        }
    }

    /// The wait succeeded: the key stays.
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (node, key, rev) = (self.node.clone(), std::mem::take(&mut self.key), self.rev);
        runtime.spawn(async move {
            let withdraw = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal,
                    target: CompareTarget::Create(rev),
                    key: key.clone(),
                    range_end: Vec::new(),
                }],
                success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                    key,
                    ..Default::default()
                })],
                failure: Vec::new(),
            };
            if let Err(e) = node.txn(withdraw).await {
                tracing::warn!(error = %e, "could not withdraw an abandoned contender's key; its lease will");
            }
        });
    }
}

/// Waits until the contender with `key` (created at `rev`) is the first
/// creator under `name/`. Reads local state once it has applied `rev`, which
/// is safe: later contenders can only have larger create revisions.
async fn wait_first(
    node: &Node,
    name: &[u8],
    key: &[u8],
    rev: i64,
    waiters: &prometheus::IntGauge,
) -> Result<Header, ConcurrencyError> {
    let _waiting = crate::metrics::Held::new(waiters);
    let mut revisions = node.subscribe_revisions();
    loop {
        let (current, _) = node.revisions()?;
        if current >= rev {
            let mine = node.range_local(RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })?;
            if mine.1.kvs.first().map(|kv| kv.create_revision) != Some(rev) {
                return Err(ConcurrencyError::SessionExpired(
                    String::from_utf8_lossy(key).into_owned(),
                ));
            }
            match first_creator(node, name)? {
                Some(kv) if kv.key == key && kv.create_revision == rev => {
                    return Ok(node.header(current));
                }
                Some(kv) if kv.create_revision > rev => {
                    // Our key is gone: everyone left was created after it.
                    return Err(ConcurrencyError::SessionExpired(
                        String::from_utf8_lossy(key).into_owned(),
                    ));
                }
                None => {
                    return Err(ConcurrencyError::SessionExpired(
                        String::from_utf8_lossy(key).into_owned(),
                    ))
                }
                Some(_) => {}
            }
        }
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), revisions.changed()).await
        {
            return Err(NodeError::Stopped.into());
        }
    }
}

/// etcd's Lock: blocks until the caller holds `name`; answers its key and
/// the key's create revision (the fencing token).
pub async fn lock(
    node: &Node,
    name: &[u8],
    lease: i64,
) -> Result<(Header, Vec<u8>, i64), ConcurrencyError> {
    let key = contender_key(name, lease);
    let (_, rev) = enter(node, &key, lease, b"").await?;
    if rev == 0 {
        return Err(ConcurrencyError::SessionExpired(
            String::from_utf8_lossy(&key).into_owned(),
        ));
    }
    let withdraw = Withdraw::new(node, &key, rev);
    let h = wait_first(node, name, &key, rev, &node.metrics().lock_waiters).await?;
    withdraw.keep();
    Ok((h, key, rev))
}

/// etcd's Unlock: deletes the holder's key.
pub async fn unlock(node: &Node, key: &[u8]) -> Result<Header, ConcurrencyError> {
    let (h, _) = node
        .delete_range(DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(h)
}

/// Who leads an election, as etcd's `LeaderKey` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    /// The election's name.
    pub name: Vec<u8>,
    /// The leader's key.
    pub key: Vec<u8>,
    /// The key's create revision (the fencing token).
    pub rev: i64,
    /// The leader's lease.
    pub lease: i64,
}

/// etcd's Campaign: blocks until the caller leads `name`, announcing `value`.
pub async fn campaign(
    node: &Node,
    name: &[u8],
    lease: i64,
    value: &[u8],
) -> Result<(Header, LeaderKey), ConcurrencyError> {
    let key = contender_key(name, lease);
    let (_, rev) = enter(node, &key, lease, value).await?;
    if rev == 0 {
        return Err(ConcurrencyError::SessionExpired(
            String::from_utf8_lossy(&key).into_owned(),
        ));
    }
    let withdraw = Withdraw::new(node, &key, rev);
    let h = wait_first(node, name, &key, rev, &node.metrics().election_waiters).await?;
    withdraw.keep();
    Ok((
        h,
        LeaderKey {
            name: name.to_vec(),
            key,
            rev,
            lease,
        },
    ))
}

/// A txn that holds only while `leader` still leads.
fn while_leading(leader: &LeaderKey, then: RequestOp) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Create(leader.rev),
            key: leader.key.clone(),
            range_end: Vec::new(),
        }],
        success: vec![then],
        failure: Vec::new(),
    }
}

/// etcd's Proclaim: the leader announces a new value.
pub async fn proclaim(
    node: &Node,
    leader: &LeaderKey,
    value: &[u8],
) -> Result<Header, ConcurrencyError> {
    let (h, r) = node
        .txn(while_leading(
            leader,
            RequestOp::Put(PutRequest {
                key: leader.key.clone(),
                value: value.to_vec(),
                lease: leader.lease,
                ..Default::default()
            }),
        ))
        .await?;
    if !r.succeeded {
        return Err(ConcurrencyError::NotLeader);
    }
    Ok(h)
}

/// etcd's Resign: the leader steps down (nothing happens if it no longer leads).
pub async fn resign(node: &Node, leader: &LeaderKey) -> Result<Header, ConcurrencyError> {
    let (h, _) = node
        .txn(while_leading(
            leader,
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: leader.key.clone(),
                ..Default::default()
            }),
        ))
        .await?;
    Ok(h)
}

/// etcd's Leader: the current leader's key-value.
pub async fn leader(node: &Node, name: &[u8]) -> Result<(Header, KeyValue), ConcurrencyError> {
    node.read_barrier().await?;
    let (current, _) = node.revisions()?;
    match first_creator(node, name)? {
        Some(kv) => Ok((node.header(current), kv)),
        None => Err(ConcurrencyError::NoLeader),
    }
}

/// Waits until the election's leader differs from `seen` (another key, or a
/// new value); returns the new leader, or None while nobody leads.
pub async fn next_leader(
    node: &Node,
    name: &[u8],
    seen: Option<&KeyValue>,
) -> Result<(Header, Option<KeyValue>), NodeError> {
    let mut revisions = node.subscribe_revisions();
    loop {
        let (current, _) = node.revisions()?;
        let now = first_creator(node, name)?;
        let changed = match (&now, seen) {
            (Some(a), Some(b)) => a.key != b.key || a.mod_revision != b.mod_revision,
            (None, None) => false,
            _ => true,
        };
        if changed {
            return Ok((node.header(current), now));
        }
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), revisions.changed()).await
        {
            return Err(NodeError::Stopped);
        }
    }
}
