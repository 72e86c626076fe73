//! `meridian member list` and `meridian status`.

use super::client::Endpoints;
use anyhow::Result;
use serde_json::{json, Value};

/// Arguments of `member`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    endpoints: Endpoints,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List the members: id, name, peer address, client URL, role.
    List,
}

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

pub async fn run(args: Args) -> Result<()> {
    match args.command {
        Command::List => {
            let resp = args
                .endpoints
                .post("/v3/cluster/member/list", &json!({}))
                .await?;
            for m in resp
                .get("members")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let client = m
                    .get("clientURLs")
                    .and_then(Value::as_array)
                    .and_then(|a| a.first())
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let peer = m
                    .get("peerURLs")
                    .and_then(Value::as_array)
                    .and_then(|a| a.first())
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let role = if m.get("isLearner").and_then(Value::as_bool).unwrap_or(false) {
                    "learner"
                } else {
                    "voter"
                };
                println!(
                    "{}, {}, {}, {}, {}",
                    s(m, "ID"),
                    s(m, "name"),
                    peer,
                    client,
                    role
                );
            }
        }
    }
    Ok(())
}

/// `meridian status`: one line per endpoint.
pub async fn status(endpoints: Endpoints) -> Result<()> {
    let mut failures = 0;
    for endpoint in &endpoints.endpoints {
        let one = Endpoints {
            endpoints: vec![endpoint.clone()],
            dc: endpoints.dc.clone(),
        };
        match one.post("/v3/maintenance/status", &json!({})).await {
            Ok(v) => {
                let header = v.get("header").cloned().unwrap_or_default();
                let me = s(&header, "member_id");
                let leader = s(&v, "leader");
                let info = v.get("meridian").cloned().unwrap_or_default();
                println!(
                    "{endpoint}: dc={} name={} version={} leader={} revision={} raft_term={} raft_index={} db_size={}",
                    s(&info, "datacenter"),
                    s(&info, "name"),
                    s(&info, "version"),
                    if me == leader { "self".to_string() } else { leader },
                    s(&header, "revision"),
                    s(&header, "raft_term"),
                    s(&v, "raftIndex"),
                    s(&v, "dbSize"),
                );
            }
            Err(e) => {
                failures += 1;
                println!("{endpoint}: unreachable: {e}");
            }
        }
    }
    if failures == endpoints.endpoints.len() {
        anyhow::bail!("no endpoint answered");
    }
    Ok(())
}
