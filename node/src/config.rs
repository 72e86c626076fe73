//! A server's validated configuration, as the node needs it. The binary reads
//! files and environment into this; the node trusts it to be checked.

use meridian_gateway::tls::TlsPaths;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One initial member of the datacenter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    /// Its QUIC peer address.
    pub peer_addr: String,
    /// Its client URL, if known.
    pub client_url: String,
}

/// Raft timing and snapshot policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftSettings {
    /// Leader heartbeat period.
    pub heartbeat_interval: Duration,
    /// Smallest election timeout.
    pub election_timeout_min: Duration,
    /// Largest election timeout.
    pub election_timeout_max: Duration,
    /// A snapshot is built after this many log entries since the last one.
    pub snapshot_logs: u64,
    /// Log entries kept below the latest snapshot (for followers slightly behind).
    pub purge_lag_logs: u64,
    /// Deadline of one peer RPC.
    pub rpc_timeout: Duration,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            snapshot_logs: 10_000,
            purge_lag_logs: 1_000,
            rpc_timeout: Duration::from_millis(3000),
        }
    }
}

/// Request limits and the database quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request (decoded bytes of keys, values and fields), like etcd's `--max-request-bytes`.
    pub request_bytes_max: usize,
    /// Largest key.
    pub key_bytes_max: usize,
    /// Largest value.
    pub value_bytes_max: usize,
    /// Database quota: past it, the NOSPACE alarm blocks puts.
    pub quota_bytes: u64,
    /// How long a client request may wait for Raft.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_bytes_max: 1536 * 1024,
            key_bytes_max: 1536 * 1024,
            value_bytes_max: 1536 * 1024,
            quota_bytes: 2 * 1024 * 1024 * 1024,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Watch settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSettings {
    /// How often an idle watch created with `progress_notify` gets a progress response.
    pub progress_notify_interval: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            // etcd's default.
            progress_notify_interval: Duration::from_secs(600),
        }
    }
}

/// Lease settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Shortest TTL a lease gets (shorter requests are raised to it, as etcd does).
    pub min_ttl_seconds: i64,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        // etcd's default minimum: 1.5 election timeouts, in whole seconds.
        LeaseSettings { min_ttl_seconds: 3 }
    }
}

/// Everything one server needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// This server's name, unique in its datacenter.
    pub name: String,
    /// The datacenter's name.
    pub datacenter: String,
    /// Where `raft/`, `state/` and `snapshots/` live.
    pub data_dir: PathBuf,
    /// Client HTTP listen address.
    pub client_addr: SocketAddr,
    /// QUIC listen address.
    pub peer_addr: SocketAddr,
    /// Client URL other servers and tools are told.
    pub advertise_client_url: String,
    /// Peer address other servers are told.
    pub advertise_peer_addr: String,
    /// The datacenter's first members (name → addresses), used once to bootstrap.
    pub initial_members: BTreeMap<String, InitialMember>,
    /// TLS material for the peer transport.
    pub tls: TlsPaths,
    /// Raft settings.
    pub raft: RaftSettings,
    /// Limits.
    pub limits: Limits,
    /// Watch settings.
    pub watch: WatchSettings,
    /// Lease settings.
    pub lease: LeaseSettings,
    /// Automatic compaction.
    pub compaction: crate::compactor::CompactionSettings,
    /// Joins a datacenter that exists (etcd's `initial-cluster-state =
    /// existing`): never bootstraps; waits to be added as a learner.
    pub join_existing: bool,
    /// Advertise this feature level instead of the build's (only lower
    /// takes effect): lets tests play an older server in a rolling upgrade.
    pub advertise_feature_level: Option<u32>,
}

/// A duration as Go and Consul write them: a number and a unit (`ns`, `us`,
/// `ms`, `s`, `m`, `h`), possibly several (`"1m30s"`), or a bare number of
/// seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit..];
        total = total.checked_add(Duration::try_from_secs_f64(number * scale).ok()?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_go_writes_them() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("120000ms"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("10 parsecs"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(
            parse_duration("18446744073709551615s18446744073709551615s"),
            None
        );
    }
}
