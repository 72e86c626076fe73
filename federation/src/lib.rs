//! Meridian's federation: datacenters joined over QUIC WAN links.
//!
//! - [`links`]: one live link per remote datacenter (to any reachable server
//!   of it, failing over to others), its state and round-trip time, and the
//!   server list each datacenter tells the others.
//! - [`forward`]: a client request naming another datacenter (`dc=` or the
//!   `Meridian-Datacenter` header) is carried over the link and run there by
//!   that datacenter's own API, streaming both ways (watches included).
//! - `/v1/datacenters`: the directory as JSON.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod api;
mod config;
pub mod forward;
pub mod links;
mod metrics;
mod wire;

pub use config::{FederationConfig, FederationError};
pub use links::{LinkError, LinkStatus};

use axum::Router;
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
        let links = links::Links::new(
            own,
            endpoint.clone(),
            &config,
            wan_addresses(&node, config.advertise_wan_addr.clone()),
            metrics.clone(),
        );
        let federation = Federation {
            shared: Arc::new(Shared {
                node,
                config,
                links,
                local,
                metrics,
            }),
        };
        let serving = federation.clone();
        endpoint.register_streams(
            meridian_gateway::ALPN_WAN,
            Arc::new(move |reader, writer| {
                let federation = serving.clone();
                Box::pin(async move { forward::serve(federation, reader, writer).await })
            }),
        );
        federation.shared.links.start();
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

    /// Stops the link keepers.
    pub fn stop(&self) {
        self.shared.links.stop();
    }
}

/// The WAN addresses of this datacenter's servers: each member's peer
/// address, this server's own replaced by its advertised WAN address if set.
fn wan_addresses(node: &Node, own_wan: Option<String>) -> links::LocalServers {
    let node = node.clone();
    Arc::new(move || {
        let me = node.config().name.clone();
        node.members()
            .into_iter()
            .map(|m| match &own_wan {
                Some(wan) if m.name == me => wan.clone(),
                _ => m.peer_addr,
            })
            .collect()
    })
}
