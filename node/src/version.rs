//! Versions during rolling upgrades. Every server advertises its Meridian
//! version and its feature level: the newest set of log formats and
//! features it can read. The leader asks every member for theirs, and once
//! every member advertises a level above the datacenter's cluster level, it
//! raises the cluster level through Raft (it never lowers it). A feature
//! that older servers cannot read stays off until the cluster level reaches
//! the level that introduced it, then switches on by itself.
//!
//! Levels:
//! 1. everything before the cluster level existed (a datacenter upgraded
//!    from such servers starts here);
//! 2. the cluster level record itself (`Command::SetClusterLevel`): an
//!    entry older servers cannot decode, so it is only proposed once every
//!    member advertises level 2.

use crate::kv::{Command, Outcome};
use crate::raft::PeerRequest;
use crate::server::{Node, NodeError};
use std::collections::BTreeMap;
use std::time::Duration;

/// The feature level this build reads and writes.
pub const FEATURE_LEVEL: u32 = 2;
/// The cluster level of a datacenter that has none recorded.
pub const BASE_LEVEL: u32 = 1;
/// Meta key of the recorded cluster level.
pub(crate) const META_CLUSTER_LEVEL: &str = "cluster_level";
/// How often the leader asks the members.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a member has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// Features gated by the cluster level: (name, level that introduced it).
pub const GATED: &[(&str, u32)] = &[("cluster-level-record", 2)];

/// What a server advertises.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Advertised {
    /// Its Meridian version.
    pub version: String,
    /// Its feature level.
    pub level: u32,
}

impl Node {
    /// What this server advertises (the configuration may lower the level,
    /// for tests of the gate).
    pub fn advertised(&self) -> Advertised {
        Advertised {
            version: env!("CARGO_PKG_VERSION").to_string(),
            level: self
                .config()
                .advertise_feature_level
                .unwrap_or(FEATURE_LEVEL)
                .min(FEATURE_LEVEL),
        }
    }

    /// The datacenter's cluster level, as this server has applied it.
    pub fn cluster_level(&self) -> u32 {
        self.meta_u32(META_CLUSTER_LEVEL).unwrap_or(BASE_LEVEL)
    }

    /// Whether a gated feature is on in this datacenter.
    pub fn feature_on(&self, name: &str) -> bool {
        let level = self.cluster_level();
        GATED
            .iter()
            .any(|(feature, since)| *feature == name && level >= *since)
    }

    /// What each member advertised when the leader last asked (leader only).
    pub fn member_versions(&self) -> BTreeMap<u64, Advertised> {
        self.versions_seen()
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Asks every member what it advertises; None for a silent one.
    async fn ask_members(&self) -> BTreeMap<u64, Option<Advertised>> {
        let metrics = self.raft().metrics().borrow().clone();
        let mut out = BTreeMap::new();
        for (id, member) in metrics.membership_config.membership().nodes() {
            let answer = if *id == self.id() {
                Some(self.advertised())
            } else {
                match self
                    .network()
                    .send(member, &PeerRequest::Version, ASK_TIMEOUT)
                    .await
                {
                    Ok(crate::raft::PeerResponse::Version(a)) => Some(a),
                    // A server too old to know the question: level 1.
                    Ok(_) => Some(Advertised {
                        version: "unknown".into(),
                        level: BASE_LEVEL,
                    }),
                    Err(e) if e.to_string().contains("bad peer request") => Some(Advertised {
                        version: "unknown".into(),
                        level: BASE_LEVEL,
                    }),
                    Err(_) => None,
                }
            };
            out.insert(*id, answer);
        }
        out
    }

    /// One round of the leader's check: raises the cluster level when every
    /// member advertises more. Answers the level after the round.
    pub(crate) async fn raise_cluster_level(&self) -> Result<u32, NodeError> {
        let current = self.cluster_level();
        let answers = self.ask_members().await;
        if let Ok(mut seen) = self.versions_seen().lock() {
            seen.clear();
            seen.extend(
                answers
                    .iter()
                    .filter_map(|(id, a)| a.clone().map(|a| (*id, a))),
            );
        }
        // Every member must answer: a silent one might be an old server.
        let Some(lowest) = answers
            .values()
            .map(|a| a.as_ref().map(|a| a.level))
            .collect::<Option<Vec<u32>>>()
            .and_then(|levels| levels.into_iter().min())
        else {
            return Ok(current);
        };
        if lowest <= current {
            return Ok(current);
        }
        match self
            .write(Command::SetClusterLevel { level: lowest })
            .await?
        {
            (_, Outcome::ClusterLevelSet { level }) => {
                tracing::info!(
                    level,
                    "cluster level raised: every member runs a version that has it"
                );
                Ok(level)
            }
            _ => Err(NodeError::Raft("unexpected outcome".into())),
        }
    }
}

/// The leader's periodic check.
pub(crate) async fn drive(node: Node) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !node.is_leader() || node.draining() {
            continue;
        }
        if let Err(e) = node.raise_cluster_level().await {
            tracing::debug!(error = %e, "cluster level check failed; retried");
        }
    }
}
