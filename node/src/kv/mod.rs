//! The MVCC key-value store with etcd v3 semantics: revisions, ranges at a
//! revision, puts, deletes, transactions and compaction over LMDB tables.

mod encoding;
mod error;
mod mvcc;
mod types;

pub use error::{grpc_code, KvError};
pub use mvcc::{check_txn, KvStore, KvWriter, TXN_OPS_MAX};
pub use types::*;
