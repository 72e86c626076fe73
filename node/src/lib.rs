//! One Meridian server of a datacenter: LMDB storage, Raft (openraft), the
//! MVCC key-value store with etcd v3 semantics, and the client HTTP API.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod config;
pub mod kv;
pub mod metrics;
mod server;
pub mod raft;
#[allow(unsafe_code)]
pub mod store;

pub use config::NodeConfig;
pub use server::{Header, MemberInfo, Node, NodeError, Status};
