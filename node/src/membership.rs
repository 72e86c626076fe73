//! Membership changes, run by the leader: add a learner (it catches up by
//! log or snapshot), promote it to voter once it has caught up, remove a
//! member. Unsafe changes are refused with the reason: promoting a learner
//! far behind, removing the last voter, or removing a voter when the voters
//! left that answer now would not make a quorum.

use crate::kv::KvError;
use crate::raft::{member_id, Member, PeerRequest};
use crate::server::{Node, NodeError};
use openraft::ChangeMembers;
use std::collections::BTreeSet;
use std::time::Duration;

/// A learner may be promoted when it is at most this many entries behind.
pub const PROMOTE_LAG_MAX: u64 = 1000;
/// How long a voter has to answer the liveness probe before a removal.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A member as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its peer address.
    pub peer_addr: String,
    /// Its client URL.
    pub client_url: String,
    /// Whether it is a learner.
    pub learner: bool,
    /// The last log index known to be on it (the leader's own last index
    /// for itself; None when unknown, e.g. on a follower).
    pub matched: Option<u64>,
    /// Entries it is behind the leader's log (None when unknown).
    pub lag: Option<u64>,
}

fn refused(message: String) -> NodeError {
    NodeError::MembershipRefused(message)
}

fn invalid(message: String) -> NodeError {
    NodeError::Kv(KvError::InvalidArgument(message))
}

impl Node {
    /// Fails unless this server leads, naming the leader if one is known.
    fn require_leader(&self) -> Result<(), NodeError> {
        if self.is_leader() {
            return Ok(());
        }
        Err(refused(match self.known_leader().map(|(_, m)| m) {
            Some(m) => format!(
                "membership changes run on the leader: {} at {}",
                m.name, m.client_url
            ),
            None => "membership changes run on the leader, and none is known now".into(),
        }))
    }

    /// Every member, with how far behind the leader each is (known on the
    /// leader only).
    pub fn member_status(&self) -> Vec<MemberStatus> {
        let metrics = self.raft().metrics().borrow().clone();
        let last = metrics.last_log_index.unwrap_or(0);
        let replication = metrics.replication.clone().unwrap_or_default();
        let leading = metrics.current_leader == Some(self.id());
        self.members()
            .into_iter()
            .map(|m| {
                let matched = if m.id == self.id() && leading {
                    Some(last)
                } else {
                    // None until the leader knows of an entry on it.
                    replication.get(&m.id).and_then(|l| l.map(|l| l.index))
                };
                MemberStatus {
                    lag: matched.map(|x| last.saturating_sub(x)),
                    matched,
                    id: m.id,
                    name: m.name,
                    peer_addr: m.peer_addr,
                    client_url: m.client_url,
                    learner: m.is_learner,
                }
            })
            .collect()
    }

    /// Adds a learner: it receives the log (or a snapshot) and does not vote.
    pub async fn add_learner(
        &self,
        name: &str,
        peer_addr: &str,
        client_url: &str,
    ) -> Result<MemberStatus, NodeError> {
        self.require_leader()?;
        if name.is_empty() || name.contains(['/', '\\']) {
            return Err(invalid(format!("name: {name:?} is not a server name")));
        }
        if !peer_addr.contains(':') {
            return Err(invalid(format!(
                "peer_addr: {peer_addr:?} is not host:port"
            )));
        }
        if !(client_url.starts_with("http://") || client_url.starts_with("https://")) {
            return Err(invalid(format!(
                "client_url: {client_url:?} is not an http(s) URL"
            )));
        }
        if self.members().iter().any(|m| m.name == name) {
            return Err(refused(format!("{name} is already a member")));
        }
        let id = member_id(name);
        let member = Member {
            name: name.into(),
            peer_addr: peer_addr.into(),
            client_url: client_url.into(),
        };
        self.raft()
            .add_learner(id, member, false)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        self.member_status()
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| NodeError::Raft("the learner is not in the membership".into()))
    }

    /// Makes a learner a voter, if it has caught up.
    pub async fn promote(&self, name: &str) -> Result<MemberStatus, NodeError> {
        self.require_leader()?;
        let status = self.member_status();
        let Some(m) = status.iter().find(|m| m.name == name) else {
            return Err(not_found(name));
        };
        if !m.learner {
            return Err(refused(format!("{name} is already a voter")));
        }
        match m.lag {
            Some(lag) if lag <= PROMOTE_LAG_MAX => {}
            Some(lag) => {
                return Err(refused(format!(
                    "{name} is {lag} entries behind the leader; promote it once it is within {PROMOTE_LAG_MAX}"
                )))
            }
            None => {
                return Err(refused(format!(
                    "{name} has not received any of the log yet; promote it once it has caught up"
                )))
            }
        }
        let id = m.id;
        self.raft()
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        self.member_status()
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| NodeError::Raft("the member left the membership".into()))
    }

    /// Removes a member. A voter is removed only if the voters left that
    /// answer a probe now make a quorum of the new membership.
    pub async fn remove_member(&self, name: &str) -> Result<(), NodeError> {
        self.require_leader()?;
        let members = self.members();
        let Some(target) = members.iter().find(|m| m.name == name).cloned() else {
            return Err(not_found(name));
        };
        if target.is_learner {
            self.raft()
                .change_membership(
                    ChangeMembers::RemoveNodes(BTreeSet::from([target.id])),
                    false,
                )
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;
            return Ok(());
        }
        let remaining: Vec<_> = members
            .iter()
            .filter(|m| !m.is_learner && m.id != target.id)
            .collect();
        if remaining.is_empty() {
            return Err(refused(format!("{name} is the last voter")));
        }
        let mut alive = Vec::new();
        let mut silent = Vec::new();
        for m in &remaining {
            let member = Member {
                name: m.name.as_str().into(),
                peer_addr: m.peer_addr.as_str().into(),
                client_url: m.client_url.as_str().into(),
            };
            let answered = m.id == self.id()
                || self
                    .network()
                    // Every server version understands this question.
                    .send(&member, &PeerRequest::LeaseClock(0), PROBE_TIMEOUT)
                    .await
                    .is_ok();
            if answered {
                alive.push(m.name.clone());
            } else {
                silent.push(m.name.clone());
            }
        }
        let quorum = remaining.len() / 2 + 1;
        if alive.len() < quorum {
            return Err(refused(format!(
                "removing {name} would leave {} voters of which only {} answer ({}; silent: {}): no quorum; bring the silent ones back first",
                remaining.len(),
                alive.len(),
                alive.join(", "),
                silent.join(", ")
            )));
        }
        self.raft()
            .change_membership(
                ChangeMembers::RemoveVoters(BTreeSet::from([target.id])),
                false,
            )
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        Ok(())
    }
}

fn not_found(name: &str) -> NodeError {
    NodeError::MemberNotFound(format!("no member named {name:?}"))
}
