//! `meridian kv put|get|del`: etcdctl-like key-value verbs over the v3 JSON API.

use super::client::Endpoints;
use anyhow::Result;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use meridian_node::kv::prefix_end;
use serde_json::{json, Value};

/// Arguments of `kv`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    endpoints: Endpoints,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print KEY and its value (or every key under the prefix).
    Get {
        key: String,
        /// Treat KEY as a prefix.
        #[arg(long)]
        prefix: bool,
        /// Read at this revision.
        #[arg(long)]
        rev: Option<i64>,
    },
    /// Delete KEY (or every key under the prefix); prints how many were deleted.
    Del {
        key: String,
        /// Treat KEY as a prefix.
        #[arg(long)]
        prefix: bool,
    },
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn text(v: Option<&Value>) -> String {
    let bytes = v
        .and_then(Value::as_str)
        .and_then(|s| STANDARD.decode(s).ok())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

pub async fn run(args: Args) -> Result<()> {
    let ep = &args.endpoints;
    match args.command {
        Command::Put { key, value } => {
            ep.post(
                "/v3/kv/put",
                &json!({ "key": b64(key.as_bytes()), "value": b64(value.as_bytes()) }),
            )
            .await?;
            println!("OK");
        }
        Command::Get { key, prefix, rev } => {
            let mut req = json!({ "key": b64(key.as_bytes()) });
            if prefix {
                req["range_end"] = json!(b64(&prefix_end(key.as_bytes())));
            }
            if let Some(rev) = rev {
                req["revision"] = json!(rev.to_string());
            }
            let resp = ep.post("/v3/kv/range", &req).await?;
            for kv in resp
                .get("kvs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!("{}", text(kv.get("key")));
                println!("{}", text(kv.get("value")));
            }
        }
        Command::Del { key, prefix } => {
            let mut req = json!({ "key": b64(key.as_bytes()) });
            if prefix {
                req["range_end"] = json!(b64(&prefix_end(key.as_bytes())));
            }
            let resp = ep.post("/v3/kv/deleterange", &req).await?;
            println!(
                "{}",
                resp.get("deleted").and_then(Value::as_str).unwrap_or("0")
            );
        }
    }
    Ok(())
}
