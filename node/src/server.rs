//! A running server: opens storage, starts Raft and the peer transport,
//! bootstraps the datacenter once, and offers the typed operations the client
//! API calls (writes through Raft, reads through ReadIndex or locally).

use crate::config::NodeConfig;
use crate::kv::*;
use crate::lessor::{Lessor, TTL_MAX};
use crate::metrics::Metrics;
use crate::raft::network::ForwardError;
use crate::raft::{
    self, LogId, Member, PeerNetwork, PeerRequest, PeerResponse, ProposeError, Proposer,
    ProposerLimits, Raft, StateMachine,
};
use crate::reads::{ReadIndexes, RoundError};
use crate::recent::Recent;
use crate::store::{self, EnvKind};
use meridian_gateway::tls::TlsMaterial;
use meridian_gateway::{Endpoint, EndpointOptions, GatewayError, ALPN_PEER};
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the server could not start or serve a request.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Storage could not be opened or used.
    #[error("storage: {0}")]
    Storage(String),
    /// The peer transport could not be set up.
    #[error("peer transport: {0}")]
    Transport(#[from] GatewayError),
    /// Raft could not be started.
    #[error("raft: {0}")]
    Raft(String),
    /// The configuration does not fit the rest of the setup.
    #[error("configuration: {0}")]
    Config(String),
    /// No leader could be reached within the deadline (retryable).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The request's outcome is unknown: it may or may not have been applied.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// The leader a write was forwarded to lost its leadership before
    /// answering; the write may or may not have been applied (retryable).
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The server is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The key-value store refused the request.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// A membership change was refused: unsafe, or asked of a follower.
    #[error("{0}")]
    MembershipRefused(String),
    /// The member named does not exist.
    #[error("{0}")]
    MemberNotFound(String),
    /// The server is draining before it stops (retryable elsewhere).
    #[error("etcdserver: server draining; retry on another server")]
    Draining,
}

impl NodeError {
    /// The gRPC code etcd uses for this error.
    pub fn grpc_code(&self) -> i32 {
        use crate::kv::grpc_code::*;
        match self {
            NodeError::Kv(e) => e.grpc_code(),
            NodeError::NoLeader
            | NodeError::Draining
            | NodeError::LeaderChanged
            | NodeError::Stopped
            | NodeError::Transport(_) => UNAVAILABLE,
            NodeError::Timeout => DEADLINE_EXCEEDED,
            NodeError::MembershipRefused(_) => FAILED_PRECONDITION,
            NodeError::MemberNotFound(_) => NOT_FOUND,
            NodeError::Storage(_) | NodeError::Raft(_) | NodeError::Config(_) => INTERNAL,
        }
    }
}

/// The etcd response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The datacenter's cluster id.
    pub cluster_id: u64,
    /// This server's id.
    pub member_id: u64,
    /// The revision the answer reflects.
    pub revision: i64,
    /// The Raft term.
    pub raft_term: u64,
}

/// A member as `member list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its peer address.
    pub peer_addr: String,
    /// Its client URL.
    pub client_url: String,
    /// Whether it is a learner.
    pub is_learner: bool,
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The header at the current revision.
    pub header: Header,
    /// Meridian's version.
    pub version: String,
    /// The datacenter.
    pub datacenter: String,
    /// This server's name.
    pub name: String,
    /// Bytes of the state database in use.
    pub db_size: u64,
    /// The leader's id (0 if none is known).
    pub leader: u64,
    /// Last log index.
    pub raft_index: u64,
    /// Applied log index.
    pub raft_applied_index: u64,
    /// Raised alarms (NOSPACE).
    pub alarms: Vec<String>,
    /// Live keys.
    pub keys: i64,
    /// Compacted revision.
    pub compacted_revision: i64,
}

struct Inner {
    config: NodeConfig,
    id: u64,
    cluster_id: u64,
    raft: Raft,
    proposer: Proposer,
    store: KvStore,
    /// Ends the state's writes at a clean stop.
    closer: raft::Closer,
    /// Commits applied entries before a read (ADR 0019).
    flusher: raft::Flusher,
    /// The latest applied revision, for watchers to wait on.
    revisions: Arc<tokio::sync::watch::Sender<i64>>,
    /// Lease clocks while this server leads.
    lessor: Arc<Lessor>,
    /// Recent changes shared by synced watchers.
    recent: Recent,
    /// Read indexes for linearizable reads, one fetch per round of readers.
    reads: ReadIndexes,
    /// The last revision in `recent`, for watchers to wait on.
    feed: Arc<tokio::sync::watch::Sender<i64>>,
    /// What linearizable reads wait on: the state machine's writes visible
    /// to readers (see `raft::StateMachine`'s held entries).
    visible: raft::Visible,
    network: PeerNetwork,
    endpoint: Endpoint,
    metrics: Arc<Metrics>,
    nospace: AtomicBool,
    /// Set while the server drains before it stops.
    draining: AtomicBool,
    /// When this server last became leader (for the handover in
    /// [`crate::drain`], which must wait out its own leader lease).
    led_since: std::sync::Mutex<Option<Instant>>,
    /// What each member advertised when this server, leading, last asked.
    versions_seen: std::sync::Mutex<BTreeMap<u64, crate::version::Advertised>>,
    /// Held while the server runs: no second server or tool rewrites the
    /// data directory meanwhile.
    _lock: std::fs::File,
}

/// A running server; cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Observer {
    metrics: Arc<Metrics>,
    name: String,
    revisions: Arc<tokio::sync::watch::Sender<i64>>,
    lessor: Arc<Lessor>,
}

struct LogMetrics(Arc<Metrics>);

impl raft::LogObserver for LogMetrics {
    fn fsync(&self, duration: Duration) {
        self.0.fsync_duration.observe(duration.as_secs_f64());
    }
    fn committed(&self, index: u64) {
        self.0.commit_index.set(index as i64);
    }
}

