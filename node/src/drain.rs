//! Draining a server before it is stopped: it refuses client requests and
//! proposals with a retryable error, reports not ready, stops campaigning,
//! and, if it leads, stops its heartbeats so that another server takes over.
//!
//! openraft 0.9 has no leadership transfer, and its leader lease makes the
//! other voters refuse an election until they have not heard from the
//! leader for `election_timeout_max` (ADR 0009). A draining leader
//! therefore falls silent: it neither heartbeats nor appends (its own
//! proposals and those forwarded to it are refused), the lease runs out, and
//! the other voters elect a leader. Writes are refused with retryable errors
//! meanwhile, never lost.

use crate::server::{Node, NodeError};
use std::time::{Duration, Instant};

/// What a drain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    /// Whether this server led when the drain began.
    pub was_leader: bool,
    /// The leader after the drain (None if none was seen in time).
    pub leader: Option<u64>,
    /// How long the handover took.
    pub took: Duration,
}

impl Node {
    /// Whether the server is draining.
    pub fn draining(&self) -> bool {
        self.draining_flag()
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Drains the server; returns once another server leads (or after three
    /// election timeouts, when the answer says no leader was seen).
    pub async fn drain(&self) -> Result<Drained, NodeError> {
        let started = Instant::now();
        self.draining_flag()
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let runtime = self.raft().runtime_config();
        runtime.elect(false);
        let was_leader = self.is_leader();
        if was_leader {
            runtime.heartbeat(false);
        }
        let me = self.id();
        let deadline = started + self.config().raft.election_timeout_max * 3;
        let mut metrics = self.raft().metrics();
        let leader = loop {
            let current = metrics.borrow_and_update().current_leader;
            if current.is_some_and(|l| l != me) {
                break current;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            if tokio::time::timeout(left, metrics.changed()).await.is_err() {
                break None;
            }
        };
        tracing::info!(
            server = %self.config().name,
            was_leader,
            new_leader = ?leader,
            took_ms = started.elapsed().as_millis() as u64,
            "drained: refusing client requests until stopped"
        );
        Ok(Drained {
            was_leader,
            leader,
            took: started.elapsed(),
        })
    }

    /// Ends a drain: the server serves, heartbeats and campaigns again.
    pub fn undrain(&self) {
        let runtime = self.raft().runtime_config();
        runtime.heartbeat(true);
        runtime.elect(true);
        self.draining_flag()
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Refuses work while draining.
    pub(crate) fn check_not_draining(&self) -> Result<(), NodeError> {
        if self.draining() {
            Err(NodeError::Draining)
        } else {
            Ok(())
        }
    }
}
