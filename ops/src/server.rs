//! Running one server: the node plus its client HTTP listener.

use anyhow::{Context, Result};
use meridian_node::{Node, NodeConfig};

/// A started server and the task serving its HTTP API.
pub struct Running {
    /// The node.
    pub node: Node,
    http: tokio::task::JoinHandle<()>,
}

/// Starts the node and serves its client API.
pub async fn start(config: NodeConfig) -> Result<Running> {
    let listener = tokio::net::TcpListener::bind(config.client_addr)
        .await
        .with_context(|| format!("cannot listen for clients on {}", config.client_addr))?;
    let name = config.name.clone();
    let node = Node::start(config)
        .await
        .with_context(|| format!("server {name} failed to start"))?;
    let app = meridian_node::api::router(node.clone());
    let http = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "client API stopped");
        }
    });
    Ok(Running { node, http })
}

impl Running {
    /// Stops serving clients, then stops the node.
    pub async fn stop(self) {
        self.http.abort();
        self.node.shutdown().await;
    }
}
