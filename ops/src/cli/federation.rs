//! `meridian federation status`: every datacenter and the link to it, as
//! the server asked sees them (`GET /v1/datacenters`).

use super::client::Endpoints;
use anyhow::{bail, Result};
use serde_json::Value;

/// Arguments of `federation`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    endpoints: Endpoints,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// One line per datacenter: link state and since when, RTT, servers.
    Status,
}

pub async fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Status => {
            let v = args.endpoints.get("/v1/datacenters").await?;
            let Some(list) = v["datacenters"].as_array() else {
                bail!("unexpected answer: {v}");
            };
            for dc in list {
                println!("{}", line(dc));
            }
            Ok(())
        }
    }
}

fn line(dc: &Value) -> String {
    let name = dc["name"].as_str().unwrap_or("?");
    let servers = dc["servers"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    if dc["local"] == Value::Bool(true) {
        return format!("{name} local servers={servers}");
    }
    let state = dc["state"].as_str().unwrap_or("?");
    let since = dc["since"].as_u64().unwrap_or(0);
    let mut out = format!("{name} {state} since={since}");
    if let Some(rtt) = dc["rtt_ms"].as_f64() {
        out.push_str(&format!(" rtt={rtt:.1}ms"));
    }
    out.push_str(&format!(" servers={servers}"));
    if let Some(error) = dc["error"].as_str() {
        out.push_str(&format!(" error={error:?}"));
    }
    out
}
