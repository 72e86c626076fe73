//! The catalog's keys and the writes and reads on them, all through the
//! node's ordinary key-value operations, so watches and replication see the
//! catalog like any other keys.
//!
//! Under [`PREFIX`]:
//! - `service/<service>/<id>`: the instance ([`Instance`] as JSON), bound to
//!   its lease if it has one;
//! - `health/<service>/<id>`: its health ([`Health`]), same lease, written
//!   only when the status changes;
//! - `ttl/<service>/<id>`: present while a TTL check's last report holds
//!   (bound to a lease of the check's TTL, renewed by each report);
//! - `checkers/<server>`: the servers running checks now (each bound to
//!   the server's own short lease).

use super::model::{Health, Instance, Probe, Status, Valid};
use super::CatalogError;
use meridian_node::kv::{
    prefix_end, Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};
use meridian_node::Node;
use std::collections::BTreeMap;

/// The reserved prefix the catalog lives under.
pub const PREFIX: &str = "/meridian/catalog/";

/// The key of one of an instance's records (`service`, `health`, `ttl`).
pub fn key(part: &str, service: &str, id: &str) -> Vec<u8> {
    format!("{PREFIX}{part}/{service}/{id}").into_bytes()
}

/// The key announcing a server as a checker.
pub fn checker_key(server: &str) -> Vec<u8> {
    format!("{PREFIX}checkers/{server}").into_bytes()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An instance as read, with what its keys say about it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The instance.
    pub instance: Instance,
    /// The revision its record was last written at.
    pub mod_revision: i64,
    /// The lease it is bound to (0 for none).
    pub lease: i64,
    /// Its health, and the revision that was written at (0 if missing).
    pub health: Health,
    /// The revision of the health record (0 if missing).
    pub health_revision: i64,
    /// The lease of its TTL check's last report, while that report holds.
    pub ttl_lease: Option<i64>,
}

/// The catalog (or one service of it) at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The revision read.
    pub revision: i64,
    /// Instances by (service, id).
    pub entries: BTreeMap<(String, String), Entry>,
    /// Servers announcing themselves as checkers.
    pub checkers: Vec<String>,
}

/// Reads the catalog, or one service of it, at one revision; `serializable`
/// reads this server's state without asking the leader.
pub async fn read(
    node: &Node,
    service: Option<&str>,
    serializable: bool,
) -> Result<Snapshot, CatalogError> {
    let scope = match service {
        Some(s) => format!("{PREFIX}service/{s}/"),
        None => format!("{PREFIX}service/"),
    };
    let (header, services) = node
        .range(RangeRequest {
            key: scope.clone().into_bytes(),
            range_end: prefix_end(scope.as_bytes()),
            serializable,
            ..Default::default()
        })
        .await?;
    let revision = header.revision;
    // The rest at the same revision, so the parts agree.
    let at = |prefix: String| RangeRequest {
        range_end: prefix_end(prefix.as_bytes()),
        key: prefix.into_bytes(),
        revision,
        serializable: true,
        ..Default::default()
    };
    let part = |p: &str| match service {
        Some(s) => format!("{PREFIX}{p}/{s}/"),
        None => format!("{PREFIX}{p}/"),
    };
    let health = node.range_local(at(part("health")))?.1.kvs;
    let ttl = node.range_local(at(part("ttl")))?.1.kvs;
    // Only the check runner, reading the whole catalog, needs the checkers.
    let checkers = match service {
        None => node.range_local(at(format!("{PREFIX}checkers/")))?.1.kvs,
        Some(_) => Vec::new(),
    };
    let mut snapshot = Snapshot {
        revision,
        ..Default::default()
    };
    let mut healths: BTreeMap<(String, String), (Health, i64)> = BTreeMap::new();
    for kv in &health {
        if let (Some(name), Ok(h)) = (
            split(&kv.key, "health"),
            serde_json::from_slice::<Health>(&kv.value),
        ) {
            healths.insert(name, (h, kv.mod_revision));
        }
    }
    let reports: BTreeMap<(String, String), i64> = ttl
        .iter()
        .filter_map(|kv| Some((split(&kv.key, "ttl")?, kv.lease)))
        .collect();
    for kv in services.kvs {
        let Some(name) = split(&kv.key, "service") else {
            continue;
        };
        let Ok(instance) = serde_json::from_slice::<Instance>(&kv.value) else {
            continue;
        };
        let (health, health_revision) = healths
            .remove(&name)
            .unwrap_or_else(|| (Health::initial(instance.check.as_ref(), "", 0), 0));
        let ttl_lease = reports.get(&name).copied();
        snapshot.entries.insert(
            name,
            Entry {
                instance,
                mod_revision: kv.mod_revision,
                lease: kv.lease,
                health,
                health_revision,
                ttl_lease,
            },
        );
    }
    snapshot.checkers = checkers
        .iter()
        .filter_map(|kv| {
            let k = std::str::from_utf8(&kv.key).ok()?;
            k.strip_prefix(&format!("{PREFIX}checkers/"))
                .map(str::to_string)
        })
        .collect();
    Ok(snapshot)
}

