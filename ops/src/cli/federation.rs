//! `meridian federation`: every datacenter and the link to it, as the
//! server asked sees them (`GET /v1/datacenters`), and the replication rules
//! (`/v1/federation/replication`): list, set, delete, promote.

use super::client::{path_segment, Endpoints};
use anyhow::{bail, Result};
use serde_json::{json, Value};

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
    /// One line per replication rule: prefix, source, targets, epoch, this
    /// datacenter's role, checkpoint and lag.
    Rules,
    /// Creates or changes a replication rule (its epoch rises).
    SetRule {
        /// The rule's name.
        name: String,
        /// The mirrored prefix.
        #[arg(long)]
        prefix: String,
        /// The datacenter whose writes are mirrored.
        #[arg(long)]
        source: String,
        /// The datacenters holding read-only copies, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        targets: Vec<String>,
        /// Send writes made in a target to the source instead of refusing them.
        #[arg(long)]
        forward_writes: bool,
    },
    /// Deletes a replication rule (copies stay, and become writable).
    DeleteRule {
        /// The rule's name.
        name: String,
    },
    /// Makes the datacenter given with `--dc` the rule's source (DC failover).
    Promote {
        /// The rule's name.
        rule: String,
    },
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
        Command::Rules => {
            let v = args.endpoints.get("/v1/federation/replication").await?;
            for rule in v["rules"].as_array().into_iter().flatten() {
                println!("{}", rule_line(rule));
            }
            Ok(())
        }
        Command::SetRule {
            name,
            prefix,
            source,
            targets,
            forward_writes,
        } => {
            let body = json!({ "prefix": prefix, "source": source, "targets": targets, "forward_writes": forward_writes });
            let v = args.endpoints.put(&rule_path(&name)?, &body).await?;
            println!("{}", rule_line(&v));
            Ok(())
        }
        Command::DeleteRule { name } => {
            let v = args.endpoints.delete(&rule_path(&name)?).await?;
            println!("{}", rule_line(&v));
            Ok(())
        }
        Command::Promote { rule } => {
            if args.endpoints.dc.is_none() {
                bail!("promote needs --dc NAME: the datacenter that becomes the source");
            }
            let path = format!("{}/promote", rule_path(&rule)?);
            let v = args.endpoints.post(&path, &json!({})).await?;
            println!("{}", rule_line(&v));
            Ok(())
        }
    }
}

fn rule_path(name: &str) -> Result<String> {
    Ok(format!(
        "/v1/federation/replication/{}",
        path_segment(name)?
    ))
}

/// The strings of a JSON array, comma-separated.
pub(crate) fn comma_joined(list: &Value) -> String {
    list.as_array()
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// `NAME prefix=P source=S targets=A,B epoch=N role=R [checkpoint=C] [lag=L]`.
pub fn rule_line(rule: &Value) -> String {
    let s = |k: &str| rule[k].as_str().unwrap_or("?").to_string();
    let targets = comma_joined(&rule["targets"]);
    let mut out = format!(
        "{} prefix={} source={} targets={} epoch={} role={}",
        s("name"),
        s("prefix"),
        s("source"),
        targets,
        rule["epoch"].as_u64().unwrap_or(0),
        s("role"),
    );
    if rule["forward_writes"] == Value::Bool(true) {
        out.push_str(" forward_writes");
    }
    if rule["deleted"] == Value::Bool(true) {
        out.push_str(" deleted");
    }
    if let Some(c) = rule["checkpoint"]["source_revision"].as_i64() {
        out.push_str(&format!(" checkpoint={c}"));
    }
    if let Some(p) = rule.get("progress").filter(|p| p.is_object()) {
        out.push_str(&format!(
            " state={} lag={}rev/{:.1}s",
            p["state"].as_str().unwrap_or("?"),
            p["lag_revisions"].as_i64().unwrap_or(0),
            p["lag_seconds"].as_f64().unwrap_or(0.0)
        ));
    }
    if let Some(lost) = rule["unreplicated_writes"].as_array() {
        out.push_str(&format!(" unreplicated_writes={}", lost.len()));
    }
    out
}

fn line(dc: &Value) -> String {
    let name = dc["name"].as_str().unwrap_or("?");
    let servers = comma_joined(&dc["servers"]);
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
