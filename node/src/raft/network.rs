//! openraft's network over the peer transport (ALPN `meridian-peer/1`), plus
//! the two requests a follower sends its leader: a forwarded write and a
//! read index for a linearizable read.

use super::log_store::DurableLog;
use super::types::{LogId, Member, TypeConfig};
use crate::kv::{Applied, Command};
use meridian_gateway::{Endpoint, GatewayError, ALPN_PEER};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bytes of entries sent in one AppendEntries, well under the transport's
/// frame limit; a longer run is sent in parts (openraft's `PartialSuccess`).
pub const APPEND_BYTES_MAX: usize = 16 * 1024 * 1024;

pub(super) fn entry_bytes(entry: &openraft::Entry<TypeConfig>) -> usize {
    64 + match &entry.payload {
        openraft::EntryPayload::Normal(p) => p.payload_bytes(),
        openraft::EntryPayload::Membership(m) => 128 * m.nodes().count(),
        openraft::EntryPayload::Blank => 0,
    }
}

/// Keeps the longest prefix of entries within [`APPEND_BYTES_MAX`] (at least
/// one entry); returns whether any were left out.
fn trim_to_budget(entries: &mut Vec<openraft::Entry<TypeConfig>>) -> bool {
    let mut total = 0;
    let keep = entries
        .iter()
        .position(|e| {
            total += entry_bytes(e);
            total > APPEND_BYTES_MAX
        })
        .map_or(entries.len(), |i| i.max(1));
    let trimmed = keep < entries.len();
    entries.truncate(keep);
    trimmed
}

/// A request between servers of one datacenter.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Raft AppendEntries.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft RequestVote.
    Vote(VoteRequest<u64>),
    /// One chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client write received by a follower, to be proposed by the leader.
    Write(Command),
    /// Asks the leader for a log index that a linearizable read must wait for.
    ReadIndex,
    /// Asks the leader to restart a lease's clock.
    LeaseKeepAlive(i64),
    /// Asks the leader how long a lease has left.
    LeaseClock(i64),
    /// Asks a member what version and feature level it runs.
    Version,
    /// A draining leader asks a caught-up voter to campaign now, in the
    /// leader's term (see `crate::drain`). Servers older than this variant
    /// answer with a decoding error, and the leader falls back to silence.
    Campaign {
        /// The term the leader leads in; a voter that has moved on ignores it.
        term: u64,
    },
}

impl PeerRequest {
    /// Roughly how many bytes the request encodes to, so that its buffer
    /// is allocated once rather than grown through every power of two.
    fn size_hint(&self) -> usize {
        64 + match self {
            PeerRequest::AppendEntries(r) => r.entries.iter().map(entry_bytes).sum(),
            PeerRequest::Write(command) => command.payload_bytes(),
            _ => 0,
        }
    }
}

/// Why the leader could not serve a forwarded request.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The receiver is not the leader; it names the one it knows of.
    #[error("not the leader")]
    NotLeader {
        /// The leader as the receiver knows it.
        leader: Option<(u64, Member)>,
    },
    /// The leader could not serve it now.
    #[error("{0}")]
    Unavailable(String),
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// AppendEntries answer.
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    /// Vote answer.
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    /// Snapshot chunk answer.
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// Forwarded write answer.
    Write(Result<Applied, ForwardError>),
    /// Read index answer.
    ReadIndex(Result<u64, ForwardError>),
    /// A lease's (remaining, granted) TTL at the leader; None if it has none.
    LeaseClock(Result<Option<(i64, i64)>, ForwardError>),
    /// What a member runs.
    Version(crate::version::Advertised),
    /// Whether the voter started its campaign.
    Campaign(Result<(), ForwardError>),
}

/// Builds Raft clients over one endpoint.
#[derive(Clone)]
pub struct PeerNetwork {
    endpoint: Endpoint,
    /// The name every member's certificate carries (its datacenter's).
    server_name: String,
    /// The commit index a leader passes on is held to what its own log
    /// holds durably (see [`CommitBound`]).
    bound: Option<CommitBound>,
}

/// Holds the commit index a leader sends its followers to its own durable
/// log: the leader reports its own entries durable before they are (see
/// `log_store`), so openraft may count it toward a commit early, and no
/// follower may apply such an entry before the leader really holds it.
#[derive(Clone)]
pub struct CommitBound {
    durable: tokio::sync::watch::Receiver<DurableLog>,
    /// Set when a commit was held back; whoever watches `durable` then has
    /// the leader send it on (a heartbeat), instead of waiting for the next
    /// append.
    held: Arc<AtomicBool>,
}

impl CommitBound {
    /// A bound over `durable`.
    pub fn new(durable: tokio::sync::watch::Receiver<DurableLog>) -> CommitBound {
        CommitBound {
            durable,
            held: Arc::new(AtomicBool::new(false)),
        }
    }

    /// `committed`, or the last durable entry if that is older.
    fn hold(&self, committed: Option<LogId>) -> Option<LogId> {
        let c = committed?;
        // Marked before reading, so a sync that lands in between is seen
        // by whoever clears the mark.
        self.held.store(true, Ordering::SeqCst);
        let durable = self.durable.borrow().last;
        match durable {
            Some(d) if d.index >= c.index => {
                self.held.store(false, Ordering::SeqCst);
                Some(c)
            }
            d => d,
        }
    }

    /// Whether a commit was held back since the last call.
    pub fn take_held(&self) -> bool {
        self.held.swap(false, Ordering::SeqCst)
    }

    /// The durability it bounds by.
    pub fn durable(&self) -> tokio::sync::watch::Receiver<DurableLog> {
        self.durable.clone()
    }
}

