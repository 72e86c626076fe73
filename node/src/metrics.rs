//! The server's Prometheus metrics (names prefixed `meridian_`, units in the name).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the node exports.
pub struct Metrics {
    registry: Registry,
    /// 1 when the server knows a leader.
    pub has_leader: IntGauge,
    /// 1 when this server is the leader.
    pub is_leader: IntGauge,
    /// Leader changes seen.
    pub leader_changes: IntCounter,
    /// Current Raft term.
    pub term: IntGauge,
    /// Highest log index known committed.
    pub commit_index: IntGauge,
    /// Highest log index applied.
    pub applied_index: IntGauge,
    /// Entries of other servers' proposals held back to be applied together.
    pub entries_held: IntCounter,
    /// Starts that rebuilt the state because the machine stopped under it.
    pub state_rebuilds: IntCounter,
    /// Last log index.
    pub last_log_index: IntGauge,
    /// Proposals committed.
    pub proposals_committed: IntCounter,
    /// Proposals that failed.
    pub proposals_failed: IntCounter,
    /// Proposals in flight.
    pub proposals_pending: IntGauge,
    /// Time from proposal to applied answer.
    pub proposal_duration: Histogram,
    /// Watchers open now.
    pub watchers: IntGauge,
    /// Watch streams open now.
    pub watch_streams: IntGauge,
    /// Watch events sent.
    pub watch_events: IntCounter,
    /// Watch responses queued for clients and not yet taken by them.
    pub watch_queued: IntGauge,
    /// Storage reads by watchers behind the shared window of recent changes.
    pub watch_history_reads: IntCounter,
    /// Watchers replaying history or waiting for a slow client.
    pub watch_catching_up: IntGauge,
    /// Clients waiting for a lock.
    pub lock_waiters: IntGauge,
    /// Clients campaigning for an election and not (yet) leading.
    pub election_waiters: IntGauge,
    /// Leases that exist.
    pub leases: IntGauge,
    /// Leases granted through this server.
    pub lease_grants: IntCounter,
    /// Compactions this server proposed, by trigger (api, admin, auto).
    pub compactions: IntCounterVec,
    /// Leases revoked by clients through this server.
    pub lease_revokes: IntCounter,
    /// Leases this server revoked as leader because they expired.
    pub lease_expiries: IntCounter,
    /// Keep-alives answered by this server.
    pub lease_keepalives: IntCounter,
    /// Client writes carried by one Raft entry.
    pub proposal_commands: Histogram,
    /// Durable commit time of the Raft log.
    pub fsync_duration: Histogram,
    /// Bytes of the state database in use.
    pub db_size: IntGauge,
    /// The database quota.
    pub db_quota: IntGauge,
    /// Worker threads of the server's runtime.
    pub worker_threads: IntGauge,
    /// Live keys.
    pub keys: IntGauge,
    /// Current revision.
    pub revision: IntGauge,
    /// Compacted revision.
    pub compacted_revision: IntGauge,
    /// 1 while the NOSPACE alarm is raised.
    pub nospace_alarm: IntGauge,
    /// Client API requests by route and status.
    pub api_requests: IntCounterVec,
    /// Client API latency by route.
    pub api_duration: HistogramVec,
    /// Snapshot build/install durations.
    pub snapshot_duration: HistogramVec,
    /// Backup and compaction time, by operation.
    pub maintenance_duration: HistogramVec,
    /// Writes forwarded from this follower to the leader.
    pub forwarded_writes: IntCounter,
}

fn secs(name: &str, help: &str, buckets: Vec<f64>) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(buckets)
}

fn fast_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0001, 2.0, 16).unwrap_or_default()
}

