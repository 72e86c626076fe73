//! The source side of a replication stream: a target's leader asks for a
//! rule's changes after its checkpoint; this server answers from its applied
//! state only, first with the prefix's complete content when asked to (or when
//! the checkpoint is compacted away), then with every later change, as they
//! are applied, for as long as the target reads. QUIC flow control paces it: a
//! target that applies slowly stops this loop at its next send, so memory here
//! stays at one batch.

use crate::wire::{self, ChangeBatch, ChangesRequest, SnapshotPart, WanResponse};
use crate::Federation;
use meridian_gateway::FrameWriter;
use meridian_node::kv::mirror::{MirrorChange, MirrorRule};
use meridian_node::kv::{prefix_end, EventKind, KvError, RangeRequest};
use meridian_node::{Node, NodeError};
use std::time::{Duration, Instant};

/// Most events read for one batch.
const BATCH_EVENTS: usize = 2_000;
/// About the most bytes of keys and values in one batch or snapshot part.
const BATCH_BYTES: usize = 1024 * 1024;
/// How often a caught-up stream says how far it is (so the target knows its lag).
const HEARTBEAT: Duration = Duration::from_millis(500);

/// Serves one replication stream until the target goes away or an error.
pub(crate) async fn serve(fed: &Federation, request: ChangesRequest, mut w: FrameWriter) {
    let shared = &fed.shared;
    let from = request.from.clone();
    let rule = match own_rule(&shared.node, fed.datacenter(), &request) {
        Ok(rule) => rule,
        Err(why) => {
            let refused = wire::encode(&WanResponse::Refused(why));
            let _ = shared.metrics.send(&from, &mut w, &refused).await;
            w.finish();
            return;
        }
    };
    shared
        .metrics
        .replication_streams_served
        .with_label_values(&[&rule.name, &from])
        .inc();
    let result = stream(fed, &rule, request, &mut w).await;
    if let Err(why) = result {
        tracing::debug!(rule = %rule.name, target = %from, error = %why, "replication stream ended");
        let refused = wire::encode(&WanResponse::Refused(why));
        let _ = shared.metrics.send(&from, &mut w, &refused).await;
    }
    w.finish();
}

/// The rule as this DC holds it, if this DC is its source at the epoch the
/// target follows and the target is one of its targets.
fn own_rule(node: &Node, own: &str, request: &ChangesRequest) -> Result<MirrorRule, String> {
    let rules = node.mirror_rules().map_err(|e| e.to_string())?;
    let Some(rule) = rules.get(&request.rule).filter(|r| !r.deleted) else {
        return Err(format!("datacenter {own} has no rule {:?}", request.rule));
    };
    if rule.epoch != request.epoch {
        return Err(format!(
            "rule {:?} is at epoch {} in {own}, not {}",
            rule.name, rule.epoch, request.epoch
        ));
    }
    if rule.source != own {
        return Err(format!(
            "{own} is not the source of rule {:?} (the source is {})",
            rule.name, rule.source
        ));
    }
    if !rule.is_target(&request.from) {
        return Err(format!(
            "{} is not a target of rule {:?}",
            request.from, rule.name
        ));
    }
    Ok(rule.clone())
}

async fn stream(
    fed: &Federation,
    rule: &MirrorRule,
    request: ChangesRequest,
    w: &mut FrameWriter,
) -> Result<(), String> {
    let node = &fed.shared.node;
    let metrics = &fed.shared.metrics;
    let dc = request.from.as_str();
    // Woken when the window `Node::events` reads has taken in new changes.
    let mut feed = node.subscribe_feed();
    let mut after = request.after;
    let mut resync = request.resync;
    let mut last_sent = Instant::now();
    loop {
        if resync {
            after = send_snapshot(fed, rule, dc, w).await?;
            resync = false;
            last_sent = Instant::now();
        }
        let (events, through, head) = match node.events(after + 1, BATCH_EVENTS, BATCH_BYTES) {
            Ok(read) => read,
            Err(NodeError::Kv(KvError::Compacted)) => {
                resync = true;
                continue;
            }
            Err(e) => return Err(format!("reading changes: {e}")),
        };
        let mut batch = ChangeBatch {
            through: through.max(after),
            head,
            revisions: Vec::new(),
        };
        for event in events.iter().filter(|e| e.kv.key.starts_with(&rule.prefix)) {
            let change = match event.kind {
                EventKind::Put => MirrorChange::Put {
                    key: event.kv.key.clone(),
                    value: event.kv.value.clone(),
                },
                EventKind::Delete => MirrorChange::Delete {
                    key: event.kv.key.clone(),
                },
            };
            let revision = event.kv.mod_revision;
            match batch.revisions.last_mut() {
                Some((r, changes)) if *r == revision => changes.push(change),
                _ => batch.revisions.push((revision, vec![change])),
            }
        }
        let covered = batch.through;
        // Revisions with nothing under the prefix are said with the next batch or heartbeat.
        if !batch.revisions.is_empty() || (covered > after && last_sent.elapsed() >= HEARTBEAT) {
            let frame = wire::encode(&WanResponse::Changes(batch));
            metrics
                .send(dc, w, &frame)
                .await
                .map_err(|e| e.to_string())?;
            last_sent = Instant::now();
        }
        after = covered;
        if after < head {
            continue;
        }
        // Caught up: wait for the next applied revision, saying how far we are now and then.
        let wait = HEARTBEAT.saturating_sub(last_sent.elapsed());
        tokio::select! {
            changed = feed.changed() => {
                if changed.is_err() {
                    return Err("the source server is stopping".into());
                }
            }
            _ = tokio::time::sleep(wait) => {
                let beat = wire::encode(&WanResponse::Changes(ChangeBatch {
                    through: after,
                    head: after,
                    revisions: Vec::new(),
                }));
                metrics.send(dc, w, &beat).await.map_err(|e| e.to_string())?;
                last_sent = Instant::now();
            }
            _ = w.stopped() => return Ok(()),
        }
    }
}

/// Sends the prefix's complete content at one revision (read in one storage
/// transaction of applied state); returns that revision.
async fn send_snapshot(
    fed: &Federation,
    rule: &MirrorRule,
    dc: &str,
    w: &mut FrameWriter,
) -> Result<i64, String> {
    let (header, range) = fed
        .shared
        .node
        .range_local(RangeRequest {
            key: rule.prefix.clone(),
            range_end: prefix_end(&rule.prefix),
            serializable: true,
            ..Default::default()
        })
        .map_err(|e| format!("reading the prefix: {e}"))?;
    let revision = header.revision;
    let mut kvs = range.kvs.into_iter().peekable();
    loop {
        let mut part = SnapshotPart {
            revision,
            keys: Vec::new(),
            more: false,
        };
        let mut bytes = 0;
        while let Some(kv) = kvs.next_if(|_| bytes < BATCH_BYTES) {
            bytes += kv.key.len() + kv.value.len();
            part.keys.push((kv.key, kv.value));
        }
        part.more = kvs.peek().is_some();
        let more = part.more;
        let frame = wire::encode(&WanResponse::Snapshot(part));
        fed.shared
            .metrics
            .send(dc, w, &frame)
            .await
            .map_err(|e| e.to_string())?;
        if !more {
            return Ok(revision);
        }
    }
}
