//! Federation settings, as the `[federation]` section of the configuration gives them.

use crate::replication::rules::{self, RuleSpec};
use std::collections::BTreeMap;
use std::time::Duration;

/// Why the federation could not start.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// A setting is invalid; `key` is its name inside `[federation]`.
    #[error("federation.{key}: {reason}")]
    Invalid {
        /// The setting, e.g. `peers.eu-west`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The metrics could not be registered.
    #[error("federation metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The other datacenters and how to talk to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationConfig {
    /// Remote datacenters by name, each with seed WAN addresses (`host:port`
    /// of any of its servers' QUIC endpoints). Seeds need only be good enough
    /// to reach one server: each datacenter tells the others its current list.
    pub peers: BTreeMap<String, Vec<String>>,
    /// How long a forwarded request may take to reach the other datacenter
    /// and be accepted there before it is answered 503.
    pub forward_timeout: Duration,
    /// How often each link is probed (hello, server list, RTT) while up.
    pub probe_interval: Duration,
    /// The address other datacenters reach this server's QUIC endpoint at,
    /// when it differs from the peer address (NAT, a WAN-facing address).
    pub advertise_wan_addr: Option<String>,
    /// Replication rules by name, stored at epoch 1 by the DC's leader when
    /// the DC does not know the rule yet (API changes and promotions win).
    pub replication: BTreeMap<String, RuleSpec>,
    /// The service catalog's settings.
    pub catalog: crate::CatalogConfig,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            peers: BTreeMap::new(),
            forward_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_secs(1),
            advertise_wan_addr: None,
            replication: BTreeMap::new(),
            catalog: crate::CatalogConfig::default(),
        }
    }
}

impl FederationConfig {
    /// Checks the settings against this server's own datacenter name.
    pub fn validate(&self, own: &str) -> Result<(), FederationError> {
        let invalid = |key: String, reason: &str| FederationError::Invalid {
            key,
            reason: reason.to_string(),
        };
        for (dc, seeds) in &self.peers {
            let key = format!("peers.{dc}");
            if !meridian_gateway::tls::valid_datacenter(dc) {
                return Err(invalid(
                    key,
                    "datacenter names are 1 to 63 letters, digits or '-'",
                ));
            }
            if dc == own {
                return Err(invalid(key, "this is the server's own datacenter"));
            }
            if seeds.is_empty() || seeds.iter().any(|s| !s.contains(':')) {
                return Err(invalid(key, "needs one or more seed addresses host:port"));
            }
        }
        if self.forward_timeout.is_zero() {
            return Err(invalid(
                "forward_timeout_ms".into(),
                "must be greater than zero",
            ));
        }
        if self.probe_interval.is_zero() {
            return Err(invalid(
                "probe_interval_ms".into(),
                "must be greater than zero",
            ));
        }
        let peers: Vec<String> = self.peers.keys().cloned().collect();
        let mut checked = BTreeMap::new();
        for (name, spec) in &self.replication {
            let rule = rules::from_config(name, spec);
            let key = format!("replication.{name}");
            meridian_node::kv::mirror::check_rule(&rule, &checked).map_err(|e| {
                FederationError::Invalid {
                    key: key.clone(),
                    reason: e.to_string(),
                }
            })?;
            rules::check_datacenters(&rule, own, &peers)
                .map_err(|reason| FederationError::Invalid { key, reason })?;
            checked.insert(name.clone(), rule);
        }
        Ok(())
    }
}
