//! Meridian's federation: datacenters joined over QUIC WAN links.
//!
//! - [`links`]: one live link per remote datacenter (to any reachable server
//!   of it, failing over to others), its state and round-trip time, and the
//!   server list each datacenter tells the others.
//! - [`forward`]: a client request naming another datacenter (`dc=` or the
//!   `Meridian-Datacenter` header) is carried over the link and run there by
//!   that datacenter's own API, streaming both ways (watches included).
//! - [`replication`]: prefixes mirrored from a source datacenter to targets,
//!   each batch applied with its checkpoint in one Raft entry.
//! - [`catalog`]: service instances with leases and health checks, and
//!   lookups that fail over to the nearest datacenter with healthy ones.
//! - `/v1/datacenters` and `/v1/federation/replication`: the directory and
//!   the rules as JSON.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod api;
pub mod catalog;
mod config;
pub mod forward;
pub mod links;
mod metrics;
pub mod replication;
mod wire;

pub use catalog::CatalogConfig;
pub use config::{FederationConfig, FederationError};
pub use links::{LinkError, LinkStatus};
pub use replication::rules::RuleSpec;

use axum::Router;
use meridian_node::kv::mirror::MirrorRule;
use meridian_node::Node;
use std::sync::Arc;

/// The name of the header that picks the datacenter a request runs in, and
/// that names the datacenter which served an answer.
pub const DATACENTER_HEADER: &str = "meridian-datacenter";

/// One server's part in the federation.
#[derive(Clone)]
pub struct Federation {
    shared: Arc<Shared>,
}

struct Shared {
    node: Node,
    config: FederationConfig,
    links: Arc<links::Links>,
    /// The node's own API, which forwarded requests run against.
    local: Router,
    metrics: metrics::FederationMetrics,
    replication: Arc<replication::Replication>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn federation(self: &Arc<Self>) -> Federation {
        Federation {
            shared: self.clone(),
        }
    }
}

impl Federation {
    /// Joins the federation: admits the configured datacenters on the WAN
    /// protocol, serves their requests with `local` (the node's API) and
    /// starts keeping a link to each of them.
    pub fn start(
        node: Node,
        config: FederationConfig,
        local: Router,
    ) -> Result<Federation, FederationError> {
        let own = node.config().datacenter.clone();
        config.validate(&own)?;
        let metrics = metrics::FederationMetrics::register(node.metrics().registry())?;
        let endpoint = node.endpoint().clone();
        endpoint.admit(
            meridian_gateway::ALPN_WAN,
            config
                .peers
                .keys()
                .map(|dc| meridian_gateway::tls::datacenter_name(dc))
                .collect(),
        );
        let side = Arc::new(Side {
            node: node.clone(),
            own: own.clone(),
            own_wan: config.advertise_wan_addr.clone(),
        });
        let links = links::Links::new(own, endpoint.clone(), &config, side, metrics.clone());
        let catalog_metrics = metrics::CatalogMetrics::register(node.metrics().registry())?;
        let mut catalog = None;
        let shared = Arc::new_cyclic(|weak| {
            let c = catalog::Catalog::new(
                node.clone(),
                config.catalog.clone(),
                catalog_metrics,
                weak.clone(),
            );
            // The catalog's routes serve forwarded requests too.
            let local = local.merge(c.routes());
            catalog = Some(c);
            Shared {
                node,
                config,
                links,
                local,
                metrics,
                replication: Arc::default(),
                stop: tokio::sync::watch::channel(false).0,
            }
        });
        let federation = shared.federation();
        let serving = federation.clone();
        endpoint.register_streams(
            meridian_gateway::ALPN_WAN,
            Arc::new(move |reader, writer| {
                let federation = serving.clone();
                Box::pin(async move { forward::serve(federation, reader, writer).await })
            }),
        );
        federation.shared.links.start();
        if let Some(catalog) = catalog {
            catalog.start(federation.shared.stop.subscribe());
        }
        tokio::spawn(replication::supervise(
            federation.clone(),
            federation.shared.stop.subscribe(),
        ));
        Ok(federation)
    }

    /// The client API with federation on top: `/v1/datacenters`, and every
    /// request naming another datacenter forwarded there.
    pub fn router(&self) -> Router {
        self.shared
            .local
            .clone()
            .merge(api::routes(self.clone()))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                forward::route,
            ))
    }

    /// This server's datacenter.
    pub fn datacenter(&self) -> &str {
        &self.shared.node.config().datacenter
    }

    /// Every remote datacenter's link, by name.
    pub fn links(&self) -> Vec<LinkStatus> {
        self.shared.links.status()
    }

    /// Progress of the rules replicated into this datacenter, as its leader
    /// sees them (empty on other servers).
    pub fn replication(&self) -> Vec<replication::Progress> {
        self.shared.replication.progress()
    }

    /// Stops the link keepers and the replicators.
    pub fn stop(&self) {
        self.shared.links.stop();
        self.shared.stop.send_replace(true);
    }
}

/// This datacenter as hellos describe it.
struct Side {
    node: Node,
    own: String,
    own_wan: Option<String>,
}

impl links::LocalSide for Side {
    /// Each member's peer address, this server's own replaced by its
    /// advertised WAN address if set.
    fn servers(&self) -> Vec<String> {
        let me = self.node.config().name.clone();
        self.node
            .members()
            .into_iter()
            .map(|m| match &self.own_wan {
                Some(wan) if m.name == me => wan.clone(),
                _ => m.peer_addr,
            })
            .collect()
    }

    fn rules(&self) -> Vec<MirrorRule> {
        self.node
            .mirror_rules()
            .map(|r| r.into_values().collect())
            .unwrap_or_default()
    }

    fn heard(&self, dc: &str, rules: Vec<MirrorRule>) {
        let Ok(local) = self.node.mirror_rules() else {
            return;
        };
        let newer = replication::rules::newer(&local, &self.own, rules);
        if !newer.is_empty() {
            let node = self.node.clone();
            let dc = dc.to_string();
            tokio::spawn(async move { replication::rules::adopt(&node, &dc, newer).await });
        }
    }
}
