//! Running one server: the node, its place in the federation and its client
//! HTTP listener.

use anyhow::{Context, Result};
use axum::serve::ListenerExt;
use meridian_federation::{Federation, FederationConfig};
use meridian_node::{Node, NodeConfig};

/// A started server and the task serving its HTTP API.
pub struct Running {
    /// The node.
    pub node: Node,
    /// Its federation links.
    pub federation: Federation,
    http: tokio::task::JoinHandle<()>,
}

/// Starts the node, joins the federation and serves the client API.
pub async fn start(config: NodeConfig, federation: FederationConfig) -> Result<Running> {
    // TCP_NODELAY: streamed answers (watch events, keep-alives, lock waits)
    // go out in small writes that Nagle's algorithm would hold back until
    // the client's delayed ACK, about 40 ms each.
    let listener = tokio::net::TcpListener::bind(config.client_addr)
        .await
        .with_context(|| format!("cannot listen for clients on {}", config.client_addr))?
        .tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY on a client connection");
            }
        });
    let name = config.name.clone();
    let node = Node::start(config)
        .await
        .with_context(|| format!("server {name} failed to start"))?;
    let api = meridian_node::api::router(node.clone());
    let federation = Federation::start(node.clone(), federation, api)
        .with_context(|| format!("server {name} could not join the federation"))?;
    let app = federation.router();
    let http = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "client API stopped");
        }
    });
    Ok(Running {
        node,
        federation,
        http,
    })
}

impl Running {
    /// Stops serving clients and the federation links, then stops the node.
    pub async fn stop(self) {
        self.http.abort();
        self.federation.stop();
        self.node.shutdown().await;
    }
}