impl PeerNetwork {
    /// Wraps the server's endpoint; members are verified to belong to `datacenter`.
    pub fn new(endpoint: Endpoint, datacenter: &str) -> PeerNetwork {
        PeerNetwork {
            endpoint,
            server_name: meridian_gateway::tls::datacenter_name(datacenter),
            bound: None,
        }
    }

    /// Holds every commit index sent to followers to `bound`.
    pub fn with_commit_bound(mut self, bound: CommitBound) -> PeerNetwork {
        self.bound = Some(bound);
        self
    }

    /// Sends one request to a member and decodes the answer.
    pub async fn send(
        &self,
        member: &Member,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, GatewayError> {
        let addr = resolve(&member.peer_addr).await?;
        let bytes = postcard::to_extend(request, Vec::with_capacity(request.size_hint()))
            .map_err(|e| GatewayError::Codec(e.to_string()))?;
        let answer = self
            .endpoint
            .call(addr, &self.server_name, ALPN_PEER, &bytes, timeout)
            .await?;
        postcard::from_bytes(&answer).map_err(|e| GatewayError::Codec(e.to_string()))
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, GatewayError> {
    if let Ok(addr) = addr.parse() {
        return Ok(addr);
    }
    let unresolved = || GatewayError::Connect {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        reason: format!("cannot resolve {addr}"),
    };
    tokio::net::lookup_host(addr)
        .await
        .map_err(|_| unresolved())?
        .next()
        .ok_or_else(unresolved)
}

/// A Raft client for one target server.
pub struct PeerClient {
    network: PeerNetwork,
    target: u64,
    member: Member,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerClient {
        PeerClient {
            network: self.clone(),
            target,
            member: node.clone(),
        }
    }
}

impl PeerClient {
    async fn call<E: std::error::Error>(
        &self,
        request: PeerRequest,
        option: &RPCOption,
    ) -> Result<PeerResponse, RPCError<u64, Member, E>> {
        self.network
            .send(&self.member, &request, option.hard_ttl())
            .await
            .map_err(|e| match e {
                GatewayError::Codec(_) | GatewayError::Remote(_) => {
                    RPCError::Network(NetworkError::new(&e))
                }
                other => RPCError::Unreachable(Unreachable::new(&other)),
            })
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<u64, Member, E> {
        RPCError::Network(NetworkError::new(&GatewayError::Codec(
            "unexpected answer type".into(),
        )))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        let mut rpc = rpc;
        if let Some(bound) = &self.network.bound {
            rpc.leader_commit = bound.hold(rpc.leader_commit);
        }
        let trimmed = trim_to_budget(&mut rpc.entries);
        let last_sent = rpc.entries.last().map(|e| e.log_id);
        match self.call(PeerRequest::AppendEntries(rpc), &option).await? {
            PeerResponse::AppendEntries(r) => match r {
                Ok(AppendEntriesResponse::Success) if trimmed => {
                    Ok(AppendEntriesResponse::PartialSuccess(last_sent))
                }
                Ok(r) => Ok(r),
                Err(e) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                    self.target,
                    self.member.clone(),
                    e,
                ))),
            },
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        match self
            .call(PeerRequest::InstallSnapshot(rpc), &option)
            .await?
        {
            PeerResponse::InstallSnapshot(r) => r.map_err(|e| {
                RPCError::RemoteError(RemoteError::new_with_node(
                    self.target,
                    self.member.clone(),
                    e,
                ))
            }),
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        match self.call(PeerRequest::Vote(rpc), &option).await? {
            PeerResponse::Vote(r) => r.map_err(|e| {
                RPCError::RemoteError(RemoteError::new_with_node(
                    self.target,
                    self.member.clone(),
                    e,
                ))
            }),
            _ => Err(self.unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::PutRequest;
    use crate::raft::Proposal;

    fn entry(index: u64, value_bytes: usize) -> openraft::Entry<TypeConfig> {
        openraft::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(Proposal {
                commands: std::sync::Arc::new(vec![Command::Put(PutRequest {
                    key: b"k".to_vec(),
                    value: vec![0; value_bytes],
                    ..Default::default()
                })]),
            }),
        }
    }

    #[test]
    fn the_commit_sent_to_followers_is_held_to_the_leaders_durable_log() {
        let at = |i| Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), i));
        let (tx, rx) = tokio::sync::watch::channel(DurableLog::default());
        let bound = CommitBound::new(rx);
        assert_eq!(bound.hold(None), None);
        assert!(!bound.take_held());
        assert_eq!(bound.hold(at(2)), None, "nothing durable yet");
        assert!(bound.take_held());
        assert!(!bound.take_held(), "taken once");
        tx.send_replace(DurableLog {
            last: at(5),
            failed: false,
        });
        assert_eq!(bound.hold(at(7)), at(5));
        assert!(bound.take_held());
        assert_eq!(bound.hold(at(4)), at(4));
        assert_eq!(bound.hold(at(5)), at(5));
        assert!(!bound.take_held(), "nothing held back");
    }

    #[test]
    fn append_entries_are_cut_to_the_byte_budget_but_never_to_nothing() {
        let mut small: Vec<_> = (1..=100).map(|i| entry(i, 100)).collect();
        assert!(!trim_to_budget(&mut small));
        assert_eq!(small.len(), 100);

        let big = APPEND_BYTES_MAX / 4;
        let mut large: Vec<_> = (1..=10).map(|i| entry(i, big)).collect();
        assert!(trim_to_budget(&mut large));
        assert_eq!(large.len(), 3);
        assert_eq!(large.last().unwrap().log_id.index, 3);

        let mut huge = vec![entry(1, APPEND_BYTES_MAX * 2), entry(2, 1)];
        assert!(trim_to_budget(&mut huge));
        assert_eq!(huge.len(), 1, "one entry always goes");
    }
}