impl raft::ApplyObserver for Observer {
    fn applied(&self, last: LogId, revision: i64, _entries: usize) {
        self.metrics.applied_index.set(last.index as i64);
        self.metrics.revision.set(revision);
        self.revisions.send_replace(revision);
    }
    fn held(&self, entries: usize) {
        self.metrics.entries_held.inc_by(entries as u64);
    }
    fn replaced(&self, revision: i64) {
        self.metrics.revision.set(revision);
        self.revisions.send_replace(revision);
    }
    fn leases(&self, granted: &[raft::LeaseGranted], revoked: &[i64]) {
        for g in granted {
            self.lessor.granted(g.id, g.ttl, g.term);
        }
        for &id in revoked {
            self.lessor.revoked(id);
        }
    }
    fn snapshot(
        &self,
        installed: bool,
        meta: &openraft::SnapshotMeta<u64, Member>,
        duration: Duration,
    ) {
        if let (true, Some(last)) = (installed, meta.last_log_id) {
            self.metrics.applied_index.set(last.index as i64);
        }
        let kind = if installed { "install" } else { "build" };
        self.metrics
            .snapshot_duration
            .with_label_values(&[kind])
            .observe(duration.as_secs_f64());
        tracing::info!(server = %self.name, kind, last_log_id = ?meta.last_log_id, ms = duration.as_millis() as u64, "snapshot {}", if installed { "installed" } else { "built" });
    }
}

impl Node {
    /// Opens storage, starts Raft and the peer transport, and bootstraps the
    /// datacenter if this server's storage is new and it is an initial member.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let id = raft::member_id(&config.name);
        let names: Vec<String> = config.initial_members.keys().cloned().collect();
        let metrics = Arc::new(
            Metrics::new(&config.datacenter, &config.name)
                .map_err(|e| NodeError::Storage(e.to_string()))?,
        );
        metrics.db_quota.set(config.limits.quota_bytes as i64);
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        metrics.worker_threads.set(workers as i64);

        let storage = |e: heed::Error| NodeError::Storage(e.to_string());
        let lock = store::lock_data_dir(&config.data_dir).map_err(NodeError::Storage)?;
        let log_store = raft::open_log(&config.data_dir, id, Arc::new(LogMetrics(metrics.clone())))
            .map_err(NodeError::Storage)?;
        let state_dir = config.data_dir.join("state");
        let boot_id = store::boot::current_boot_id();
        let verdict = store::boot::check(&state_dir, boot_id.as_deref())
            .map_err(|e| NodeError::Storage(format!("{}: {e}", state_dir.display())))?;
        // A state the machine may have torn is rebuilt from the last
        // snapshot and the log (ADR 0017) before anything reads it.
        let rebuild = match verdict {
            store::boot::Verdict::MayBeTorn { why } => {
                let base = raft::RebuildBase::find(&config.data_dir, &log_store)
                    .map_err(|e| NodeError::Storage(format!("{why}, and {e}")))?;
                base.discard(&state_dir).map_err(NodeError::Storage)?;
                Some((why, base))
            }
            store::boot::Verdict::Unmarked | store::boot::Verdict::Intact => None,
        };
        // Marked as written under this boot before anything commits to it;
        // a rebuilt state only once the rebuild is complete, so that a crash
        // during it leads to another.
        let mark_running = || {
            store::boot::mark_running(&state_dir, boot_id.as_deref())
                .map_err(|e| NodeError::Storage(format!("{}: {e}", state_dir.display())))
        };
        if rebuild.is_none() {
            mark_running()?;
        }
        let state_env = store::open_env(&state_dir, EnvKind::State).map_err(storage)?;
        let kv = KvStore::open(state_env)?;
        if let Some((why, base)) = rebuild {
            base.install(&kv).map_err(NodeError::Storage)?;
            mark_running()?;
            metrics.state_rebuilds.inc();
            tracing::warn!(
                server = %config.name,
                from_log_index = base.last_log_id().map_or(0, |l| l.index),
                "rebuilt the state from the last snapshot and the Raft log: {why}"
            );
        }
        let cluster_id = match crate::backup::restored(&kv)
            .map_err(|e| NodeError::Storage(e.to_string()))?
        {
            None => raft::cluster_id(&config.datacenter, &names),
            Some(r) => {
                if r.name != config.name || r.members != names {
                    return Err(NodeError::Config(format!(
                        "{} was restored for server {:?} of members [{}], but this configuration is server {:?} of members [{}]",
                        config.data_dir.display(),
                        r.name,
                        r.members.join(", "),
                        config.name,
                        names.join(", ")
                    )));
                }
                raft::restored_cluster_id(
                    &config.datacenter,
                    &names,
                    &r.source_cluster_id,
                    r.revision,
                )
            }
        };
        let start_revision = {
            let rtxn = state_env
                .read_txn()
                .map_err(|e| NodeError::Storage(e.to_string()))?;
            kv.revision(&rtxn)?
        };
        let revisions = Arc::new(tokio::sync::watch::channel(start_revision).0);
        let lessor = Arc::new(Lessor::default());
        let observer = Arc::new(Observer {
            metrics: metrics.clone(),
            name: config.name.clone(),
            revisions: revisions.clone(),
            lessor: lessor.clone(),
        });
        let feed = Arc::new(tokio::sync::watch::channel(start_revision).0);
        let listened = {
            let feed = feed.clone();
            move || feed.receiver_count() > 0
        };
        let state_machine = StateMachine::new(
            kv,
            config.datacenter.clone(),
            config.data_dir.join("snapshots"),
            observer,
        )
        .map_err(|e| NodeError::Storage(e.to_string()))?
        .after_durable(log_store.durable())
        .holding(id, raft::HoldLimits::default(), listened);
        let closer = state_machine.closer();
        let flusher = state_machine.flusher();
        let visible = state_machine.visible();
        let snapshot_watch = state_machine.snapshot_watch(config.raft.snapshot_logs);
        // From here on set by the state machine's commits (`Observer`): on a
        // follower holding entries (ADR 0016) it trails openraft's own
        // applied index by what is held.
        metrics.applied_index.set(visible.index() as i64);
        let commit_bound = raft::CommitBound::new(log_store.durable());

