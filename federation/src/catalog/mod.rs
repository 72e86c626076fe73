//! The service catalog: services register instances (bound to leases or
//! watched by checks), the datacenter's servers run the checks between them,
//! and lookups return healthy instances here or, failing that, in the
//! nearest other datacenters.
//!
//! - [`model`]: instances, checks and health records, and the registration
//!   a client sends with its validation.
//! - [`store`]: the reserved keys and the writes and reads on them.
//! - `checks`: the check runner each server runs for its share of checks.
//! - `lookup`: `GET /v1/lookup/<service>` with failover across datacenters.
//! - `api` and `consul`: the native endpoints, and the Consul-compatible
//!   reads (`/v1/catalog/...`, `/v1/health/service/...`, `/v1/agent/self`)
//!   that Consul tooling such as Prometheus' `consul_sd_configs` uses.

mod api;
mod checks;
mod consul;
mod lookup;
pub mod model;
pub mod store;

use crate::metrics::CatalogMetrics;
use axum::response::{IntoResponse, Response};
use axum::Router;
use meridian_node::{Node, NodeError};
use std::sync::Weak;
use std::time::Duration;

/// Catalog settings (the `[catalog]` section of the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogConfig {
    /// How long one datacenter of a failover lookup may take to answer
    /// before the next one is tried.
    pub lookup_timeout: Duration,
    /// TTL of the lease that announces a server as a checker: a server that
    /// stops renewing it hands its checks to the others after about this long.
    pub checker_ttl_seconds: i64,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            lookup_timeout: Duration::from_secs(2),
            checker_ttl_seconds: 3,
        }
    }
}

/// Why a catalog request failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Bad input; nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// The service, instance or lease named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The instance changed while the request ran; retry.
    #[error("{0}")]
    Conflict(String),
    /// Nobody could answer (no leader, an unreachable datacenter).
    #[error("{0}")]
    Unavailable(String),
    /// Stored data could not be encoded.
    #[error("catalog: {0}")]
    Internal(String),
    /// The node refused or failed the operation.
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl CatalogError {
    fn code(&self) -> i32 {
        match self {
            CatalogError::Invalid(_) => 3,
            CatalogError::NotFound(_) => 5,
            CatalogError::Conflict(_) => 9,
            CatalogError::Unavailable(_) => 14,
            CatalogError::Internal(_) => 13,
            CatalogError::Node(e) => e.grpc_code(),
        }
    }
}

impl IntoResponse for CatalogError {
    fn into_response(self) -> Response {
        let code = self.code();
        let status = meridian_node::api::http_status(code);
        crate::forward::error(status, code, self.to_string(), None)
    }
}

/// The catalog of one server: its node, and the federation for failover.
#[derive(Clone)]
pub(crate) struct Catalog {
    node: Node,
    config: CatalogConfig,
    metrics: CatalogMetrics,
    /// The federation this server belongs to (weak: the federation holds
    /// the router that holds the catalog).
    federation: Weak<crate::Shared>,
}

impl Catalog {
    pub(crate) fn new(
        node: Node,
        config: CatalogConfig,
        metrics: CatalogMetrics,
        federation: Weak<crate::Shared>,
    ) -> Catalog {
        Catalog {
            node,
            config,
            metrics,
            federation,
        }
    }

    /// The catalog's HTTP routes.
    pub(crate) fn routes(&self) -> Router {
        api::routes(self.clone()).merge(consul::routes(self.clone()))
    }

    /// Starts this server's check runner and checker announcement.
    pub(crate) fn start(&self, stop: tokio::sync::watch::Receiver<bool>) {
        let (needed, needed_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(checks::announce(self.clone(), needed_rx, stop.clone()));
        tokio::spawn(checks::run(self.clone(), needed, stop));
    }

    fn datacenter(&self) -> &str {
        &self.node.config().datacenter
    }

    fn server(&self) -> &str {
        &self.node.config().name
    }
}
