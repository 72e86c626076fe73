//! Asynchronous prefix replication between datacenters.
//!
//! - [`rules`]: rules changed by the API, seeded from configuration,
//!   promoted, and adopted from other datacenters (highest epoch wins).
//! - [`source`]: a source server streams a rule's changes to a target.
//! - `replicator`: a target's leader pulls them and applies each batch with
//!   its checkpoint in one Raft entry.
//!
//! The supervisor here runs on every server: while the server leads its DC it
//! seeds configured rules and keeps one replicator per rule that targets the
//! DC; when it stops leading, or a rule changes epoch, the replicators stop.

mod replicator;
pub mod rules;
pub(crate) mod source;

use crate::Federation;
use meridian_node::kv::mirror::MirrorRule;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How often the supervisor checks leadership and rules.
const SUPERVISE_EVERY: Duration = Duration::from_millis(200);

/// A rule's replication into this DC, as its leader sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// The rule.
    pub rule: String,
    /// Its source DC.
    pub source: String,
    /// The epoch followed.
    pub epoch: u64,
    /// starting, resyncing, streaming or retrying.
    pub state: &'static str,
    /// The source revision held here.
    pub checkpoint: i64,
    /// The source's revision as last heard.
    pub head: i64,
    /// Source revisions not yet held here.
    pub lag_revisions: i64,
    /// Seconds since this DC last held everything the source had.
    pub lag_seconds: f64,
    /// Resyncs done by this leader.
    pub resyncs: u64,
    /// Why the last stream ended, while retrying.
    pub error: Option<String>,
}

impl Progress {
    fn new(rule: &MirrorRule) -> Progress {
        Progress {
            rule: rule.name.clone(),
            source: rule.source.clone(),
            epoch: rule.epoch,
            state: "starting",
            checkpoint: 0,
            head: 0,
            lag_revisions: 0,
            lag_seconds: 0.0,
            resyncs: 0,
            error: None,
        }
    }
}

/// The replicators this server runs, and their progress.
#[derive(Default)]
pub(crate) struct Replication {
    progress: Mutex<BTreeMap<String, Progress>>,
    /// Whether a rule mirrors into this DC with `forward_writes` (checked per write request).
    forwards_writes: AtomicBool,
}

impl Replication {
    /// Whether writes refused under a mirrored prefix may be sent to the source.
    pub(crate) fn forwards_writes(&self) -> bool {
        self.forwards_writes.load(Ordering::Relaxed)
    }

    /// Progress of every rule replicated into this DC by this server.
    pub(crate) fn progress(&self) -> Vec<Progress> {
        self.progress
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    fn update(&self, rule: &str, f: impl FnOnce(&mut Progress)) {
        if let Ok(mut p) = self.progress.lock() {
            if let Some(progress) = p.get_mut(rule) {
                f(progress);
            }
        }
    }
}

/// Keeps the replicators in step with leadership and rules until stopped.
pub(crate) async fn supervise(fed: Federation, mut stop: tokio::sync::watch::Receiver<bool>) {
    let replication = fed.shared.replication.clone();
    let own = fed.datacenter().to_string();
    let mut running: BTreeMap<String, (u64, tokio::task::JoinHandle<()>)> = BTreeMap::new();
    let mut seeded = false;
    loop {
        let node = &fed.shared.node;
        let leading = node.is_leader();
        if leading && !seeded {
            match rules::seed(&fed).await {
                Ok(()) => seeded = true,
                Err(e) => tracing::warn!(error = %e, "configured replication rules not stored yet"),
            }
        }
        seeded &= leading;
        let targeted = node.mirror_rules().map(|rules| {
            rules
                .into_iter()
                .filter(|(_, r)| r.is_target(&own))
                .collect::<BTreeMap<_, _>>()
        });
        if let Ok(targeted) = &targeted {
            let forwards = targeted.values().any(|r| r.forward_writes);
            replication
                .forwards_writes
                .store(forwards, Ordering::Relaxed);
        }
        let wanted = match (leading, targeted) {
            (true, Ok(targeted)) => targeted,
            _ => BTreeMap::new(),
        };
        running.retain(|name, (epoch, task)| {
            let keep = wanted.get(name).is_some_and(|r| r.epoch == *epoch);
            if !keep {
                task.abort();
                stop_reporting(&fed, &replication, name);
            }
            keep
        });
        for (name, rule) in wanted {
            if running.contains_key(&name) {
                continue;
            }
            if let Ok(mut p) = replication.progress.lock() {
                p.insert(name.clone(), Progress::new(&rule));
            }
            let task = tokio::spawn(replicator::run(
                fed.clone(),
                replication.clone(),
                rule.clone(),
            ));
            running.insert(name, (rule.epoch, task));
        }
        tokio::select! {
            _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
            _ = stop.changed() => break,
        }
    }
    for (name, (_, task)) in running {
        task.abort();
        stop_reporting(&fed, &replication, &name);
    }
}

fn stop_reporting(fed: &Federation, replication: &Replication, rule: &str) {
    let Ok(mut p) = replication.progress.lock() else {
        return;
    };
    if let Some(progress) = p.remove(rule) {
        let m = &fed.shared.metrics;
        let labels = [rule, progress.source.as_str()];
        let _ = m.replication_lag_revisions.remove_label_values(&labels);
        let _ = m.replication_lag_seconds.remove_label_values(&labels);
        let _ = m.replication_checkpoint.remove_label_values(&labels);
    }
}
