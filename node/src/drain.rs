//! Draining a server before it is stopped: it refuses client requests and
//! proposals with a retryable error, reports not ready and stops
//! campaigning. A draining leader first hands its leadership over (ADR 0009):
//!
//! - **By vote**, when it and one other voter are a majority (datacenters of
//!   up to three voters). It waits until its own leader lease has run out
//!   (`election_timeout_max` from its election; it keeps serving
//!   meanwhile), stops taking work, waits until the proposals in flight
//!   are done and the chosen voter holds its whole log, and asks that
//!   voter to campaign. The leader's vote is the
//!   one the candidate needs: it grants it and steps down. The handover is
//!   one vote round; nobody waits for an election timeout.
//! - **After the lease**, in larger datacenters, where the candidate also
//!   needs followers that refuse to vote while they still hear from the
//!   leader. The leader falls silent, waits out their lease, and then asks
//!   the chosen voter to campaign at once, ahead of their election timers.
//! - **By silence**, when no voter can be asked (a datacenter of one, or a
//!   voter running a version that does not know the request): the leader
//!   falls silent and the voters' timers elect someone.
//!
//! Writes are refused with retryable errors meanwhile, never lost.

use crate::raft::network::{ForwardError, PeerRequest, PeerResponse};
use crate::server::{Node, NodeError};
use openraft::{RaftMetrics, ServerState};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

type Metrics = RaftMetrics<u64, crate::raft::Member>;

/// How leadership left a draining server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// The server did not lead.
    None,
    /// The chosen voter campaigned and the leader granted its vote.
    Vote,
    /// The leader fell silent, and the chosen voter campaigned once the
    /// other voters' lease had run out.
    Lease,
    /// The leader fell silent and the voters' timers elected someone.
    Silent,
}

impl Handover {
    /// The name the admin API reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Handover::None => "none",
            Handover::Vote => "vote",
            Handover::Lease => "lease",
            Handover::Silent => "silent",
        }
    }
}

/// What a drain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    /// Whether this server led when the drain began.
    pub was_leader: bool,
    /// The leader after the drain (None if none was seen in time).
    pub leader: Option<u64>,
    /// That leader's name.
    pub leader_name: Option<String>,
    /// How leadership moved.
    pub handover: Handover,
    /// How long the drain took.
    pub took: Duration,
    /// How long the datacenter had no leader serving: from when this
    /// leader began refusing work until it saw another lead (zero for a
    /// server that did not lead).
    pub leaderless: Duration,
}

impl Node {
    /// Whether the server is draining.
    pub fn draining(&self) -> bool {
        self.draining_flag().load(Ordering::SeqCst)
    }

    /// Drains the server; a leader hands over to the voter named `to` (or
    /// to the most caught-up voter). Returns once another server leads, or
    /// after three election timeouts, when the answer says no leader was
    /// seen. Naming a voter is refused unless this server leads.
    pub async fn drain(&self, to: Option<&str>) -> Result<Drained, NodeError> {
        let started = Instant::now();
        let chosen = match to {
            Some(name) => Some(self.transfer_target(name)?),
            None => None,
        };
        let raft = &self.config().raft;
        let was_leader = self.is_leader();
        let voters = self
            .metrics_now()
            .membership_config
            .membership()
            .voter_ids()
            .count();
        // Self and one other voter are a majority.
        let by_vote = was_leader && voters > 1 && 2 * 2 > voters;
        if by_vote {
            // Until its lease runs out, the leader's own vote refuses every
            // candidate; it keeps serving until then.
            if let Some(since) = self.led_since() {
                let until = since + raft.election_timeout_max + raft.heartbeat_interval;
                tokio::time::sleep_until(until.into()).await;
            }
        }
        self.draining_flag().store(true, Ordering::SeqCst);
        self.proposer().pause();
        let refusing = Instant::now();
        let runtime = self.raft().runtime_config();
        runtime.elect(false);
        let handover = if !was_leader {
            Handover::None
        } else if !self.is_leader() {
            // Leadership moved on its own while the lease ran out.
            Handover::Silent
        } else {
            self.hand_over(chosen, by_vote).await
        };
        let me = self.id();
        let deadline = Instant::now() + raft.election_timeout_max * 3;
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
        let leaderless = if was_leader {
            refusing.elapsed()
        } else {
            Duration::ZERO
        };
        let leader_name = leader.and_then(|id| {
            let m = self.metrics_now();
            let name = m
                .membership_config
                .membership()
                .get_node(&id)?
                .name
                .to_string();
            Some(name)
        });
        tracing::info!(
            server = %self.config().name,
            was_leader,
            handover = handover.as_str(),
            new_leader = ?leader_name,
            leaderless_ms = leaderless.as_millis() as u64,
            took_ms = started.elapsed().as_millis() as u64,
            "drained: refusing client requests until stopped"
        );
        Ok(Drained {
            was_leader,
            leader,
            leader_name,
            handover,
            took: started.elapsed(),
            leaderless,
        })
    }

    /// Ends a drain: the server serves, heartbeats and campaigns again.
    pub fn undrain(&self) {
        let runtime = self.raft().runtime_config();
        runtime.heartbeat(true);
        runtime.elect(true);
        self.draining_flag().store(false, Ordering::SeqCst);
        self.proposer().resume();
    }