        let material = TlsMaterial::load(&config.tls)?;
        let dc_name = meridian_gateway::tls::datacenter_name(&config.datacenter);
        if !material.carries_name(&dc_name) {
            return Err(NodeError::Config(format!(
                "certificate {} is not issued for datacenter {:?} (it must carry the name {dc_name}; \
                 create it with `meridian tls init --datacenter {}`)",
                config.tls.cert.display(),
                config.datacenter,
                config.datacenter
            )));
        }
        let options = EndpointOptions {
            connect_timeout: config.raft.rpc_timeout,
            ..EndpointOptions::default()
        };
        let endpoint = Endpoint::bind(
            config.peer_addr,
            &material,
            &[ALPN_PEER, meridian_gateway::ALPN_WAN],
            options,
        )?;
        // Raft and forwarding inside the datacenter: its own servers only.
        endpoint.admit(ALPN_PEER, vec![dc_name]);
        // Other datacenters are admitted by the federation once it knows them.
        endpoint.admit(meridian_gateway::ALPN_WAN, Vec::new());
        let network = PeerNetwork::new(endpoint.clone(), &config.datacenter)
            .with_commit_bound(commit_bound.clone());

        let raft_config = openraft::Config {
            cluster_name: config.datacenter.clone(),
            heartbeat_interval: config.raft.heartbeat_interval.as_millis() as u64,
            election_timeout_min: config.raft.election_timeout_min.as_millis() as u64,
            election_timeout_max: config.raft.election_timeout_max.as_millis() as u64,
            install_snapshot_timeout: config.raft.rpc_timeout.as_millis() as u64,
            // Snapshots are asked for by `raft::snapshot_policy` (ADR 0020).
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: config.raft.purge_lag_logs,
            max_payload_entries: 512,
            snapshot_max_chunk_size: 1024 * 1024,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let raft = Raft::new(
            id,
            Arc::new(raft_config),
            network.clone(),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;

        let reads = ReadIndexes::start({
            let (raft, network) = (raft.clone(), network.clone());
            let timeout = config.limits.request_timeout;
            Arc::new(move || Box::pin(fetch_read_index(raft.clone(), network.clone(), id, timeout)))
        });
        let node = Node {
            inner: Arc::new(Inner {
                config,
                id,
                cluster_id,
                proposer: Proposer::start(
                    raft.clone(),
                    ProposerLimits::default(),
                    metrics.proposal_commands.clone(),
                ),
                raft,
                store: kv,
                closer,
                flusher,
                revisions,
                lessor,
                recent: Recent::new(start_revision, RECENT_BYTES_MAX),
                reads,
                feed,
                visible,
                network,
                endpoint: endpoint.clone(),
                metrics,
                nospace: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                led_since: std::sync::Mutex::new(None),
                versions_seen: Default::default(),
                _lock: lock,
            }),
        };
        let handler_node = node.clone();
        endpoint.register(
            ALPN_PEER,
            Arc::new(move |bytes: Vec<u8>| {
                let node = handler_node.clone();
                Box::pin(async move { node.serve_peer(bytes).await })
            }),
        );
        node.bootstrap_once().await?;
        node.refresh_store_metrics();
        tokio::spawn(watch_raft_metrics(node.clone()));
        tokio::spawn(drive_leases(node.clone()));
        tokio::spawn(pass_on_held_commits(node.inner.raft.clone(), commit_bound));
        tokio::spawn(crate::compactor::run(node.clone()));
        tokio::spawn(crate::version::drive(node.clone()));
        tokio::spawn(feed_recent(node.clone()));
        tokio::spawn(raft::snapshot_policy::drive(
            node.inner.raft.clone(),
            snapshot_watch,
            std::time::Duration::from_millis(100),
        ));
        Ok(node)
    }

    async fn bootstrap_once(&self) -> Result<(), NodeError> {
        let inner = &self.inner;
        if inner.config.join_existing {
            return Ok(());
        }
        if !inner
            .config
            .initial_members
            .contains_key(&inner.config.name)
        {
            return Ok(());
        }
        let initialized = inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if initialized {
            return Ok(());
        }
        let members: BTreeMap<u64, Member> = inner
            .config
            .initial_members
            .iter()
            .map(|(name, m)| {
                let client_url = if *name == inner.config.name {
                    inner.config.advertise_client_url.clone()
                } else {
                    m.client_url.clone()
                };
                (
                    raft::member_id(name),
                    Member {
                        name: name.as_str().into(),
                        peer_addr: m.peer_addr.as_str().into(),
                        client_url: client_url.into(),
                    },
                )
            })
            .collect();
        match inner.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(server = %inner.config.name, datacenter = %inner.config.datacenter, "bootstrapped datacenter from initial members");
                Ok(())
            }
            // Another initial member's bootstrap reached this server first: nothing to do.
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(NodeError::Raft(e.to_string())),
        }
    }

    /// This server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The server's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// This server's member id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The header for an answer at `revision`.
    pub fn header(&self, revision: i64) -> Header {
        Header {
            cluster_id: self.inner.cluster_id,
            member_id: self.inner.id,
            revision,
            raft_term: self.inner.raft.metrics().borrow().current_term,
        }
    }

    /// Proposes a write through Raft (forwarding to the leader if needed) and returns its outcome.
    pub async fn write(&self, command: Command) -> Result<(Header, Outcome), NodeError> {
        self.check_not_draining()?;
        let is_put = match &command {
            Command::Put(_) | Command::Mirror(_) => true,
            Command::Txn(t) => t.has_puts(),
            _ => false,
        };
        if is_put && self.quota_exceeded() {
            return Err(KvError::NoSpace.into());
        }
        let m = &self.inner.metrics;
        m.proposals_pending.inc();
        let start = Instant::now();
        let result = self.propose(command).await;
        m.proposals_pending.dec();
        m.proposal_duration.observe(start.elapsed().as_secs_f64());
        match result {
            Ok(applied) => {
                m.proposals_committed.inc();
                let outcome = applied.outcome?;
                Ok((self.header(applied.revision), outcome))
            }
            Err(e) => {
                m.proposals_failed.inc();
                Err(e)
            }
        }
    }

    async fn propose(&self, command: Command) -> Result<Applied, NodeError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.config.limits.request_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let leader = match self.known_leader() {
                // Another server leads: forward without asking Raft first.
                Some((id, member)) if id != inner.id => Some((id, member)),
                _ => {
                    let proposed = inner.proposer.propose(command.clone());
                    match tokio::time::timeout(remaining, proposed)
                        .await
                        .map_err(|_| NodeError::Timeout)?
                    {
                        Ok(applied) => return Ok(applied),
                        Err(ProposeError::ForwardToLeader(leader)) => leader,
                        Err(ProposeError::Failed(e)) => return Err(NodeError::Raft(e)),
                        Err(ProposeError::Stopped) => return Err(NodeError::Stopped),
                        Err(ProposeError::Paused) => return Err(NodeError::Draining),
                    }
                }
            };
            if let Some((leader_id, member)) = leader {
                if leader_id != inner.id {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    inner.metrics.forwarded_writes.inc();
                    let request = PeerRequest::Write(command.clone());
                    let sent = inner.network.send(&member, &request, remaining);
                    let answer = tokio::select! {
                        answer = sent => answer,
                        // A dead leader never answers; once the DC has moved
                        // on, say so rather than wait out the deadline.
                        _ = leader_left(&self.inner.raft, leader_id) => return Err(NodeError::LeaderChanged),
                    };
                    match answer {
                        Ok(PeerResponse::Write(Ok(applied))) => return Ok(applied),
                        Ok(PeerResponse::Write(Err(ForwardError::NotLeader { .. }))) => {}
                        Ok(PeerResponse::Write(Err(ForwardError::Unavailable(_)))) => {}
                        // Not sent at all: safe to try again.
                        Err(GatewayError::Connect { .. }) => {}
                        // Sent, outcome unknown: the client must decide (as with etcd's timeout).
                        Err(_) | Ok(_) => return Err(NodeError::Timeout),
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(NodeError::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The leader as this server last heard, with its address.
    pub(crate) fn known_leader(&self) -> Option<(u64, Member)> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let member = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, member))
    }

    /// Waits until a read of local state is linearizable: a read index
    /// from the leader, fetched after this call (shared with the reads
    /// waiting at the same time, see `reads`), then local apply up to it.
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.config.limits.request_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match inner.reads.index(remaining).await {
                Ok(index) => {
                    return match inner.visible.reach(index, deadline).await {
                        true => Ok(()),
                        false => Err(NodeError::Timeout),
                    };
                }
                Err(RoundError::Stopped) => return Err(NodeError::Stopped),
                Err(RoundError::Retry) if Instant::now() >= deadline => {
                    return Err(NodeError::NoLeader)
                }
                Err(RoundError::Retry) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// A read transaction of the state; it sees every write answered before
    /// the call (applied entries waiting for their commit are committed
    /// first).
    fn read_txn(&self) -> Result<heed::RoTxn<'static, heed::WithoutTls>, NodeError> {
        self.inner
            .flusher
            .flush_blocking()
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        self.inner
            .store
            .env()
            .read_txn()
            .map_err(|e| NodeError::Storage(e.to_string()))
    }

    /// etcd's LeaseGrant: `id` 0 lets the server choose; a TTL below the
    /// configured minimum is raised to it. Answers (id, TTL).
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(Header, i64, i64), NodeError> {
        if ttl < 0 {
            return Err(
                KvError::InvalidArgument("etcdserver: TTL must not be negative".into()).into(),
            );
        }
        if ttl > TTL_MAX {
            return Err(KvError::LeaseTtlTooLarge.into());
        }
        if id < 0 {
            return Err(KvError::InvalidArgument(
                "etcdserver: lease ID must not be negative".into(),
            )
            .into());
        }
        let ttl = ttl.max(self.inner.config.lease.min_ttl_seconds);
        let mut attempts = 0;
        loop {
            let chosen = if id != 0 {
                id
            } else {
                new_lease_id(self.inner.id)
            };
            match self.write(Command::LeaseGrant { id: chosen, ttl }).await {
                Ok((h, Outcome::LeaseGranted { id, ttl })) => {
                    self.inner.metrics.lease_grants.inc();
                    return Ok((h, id, ttl));
                }
                Ok(_) => return Err(NodeError::Raft("unexpected outcome".into())),
                Err(NodeError::Kv(KvError::LeaseExists)) if id == 0 && attempts < 3 => {
                    attempts += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// etcd's LeaseRevoke: the lease goes, and every key attached to it at one revision.
    pub async fn lease_revoke(&self, id: i64) -> Result<Header, NodeError> {
        let h = self.write(Command::LeaseRevoke { id }).await?.0;
        self.inner.metrics.lease_revokes.inc();
        Ok(h)
    }

    /// etcd's LeaseKeepAlive: restarts the lease's clock at the leader;
    /// the TTL, or 0 if the lease does not exist (as etcd answers).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<(Header, i64), NodeError> {
        let clock = self.lease_clock(id, true).await?;
        self.inner.metrics.lease_keepalives.inc();
        let (current, _) = self.revisions()?;
        Ok((
            self.header(current),
            clock.map_or(0, |(_, granted)| granted),
        ))
    }

    /// etcd's LeaseTimeToLive: (remaining, granted) seconds and, if asked,
    /// the attached keys; None if the lease does not exist.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        with_keys: bool,
    ) -> Result<(Header, Option<(i64, i64, Vec<Vec<u8>>)>), NodeError> {
        let clock = self.lease_clock(id, false).await?;
        self.read_barrier().await?;
        let rtxn = self.read_txn()?;
        let store = self.inner.store;
        let header = self.header(store.revision(&rtxn)?);
        let Some((remaining, granted)) = clock else {
            return Ok((header, None));
        };
        if store.lease(&rtxn, id)?.is_none() {
            return Ok((header, None));
        }
        let keys = if with_keys {
            store.lease_keys(&rtxn, id)?
        } else {
            Vec::new()
        };
        Ok((header, Some((remaining, granted, keys))))
    }

    /// etcd's LeaseLeases: every lease id.
    pub async fn lease_list(&self) -> Result<(Header, Vec<i64>), NodeError> {
        self.read_barrier().await?;
        let rtxn = self.read_txn()?;
        let store = self.inner.store;
        let ids = store.leases(&rtxn)?.into_iter().map(|(id, _)| id).collect();
        Ok((self.header(store.revision(&rtxn)?), ids))
    }

    /// A lease's (remaining, granted) at the leader, asked over the peer
    /// transport from a follower; `renew` restarts its clock first.
    async fn lease_clock(&self, id: i64, renew: bool) -> Result<Option<(i64, i64)>, NodeError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.config.limits.request_timeout;
        loop {
            let answer = match self.known_leader() {
                Some((leader, _)) if leader == inner.id => self.leader_lease_clock(id, renew),
                Some((leader, member)) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let request = if renew {
                        PeerRequest::LeaseKeepAlive(id)
                    } else {
                        PeerRequest::LeaseClock(id)
                    };
                    let sent = inner.network.send(&member, &request, remaining);
                    tokio::select! {
                        answer = sent => match answer {
                            Ok(PeerResponse::LeaseClock(a)) => a,
                            _ => Err(ForwardError::Unavailable("no answer".into())),
                        },
                        _ = leader_left(&self.inner.raft, leader) => Err(ForwardError::Unavailable("leader changed".into())),
                    }
                }
                None => Err(ForwardError::Unavailable("no leader".into())),
            };
            match answer {
                Ok(clock) => return Ok(clock),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(_) => return Err(NodeError::NoLeader),
            }
        }
    }

    /// The leader's side of [`Node::lease_clock`].
    fn leader_lease_clock(&self, id: i64, renew: bool) -> Result<Option<(i64, i64)>, ForwardError> {
        let lessor = &self.inner.lessor;
        if !follow_leadership(self) {
            return Err(ForwardError::NotLeader {
                leader: self.known_leader(),
            });
        }
        if renew {
            if let Some(ttl) = lessor.keep_alive(id) {
                return Ok(Some((ttl, ttl)));
            }
        }
        if let Some(c) = lessor.clock(id) {
            // Known but expired and being revoked: gone as far as clients are concerned.
            if renew {
                return Ok(None);
            }
            return Ok(Some((c.remaining, c.granted)));
        }
        // Granted by an entry this leader has applied before its clocks knew it.
        let stored = self
            .read_txn()
            .ok()
            .and_then(|rtxn| self.inner.store.lease(&rtxn, id).ok().flatten());
        match stored {
            Some(record) => {
                lessor.adopt(id, record.ttl);
                Ok(lessor.clock(id).map(|c| (c.remaining, c.granted)))
            }
            None => Ok(None),
        }
    }

    /// A receiver that changes whenever entries are applied or a snapshot is
    /// installed; it holds the store's revision since.
    pub fn subscribe_revisions(&self) -> tokio::sync::watch::Receiver<i64> {
        self.inner.revisions.subscribe()
    }

    /// The store's current and compacted revisions.
    pub fn revisions(&self) -> Result<(i64, i64), NodeError> {
        let rtxn = self.read_txn()?;
        let store = self.inner.store;
        Ok((store.revision(&rtxn)?, store.compacted_revision(&rtxn)?))
    }

    /// Changes from revision `from` on (whole revisions, about `max` events
    /// or `max_bytes`), with the last revision covered and the revision the
    /// answer is as of. Recent changes come from the shared window (read from
    /// storage once for all watchers); older ones from storage. The window
    /// takes in each apply a moment after it: a caller that waits for more
    /// waits on [`Node::subscribe_feed`], not on the apply
    /// ([`Node::subscribe_revisions`]), or it can read before the window has
    /// the change and sleep past it.
    pub fn events(
        &self,
        from: i64,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Arc<Event>>, i64, i64), NodeError> {
        let rtxn = self.read_txn()?;
        let store = self.inner.store;
        if from < store.compacted_revision(&rtxn)? {
            return Err(KvError::Compacted.into());
        }
        let recent = &self.inner.recent;
        if let Some((events, last)) = recent.from(from, max, max_bytes) {
            return Ok((events, last, recent.last()));
        }
        self.inner.metrics.watch_history_reads.inc();
        let current = store.revision(&rtxn)?;
        let (events, last) = store.events(&rtxn, from, max, max_bytes)?;
        Ok((events.into_iter().map(Arc::new).collect(), last, current))
    }

    /// A receiver that changes whenever new changes are in the shared window.
    pub fn subscribe_feed(&self) -> tokio::sync::watch::Receiver<i64> {
        self.inner.feed.subscribe()
    }

    /// A range of this server's local state, without a read barrier.
    pub fn range_local(&self, req: RangeRequest) -> Result<(Header, RangeResponse), NodeError> {
        let store = self.inner.store;
        let rtxn = self.read_txn()?;
        let revision = store.revision(&rtxn)?;
        let response = store.range(&rtxn, &req)?;
        Ok((self.header(revision), response))
    }

    /// etcd's range: linearizable unless `serializable`.
    pub async fn range(&self, req: RangeRequest) -> Result<(Header, RangeResponse), NodeError> {
        if !req.serializable {
            self.read_barrier().await?;
        }
        let store = self.inner.store;
        let rtxn = self.read_txn()?;
        let revision = store.revision(&rtxn)?;
        let response = store.range(&rtxn, &req)?;
        Ok((self.header(revision), response))
    }

    /// etcd's put.
    pub async fn put(&self, req: PutRequest) -> Result<(Header, PutResponse), NodeError> {
        match self.write(Command::Put(req)).await? {
            (h, Outcome::Put(r)) => Ok((h, r)),
            _ => Err(NodeError::Raft("unexpected outcome".into())),
        }
    }

    /// etcd's delete_range.
    pub async fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> Result<(Header, DeleteRangeResponse), NodeError> {
        match self.write(Command::DeleteRange(req)).await? {
            (h, Outcome::DeleteRange(r)) => Ok((h, r)),
            _ => Err(NodeError::Raft("unexpected outcome".into())),
        }
    }

    /// etcd's txn. A transaction without writes is served as a read, like etcd does.
    pub async fn txn(&self, req: TxnRequest) -> Result<(Header, TxnResponse), NodeError> {
        check_txn(&req)?;
        match self.write(Command::Txn(req)).await? {
            (h, Outcome::Txn(r)) => Ok((h, r)),
            _ => Err(NodeError::Raft("unexpected outcome".into())),
        }
    }

    /// etcd's compaction.
    pub async fn compact(&self, req: CompactionRequest) -> Result<Header, NodeError> {
        let (h, _) = self.write(Command::Compact(req)).await?;
        tracing::info!(server = %self.inner.config.name, revision = h.revision, "compaction applied");
        self.refresh_store_metrics();
        Ok(h)
    }

    /// Compacts at `revision`, counted under `trigger` (api, admin, auto)
    /// in `meridian_compactions_total`.
    pub async fn compact_at(&self, revision: i64, trigger: &str) -> Result<Header, NodeError> {
        let started = Instant::now();
        let h = self
            .compact(CompactionRequest {
                revision,
                physical: true,
            })
            .await?;
        let m = &self.inner.metrics;
        m.compactions.with_label_values(&[trigger]).inc();
        m.maintenance_duration
            .with_label_values(&["compaction"])
            .observe(started.elapsed().as_secs_f64());
        Ok(h)
    }

    /// Whether this server is the DC's leader as far as it knows.
    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().current_leader == Some(self.inner.id)
    }

    /// Every replication rule this DC knows (deleted ones included), from local state.
    pub fn mirror_rules(
        &self,
    ) -> Result<BTreeMap<String, crate::kv::mirror::MirrorRule>, NodeError> {
        let rtxn = self.read_txn()?;
        Ok(crate::kv::mirror::rules(&self.inner.store, &rtxn)?)
    }

    /// A rule's checkpoint here, and the writes this DC lost to a promotion under it.
    pub fn mirror_state(
        &self,
        rule: &str,
    ) -> Result<
        (
            crate::kv::mirror::Checkpoint,
            Vec<crate::kv::mirror::Orphan>,
        ),
        NodeError,
    > {
        let rtxn = self.read_txn()?;
        let store = &self.inner.store;
        Ok((
            crate::kv::mirror::checkpoint(store, &rtxn, rule)?,
            crate::kv::mirror::orphans(store, &rtxn, rule)?,
        ))
    }

    /// Writes a backup of this server's state (consistent, taken without
    /// pausing writes) to a scratch file in its snapshot directory; the
    /// caller streams and removes it.
    pub async fn backup(&self) -> Result<(std::path::PathBuf, crate::backup::Manifest), NodeError> {
        let node = self.clone();
        let started = Instant::now();
        let taken = tokio::task::spawn_blocking(move || {
            let inner = &node.inner;
            // The backup holds every write answered before it was asked for.
            inner
                .flusher
                .flush_blocking()
                .map_err(|e| NodeError::Storage(e.to_string()))?;
            let path = crate::backup::scratch_path(&inner.config.data_dir);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| NodeError::Storage(e.to_string()))?;
            }
            let mut members = node.members();
            members.sort_by(|a, b| a.name.cmp(&b.name));
            let manifest = crate::backup::write(&inner.store, &path, |m| {
                m.datacenter = inner.config.datacenter.clone();
                m.cluster_id = inner.cluster_id.to_string();
                m.server = inner.config.name.clone();
                m.members = members
                    .into_iter()
                    .map(|m| crate::backup::ManifestMember {
                        name: m.name,
                        peer_addr: m.peer_addr,
                        client_url: m.client_url,
                        learner: m.is_learner,
                    })
                    .collect();
            })
            .map_err(|e| NodeError::Storage(e.to_string()))?;
            Ok((path, manifest))
        })
        .await
        .map_err(|e| NodeError::Storage(e.to_string()))?;
        self.inner
            .metrics
            .maintenance_duration
            .with_label_values(&["backup"])
            .observe(started.elapsed().as_secs_f64());
        taken
    }

    pub(crate) fn versions_seen(
        &self,
    ) -> &std::sync::Mutex<BTreeMap<u64, crate::version::Advertised>> {
        &self.inner.versions_seen
    }

    /// A u32 metadata value of the state machine.
    pub(crate) fn meta_u32(&self, key: &str) -> Option<u32> {
        let rtxn = self.read_txn().ok()?;
        self.inner.store.meta_get(&rtxn, key).ok().flatten()
    }

    pub(crate) fn draining_flag(&self) -> &AtomicBool {
        &self.inner.draining
    }

    /// When this server became leader, if it leads.
    pub(crate) fn led_since(&self) -> Option<Instant> {
        *self
            .inner
            .led_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn proposer(&self) -> &Proposer {
        &self.inner.proposer
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub(crate) fn network(&self) -> &PeerNetwork {
        &self.inner.network
    }

    /// This server's QUIC endpoint (Raft peers and other datacenters).
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The current members.
    pub fn members(&self) -> Vec<MemberInfo> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, m)| MemberInfo {
                id: *id,
                name: m.name.to_string(),
                peer_addr: m.peer_addr.to_string(),
                client_url: m.client_url.to_string(),
                is_learner: !voters.contains(id),
            })
            .collect()
    }

    /// The server's status.
    pub fn status(&self) -> Result<Status, NodeError> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let store = self.inner.store;
        let rtxn = self.read_txn()?;
        let revision = store.revision(&rtxn)?;
        Ok(Status {
            header: Header {
                cluster_id: self.inner.cluster_id,
                member_id: self.inner.id,
                revision,
                raft_term: metrics.current_term,
            },
            version: env!("CARGO_PKG_VERSION").to_string(),
            datacenter: self.inner.config.datacenter.clone(),
            name: self.inner.config.name.clone(),
            db_size: store::used_bytes(store.env()),
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_applied_index: metrics.last_applied.map_or(0, |l| l.index),
            alarms: if self.inner.nospace.load(Ordering::Relaxed) {
                vec!["NOSPACE".to_string()]
            } else {
                Vec::new()
            },
            keys: store.key_count(&rtxn)?,
            compacted_revision: store.compacted_revision(&rtxn)?,
        })
    }

    /// Whether the server has a leader and has applied everything the leader
    /// had committed when asked (a linearizable barrier that succeeds).
    pub async fn ready(&self) -> bool {
        !self.draining()
            && self.inner.raft.metrics().borrow().current_leader.is_some()
            && self.read_barrier().await.is_ok()
    }

    fn quota_exceeded(&self) -> bool {
        let used = store::used_bytes(self.inner.store.env());
        let over = used >= self.inner.config.limits.quota_bytes;
        if over != self.inner.nospace.swap(over, Ordering::Relaxed) {
            self.inner.metrics.nospace_alarm.set(over as i64);
            if over {
                tracing::warn!(server = %self.inner.config.name, used, quota = self.inner.config.limits.quota_bytes, "NOSPACE alarm raised: puts are refused until space is freed");
            } else {
                tracing::info!(server = %self.inner.config.name, "NOSPACE alarm cleared");
            }
        }
        over
    }

    /// Sets the store's gauges (size, revisions, keys) from a read of it.
    pub(crate) fn refresh_store_metrics(&self) {
        let store = self.inner.store;
        let m = &self.inner.metrics;
        m.db_size.set(store::used_bytes(store.env()) as i64);
        if let Ok(rtxn) = self.read_txn() {
            if let (Ok(rev), Ok(compacted), Ok(keys)) = (
                store.revision(&rtxn),
                store.compacted_revision(&rtxn),
                store.key_count(&rtxn),
            ) {
                m.revision.set(rev);
                m.compacted_revision.set(compacted);
                m.keys.set(keys);
            }
        }
    }

    async fn serve_peer(&self, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        let request: PeerRequest =
            postcard::from_bytes(&bytes).map_err(|e| format!("bad peer request: {e}"))?;
        let raft = &self.inner.raft;
        let response = match request {
            PeerRequest::AppendEntries(r) => {
                PeerResponse::AppendEntries(raft.append_entries(r).await)
            }
            PeerRequest::Vote(r) => PeerResponse::Vote(raft.vote(r).await),
            PeerRequest::InstallSnapshot(r) => {
                PeerResponse::InstallSnapshot(raft.install_snapshot(r).await)
            }
            // A draining leader takes no more work, so that it falls silent
            // and another server is elected.
            PeerRequest::Write(_) if self.draining() => PeerResponse::Write(Err(
                ForwardError::Unavailable("the leader is draining".into()),
            )),
            PeerRequest::ReadIndex if self.draining() => PeerResponse::ReadIndex(Err(
                ForwardError::Unavailable("the leader is draining".into()),
            )),
            PeerRequest::Write(command) => {
                PeerResponse::Write(match self.inner.proposer.propose(command).await {
                    Ok(applied) => Ok(applied),
                    Err(ProposeError::ForwardToLeader(leader)) => {
                        Err(ForwardError::NotLeader { leader })
                    }
                    Err(ProposeError::Failed(e)) => Err(ForwardError::Unavailable(e)),
                    Err(ProposeError::Stopped) => {
                        Err(ForwardError::Unavailable("server stopped".into()))
                    }
                    Err(ProposeError::Paused) => {
                        Err(ForwardError::Unavailable("the leader is draining".into()))
                    }
                })
            }
            PeerRequest::LeaseKeepAlive(id) => {
                PeerResponse::LeaseClock(self.leader_lease_clock(id, true))
            }
            PeerRequest::Version => PeerResponse::Version(self.advertised()),
            PeerRequest::Campaign { term } => PeerResponse::Campaign(self.campaign(term).await),
            PeerRequest::LeaseClock(id) => {
                PeerResponse::LeaseClock(self.leader_lease_clock(id, false))
            }
            PeerRequest::ReadIndex => PeerResponse::ReadIndex(match raft.get_read_log_id().await {
                Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    Err(ForwardError::NotLeader {
                        leader: f.leader_id.zip(f.leader_node),
                    })
                }
                Err(e) => Err(ForwardError::Unavailable(e.to_string())),
            }),
        };
        postcard::to_allocvec(&response).map_err(|e| e.to_string())
    }

    /// Stops Raft and the peer transport, and leaves the state synced and
    /// marked so (a clean stop: the next start trusts it, ADR 0017).
    pub async fn shutdown(&self) {
        let _ = self.inner.raft.shutdown().await;
        self.inner.endpoint.shutdown().await;
        let closer = self.inner.closer.clone();
        let state_dir = self.inner.config.data_dir.join("state");
        let closed = tokio::task::spawn_blocking(move || closer.close(&state_dir)).await;
        if let Err(e) = closed.map_err(std::io::Error::other).and_then(|r| r) {
            tracing::warn!(server = %self.inner.config.name, error = %e, "could not leave the state synced; the next start after a machine restart rebuilds it");
        }
    }
}

