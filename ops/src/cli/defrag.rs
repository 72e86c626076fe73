//! `meridian defrag --data-dir DIR`: rewrites a stopped server's state file
//! compactly and reports their bytes before and after. Run it on one server
//! at a time: the others keep serving (and take writes) meanwhile, and the
//! server catches up when it starts again.

use anyhow::{anyhow, Result};
use std::path::PathBuf;

/// Arguments of `defrag`.
#[derive(clap::Args)]
pub struct Args {
    /// The stopped server's data directory.
    #[arg(long)]
    data_dir: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let d = meridian_node::store::defrag(&args.data_dir).map_err(|e| anyhow!("defrag: {e}"))?;
    println!(
        "defragmented {} before_bytes={} after_bytes={}",
        args.data_dir.display(),
        d.before,
        d.after
    );
    Ok(())
}
