//! One Meridian server of a datacenter: LMDB storage, Raft (openraft), the
//! MVCC key-value store with etcd v3 semantics, and the client HTTP API.
#![deny(unsafe_code)]
#![warn(missing_docs)]
// openraft's StorageError and axum's Response are large by design; both are the
// types their traits and handlers require, and errors are off the hot path.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod backup;
pub mod compactor;
pub mod concurrency;
pub mod config;
pub mod drain;
pub mod kv;
pub mod lessor;
pub mod membership;
pub mod metrics;
pub mod raft;
mod reads;
mod recent;
mod server;
#[allow(unsafe_code)]
pub mod store;
pub mod version;

pub use config::NodeConfig;
pub use server::{Header, MemberInfo, Node, NodeError, Status};