/// Resolves once `leader` is no longer this server's view of the leader
/// (a new term or an election under way); never if Raft has stopped.
async fn leader_left(raft: &Raft, leader: u64) {
    let mut metrics = raft.metrics();
    let term = metrics.borrow().current_term;
    loop {
        {
            let m = metrics.borrow_and_update();
            if m.current_leader != Some(leader) || m.current_term != term {
                return;
            }
        }
        if metrics.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// One round of [`ReadIndexes`]: the leader's read index, confirmed with a
/// quorum; asked over the peer transport when another server leads.
async fn fetch_read_index(
    raft: Raft,
    network: PeerNetwork,
    me: u64,
    timeout: Duration,
) -> Result<u64, RoundError> {
    let checked = tokio::time::timeout(timeout, raft.get_read_log_id()).await;
    let leader = match checked.map_err(|_| RoundError::Retry)? {
        Ok((read, _)) => return Ok(read.map_or(0, |l| l.index)),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
            f.leader_id.zip(f.leader_node)
        }
        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => None,
        Err(RaftError::Fatal(_)) => return Err(RoundError::Stopped),
    };
    let Some((leader_id, member)) = leader.filter(|(l, _)| *l != me) else {
        return Err(RoundError::Retry);
    };
    let asked = network.send(&member, &PeerRequest::ReadIndex, timeout);
    // A read has no effect, so a leader change just means asking again.
    tokio::select! {
        answer = asked => match answer {
            Ok(PeerResponse::ReadIndex(Ok(index))) => Ok(index),
            _ => Err(RoundError::Retry),
        },
        _ = leader_left(&raft, leader_id) => Err(RoundError::Retry),
    }
}

/// A fresh lease id: positive, from the clock and this server's id, so two
/// servers granting at once do not collide (a collision is retried anyway).
fn new_lease_id(member: u64) -> i64 {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mixed = (member.rotate_left(48) ^ nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        & (i64::MAX as u64);
    (mixed as i64).max(1)
}

/// Once the leader's log catches up with a commit index that was held back
/// from its followers (see [`raft::CommitBound`]), sends it on at once
/// instead of with the next append or heartbeat.
async fn pass_on_held_commits(raft: Raft, bound: raft::CommitBound) {
    let mut durable = bound.durable();
    while durable.changed().await.is_ok() {
        if bound.take_held() && raft.trigger().heartbeat().await.is_err() {
            return;
        }
    }
}

/// Expired leases revoked per tick of [`drive_leases`] (10 ticks a second).
const LEASE_REVOKE_BATCH: usize = 64;

/// Brings the lease clocks in step with Raft's leadership: a new leader
/// restarts every lease's clock at its TTL plus an election timeout, a
/// server that stopped leading drops them. Run by [`drive_leases`] every
/// tick, and before the clocks answer a client, so that they never answer
/// for a leadership they have not caught up with. Returns whether this
/// server leads.
fn follow_leadership(node: &Node) -> bool {
    let (state, term) = {
        let metrics = node.inner.raft.metrics();
        let m = metrics.borrow();
        (m.state, m.current_term)
    };
    let lessor = &node.inner.lessor;
    if state != ServerState::Leader {
        if lessor.leading().is_some() {
            lessor.step_down();
        }
        return false;
    }
    if lessor.leading() != Some(term) {
        let leases = node
            .read_txn()
            .ok()
            .and_then(|rtxn| node.inner.store.leases(&rtxn).ok());
        let Some(leases) = leases else { return false };
        let ttls: Vec<(i64, i64)> = leases.iter().map(|(id, r)| (*id, r.ttl)).collect();
        let extend = node.inner.config.raft.election_timeout_max;
        if lessor.become_leader(term, &ttls, extend) {
            tracing::info!(server = %node.inner.config.name, term, leases = ttls.len(), "lease clocks restarted");
        }
    }
    true
}

/// Keeps the lease clocks in step with leadership and revokes expired leases
/// through Raft, at most [`LEASE_REVOKE_BATCH`] per tick.
async fn drive_leases(node: Node) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let lessor = &node.inner.lessor;
        if let Ok(rtxn) = node.read_txn() {
            if let Ok(n) = node.inner.store.lease_count(&rtxn) {
                node.inner.metrics.leases.set(n as i64);
            }
        }
        if !follow_leadership(&node) {
            continue;
        }
        for id in lessor.expired(LEASE_REVOKE_BATCH) {
            let node = node.clone();
            tokio::spawn(async move {
                match node.write(Command::LeaseRevoke { id }).await {
                    Ok(_) => node.inner.metrics.lease_expiries.inc(),
                    Err(NodeError::Kv(KvError::LeaseNotFound)) => node.inner.lessor.revoked(id),
                    Err(_) => node.inner.lessor.retry(id),
                }
            });
        }
    }
}

