//! Groups concurrent writes into Raft entries.
//!
//! openraft 0.9 appends (and fsyncs) each `client_write` on its own before
//! taking the next, so one entry per client write would cap a datacenter at
//! one write per fsync. The proposer takes every write waiting when a slot
//! frees up and proposes them as one [`Proposal`]; a few proposals are kept in
//! flight so that replication of one overlaps the append of the next. Under
//! light load a write is proposed at once, alone.
//!
//! Two in flight, not more: every entry costs each server a fixed share (an
//! AppendEntries exchange, a log sync, an LMDB commit that rewrites the
//! B-trees' upper pages), so under load fewer, larger entries cost less CPU
//! per write. Since the leader's sync runs alongside replication (ADR 0014)
//! two are enough to keep the pipeline full (bench/README.md has the A/B).
//!
//! A draining leader pauses the proposer: writes are refused from then on,
//! and [`Proposer::settled`] tells when the last one in flight is done, so
//! that the leader's log stops growing before it hands over.

use super::types::{Member, Proposal, Raft};
use crate::kv::{Applied, Command};
use openraft::error::{ClientWriteError, RaftError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Why a write was not applied here.
#[derive(Debug)]
pub enum ProposeError {
    /// This server is not the leader; the leader if known.
    ForwardToLeader(Option<(u64, Member)>),
    /// Raft refused the proposal for another reason.
    Failed(String),
    /// Raft or the proposer has stopped.
    Stopped,
    /// The proposer is paused: this server is draining.
    Paused,
}

/// Limits of one proposal.
#[derive(Debug, Clone, Copy)]
pub struct ProposerLimits {
    /// Proposals in flight at once.
    pub in_flight: usize,
    /// Commands in one proposal.
    pub commands_max: usize,
    /// Approximate bytes in one proposal (a single larger command still goes alone).
    pub bytes_max: usize,
}

impl Default for ProposerLimits {
    fn default() -> Self {
        ProposerLimits {
            in_flight: 2,
            commands_max: 512,
            bytes_max: 2 * 1024 * 1024,
        }
    }
}

type Reply = oneshot::Sender<Result<Applied, ProposeError>>;

/// The handle writes are proposed through; cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<(Command, Reply)>,
    slots: Arc<Semaphore>,
    in_flight: u32,
    paused: Arc<AtomicBool>,
}

impl Proposer {
    /// Starts the proposing task for `raft`.
    /// `sizes` observes how many writes each proposal carries.
    pub fn start(raft: Raft, limits: ProposerLimits, sizes: prometheus::Histogram) -> Proposer {
        let (tx, rx) = mpsc::unbounded_channel();
        let in_flight = u32::try_from(limits.in_flight.max(1)).unwrap_or(u32::MAX);
        let slots = Arc::new(Semaphore::new(in_flight as usize));
        let paused = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(raft, rx, limits, sizes, slots.clone(), paused.clone()));
        Proposer {
            tx,
            slots,
            in_flight,
            paused,
        }
    }

    /// Refuses writes from now on ([`ProposeError::Paused`]); the ones in
    /// flight go on.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Takes writes again.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Waits until no proposal is in flight; false if that takes longer than
    /// `timeout`. After [`Proposer::pause`], none starts again.
    pub async fn settled(&self, timeout: Duration) -> bool {
        let all = self.slots.acquire_many(self.in_flight);
        matches!(tokio::time::timeout(timeout, all).await, Ok(Ok(_)))
    }

    /// Proposes one write and waits until it is applied (or refused).
    pub async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((command, reply))
            .map_err(|_| ProposeError::Stopped)?;
        answer.await.map_err(|_| ProposeError::Stopped)?
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<(Command, Reply)>,
    limits: ProposerLimits,
    sizes: prometheus::Histogram,
    slots: Arc<Semaphore>,
    paused: Arc<AtomicBool>,
) {
    // A command taken from the queue that did not fit the previous proposal.
    let mut carried: Option<(Command, Reply)> = None;
    loop {
        let first = match carried.take() {
            Some(c) => c,
            None => match rx.recv().await {
                Some(c) => c,
                None => return,
            },
        };
        // Then wait for a free slot: while all are busy, writes accumulate.
        // (An idle proposer holds no slot, so `settled` sees it idle.)
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.0.payload_bytes();
        let mut commands = vec![first.0];
        let mut replies = vec![first.1];
        while commands.len() < limits.commands_max {
            match rx.try_recv() {
                Ok((command, reply)) => {
                    let b = command.payload_bytes();
                    if bytes + b > limits.bytes_max {
                        carried = Some((command, reply));
                        break;
                    }
                    bytes += b;
                    commands.push(command);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        // Checked while holding a slot: `settled` then waits for any
        // proposal that saw the proposer still running.
        if paused.load(Ordering::SeqCst) {
            for reply in replies {
                let _ = reply.send(Err(ProposeError::Paused));
            }
            continue;
        }
        sizes.observe(commands.len() as f64);
        let raft = raft.clone();
        tokio::spawn(async move {
            let result = raft
                .client_write(Proposal {
                    commands: Arc::new(commands),
                })
                .await;
            drop(permit);
            match result {
                Ok(response) => {
                    for (reply, applied) in replies.into_iter().zip(response.data) {
                        let _ = reply.send(Ok(applied));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(match &e {
                            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                                ProposeError::ForwardToLeader(
                                    f.leader_id.zip(f.leader_node.clone()),
                                )
                            }
                            RaftError::APIError(e) => ProposeError::Failed(e.to_string()),
                            RaftError::Fatal(_) => ProposeError::Stopped,
                        }));
                    }
                }
            }
        });
    }
}
