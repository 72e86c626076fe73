//! Errors of key-value operations, with etcd's messages and gRPC codes.

use serde::{Deserialize, Serialize};

/// A key-value request that cannot be served; each maps to etcd's error text and gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    /// The revision asked for was removed by compaction.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The revision asked for is above the current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// The request has no key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value` was set together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` was set together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// `ignore_value` or `ignore_lease` was set for a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// The lease named by a put does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with this id exists already.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// The TTL asked for is above the largest allowed.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A transaction writes one key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A transaction has more operations than allowed.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// The request, a key or a value is above the configured size.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// The database quota is exhausted (NOSPACE alarm).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A field holds a value the API does not accept.
    #[error("{0}")]
    InvalidArgument(String),
    /// A client write touches a prefix this DC mirrors from another.
    #[error("key {key:?} is under replication rule {rule:?} and is read-only here; write it in its source datacenter {source_dc}")]
    MirrorReadOnly {
        /// The key written.
        key: String,
        /// The rule mirroring it.
        rule: String,
        /// The rule's source DC.
        source_dc: String,
        /// Whether the rule sends such writes to the source.
        forward_writes: bool,
    },
    /// A replicator's batch does not fit this DC's rule or checkpoint.
    #[error("replication batch refused: {0}")]
    MirrorRefused(String),
    /// The storage engine failed.
    #[error("storage: {0}")]
    Storage(String),
}

/// gRPC status codes used by etcd's errors.
pub mod grpc_code {
    /// Invalid argument.
    pub const INVALID_ARGUMENT: i32 = 3;
    /// Deadline exceeded.
    pub const DEADLINE_EXCEEDED: i32 = 4;
    /// Not found.
    pub const NOT_FOUND: i32 = 5;
    /// Resource exhausted.
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    /// Failed precondition.
    pub const FAILED_PRECONDITION: i32 = 9;
    /// Out of range.
    pub const OUT_OF_RANGE: i32 = 11;
    /// Unimplemented.
    pub const UNIMPLEMENTED: i32 = 12;
    /// Internal.
    pub const INTERNAL: i32 = 13;
    /// Unavailable.
    pub const UNAVAILABLE: i32 = 14;
}

impl KvError {
    /// The gRPC code etcd answers with for this error.
    pub fn grpc_code(&self) -> i32 {
        use grpc_code::*;
        match self {
            KvError::Compacted | KvError::FutureRevision | KvError::LeaseTtlTooLarge => {
                OUT_OF_RANGE
            }
            KvError::LeaseExists | KvError::MirrorReadOnly { .. } | KvError::MirrorRefused(_) => {
                FAILED_PRECONDITION
            }
            KvError::LeaseNotFound => NOT_FOUND,
            KvError::NoSpace => RESOURCE_EXHAUSTED,
            KvError::Storage(_) => INTERNAL,
            _ => INVALID_ARGUMENT,
        }
    }
}

impl From<heed::Error> for KvError {
    fn from(e: heed::Error) -> Self {
        KvError::Storage(e.to_string())
    }
}