/// Bytes of recent changes kept for synced watchers.
const RECENT_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Reads each newly applied revision's changes from storage once, into the
/// window all synced watchers share, and tells them.
async fn feed_recent(node: Node) {
    let mut revisions = node.subscribe_revisions();
    let inner = &node.inner;
    loop {
        // The revision as the apply published it: no read of the store per
        // apply (which would also map the pages it just wrote).
        let current = *revisions.borrow_and_update();
        let fed = inner.recent.last();
        if current > fed {
            if inner.feed.receiver_count() == 0 {
                // Nobody takes changes from the window (no watcher,
                // replication stream or blocking query is subscribed): skip
                // reading them. A reader that subscribes later and asks for
                // older revisions finds them in storage, as it would beyond
                // the window.
                inner.recent.reset(current);
            } else {
                let read = node.read_txn().and_then(|rtxn| {
                    Ok(inner
                        .store
                        .events(&rtxn, fed + 1, 10_000, RECENT_BYTES_MAX)?)
                });
                match read {
                    Ok((events, last)) => inner.recent.push(events, last),
                    // History was compacted or replaced under us: start over from now.
                    Err(_) => inner.recent.reset(current),
                }
            }
            inner.feed.send_replace(inner.recent.last());
            continue;
        }
        if current < fed {
            // A snapshot replaced the store with an older one: start over.
            inner.recent.reset(current);
            inner.feed.send_replace(current);
        }
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), revisions.changed()).await
        {
            return;
        }
    }
}

