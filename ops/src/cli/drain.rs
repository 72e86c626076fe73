//! `meridian drain` (before stopping a server) and `meridian leader
//! transfer` (move leadership away from the current leader without stopping
//! it): both through `/admin/drain`.

use super::client::Endpoints;
use anyhow::{bail, Result};
use serde_json::{json, Value};

/// Arguments of `drain`.
#[derive(clap::Args)]
pub struct DrainArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// End a drain instead: the server serves and campaigns again.
    #[arg(long)]
    undo: bool,
}

/// Arguments of `leader`.
#[derive(clap::Args)]
pub struct LeaderArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    #[command(subcommand)]
    command: LeaderCommand,
}

#[derive(clap::Subcommand)]
enum LeaderCommand {
    /// Moves leadership to another voter: the leader hands over (to the
    /// voter named by --to, or the most caught-up one), then serves again as
    /// a follower.
    Transfer {
        /// The voter to lead next.
        #[arg(long, value_name = "NAME")]
        to: Option<String>,
    },
}

fn one(endpoints: &Endpoints) -> Result<Endpoints> {
    if endpoints.endpoints.len() != 1 {
        bail!("name exactly one server with --endpoints URL");
    }
    Ok(endpoints.clone())
}

fn said(v: &Value) -> String {
    format!(
        "was_leader={} leader={} handover={} leaderless_ms={} took_ms={}",
        v["was_leader"],
        v["leader_name"].as_str().unwrap_or("none"),
        v["handover"].as_str().unwrap_or("none"),
        v["leaderless_ms"],
        v["took_ms"]
    )
}

pub async fn drain(args: DrainArgs) -> Result<()> {
    let server = one(&args.endpoints)?;
    if args.undo {
        server.delete("/admin/drain").await?;
        println!("serving again");
    } else {
        let v = server.post("/admin/drain", &json!({})).await?;
        println!("drained {}", said(&v));
    }
    Ok(())
}

pub async fn leader(args: LeaderArgs) -> Result<()> {
    match args.command {
        LeaderCommand::Transfer { to } => {
            let leader = args.endpoints.leader().await?;
            let url = leader.endpoints[0].clone();
            let body = match &to {
                Some(name) => json!({ "to": name }),
                None => json!({}),
            };
            let result = leader.post("/admin/drain", &body).await;
            leader.delete("/admin/drain").await?;
            let v = result?;
            if v["leader"].is_null() {
                bail!("no other server took over in time; {url} leads again");
            }
            if let Some(name) = &to {
                if v["leader_name"].as_str() != Some(name) {
                    bail!("{} leads now, not {name}", said(&v));
                }
            }
            println!("transferred {}", said(&v));
        }
    }
    Ok(())
}