impl Metrics {
    /// Creates and registers every metric, with `datacenter` and `name` as constant labels of build info.
    pub fn new(datacenter: &str, name: &str) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let g = |n: &str, h: &str| -> Result<IntGauge, prometheus::Error> {
            let m = IntGauge::new(n, h)?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };
        let c = |n: &str, h: &str| -> Result<IntCounter, prometheus::Error> {
            let m = IntCounter::new(n, h)?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };
        let h = |o: HistogramOpts| -> Result<Histogram, prometheus::Error> {
            let m = Histogram::with_opts(o)?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };
        let build = IntGauge::with_opts(
            Opts::new(
                "meridian_build_info",
                "Build information (version, source commit, datacenter, server name); always 1.",
            )
            .const_label("version", env!("CARGO_PKG_VERSION"))
            .const_label("commit", env!("MERIDIAN_COMMIT"))
            .const_label("datacenter", datacenter)
            .const_label("name", name),
        )?;
        build.set(1);
        registry.register(Box::new(build))?;
        let api_requests = IntCounterVec::new(
            Opts::new(
                "meridian_api_requests_total",
                "Client API requests by route and HTTP status.",
            ),
            &["route", "code"],
        )?;
        registry.register(Box::new(api_requests.clone()))?;
        let compactions = IntCounterVec::new(
            Opts::new(
                "meridian_compactions_total",
                "Compactions this server proposed, by trigger (api: etcd's Compact; admin: /admin/compact; auto: retention).",
            ),
            &["trigger"],
        )?;
        registry.register(Box::new(compactions.clone()))?;
        let api_duration = HistogramVec::new(
            secs(
                "meridian_api_request_duration_seconds",
                "Client API request latency by route.",
                fast_buckets(),
            ),
            &["route"],
        )?;
        registry.register(Box::new(api_duration.clone()))?;
        let snapshot_duration = HistogramVec::new(
            secs(
                "meridian_snapshot_duration_seconds",
                "Raft snapshot build and install time.",
                prometheus::exponential_buckets(0.001, 2.0, 16)?,
            ),
            &["kind"],
        )?;
        registry.register(Box::new(snapshot_duration.clone()))?;
        let maintenance_duration = HistogramVec::new(
            secs(
                "meridian_maintenance_duration_seconds",
                "Time taken by maintenance this server ran, by operation (backup, compaction).",
                prometheus::exponential_buckets(0.001, 2.0, 18)?,
            ),
            &["operation"],
        )?;
        registry.register(Box::new(maintenance_duration.clone()))?;
        Ok(Metrics {
            has_leader: g("meridian_has_leader", "1 when this server knows a leader.")?,
            is_leader: g("meridian_is_leader", "1 when this server is the leader.")?,
            leader_changes: c(
                "meridian_leader_changes_total",
                "Leader changes seen by this server.",
            )?,
            term: g("meridian_raft_term", "Current Raft term.")?,
            commit_index: g(
                "meridian_raft_commit_index",
                "Highest Raft log index known committed.",
            )?,
            applied_index: g(
                "meridian_raft_applied_index",
                "Highest Raft log index whose writes the state machine has committed (readers see them).",
            )?,
            entries_held: c(
                "meridian_raft_entries_held_total",
                "Entries another server proposed that this one held back, to apply several in one transaction.",
            )?,
            state_rebuilds: c(
                "meridian_state_rebuilds_total",
                "Starts of this server that rebuilt its state from the last snapshot and the Raft log, because the machine had stopped while the state held unsynced commits.",
            )?,
            last_log_index: g("meridian_raft_last_log_index", "Last Raft log index.")?,
            proposals_committed: c(
                "meridian_proposals_committed_total",
                "Proposals committed and applied.",
            )?,
            proposals_failed: c(
                "meridian_proposals_failed_total",
                "Proposals that failed (no leader, timeout, shutdown).",
            )?,
            proposals_pending: g(
                "meridian_proposals_pending",
                "Proposals waiting for commit.",
            )?,
            proposal_duration: h(secs(
                "meridian_proposal_duration_seconds",
                "Time from proposal to applied answer.",
                fast_buckets(),
            ))?,
            watchers: g("meridian_watchers", "Watchers open now.")?,
            watch_streams: g("meridian_watch_streams", "Watch streams open now.")?,
            watch_events: c("meridian_watch_events_total", "Watch events sent.")?,
            watch_history_reads: c(
                "meridian_watch_history_reads_total",
                "Storage reads by watchers behind the shared window of recent changes.",
            )?,
            watch_catching_up: g(
                "meridian_watch_catching_up_watchers",
                "Watchers replaying history or waiting for a slow client.",
            )?,
            lock_waiters: g("meridian_lock_waiters", "Clients waiting for a lock.")?,
            election_waiters: g(
                "meridian_election_waiters",
                "Clients campaigning in an election and not leading yet.",
            )?,
            watch_queued: g(
                "meridian_watch_queued_responses",
                "Watch responses queued for clients and not yet taken (bounded per stream).",
            )?,
            leases: g("meridian_leases", "Leases that exist.")?,
            compactions,
            lease_grants: c(
                "meridian_lease_grants_total",
                "Leases granted through this server.",
            )?,
            lease_revokes: c(
                "meridian_lease_revokes_total",
                "Leases revoked by clients through this server.",
            )?,
            lease_expiries: c(
                "meridian_lease_expiries_total",
                "Leases revoked by this server, as leader, because they expired.",
            )?,
            lease_keepalives: c(
                "meridian_lease_keepalives_total",
                "Lease keep-alives answered by this server.",
            )?,
            proposal_commands: h(prometheus::HistogramOpts::new(
                "meridian_proposal_commands",
                "Client writes carried by one Raft entry (writes proposed together).",
            )
            .buckets(prometheus::exponential_buckets(1.0, 2.0, 10)?))?,
            fsync_duration: h(secs(
                "meridian_fsync_duration_seconds",
                "Durable commit time of the Raft log.",
                fast_buckets(),
            ))?,
            db_size: g(
                "meridian_db_size_bytes",
                "Bytes of the state database in use.",
            )?,
            db_quota: g("meridian_db_quota_bytes", "Database quota in bytes.")?,
            worker_threads: g(
                "meridian_worker_threads",
                "Threads of the server's runtime that serve clients, peers and Raft.",
            )?,
            keys: g("meridian_keys", "Live keys.")?,
            revision: g(
                "meridian_revision",
                "Current revision of the key-value store.",
            )?,
            compacted_revision: g(
                "meridian_compacted_revision",
                "Compacted revision of the key-value store.",
            )?,
            nospace_alarm: g(
                "meridian_nospace_alarm",
                "1 while the NOSPACE alarm blocks puts.",
            )?,
            forwarded_writes: c(
                "meridian_forwarded_writes_total",
                "Writes forwarded from this follower to the leader.",
            )?,
            api_requests,
            api_duration,
            snapshot_duration,
            maintenance_duration,
            registry,
        })
    }

    /// The registry behind `/metrics`, for other crates' metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Holds a gauge up by one until dropped (a watcher, a waiter).
pub struct Held(IntGauge);

impl Held {
    /// Increments `gauge` now and decrements it on drop.
    pub fn new(gauge: &IntGauge) -> Held {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}
