//! `meridian tls init --dir DIR --datacenter DC --names n1,n2,n3`: a CA (or
//! the one already in DIR) and one certificate per server of datacenter DC.

use anyhow::{Context, Result};
use std::path::PathBuf;

/// Arguments of `tls`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Create ca.pem and ca-key.pem (unless DIR has them: the federation's CA
    /// is shared by all its datacenters) and <name>.pem, <name>-key.pem for
    /// each name, issued for the datacenter.
    Init {
        /// Directory to write into.
        #[arg(long)]
        dir: PathBuf,
        /// The servers' datacenter, as in their configuration's `datacenter`.
        #[arg(long)]
        datacenter: String,
        /// Server names, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        names: Vec<String>,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Init {
            dir,
            datacenter,
            names,
        } => {
            let reused = dir.join("ca.pem").exists() && dir.join("ca-key.pem").exists();
            meridian_gateway::tls::generate(&dir, &datacenter, &names).context("tls init")?;
            println!(
                "wrote certificates for {} (datacenter {datacenter}) to {}, signed by {} CA",
                names.join(", "),
                dir.display(),
                if reused { "the existing" } else { "a new" }
            );
            Ok(())
        }
    }
}
