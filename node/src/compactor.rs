//! Automatic compaction, as etcd's `--auto-compaction-mode` and
//! `--auto-compaction-retention`: the leader compacts history older than a
//! time window (`periodic`) or more than a number of revisions behind the
//! current one (`revision`). Compaction is an ordinary Raft command, so every
//! server removes the same history.

use crate::server::Node;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What automatic compaction keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retention {
    /// No automatic compaction.
    #[default]
    Off,
    /// Keep the history of this long a window.
    Periodic(Duration),
    /// Keep this many revisions behind the current one.
    Revision(i64),
}

/// Automatic compaction settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactionSettings {
    /// What to keep.
    pub retention: Retention,
    /// How often the leader checks; `None` for etcd's defaults (a tenth of
    /// the window, at most an hour, for `periodic`; 5 minutes for
    /// `revision`).
    pub interval: Option<Duration>,
}

impl CompactionSettings {
    /// How often the leader checks.
    pub fn check_interval(&self) -> Duration {
        if let Some(i) = self.interval {
            return i;
        }
        match self.retention {
            Retention::Off => Duration::from_secs(300),
            Retention::Periodic(window) => {
                (window / 10).clamp(Duration::from_millis(100), Duration::from_secs(3600))
            }
            Retention::Revision(_) => Duration::from_secs(300),
        }
    }
}

/// The revision to compact at, given the samples of (when, revision)
/// taken so far and the current revision: `None` when nothing is due.
fn target(
    retention: Retention,
    samples: &VecDeque<(Instant, i64)>,
    now: Instant,
    current: i64,
) -> Option<i64> {
    match retention {
        Retention::Off => None,
        Retention::Revision(keep) => Some(current - keep).filter(|t| *t > 1),
        // The newest revision that was current at least a window ago.
        Retention::Periodic(window) => samples
            .iter()
            .rev()
            .find(|(at, _)| now.duration_since(*at) >= window)
            .map(|(_, r)| *r)
            .filter(|t| *t > 1),
    }
}

/// Runs automatic compaction on this server while it leads.
pub(crate) async fn run(node: Node) {
    let settings = node.config().compaction;
    if settings.retention == Retention::Off {
        return;
    }
    let mut tick = tokio::time::interval(settings.check_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    loop {
        tick.tick().await;
        let Ok((current, compacted)) = node.revisions() else {
            continue;
        };
        let now = Instant::now();
        // Only a time window needs to remember which revision was current when.
        if let Retention::Periodic(window) = settings.retention {
            samples.push_back((now, current));
            // Keep one sample older than the window, and everything newer.
            while samples.len() > 1 && now.duration_since(samples[1].0) >= window {
                samples.pop_front();
            }
        }
        if !node.is_leader() {
            continue;
        }
        let Some(at) = target(settings.retention, &samples, now, current) else {
            continue;
        };
        if at <= compacted {
            continue;
        }
        match node.compact_at(at, "auto").await {
            Ok(_) => {
                tracing::info!(revision = at, "compacted history (automatic retention)");
            }
            Err(e) => {
                tracing::warn!(revision = at, error = %e, "automatic compaction failed; retried on the next check")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_etcds_retention_rules() {
        let t0 = Instant::now();
        let samples: VecDeque<(Instant, i64)> = [
            (t0, 10),
            (t0 + Duration::from_secs(30), 40),
            (t0 + Duration::from_secs(60), 90),
        ]
        .into_iter()
        .collect();
        let now = t0 + Duration::from_secs(95);
        let hour = Retention::Periodic(Duration::from_secs(60));
        // 60 s ago is t0 + 35 s: the newest sample at least that old is 40.
        assert_eq!(target(hour, &samples, now, 120), Some(40));
        let long = Retention::Periodic(Duration::from_secs(600));
        assert_eq!(target(long, &samples, now, 120), None);
        assert_eq!(
            target(Retention::Revision(100), &samples, now, 120),
            Some(20)
        );
        assert_eq!(target(Retention::Revision(100), &samples, now, 50), None);
        assert_eq!(target(Retention::Off, &samples, now, 500), None);
    }
}
