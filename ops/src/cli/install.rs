//! `meridian install-state STATE_DIR FILE` (hidden): a server runs this to
//! install a Raft snapshot into its state environment in a short-lived
//! process, so that the memory LMDB keeps for the transaction's pages goes
//! when it exits (ADR 0018).

use anyhow::{anyhow, Result};
use std::path::PathBuf;

/// Arguments of `install-state`.
#[derive(clap::Args)]
pub struct Args {
    /// The server's state directory (`DATA_DIR/state`).
    state_dir: PathBuf,
    /// The snapshot file to install.
    file: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    meridian_node::raft::install_here(&args.state_dir, &args.file)
        .map_err(|e| anyhow!("{}: {e}", args.file.display()))?;
    Ok(())
}
