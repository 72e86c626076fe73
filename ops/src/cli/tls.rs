//! `meridian tls init --dir DIR --names n1,n2,n3`: a CA and one certificate per server.

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
    /// Create ca.pem, ca-key.pem and <name>.pem, <name>-key.pem for each name.
    Init {
        /// Directory to write into.
        #[arg(long)]
        dir: PathBuf,
        /// Server names, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        names: Vec<String>,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Init { dir, names } => {
            meridian_gateway::tls::generate(&dir, &names).context("tls init")?;
            println!(
                "wrote CA and certificates for {} to {}",
                names.join(", "),
                dir.display()
            );
            Ok(())
        }
    }
}
