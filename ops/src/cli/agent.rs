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
    let stop = StopSignals::listen()?;
    let config = crate::config::load(&args.config)?;
    let running = crate::server::start(config.node, config.federation).await?;
    tracing::info!(name = %running.node.config().name, datacenter = %running.node.config().datacenter, "server started");
    stop.wait().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

/// Ctrl-C (SIGINT) and SIGTERM, listened for from the moment this is made:
/// a signal that arrives while servers are still starting, or right after
/// they said so, ends the wait instead of killing the process uncleanly.
pub struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Starts listening.
    pub fn listen() -> Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for either signal (at once if one came already).
    pub async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
