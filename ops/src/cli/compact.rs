//! `meridian compact REV | --keep N`: removes history below a revision, or
//! all but the latest N revisions (`POST /admin/compact`).

use super::client::Endpoints;
use anyhow::{bail, Result};
use serde_json::json;

/// Arguments of `compact`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    endpoints: Endpoints,
    /// Remove history below this revision.
    revision: Option<i64>,
    /// Keep only the latest N revisions instead.
    #[arg(long, conflicts_with = "revision")]
    keep: Option<i64>,
}

pub async fn run(args: Args) -> Result<()> {
    let body = match (args.revision, args.keep) {
        (Some(r), None) => json!({ "revision": r }),
        (None, Some(k)) => json!({ "keep": k }),
        _ => bail!("give a revision or --keep N"),
    };
    let v = args.endpoints.post("/admin/compact", &body).await?;
    if v["compacted"] == json!(true) {
        println!(
            "compacted_revision={} revision={}",
            v["compacted_revision"], v["revision"]
        );
    } else {
        println!(
            "nothing to compact: compacted_revision={} revision={}",
            v["compacted_revision"], v["revision"]
        );
    }
    Ok(())
}
