//! The agent's configuration file: TOML, then `MERIDIAN_`-prefixed environment
//! variables (`__` separates nested keys, e.g. `MERIDIAN_LIMITS__QUOTA_BYTES`),
//! then the documented defaults. Unknown keys and bad values stop start-up with
//! a message naming the key.

use anyhow::{bail, Context, Result};
use meridian_federation::FederationConfig;
use meridian_gateway::tls::TlsPaths;
use meridian_node::compactor::{CompactionSettings, Retention};
use meridian_node::config::{InitialMember, LeaseSettings, Limits, RaftSettings, WatchSettings};
use meridian_node::NodeConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    name: String,
    datacenter: String,
    data_dir: PathBuf,
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    advertise_client_url: Option<String>,
    advertise_peer_addr: Option<String>,
    initial_members: BTreeMap<String, MemberSpec>,
    #[serde(default)]
    initial_cluster_state: Option<String>,
    tls: TlsSection,
    #[serde(default)]
    raft: RaftSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    watch: WatchSection,
    #[serde(default)]
    lease: LeaseSection,
    #[serde(default)]
    federation: FederationSection,
    #[serde(default)]
    catalog: CatalogSection,
    #[serde(default)]
    compaction: CompactionSection,
    #[serde(default)]
    testing: TestingSection,
}

/// Settings for tests of Meridian itself; never needed in production.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct TestingSection {
    /// Advertise this (lower) feature level, playing an older server.
    advertise_feature_level: Option<u32>,
}

/// etcd's `--auto-compaction-mode` and `--auto-compaction-retention`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct CompactionSection {
    mode: Option<String>,
    retention: Option<String>,
    interval_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CatalogSection {
    lookup_timeout_ms: u64,
    checker_ttl_seconds: i64,
}