/// The `tag=` and `passing` filters of a read.
pub(crate) struct Filter {
    /// Keep instances with this tag.
    pub tag: Option<String>,
    /// Keep passing instances only.
    pub passing: bool,
}

impl Filter {
    /// The filters a query asks for; `passing` only where the endpoint has
    /// it (`passing`, `passing=true`; not `passing=false` or `0`).
    pub fn of(q: &std::collections::HashMap<String, String>, passing_allowed: bool) -> Filter {
        Filter {
            tag: q.get("tag").cloned(),
            passing: passing_allowed
                && q.get("passing")
                    .is_some_and(|v| !matches!(v.as_str(), "false" | "0")),
        }
    }

    /// Whether an instance passes.
    pub fn keeps(&self, e: &Entry) -> bool {
        let tagged = match &self.tag {
            Some(t) => e.instance.tags.contains(t),
            None => true,
        };
        tagged && (!self.passing || e.health.status == Status::Passing)
    }
}

/// (service, id) of `<PREFIX><part>/<service>/<id>`.
fn split(key: &[u8], part: &str) -> Option<(String, String)> {
    let k = std::str::from_utf8(key).ok()?;
    let rest = k
        .strip_prefix(PREFIX)?
        .strip_prefix(part)?
        .strip_prefix('/')?;
    let (service, id) = rest.split_once('/')?;
    Some((service.to_string(), id.to_string()))
}

fn json(v: &impl serde::Serialize) -> Result<Vec<u8>, CatalogError> {
    serde_json::to_vec(v).map_err(|e| CatalogError::Internal(e.to_string()))
}

fn put(key: Vec<u8>, value: Vec<u8>, lease: i64) -> RequestOp {
    RequestOp::Put(PutRequest {
        key,
        value,
        lease,
        ..Default::default()
    })
}

fn delete(key: Vec<u8>) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key,
        ..Default::default()
    })
}

fn compare(key: Vec<u8>, result: CompareResult, target: CompareTarget) -> Compare {
    Compare {
        result,
        target,
        key,
        range_end: Vec::new(),
    }
}

/// The registration's answer: the revision and the lease the instance is
/// bound to (0 for none).
pub struct Registered {
    /// The revision of the write.
    pub revision: i64,
    /// The lease.
    pub lease: i64,
}

/// Stores an instance (granting its lease first if it asked for a TTL). A
/// re-registration with the same check keeps its health; a changed check
/// starts over.
pub async fn register(node: &Node, valid: Valid, by: &str) -> Result<Registered, CatalogError> {
    let Valid {
        instance,
        mut lease,
        grant_ttl,
    } = valid;
    if lease != 0 {
        let (_, found) = node.lease_time_to_live(lease, false).await?;
        if found.is_none() {
            return Err(CatalogError::NotFound(format!(
                "lease: lease {lease} does not exist"
            )));
        }
    }
    if grant_ttl != 0 {
        lease = node.lease_grant(0, grant_ttl).await?.1;
    }
    let existing = read(node, Some(&instance.service), false).await?;
    let name = (instance.service.clone(), instance.id.clone());
    let health = match existing.entries.get(&name) {
        Some(e) if e.instance.check == instance.check && e.health_revision != 0 => e.health.clone(),
        _ => Health::initial(instance.check.as_ref(), by, now_ms()),
    };
    let (s, i) = (&instance.service, &instance.id);
    let mut ops = vec![
        put(key("service", s, i), json(&instance)?, lease),
        put(key("health", s, i), json(&health)?, lease),
    ];
    if !matches!(
        instance.check.as_ref().map(|c| &c.probe),
        Some(Probe::Ttl { .. })
    ) {
        ops.push(delete(key("ttl", s, i)));
    }
    let (header, _) = node
        .txn(TxnRequest {
            compare: Vec::new(),
            success: ops,
            failure: Vec::new(),
        })
        .await?;
    Ok(Registered {
        revision: header.revision,
        lease,
    })
}

