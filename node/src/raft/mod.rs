//! Raft for one datacenter: openraft's type configuration, the LMDB log
//! store, the state machine over the MVCC store, snapshots, the proposer that
//! groups writes into entries, and the network adapter over the peer transport.

mod log_store;
mod log_tail;
pub(crate) mod network;
mod proposer;
pub(crate) mod snapshot;
mod state_machine;
#[cfg(test)]
mod suite;
mod types;

pub use log_store::{LogObserver, LogStore};
pub use network::{PeerNetwork, PeerRequest, PeerResponse};
pub use proposer::{ProposeError, Proposer, ProposerLimits};
pub use state_machine::{ApplyObserver, StateMachine};
pub(crate) use state_machine::{META_APPLIED, META_MEMBERSHIP};
pub use types::*;