impl Default for CatalogSection {
    fn default() -> Self {
        let d = meridian_federation::CatalogConfig::default();
        CatalogSection {
            lookup_timeout_ms: d.lookup_timeout.as_millis() as u64,
            checker_ttl_seconds: d.checker_ttl_seconds,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FederationSection {
    peers: BTreeMap<String, Vec<String>>,
    forward_timeout_ms: u64,
    probe_interval_ms: u64,
    advertise_wan_addr: Option<String>,
    replication: BTreeMap<String, meridian_federation::RuleSpec>,
}

impl Default for FederationSection {
    fn default() -> Self {
        let d = FederationConfig::default();
        FederationSection {
            peers: BTreeMap::new(),
            forward_timeout_ms: d.forward_timeout.as_millis() as u64,
            probe_interval_ms: d.probe_interval.as_millis() as u64,
            advertise_wan_addr: None,
            replication: BTreeMap::new(),
        }
    }
}

/// A server's whole configuration: the node and its place in the federation.
pub struct ServerConfig {
    /// The node's settings.
    pub node: NodeConfig,
    /// The other datacenters.
    pub federation: FederationConfig,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MemberSpec {
    Peer(String),
    Full {
        peer: String,
        client: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RaftSection {
    heartbeat_interval_ms: u64,
    election_timeout_min_ms: u64,
    election_timeout_max_ms: u64,
    snapshot_logs: u64,
    purge_lag_logs: u64,
    rpc_timeout_ms: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        let d = RaftSettings::default();
        RaftSection {
            heartbeat_interval_ms: d.heartbeat_interval.as_millis() as u64,
            election_timeout_min_ms: d.election_timeout_min.as_millis() as u64,
            election_timeout_max_ms: d.election_timeout_max.as_millis() as u64,
            snapshot_logs: d.snapshot_logs,
            purge_lag_logs: d.purge_lag_logs,
            rpc_timeout_ms: d.rpc_timeout.as_millis() as u64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsSection {
    request_bytes_max: usize,
    key_bytes_max: usize,
    value_bytes_max: usize,
    quota_bytes: u64,
    request_timeout_ms: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let d = Limits::default();
        LimitsSection {
            request_bytes_max: d.request_bytes_max,
            key_bytes_max: d.key_bytes_max,
            value_bytes_max: d.value_bytes_max,
            quota_bytes: d.quota_bytes,
            request_timeout_ms: d.request_timeout.as_millis() as u64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct WatchSection {
    progress_notify_interval_ms: u64,
}

impl Default for WatchSection {
    fn default() -> Self {
        WatchSection {
            progress_notify_interval_ms: WatchSettings::default()
                .progress_notify_interval
                .as_millis() as u64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LeaseSection {
    min_ttl_seconds: i64,
}

impl Default for LeaseSection {
    fn default() -> Self {
        LeaseSection {
            min_ttl_seconds: LeaseSettings::default().min_ttl_seconds,
        }
    }
}

/// Reads, merges and validates the configuration.
pub fn load(path: &Path) -> Result<ServerConfig> {
    if !path.is_file() {
        bail!("config file {} not found", path.display());
    }
    let raw = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("MERIDIAN")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .with_context(|| format!("config file {}", path.display()))?;
    let file: FileConfig = raw
        .try_deserialize()
        .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
    validate(file)
}

fn validate(f: FileConfig) -> Result<ServerConfig> {
    let bad = |key: &str, why: &str| anyhow::anyhow!("config key `{key}`: {why}");
    if f.name.is_empty() || f.name.contains(['/', '\\']) {
        return Err(bad("name", "must be a non-empty name without slashes"));
    }
    if !meridian_gateway::tls::valid_datacenter(&f.datacenter) {
        return Err(bad(
            "datacenter",
            "must be 1 to 63 letters, digits or '-' (it is carried in certificates)",
        ));
    }
    let fed = &f.federation;
    let federation = FederationConfig {
        peers: fed.peers.clone(),
        forward_timeout: Duration::from_millis(fed.forward_timeout_ms),
        probe_interval: Duration::from_millis(fed.probe_interval_ms),
        advertise_wan_addr: fed.advertise_wan_addr.clone(),
        replication: fed.replication.clone(),
        catalog: meridian_federation::CatalogConfig {
            lookup_timeout: Duration::from_millis(f.catalog.lookup_timeout_ms),
            checker_ttl_seconds: f.catalog.checker_ttl_seconds,
        },
    };
    if f.catalog.lookup_timeout_ms == 0 {
        return Err(bad(
            "catalog.lookup_timeout_ms",
            "must be greater than zero",
        ));
    }
    if f.catalog.checker_ttl_seconds < 1 {
        return Err(bad("catalog.checker_ttl_seconds", "must be 1 or more"));
    }
    federation.validate(&f.datacenter).map_err(|e| match e {
        meridian_federation::FederationError::Invalid { key, reason } => {
            bad(&format!("federation.{key}"), &reason)
        }
        other => anyhow::anyhow!(other),
    })?;
    let join_existing = match f.initial_cluster_state.as_deref() {
        None | Some("new") => false,
        Some("existing") => true,
        Some(other) => {
            return Err(bad(
                "initial_cluster_state",
                &format!("{other:?} is not \"new\" or \"existing\""),
            ))
        }
    };
    if !join_existing && !f.initial_members.contains_key(&f.name) {
        return Err(bad(
            "initial_members",
            "must include this server's own name (or set initial_cluster_state = \"existing\" to join a running datacenter)",
        ));
    }
    let mut initial_members = BTreeMap::new();
    for (name, spec) in f.initial_members {
        let (peer, client) = match spec {
            MemberSpec::Peer(p) => (p, None),
            MemberSpec::Full { peer, client } => (peer, client),
        };
        if peer.parse::<SocketAddr>().is_err() && !peer.contains(':') {
            return Err(bad(
                &format!("initial_members.{name}"),
                "peer address must be host:port",
            ));
        }
        initial_members.insert(
            name,
            InitialMember {
                peer_addr: peer,
                client_url: client.unwrap_or_default(),
            },
        );
    }
    let r = f.raft;
    if r.heartbeat_interval_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_interval_ms {
        return Err(bad(
            "raft.election_timeout_min_ms",
            "must be greater than raft.heartbeat_interval_ms",
        ));
    }
    if r.election_timeout_max_ms <= r.election_timeout_min_ms {
        return Err(bad(
            "raft.election_timeout_max_ms",
            "must be greater than raft.election_timeout_min_ms",
        ));
    }
    if r.snapshot_logs == 0 {
        return Err(bad("raft.snapshot_logs", "must be at least 1"));
    }
    let l = f.limits;
    if l.request_bytes_max == 0
        || l.key_bytes_max == 0
        || l.value_bytes_max == 0
        || l.quota_bytes == 0
        || l.request_timeout_ms == 0
    {
        return Err(bad("limits", "limits must be greater than zero"));
    }
    if f.watch.progress_notify_interval_ms == 0 {
        return Err(bad(
            "watch.progress_notify_interval_ms",
            "must be greater than zero",
        ));
    }
    if f.lease.min_ttl_seconds < 1 {
        return Err(bad("lease.min_ttl_seconds", "must be at least 1"));
    }
    let compaction = compaction_settings(&f.compaction).map_err(|(k, why)| bad(k, &why))?;
    if f.testing.advertise_feature_level == Some(0) {
        return Err(bad("testing.advertise_feature_level", "levels start at 1"));
    }
    let node = NodeConfig {
        compaction,
        join_existing,
        advertise_feature_level: f.testing.advertise_feature_level,
        lease: LeaseSettings {
            min_ttl_seconds: f.lease.min_ttl_seconds,
        },
        watch: WatchSettings {
            progress_notify_interval: Duration::from_millis(f.watch.progress_notify_interval_ms),
        },
        advertise_client_url: f
            .advertise_client_url
            .unwrap_or_else(|| format!("http://{}", f.client_addr)),
        advertise_peer_addr: f
            .advertise_peer_addr
            .unwrap_or_else(|| f.peer_addr.to_string()),
        name: f.name,
        datacenter: f.datacenter,
        data_dir: f.data_dir,
        client_addr: f.client_addr,
        peer_addr: f.peer_addr,
        initial_members,
        tls: TlsPaths {
            ca: f.tls.ca,
            cert: f.tls.cert,
            key: f.tls.key,
        },
        raft: RaftSettings {
            heartbeat_interval: Duration::from_millis(r.heartbeat_interval_ms),
            election_timeout_min: Duration::from_millis(r.election_timeout_min_ms),
            election_timeout_max: Duration::from_millis(r.election_timeout_max_ms),
            snapshot_logs: r.snapshot_logs,
            purge_lag_logs: r.purge_lag_logs,
            rpc_timeout: Duration::from_millis(r.rpc_timeout_ms),
        },
        limits: Limits {
            request_bytes_max: l.request_bytes_max,
            key_bytes_max: l.key_bytes_max,
            value_bytes_max: l.value_bytes_max,
            quota_bytes: l.quota_bytes,
            request_timeout: Duration::from_millis(l.request_timeout_ms),
        },
    };
    Ok(ServerConfig { node, federation })
}

/// The `[compaction]` section as etcd reads its flags: `periodic` keeps a
/// time window (`"1h"`, `"30m"`; a bare number is hours, as in etcd),
/// `revision` keeps a number of revisions.
fn compaction_settings(
    c: &CompactionSection,
) -> std::result::Result<CompactionSettings, (&'static str, String)> {
    let retention = match (c.mode.as_deref(), c.retention.as_deref()) {
        (None | Some("off"), None) => Retention::Off,
        (None | Some("off"), Some(_)) => {
            return Err((
                "compaction.mode",
                "set it to \"periodic\" or \"revision\" to use compaction.retention".into(),
            ))
        }
        (Some(_), None) => {
            return Err((
                "compaction.retention",
                "required with compaction.mode".into(),
            ))
        }
        (Some("periodic"), Some(r)) => {
            let window = match r.trim().parse::<u64>() {
                Ok(hours) => hours.checked_mul(3600).map(Duration::from_secs),
                Err(_) => meridian_node::config::parse_duration(r),
            };
            match window {
                Some(w) if !w.is_zero() => Retention::Periodic(w),
                _ => {
                    return Err((
                        "compaction.retention",
                        format!("{r:?} is not a window greater than zero (e.g. \"1h\", \"30m\")"),
                    ))
                }
            }
        }
        (Some("revision"), Some(r)) => match r.trim().parse::<i64>() {
            Ok(n) if n > 0 => Retention::Revision(n),
            _ => {
                return Err((
                    "compaction.retention",
                    format!("{r:?} is not a number of revisions greater than zero"),
                ))
            }
        },
        (Some(other), Some(_)) => {
            return Err((
                "compaction.mode",
                format!("{other:?} is not off, periodic or revision"),
            ))
        }
    };
    if c.interval_ms == Some(0) {
        return Err(("compaction.interval_ms", "must be greater than zero".into()));
    }
    Ok(CompactionSettings {
        retention,
        interval: c.interval_ms.map(Duration::from_millis),
    })
}