/// Removes an instance; `expect_health` (a health revision) makes it
/// conditional on its health not having changed since.
pub async fn deregister(
    node: &Node,
    service: &str,
    id: &str,
    expect_health: Option<i64>,
) -> Result<i64, CatalogError> {
    let mut compares = vec![compare(
        key("service", service, id),
        CompareResult::Greater,
        CompareTarget::Version(0),
    )];
    if let Some(rev) = expect_health {
        compares.push(compare(
            key("health", service, id),
            CompareResult::Equal,
            CompareTarget::Mod(rev),
        ));
    }
    let (header, answer) = node
        .txn(TxnRequest {
            compare: compares,
            success: vec![
                delete(key("service", service, id)),
                delete(key("health", service, id)),
                delete(key("ttl", service, id)),
            ],
            failure: Vec::new(),
        })
        .await?;
    if !answer.succeeded {
        return Err(CatalogError::NotFound(format!(
            "service {service:?} has no instance {id:?} (or it changed meanwhile)"
        )));
    }
    Ok(header.revision)
}

/// Moves an instance's health to `status`, if the instance and its health
/// are still as read in `entry` (and, for `ttl_expired`, its TTL report has
/// indeed lapsed). Answers whether it was written.
pub async fn set_health(
    node: &Node,
    entry: &Entry,
    status: Status,
    output: &str,
    by: &str,
    ttl_expired: bool,
) -> Result<bool, CatalogError> {
    let (s, i) = (&entry.instance.service, &entry.instance.id);
    let health = entry.health.moved(status, output, by, now_ms());
    let mut compares = vec![
        compare(
            key("service", s, i),
            CompareResult::Equal,
            CompareTarget::Mod(entry.mod_revision),
        ),
        compare(
            key("health", s, i),
            CompareResult::Equal,
            CompareTarget::Mod(entry.health_revision),
        ),
    ];
    if ttl_expired {
        compares.push(compare(
            key("ttl", s, i),
            CompareResult::Equal,
            CompareTarget::Create(0),
        ));
    }
    let (_, answer) = node
        .txn(TxnRequest {
            compare: compares,
            success: vec![put(key("health", s, i), json(&health)?, entry.lease)],
            failure: Vec::new(),
        })
        .await?;
    Ok(answer.succeeded)
}

/// A TTL check's report: renews the report's lease (no Raft write while it
/// holds), and writes the health only when the status changes.
pub async fn report(
    node: &Node,
    service: &str,
    id: &str,
    status: Status,
    output: &str,
) -> Result<Status, CatalogError> {
    let snapshot = read(node, Some(service), false).await?;
    let Some(entry) = snapshot.entries.get(&(service.to_string(), id.to_string())) else {
        return Err(CatalogError::NotFound(format!(
            "service {service:?} has no instance {id:?}"
        )));
    };
    let Some(Probe::Ttl { ttl_ms }) = entry.instance.check.as_ref().map(|c| &c.probe) else {
        return Err(CatalogError::Invalid(format!(
            "instance {id:?} of {service:?} has no TTL check to report to"
        )));
    };
    let marker = key("ttl", service, id);
    let renewed = match entry.ttl_lease.filter(|l| *l != 0) {
        Some(lease) => node.lease_keep_alive(lease).await?.1 > 0,
        None => false,
    };
    let changed = entry.health.changes_to(status);
    if renewed && !changed {
        return Ok(status);
    }
    let mut ops = Vec::new();
    if !renewed {
        let ttl = (*ttl_ms).div_ceil(1000).max(1) as i64;
        let lease = node.lease_grant(0, ttl).await?.1;
        ops.push(put(marker, Vec::new(), lease));
    }
    let mut compares = vec![compare(
        key("service", service, id),
        CompareResult::Equal,
        CompareTarget::Mod(entry.mod_revision),
    )];
    if changed {
        let health = entry.health.moved(status, output, "report", now_ms());
        ops.push(put(key("health", service, id), json(&health)?, entry.lease));
        compares.push(compare(
            key("health", service, id),
            CompareResult::Equal,
            CompareTarget::Mod(entry.health_revision),
        ));
    }
    let (_, answer) = node
        .txn(TxnRequest {
            compare: compares,
            success: ops,
            failure: Vec::new(),
        })
        .await?;
    if !answer.succeeded {
        return Err(CatalogError::Conflict(format!(
            "instance {id:?} of {service:?} changed during the report; report again"
        )));
    }
    Ok(status)
}
