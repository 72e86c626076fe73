//! Requests and responses of the key-value API, as etcd v3 defines them.
//! These are the typed forms stored in the Raft log and returned by the
//! node; the JSON shapes of the HTTP API convert to and from them.

use serde::{Deserialize, Serialize};

/// A key with its metadata at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// Revision of the last creation of the key.
    pub create_revision: i64,
    /// Revision of the last modification.
    pub mod_revision: i64,
    /// Number of modifications since creation (1 after the first put).
    pub version: i64,
    /// The value (empty when `keys_only`).
    pub value: Vec<u8>,
    /// The lease attached to the key, 0 for none.
    pub lease: i64,
}

/// What happened to a key at a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A put.
    Put,
    /// A delete.
    Delete,
}

/// One change, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change (for a delete: key and mod_revision only).
    pub kv: KeyValue,
    /// The key before the change, if it existed and history still holds it.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// Bytes of keys and values it carries: what response-size budgets count.
    pub fn payload_bytes(&self) -> usize {
        self.kv.key.len() + self.kv.value.len() + self.prev_kv.as_ref().map_or(0, |p| p.value.len())
    }
}

/// Sort order of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SortOrder {
    /// Keys in ascending key order, unsorted otherwise.
    #[default]
    None,
    /// Ascending by the sort target.
    Ascend,
    /// Descending by the sort target.
    Descend,
}

/// Field a range is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// Reads keys in `[key, range_end)` at a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RangeRequest {
    /// First key.
    pub key: Vec<u8>,
    /// End of the range (exclusive); empty for the single key; `[0]` for all keys from `key`.
    pub range_end: Vec<u8>,
    /// Most keys returned, 0 for no limit.
    pub limit: i64,
    /// Revision to read at, 0 or below for the current one.
    pub revision: i64,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort target.
    pub sort_target: SortTarget,
    /// Read local state without a linearizability check.
    pub serializable: bool,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Lower bound on mod revision (0 for none).
    pub min_mod_revision: i64,
    /// Upper bound on mod revision (0 for none).
    pub max_mod_revision: i64,
    /// Lower bound on create revision (0 for none).
    pub min_create_revision: i64,
    /// Upper bound on create revision (0 for none).
    pub max_create_revision: i64,
}

/// The answer to a range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RangeResponse {
    /// The keys found.
    pub kvs: Vec<KeyValue>,
    /// Whether more keys than `limit` matched.
    pub more: bool,
    /// How many keys are in the range.
    pub count: i64,
}

/// Sets a key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PutRequest {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Lease to attach, 0 for none.
    pub lease: i64,
    /// Return the previous key-value.
    pub prev_kv: bool,
    /// Keep the current value.
    pub ignore_value: bool,
    /// Keep the current lease.
    pub ignore_lease: bool,
}

/// The answer to a put.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PutResponse {
    /// The previous key-value, when asked for and present.
    pub prev_kv: Option<KeyValue>,
}

/// Deletes keys in `[key, range_end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeleteRangeRequest {
    /// First key.
    pub key: Vec<u8>,
    /// End of the range, as in [`RangeRequest::range_end`].
    pub range_end: Vec<u8>,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

/// The answer to a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeleteRangeResponse {
    /// Number of keys deleted.
    pub deleted: i64,
    /// The deleted key-values, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// How a compare relates the stored field to the given one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// Equal.
    Equal,
    /// Stored is greater.
    Greater,
    /// Stored is less.
    Less,
    /// Not equal.
    NotEqual,
}

/// The field compared and the value it is compared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The version.
    Version(i64),
    /// The create revision.
    Create(i64),
    /// The mod revision.
    Mod(i64),
    /// The value.
    Value(Vec<u8>),
    /// The lease.
    Lease(i64),
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The relation.
    pub result: CompareResult,
    /// Field and operand.
    pub target: CompareTarget,
    /// The key.
    pub key: Vec<u8>,
    /// Range end for comparing every key of a range.
    pub range_end: Vec<u8>,
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    /// A range.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// The answer to one transaction operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    /// A range's answer.
    Range(RangeResponse),
    /// A put's answer.
    Put(PutResponse),
    /// A delete's answer.
    DeleteRange(DeleteRangeResponse),
    /// A nested transaction's answer.
    Txn(TxnResponse),
}

/// Compares, then runs `success` if all hold and `failure` otherwise, atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TxnRequest {
    /// The conditions.
    pub compare: Vec<Compare>,
    /// Operations when every condition holds.
    pub success: Vec<RequestOp>,
    /// Operations otherwise.
    pub failure: Vec<RequestOp>,
}

/// The answer to a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TxnResponse {
    /// Whether the compares held.
    pub succeeded: bool,
    /// One answer per operation of the branch taken.
    pub responses: Vec<ResponseOp>,
}