    /// Refuses work while draining.
    pub(crate) fn check_not_draining(&self) -> Result<(), NodeError> {
        if self.draining() {
            Err(NodeError::Draining)
        } else {
            Ok(())
        }
    }

    /// A voter's side of a handover: campaign now, if `term` is still this
    /// server's term and it is a voter that is not draining.
    pub(crate) async fn campaign(&self, term: u64) -> Result<(), ForwardError> {
        if self.draining() {
            return Err(ForwardError::Unavailable("this server is draining".into()));
        }
        let (current, state, voter) = {
            let m = self.metrics_now();
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == self.id());
            (m.current_term, m.state, voter)
        };
        if !voter {
            return Err(ForwardError::Unavailable("this server is a learner".into()));
        }
        if current != term {
            return Err(ForwardError::Unavailable(format!(
                "term {term} is over here (now {current})"
            )));
        }
        if state == ServerState::Leader {
            return Ok(());
        }
        tracing::info!(server = %self.config().name, term, "campaigning: asked by the draining leader");
        self.raft()
            .trigger()
            .elect()
            .await
            .map_err(|e| ForwardError::Unavailable(e.to_string()))
    }

    /// The voter `name` names, for a handover from this server, the leader.
    fn transfer_target(&self, name: &str) -> Result<u64, NodeError> {
        let m = self.metrics_now();
        if m.current_leader != Some(self.id()) {
            return Err(NodeError::MembershipRefused(
                "only the leader hands over leadership, and this server does not lead".into(),
            ));
        }
        let membership = m.membership_config.membership();
        let id = membership
            .nodes()
            .find(|(_, member)| *member.name == *name)
            .map(|(id, _)| *id)
            .ok_or_else(|| NodeError::MemberNotFound(format!("no member named {name}")))?;
        if id == self.id() {
            return Err(NodeError::MembershipRefused(format!(
                "{name} is this server, which leads already"
            )));
        }
        if !membership.voter_ids().any(|v| v == id) {
            return Err(NodeError::MembershipRefused(format!(
                "{name} is a learner; only a voter can lead"
            )));
        }
        Ok(id)
    }

    /// Moves leadership from this server (leading, draining) to `chosen` or
    /// the most caught-up voter.
    async fn hand_over(&self, chosen: Option<u64>, by_vote: bool) -> Handover {
        let raft = &self.config().raft;
        let runtime = self.raft().runtime_config();
        let target = {
            let m = self.metrics_now();
            chosen
                .or_else(|| most_caught_up(&m, self.id()))
                .and_then(|id| {
                    let member = m.membership_config.membership().get_node(&id)?.clone();
                    Some((id, member))
                })
        };
        let Some((target, member)) = target else {
            runtime.heartbeat(false);
            return Handover::Silent;
        };
        if !by_vote {
            // The other voters refuse any candidate until they have not
            // heard from this leader for a lease.
            runtime.heartbeat(false);
            tokio::time::sleep(raft.election_timeout_max + raft.heartbeat_interval * 2).await;
        }
        // Writes that passed the draining check before it was set may still
        // be on their way into the log; the candidate must hold them too, or
        // this leader's vote refuses it (its log would be shorter).
        let settled = self.proposer().settled(raft.election_timeout_max).await;
        let caught_up = settled
            && self
                .caught_up(target, Instant::now() + raft.election_timeout_max)
                .await;
        let term = self.metrics_now().current_term;
        let asked = if caught_up {
            let request = PeerRequest::Campaign { term };
            match self
                .network()
                .send(&member, &request, raft.rpc_timeout)
                .await
            {
                Ok(PeerResponse::Campaign(Ok(()))) => Ok(()),
                Ok(PeerResponse::Campaign(Err(e))) => Err(e.to_string()),
                Ok(_) => Err("unexpected answer".to_string()),
                Err(e) => Err(e.to_string()),
            }
        } else {
            Err("it did not catch up in time".to_string())
        };
        match asked {
            Ok(()) if by_vote => Handover::Vote,
            Ok(()) => Handover::Lease,
            Err(reason) => {
                tracing::warn!(
                    server = %self.config().name,
                    target = %member.name,
                    %reason,
                    "handover: the voter could not be asked to campaign; falling silent"
                );
                runtime.heartbeat(false);
                Handover::Silent
            }
        }
    }

    /// Waits until `target` holds this leader's whole log; false if the
    /// deadline passes or this server stops leading.
    async fn caught_up(&self, target: u64, deadline: Instant) -> bool {
        let mut metrics = self.raft().metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.state != ServerState::Leader {
                    return false;
                }
                if matched(&m, target) >= m.last_log_index {
                    return true;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, metrics.changed()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }

    fn metrics_now(&self) -> Metrics {
        self.raft().metrics().borrow().clone()
    }
}

/// The log index the leader knows `id` holds.
fn matched(m: &Metrics, id: u64) -> Option<u64> {
    m.replication
        .as_ref()
        .and_then(|r| r.get(&id))
        .and_then(|l| l.as_ref())
        .map(|l| l.index)
}

/// The voter other than `me` that holds the most of the leader's log.
fn most_caught_up(m: &Metrics, me: u64) -> Option<u64> {
    m.membership_config
        .membership()
        .voter_ids()
        .filter(|v| *v != me)
        .max_by_key(|v| matched(m, *v))
}
