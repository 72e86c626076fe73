//! The MVCC key-value store with etcd v3 semantics: revisions, ranges at a
//! revision, puts, deletes, transactions and compaction over LMDB tables.

mod encoding;
mod error;
pub mod mirror;
mod mvcc;
mod types;

pub use error::{grpc_code, KvError};
pub use mvcc::{check_txn, KvStore, KvWriter, TABLES, TXN_OPS_MAX};
pub use types::*;

/// The range end covering every key that starts with `prefix` (etcd's prefix rule).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
