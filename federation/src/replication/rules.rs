//! Replication rules as a datacenter changes them: created, changed and
//! removed through the API (or seeded from configuration), promoted to a new
//! source, and adopted from other datacenters' hellos. Every version carries
//! an epoch; a version replaces another only with a higher epoch, so every
//! datacenter ends with the same rule whatever order the hellos arrive in.

use crate::Federation;
use meridian_node::kv::mirror::{check_rule, Handover, MirrorRule};
use meridian_node::kv::{Command, KvError, Outcome};
use meridian_node::{Node, NodeError};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Why a rule change was refused.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The rule is malformed or conflicts with another.
    #[error("{0}")]
    Invalid(String),
    /// No such rule.
    #[error("no replication rule {0:?}")]
    NotFound(String),
    /// The DC could not store it.
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl From<KvError> for RuleError {
    fn from(e: KvError) -> Self {
        match e {
            KvError::InvalidArgument(m) => RuleError::Invalid(m),
            e => RuleError::Node(e.into()),
        }
    }
}

/// A rule as the API and the configuration give it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// The mirrored prefix.
    pub prefix: String,
    /// The source DC.
    pub source: String,
    /// The target DCs.
    pub targets: Vec<String>,
    /// Whether writes in a target are sent to the source.
    #[serde(default)]
    pub forward_writes: bool,
}

/// Checks a rule's DCs against the federation: each must be this DC or a configured peer.
pub fn check_datacenters(rule: &MirrorRule, own: &str, peers: &[String]) -> Result<(), String> {
    for dc in std::iter::once(&rule.source).chain(rule.targets.iter()) {
        if dc != own && !peers.contains(dc) {
            let mut known: Vec<&str> = peers.iter().map(String::as_str).collect();
            known.push(own);
            known.sort();
            return Err(format!(
                "unknown datacenter {dc:?}; known: {}",
                known.join(", ")
            ));
        }
    }
    Ok(())
}

async fn store(node: &Node, rule: MirrorRule) -> Result<MirrorRule, RuleError> {
    match node.write(Command::SetRule(rule.clone())).await? {
        (_, Outcome::RuleSet { changed: true }) => Ok(rule),
        _ => Err(RuleError::Invalid(format!(
            "rule {:?} changed meanwhile; read it and try again",
            rule.name
        ))),
    }
}

/// Creates or changes a rule here (its epoch rises); other DCs learn it from hellos.
pub async fn put(fed: &Federation, name: &str, spec: RuleSpec) -> Result<MirrorRule, RuleError> {
    let node = &fed.shared.node;
    let own = fed.datacenter();
    node.read_barrier().await?;
    let all = node.mirror_rules()?;
    let previous = all.get(name);
    let rule = MirrorRule {
        name: name.to_string(),
        prefix: spec.prefix.into_bytes(),
        source: spec.source,
        targets: spec.targets,
        forward_writes: spec.forward_writes,
        epoch: previous.map_or(1, |p| p.epoch + 1),
        set_by: own.to_string(),
        deleted: false,
        handover: None,
    };
    if let Some(p) = previous.filter(|p| !p.deleted) {
        if p.prefix != rule.prefix {
            return Err(RuleError::Invalid(
                "a rule's prefix cannot change; delete the rule and create a new one".into(),
            ));
        }
    }
    check_rule(&rule, &all).map_err(RuleError::from)?;
    check_datacenters(&rule, own, &fed.shared.links.names()).map_err(RuleError::Invalid)?;
    store(node, rule).await
}

/// Removes a rule (a deleted version with a higher epoch, so the removal
/// reaches every DC); mirrored copies stay and become writable.
pub async fn delete(fed: &Federation, name: &str) -> Result<MirrorRule, RuleError> {
    let node = &fed.shared.node;
    node.read_barrier().await?;
    let all = node.mirror_rules()?;
    let Some(previous) = all.get(name).filter(|r| !r.deleted) else {
        return Err(RuleError::NotFound(name.to_string()));
    };
    let mut rule = previous.clone();
    rule.epoch += 1;
    rule.set_by = fed.datacenter().to_string();
    rule.deleted = true;
    store(node, rule).await
}

