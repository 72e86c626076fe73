//! Prefix mirroring: writes N keys under a prefix at the source (individual
//! puts from concurrent clients) and measures the time from the last
//! acknowledged write until the target holds all N keys (a count-only range
//! polled every 2 ms). The mirror itself (Meridian's replication rule, or
//! `etcdctl make-mirror`) is set up by the caller.

use crate::workload::{b64, prefix_end};
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Seconds from the last source write until the target holds everything, and
/// seconds the writes took.
pub async fn run(
    source: &str,
    target: &str,
    prefix: &str,
    keys: usize,
    clients: usize,
    value_bytes: usize,
) -> anyhow::Result<(f64, f64)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let value = b64(&vec![b'x'; value_bytes]);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (http, next, value) = (http.clone(), next.clone(), value.clone());
        let (source, prefix) = (source.to_string(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return Ok::<(), anyhow::Error>(());
                }
                let key = format!("{prefix}{i:06}");
                let r = http
                    .post(format!("{source}/v3/kv/put"))
                    .body(json!({"key": b64(key.as_bytes()), "value": value}).to_string())
                    .send()
                    .await
                    .context("put at the source")?;
                if !r.status().is_success() {
                    bail!("put at the source: HTTP {}", r.status());
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let last_write = Instant::now();
    let writes = last_write.duration_since(start).as_secs_f64();
    let query = json!({
        "key": b64(prefix.as_bytes()),
        "range_end": b64(&prefix_end(prefix.as_bytes())),
        "count_only": true,
        "serializable": true,
    })
    .to_string();
    let deadline = last_write + Duration::from_secs(600);
    loop {
        let r: Value = http
            .post(format!("{target}/v3/kv/range"))
            .body(query.clone())
            .send()
            .await
            .context("count at the target")?
            .json()
            .await?;
        let count: usize = r["count"]
            .as_str()
            .and_then(|c| c.parse().ok())
            .or_else(|| r["count"].as_u64().map(|c| c as usize))
            .unwrap_or(0);
        if count >= keys {
            return Ok((last_write.elapsed().as_secs_f64(), writes));
        }
        if Instant::now() > deadline {
            bail!("the target holds {count} of {keys} keys after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