impl TxnRequest {
    /// Whether any branch, at any depth, writes.
    pub fn has_writes(&self) -> bool {
        fn writes(ops: &[RequestOp]) -> bool {
            ops.iter().any(|op| match op {
                RequestOp::Range(_) => false,
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => true,
                RequestOp::Txn(t) => t.has_writes(),
            })
        }
        writes(&self.success) || writes(&self.failure)
    }

    /// Whether any branch, at any depth, puts a key.
    pub fn has_puts(&self) -> bool {
        fn puts(ops: &[RequestOp]) -> bool {
            ops.iter().any(|op| match op {
                RequestOp::Put(_) => true,
                RequestOp::Txn(t) => t.has_puts(),
                _ => false,
            })
        }
        puts(&self.success) || puts(&self.failure)
    }
}

/// Removes history below a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CompactionRequest {
    /// Revisions below this one are removed.
    pub revision: i64,
    /// Whether the answer waits for the removal (always true here: removal is part of applying).
    pub physical: bool,
}

/// A write that goes through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Put one key.
    Put(PutRequest),
    /// Delete a range.
    DeleteRange(DeleteRangeRequest),
    /// A transaction.
    Txn(TxnRequest),
    /// Compaction.
    Compact(CompactionRequest),
    /// Create a lease with a concrete id (chosen before proposing).
    LeaseGrant {
        /// The lease id.
        id: i64,
        /// Granted time-to-live, seconds.
        ttl: i64,
    },
    /// Remove a lease and delete its keys (revoke or expiry).
    LeaseRevoke {
        /// The lease id.
        id: i64,
    },
    /// Store a replication rule (if it supersedes the stored version).
    SetRule(super::mirror::MirrorRule),
    /// Apply a replicator's batch and move its checkpoint.
    Mirror(super::mirror::MirrorBatch),
    /// Raise the datacenter's cluster level (never lowers it). Proposed only
    /// once every member advertises the level (see `version`).
    SetClusterLevel {
        /// The new level.
        level: u32,
    },
}

impl Command {
    /// Roughly how many bytes the command takes in a log entry: its keys,
    /// values and range ends, plus a little per operation.
    pub fn payload_bytes(&self) -> usize {
        const OP: usize = 16;
        fn txn(t: &TxnRequest) -> usize {
            let compares: usize = t
                .compare
                .iter()
                .map(|c| OP + c.key.len() + c.range_end.len() + compare_operand(c))
                .sum();
            let ops: usize = t
                .success
                .iter()
                .chain(t.failure.iter())
                .map(|op| match op {
                    RequestOp::Range(r) => OP + r.key.len() + r.range_end.len(),
                    RequestOp::Put(p) => OP + p.key.len() + p.value.len(),
                    RequestOp::DeleteRange(d) => OP + d.key.len() + d.range_end.len(),
                    RequestOp::Txn(inner) => OP + txn(inner),
                })
                .sum();
            compares + ops
        }
        fn compare_operand(c: &Compare) -> usize {
            match &c.target {
                CompareTarget::Value(v) => v.len(),
                _ => 8,
            }
        }
        OP + match self {
            Command::Put(p) => p.key.len() + p.value.len(),
            Command::DeleteRange(d) => d.key.len() + d.range_end.len(),
            Command::Txn(t) => txn(t),
            Command::Compact(_) | Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => 16,
            Command::SetRule(r) => 64 + r.prefix.len(),
            Command::Mirror(b) => b.payload_bytes(),
            Command::SetClusterLevel { .. } => 8,
        }
    }
}

/// The outcome of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A log entry with no command (blank or membership).
    Nothing,
    /// A put's answer.
    Put(PutResponse),
    /// A delete's answer.
    DeleteRange(DeleteRangeResponse),
    /// A transaction's answer.
    Txn(TxnResponse),
    /// Compaction done.
    Compacted,
    /// A lease was created.
    LeaseGranted {
        /// Its id.
        id: i64,
        /// Its TTL.
        ttl: i64,
    },
    /// A lease was removed with its keys.
    LeaseRevoked,
    /// A replication rule was offered; whether it replaced the stored one.
    RuleSet {
        /// Whether the stored rule changed.
        changed: bool,
    },
    /// A replication batch was applied.
    Mirrored,
    /// The cluster level after a `SetClusterLevel`.
    ClusterLevelSet {
        /// The level now recorded.
        level: u32,
    },
}

/// What applying one log entry produced: the store's revision after it and the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The revision of the store after the entry.
    pub revision: i64,
    /// The answer, or the error the command met.
    pub outcome: Result<Outcome, super::KvError>,
}