/// Makes this DC the rule's source (DC failover): the epoch rises, this DC
/// accepts writes under the prefix at once, the old source becomes a target,
/// and the revision of the old source held here is recorded so that the old
/// source can list the writes it accepted but never mirrored.
pub async fn promote(fed: &Federation, name: &str) -> Result<MirrorRule, RuleError> {
    let node = &fed.shared.node;
    let own = fed.datacenter();
    node.read_barrier().await?;
    let all = node.mirror_rules()?;
    let Some(previous) = all.get(name).filter(|r| !r.deleted) else {
        return Err(RuleError::NotFound(name.to_string()));
    };
    if previous.source == own {
        return Err(RuleError::Invalid(format!(
            "{own} is already the source of rule {name:?}"
        )));
    }
    if !previous.is_target(own) {
        return Err(RuleError::Invalid(format!(
            "{own} is not a target of rule {name:?}; only a target holds a copy to promote"
        )));
    }
    let (checkpoint, _) = node.mirror_state(name)?;
    let held = if checkpoint.epoch == previous.epoch {
        checkpoint.source_revision
    } else {
        0
    };
    let mut targets: Vec<String> = previous
        .targets
        .iter()
        .filter(|t| *t != own)
        .cloned()
        .collect();
    targets.push(previous.source.clone());
    let rule = MirrorRule {
        source: own.to_string(),
        targets,
        epoch: previous.epoch + 1,
        set_by: own.to_string(),
        handover: Some(Handover {
            from: previous.source.clone(),
            revision: held,
        }),
        ..previous.clone()
    };
    tracing::warn!(rule = %name, from = %previous.source, held, epoch = rule.epoch, "rule promoted: this datacenter is now its source");
    store(node, rule).await
}

/// Stores the rules from configuration that this DC does not know yet, at
/// epoch 1 (a rule changed through the API or promoted keeps its newer version).
pub(crate) async fn seed(fed: &Federation) -> Result<(), RuleError> {
    let node = &fed.shared.node;
    let known = node.mirror_rules()?;
    for (name, spec) in &fed.shared.config.replication {
        if known.contains_key(name) {
            continue;
        }
        let rule = from_config(name, spec);
        node.write(Command::SetRule(rule)).await?;
    }
    Ok(())
}

/// A configured rule's first version.
pub fn from_config(name: &str, spec: &RuleSpec) -> MirrorRule {
    MirrorRule {
        name: name.to_string(),
        prefix: spec.prefix.clone().into_bytes(),
        source: spec.source.clone(),
        targets: spec.targets.clone(),
        forward_writes: spec.forward_writes,
        epoch: 1,
        set_by: "config".into(),
        deleted: false,
        handover: None,
    }
}

/// Of the rules another DC told of, those that supersede ours (or that
/// involve us and are new here).
pub(crate) fn newer(
    local: &BTreeMap<String, MirrorRule>,
    own: &str,
    incoming: Vec<MirrorRule>,
) -> Vec<MirrorRule> {
    incoming
        .into_iter()
        .filter(|rule| match local.get(&rule.name) {
            Some(l) => rule.supersedes(l),
            None => rule.involves(own) && !rule.deleted,
        })
        .collect()
}

/// Stores rules another DC told of (those [`newer`] picked).
pub(crate) async fn adopt(node: &Node, from: &str, rules: Vec<MirrorRule>) {
    for rule in rules {
        let name = rule.name.clone();
        let epoch = rule.epoch;
        match node.write(Command::SetRule(rule)).await {
            Ok(_) => {
                tracing::info!(rule = %name, epoch, from = %from, "replication rule adopted")
            }
            Err(e) => {
                tracing::warn!(rule = %name, epoch, from = %from, error = %e, "replication rule not adopted")
            }
        }
    }
}
