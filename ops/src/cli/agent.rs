//! `meridian agent --config FILE`: run one server until SIGINT or SIGTERM.

use anyhow::Result;
use std::path::PathBuf;

/// Arguments of `agent`.
#[derive(clap::Args)]
pub struct Args {
    /// The TOML configuration file (see docs/configuration.md).
    #[arg(long)]
    config: PathBuf,
}

pub async fn run(args: Args) -> Result<()> {
    let config = crate::config::load(&args.config)?;
    let running = crate::server::start(config.node, config.federation).await?;
    tracing::info!(name = %running.node.config().name, datacenter = %running.node.config().datacenter, "server started");
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
