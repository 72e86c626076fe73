//! `meridian snapshot save | status | restore`: backups of a server's state
//! (`POST /admin/snapshot`), checked end to end, and restored into the data
//! directories of a new datacenter (like etcdutl's snapshot restore).

use super::client::Endpoints;
use anyhow::{anyhow, bail, Context, Result};
use meridian_node::backup::{self, Manifest};
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `snapshot`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Takes a backup from the first server that answers and writes it to
    /// FILE (checked before it is kept).
    Save {
        #[command(flatten)]
        endpoints: Endpoints,
        /// Where to write it.
        file: PathBuf,
    },
    /// Checks a backup end to end and prints its manifest.
    Status {
        /// The backup.
        file: PathBuf,
    },
    /// Seeds one server's data directory of a new datacenter from a backup:
    /// the same keys, leases and revision, a new cluster id. Run it for each
    /// initial member, then start the servers with their configurations.
    Restore {
        /// The backup.
        file: PathBuf,
        /// The server's (empty) data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The server's name.
        #[arg(long)]
        name: String,
        /// The new datacenter's initial members (names), comma-separated;
        /// they must match the servers' `initial_members`.
        #[arg(long, value_delimiter = ',', required = true)]
        initial_members: Vec<String>,
    },
}

pub async fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Save { endpoints, file } => save(&endpoints, file).await,
        Command::Status { file } => {
            let manifest = backup::verify(&file).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            print(&manifest);
            Ok(())
        }
        Command::Restore {
            file,
            data_dir,
            name,
            initial_members,
        } => {
            let manifest = backup::restore(&file, &data_dir, &name, &initial_members)
                .map_err(|e| anyhow!("{}: {e}", file.display()))?;
            println!(
                "restored revision={} from dc={} into {} for {name}",
                manifest.revision,
                manifest.datacenter,
                data_dir.display()
            );
            Ok(())
        }
    }
}

async fn save(endpoints: &Endpoints, file: PathBuf) -> Result<()> {
    let client = endpoints.client()?;
    let part = file.with_extension("part");
    let mut last = None;
    for endpoint in &endpoints.endpoints {
        let url = format!("{}/admin/snapshot", endpoint.trim_end_matches('/'));
        let response = match client.post(&url).send().await {
            Ok(r) => r,
            Err(e) => {
                last = Some(anyhow!("{url}: {e}"));
                continue;
            }
        };
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            bail!(
                "{} (HTTP {status})",
                body["message"].as_str().unwrap_or("backup refused")
            );
        }
        let mut out = std::fs::File::create(&part)
            .with_context(|| format!("cannot write {}", part.display()))?;
        let mut response = response;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| anyhow!("{url}: download broke off: {e}"))?
        {
            out.write_all(&chunk)?;
        }
        out.sync_all()?;
        let manifest = match backup::verify(&part) {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                bail!("{url}: the backup received does not check out: {e}");
            }
        };
        std::fs::rename(&part, &file)?;
        print(&manifest);
        return Ok(());
    }
    Err(last.unwrap_or_else(|| anyhow!("no endpoints given")))
}

fn print(m: &Manifest) {
    let members: Vec<&str> = m.members.iter().map(|m| m.name.as_str()).collect();
    println!(
        "format={} meridian={} dc={} cluster_id={} server={} revision={} compacted_revision={} applied_index={} members={} taken_at_ms={} snapshot_bytes={} sha256={}",
        m.format,
        m.meridian_version,
        m.datacenter,
        m.cluster_id,
        m.server,
        m.revision,
        m.compacted_revision,
        m.applied_index,
        members.join(","),
        m.taken_at_ms,
        m.snapshot_bytes,
        m.snapshot_sha256
    );
}
