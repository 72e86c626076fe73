//! The target side: in each target DC the leader runs one replicator per
//! rule. It reads the committed checkpoint, asks the source for the changes
//! after it (or for the complete prefix when the rule's epoch is new here),
//! and proposes each batch to its own Raft as one entry that applies the
//! changes and moves the checkpoint together. Any failure (WAN cut, source
//! leader change, a batch refused because another leader moved the
//! checkpoint first) ends the stream; the next one starts again from the
//! committed checkpoint, so nothing is applied twice and nothing is skipped.

use super::Replication;
use crate::wire::{self, ChangeBatch, ChangesRequest, WanRequest, WanResponse};
use crate::Federation;
use meridian_node::kv::mirror::{MirrorBatch, MirrorChange, MirrorRule};
use meridian_node::kv::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most bytes of changes merged into one proposal.
const PROPOSAL_BYTES: usize = 1024 * 1024;
/// How often the checkpoint moves when the source's revisions advance with
/// nothing under the prefix (so that a restart need not re-read them).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// A stream silent this long (the source says how far it is twice a second) is given up.
const SILENCE: Duration = Duration::from_secs(5);
/// Most resync content held while it arrives.
const RESYNC_BYTES_MAX: usize = 48 * 1024 * 1024;

/// Runs the rule's replicator until aborted (the supervisor aborts it when
/// this server stops leading or the rule changes), retrying with backoff.
pub(crate) async fn run(fed: Federation, replication: Arc<Replication>, rule: MirrorRule) {
    // Exported from the start at 0, so rates and alerts see the first error.
    let metrics = &fed.shared.metrics;
    metrics.replication_errors.with_label_values(&[&rule.name]);
    metrics.replication_changes.with_label_values(&[&rule.name]);
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let error = match stream(&fed, &replication, &rule).await {
            Ok(()) => "the source ended the stream".to_string(),
            Err(e) => e,
        };
        fed.shared
            .metrics
            .replication_errors
            .with_label_values(&[&rule.name])
            .inc();
        replication.update(&rule.name, |p| {
            p.state = "retrying";
            p.error = Some(error.clone());
        });
        tracing::info!(rule = %rule.name, source = %rule.source, %error, "replication stream ended; retrying");
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One replication stream, from the committed checkpoint until it fails.
async fn stream(
    fed: &Federation,
    replication: &Replication,
    rule: &MirrorRule,
) -> Result<(), String> {
    let node = &fed.shared.node;
    let metrics = &fed.shared.metrics;
    let source = rule.source.as_str();
    // Everything committed before this server led must be applied before its checkpoint is read.
    node.read_barrier().await.map_err(|e| e.to_string())?;
    let (checkpoint, _) = node.mirror_state(&rule.name).map_err(|e| e.to_string())?;
    let resync = checkpoint.epoch != rule.epoch;
    let mut held = checkpoint.source_revision;
    replication.update(&rule.name, |p| {
        p.state = if resync { "resyncing" } else { "streaming" };
        p.checkpoint = held;
    });
    let timeout = fed.shared.config.forward_timeout;
    let (mut w, mut r, _) = fed
        .shared
        .links
        .open(source, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let request = wire::encode(&WanRequest::Changes(ChangesRequest {
        from: fed.datacenter().to_string(),
        rule: rule.name.clone(),
        epoch: rule.epoch,
        after: held,
        resync,
    }));
    metrics
        .send(source, &mut w, &request)
        .await
        .map_err(|e| e.to_string())?;
    // Frames are read by a task of their own into a short queue, so that
    // the frames that arrived during a proposal merge into the next one.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<WanResponse, String>>(8);
    let reader_metrics = metrics.clone();
    let reader_dc = source.to_string();
    let reader = tokio::spawn(async move {
        loop {
            let message = match reader_metrics.next(&reader_dc, &mut r).await {
                Ok(Some(frame)) => wire::decode::<WanResponse>(&frame),
                Ok(None) => Err("the source closed the stream".to_string()),
                Err(e) => Err(e.to_string()),
            };
            let failed = message.is_err();
            if tx.send(message).await.is_err() || failed {
                return;
            }
        }
    });
    let _reader = AbortOnDrop(reader);
    let mut snapshot: Vec<MirrorChange> = Vec::new();
    let mut snapshot_bytes = 0;
    let mut last_proposal = Instant::now();
    let mut caught_up_at = Instant::now();
    let mut pending: Option<WanResponse> = None;
    loop {
        let message = match pending.take() {
            Some(m) => m,
            None => match tokio::time::timeout(SILENCE, rx.recv()).await {
                Ok(Some(m)) => m?,
                Ok(None) => return Err("the stream reader stopped".into()),
                Err(_) => return Err(format!("no word from {source} for {} s", SILENCE.as_secs())),
            },
        };
        match message {
            WanResponse::Refused(why) => return Err(format!("{source} refused: {why}")),
            WanResponse::Snapshot(part) => {
                replication.update(&rule.name, |p| p.state = "resyncing");
                for (key, value) in part.keys {
                    let change = MirrorChange::Put { key, value };
                    snapshot_bytes += change.payload_bytes();
                    snapshot.push(change);
                }
                if snapshot_bytes > RESYNC_BYTES_MAX {
                    return Err(format!(
                        "the prefix holds more than {} MiB, too much to resync in one entry",
                        RESYNC_BYTES_MAX >> 20
                    ));
                }
                if part.more {
                    continue;
                }
                let changes = std::mem::take(&mut snapshot);
                let count = changes.len();
                let batch = MirrorBatch {
                    rule: rule.name.clone(),
                    epoch: rule.epoch,
                    after: held,
                    through: part.revision,
                    resync: true,
                    revisions: vec![(part.revision, changes)],
                };
                node.write(Command::Mirror(batch))
                    .await
                    .map_err(|e| e.to_string())?;
                snapshot_bytes = 0;
                held = part.revision;
                last_proposal = Instant::now();
                metrics
                    .replication_batches
                    .with_label_values(&[&rule.name, "resync"])
                    .inc();
                tracing::info!(rule = %rule.name, source = %source, revision = held, keys = count, "replication resync applied");
                replication.update(&rule.name, |p| {
                    p.state = "streaming";
                    p.checkpoint = held;
                    p.resyncs += 1;
                    p.error = None;
                });
            }
            WanResponse::Changes(first) => {
                let (batch, next) = merge(first, &mut rx);
                pending = next;
                let head = batch.head;
                let through = batch.through;
                let count: usize = batch.revisions.iter().map(|(_, c)| c.len()).sum();
                let worth = !batch.revisions.is_empty()
                    || (through > held && last_proposal.elapsed() >= CHECKPOINT_EVERY);
                if worth {
                    let proposal = MirrorBatch {
                        rule: rule.name.clone(),
                        epoch: rule.epoch,
                        after: held,
                        through,
                        resync: false,
                        revisions: batch.revisions,
                    };
                    node.write(Command::Mirror(proposal))
                        .await
                        .map_err(|e| e.to_string())?;
                    held = through;
                    last_proposal = Instant::now();
                    metrics
                        .replication_batches
                        .with_label_values(&[&rule.name, "changes"])
                        .inc();
                    metrics
                        .replication_changes
                        .with_label_values(&[&rule.name])
                        .inc_by(count as u64);
                }
                // Revisions with nothing under the prefix are held as well, checkpointed or not.
                let seen = through.max(held);
                if seen >= head {
                    caught_up_at = Instant::now();
                }
                let lag_revisions = (head - seen).max(0);
                let lag_seconds = if lag_revisions == 0 {
                    0.0
                } else {
                    caught_up_at.elapsed().as_secs_f64()
                };
                replication.update(&rule.name, |p| {
                    p.state = "streaming";
                    p.checkpoint = seen;
                    p.head = head;
                    p.lag_revisions = lag_revisions;
                    p.lag_seconds = lag_seconds;
                    p.error = None;
                });
                let labels = [rule.name.as_str(), source];
                metrics
                    .replication_lag_revisions
                    .with_label_values(&labels)
                    .set(lag_revisions);
                metrics
                    .replication_lag_seconds
                    .with_label_values(&labels)
                    .set(lag_seconds);
                metrics
                    .replication_checkpoint
                    .with_label_values(&labels)
                    .set(seen);
            }
            other => return Err(format!("unexpected message from {source}: {other:?}")),
        }
    }
}

/// Merges the change batches already queued behind `first` (up to
/// [`PROPOSAL_BYTES`]); returns the merged batch (with the newest source
/// head) and a message taken from the queue that was not merged.
fn merge(
    first: ChangeBatch,
    rx: &mut tokio::sync::mpsc::Receiver<Result<WanResponse, String>>,
) -> (ChangeBatch, Option<WanResponse>) {
    let mut batch = first;
    let mut bytes = bytes_of(&batch);
    while bytes < PROPOSAL_BYTES {
        match rx.try_recv() {
            Ok(Ok(WanResponse::Changes(next))) => {
                bytes += bytes_of(&next);
                batch.head = batch.head.max(next.head);
                batch.through = batch.through.max(next.through);
                batch.revisions.extend(next.revisions);
            }
            Ok(Ok(other)) => return (batch, Some(other)),
            Ok(Err(e)) => return (batch, Some(WanResponse::Refused(e))),
            Err(_) => break,
        }
    }
    (batch, None)
}

fn bytes_of(batch: &ChangeBatch) -> usize {
    batch
        .revisions
        .iter()
        .flat_map(|(_, c)| c)
        .map(MirrorChange::payload_bytes)
        .sum()
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