async fn watch_raft_metrics(node: Node) {
    let mut rx = node.inner.raft.metrics();
    let mut last_leader: Option<u64> = None;
    let mut led_term: Option<u64> = None;
    loop {
        let changed = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
        if let Ok(Err(_)) = changed {
            return;
        }
        let m = rx.borrow_and_update().clone();
        let metrics = &node.inner.metrics;
        metrics.term.set(m.current_term as i64);
        metrics.has_leader.set(m.current_leader.is_some() as i64);
        metrics
            .is_leader
            .set((m.state == ServerState::Leader) as i64);
        metrics
            .last_log_index
            .set(m.last_log_index.unwrap_or(0) as i64);
        let leading = (m.state == ServerState::Leader).then_some(m.current_term);
        if leading != led_term {
            *node
                .inner
                .led_since
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = leading.map(|_| Instant::now());
            led_term = leading;
        }
        if m.current_leader != last_leader {
            if m.current_leader.is_some() {
                metrics.leader_changes.inc();
            }
            let name = &node.inner.config.name;
            match m.current_leader {
                Some(id) if id == node.inner.id => {
                    tracing::info!(server = %name, term = m.current_term, "became leader")
                }
                Some(id) => {
                    tracing::info!(server = %name, term = m.current_term, leader = id, "leader elected")
                }
                None => tracing::warn!(server = %name, term = m.current_term, "lost leader"),
            }
            last_leader = m.current_leader;
        }
    }
}
