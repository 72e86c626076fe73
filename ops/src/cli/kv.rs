//! `meridian kv put|get|del|watch`: etcdctl-like key-value verbs over the v3 JSON API.

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
    /// Print one line per change of KEY (or of every key under the prefix)
    /// until interrupted; moves to another endpoint if its server goes away,
    /// resuming after the last change printed.
    Watch {
        key: String,
        /// Treat KEY as a prefix.
        #[arg(long)]
        prefix: bool,
        /// Start with the changes at this revision (history), then live.
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
        Command::Watch { key, prefix, rev } => watch(ep, key, prefix, rev).await?,
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

/// How many times in a row every endpoint may fail before `kv watch` gives up.
const WATCH_ROUNDS_MAX: usize = 5;

async fn watch(ep: &Endpoints, key: String, prefix: bool, rev: Option<i64>) -> Result<()> {
    let mut create = json!({ "key": b64(key.as_bytes()) });
    if prefix {
        create["range_end"] = json!(b64(&prefix_end(key.as_bytes())));
    }
    // The next revision to print; 0 until the first watch says where it starts.
    let mut next = rev.unwrap_or(0);
    let client = ep.client()?;
    let mut failures = 0;
    let mut last_error = String::new();
    while failures < WATCH_ROUNDS_MAX * ep.endpoints.len().max(1) {
        let endpoint = &ep.endpoints[failures % ep.endpoints.len().max(1)];
        if next > 0 {
            create["start_revision"] = json!(next.to_string());
        }
        let url = format!("{}/v3/watch", endpoint.trim_end_matches('/'));
        let mut response = match client
            .post(&url)
            .json(&json!({ "create_request": create }))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                last_error = format!("{url}: HTTP {}", r.status().as_u16());
                failures += 1;
                continue;
            }
            Err(e) => {
                last_error = format!("{url}: {e}");
                failures += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    last_error = format!("{url}: {e}");
                    break;
                }
            };
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let v: Value = serde_json::from_slice(&line)
                    .map_err(|e| anyhow::anyhow!("{url}: unreadable watch answer: {e}"))?;
                let result = &v["result"];
                if result["canceled"] == json!(true) {
                    let reason = match result["compact_revision"].as_str() {
                        Some(c) => format!("history before revision {c} has been compacted"),
                        None => result["cancel_reason"]
                            .as_str()
                            .unwrap_or("watch cancelled")
                            .to_string(),
                    };
                    anyhow::bail!("{reason}");
                }
                if result["created"] == json!(true) && next == 0 {
                    let current: i64 = result["header"]["revision"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    next = current + 1;
                }
                for e in result["events"].as_array().into_iter().flatten() {
                    let kv = &e["kv"];
                    let mod_rev: i64 = kv["mod_revision"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    if e["type"] == json!("DELETE") {
                        println!("rev={mod_rev} DELETE {}", text(kv.get("key")));
                    } else {
                        println!(
                            "rev={mod_rev} PUT {} {}",
                            text(kv.get("key")),
                            text(kv.get("value"))
                        );
                    }
                    next = next.max(mod_rev + 1);
                    failures = 0;
                }
            }
        }
        // The stream ended (server gone): resume elsewhere after what was printed.
        failures += 1;
    }
    anyhow::bail!("watch stopped: no endpoint answers ({last_error})")
}
