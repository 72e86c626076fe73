//! Raft for one datacenter: openraft's type configuration, the LMDB log
//! store, the state machine over the MVCC store, snapshots, and the network
//! adapter over the peer transport.

mod log_store;
pub(crate) mod network;
mod snapshot;
mod state_machine;
mod types;

pub use log_store::{LogObserver, LogStore};
pub use network::{PeerNetwork, PeerRequest, PeerResponse};
pub use state_machine::{ApplyObserver, StateMachine};
pub use types::*;
