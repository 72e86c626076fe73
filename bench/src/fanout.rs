//! Watch fan-out: W watchers on one prefix (each its own streaming
//! `/v3/watch` request, spread over the endpoints), one writer putting keys
//! under the prefix at a fixed rate. Each value carries its write's start
//! time, so every watcher measures delivery latency (write start to event
//! received) for every event. Reports p50/p99/max over all deliveries and
//! how many of the expected deliveries arrived.

use crate::workload::{b64, prefix_end};
use anyhow::{bail, Context};
use base64::Engine;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a fan-out run measured.
pub struct Fanout {
    /// Delivery latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Events received by all watchers.
    pub delivered: u64,
    /// Writes × watchers.
    pub expected: u64,
}

/// Runs the fan-out workload.
pub async fn run(
    endpoints: &[String],
    watchers: usize,
    rate: f64,
    duration: Duration,
    prefix: &str,
) -> anyhow::Result<Fanout> {
    if endpoints.is_empty() || watchers == 0 || rate <= 0.0 {
        bail!("fan-out needs endpoints, watchers and a rate");
    }
    let epoch = Instant::now();
    let created = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let request = json!({"create_request": {
        "key": b64(prefix.as_bytes()),
        "range_end": b64(&prefix_end(prefix.as_bytes())),
    }})
    .to_string();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let url = format!("{}/v3/watch", endpoints[w % endpoints.len()]);
        let (http, request, created, mut stop) = (
            http.clone(),
            request.clone(),
            created.clone(),
            stop_rx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut response = http
                .post(&url)
                .body(request)
                .send()
                .await
                .context("open a watch")?;
            let mut pending: Vec<u8> = Vec::new();
            loop {
                let chunk = tokio::select! {
                    c = response.chunk() => c.context("watch stream")?,
                    _ = stop.changed() => break,
                };
                let Some(chunk) = chunk else { break };
                let received = epoch.elapsed().as_micros() as u64;
                pending.extend_from_slice(&chunk);
                for message in take_lines(&mut pending) {
                    let v: Value = serde_json::from_slice(&message).unwrap_or(Value::Null);
                    let result = &v["result"];
                    if result["created"] == json!(true) {
                        created.fetch_add(1, Ordering::SeqCst);
                    }
                    for event in result["events"].as_array().into_iter().flatten() {
                        let sent = event["kv"]["value"]
                            .as_str()
                            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                            .and_then(|b| String::from_utf8(b).ok())
                            .and_then(|s| s.parse::<u64>().ok());
                        if let Some(sent) = sent {
                            hist.saturating_record(received.saturating_sub(sent).max(1));
                        }
                    }
                }
            }
            Ok::<_, anyhow::Error>(hist)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while created.load(Ordering::SeqCst) < watchers {
        if Instant::now() > deadline {
            bail!(
                "only {} of {watchers} watches were created within 120 s",
                created.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The writer: open loop at `rate`, each value its scheduled start time.
    let writer = reqwest::Client::new();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let writes = (duration.as_secs_f64() * rate).round() as u64;
    let started = Instant::now();
    for i in 0..writes {
        let due = started + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let sent = epoch.elapsed().as_micros() as u64;
        let key = format!("{prefix}{}", i % 100);
        let r = writer
            .post(format!("{}/v3/kv/put", endpoints[0]))
            .body(
                json!({"key": b64(key.as_bytes()), "value": b64(sent.to_string().as_bytes())})
                    .to_string(),
            )
            .send()
            .await
            .context("put")?;
        if !r.status().is_success() {
            bail!("put: HTTP {}", r.status());
        }
    }
    // Let the last events arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Fanout {
        p50_ms: ms(all.value_at_quantile(0.5)),
        p99_ms: ms(all.value_at_quantile(0.99)),
        max_ms: ms(all.max()),
        delivered: all.len(),
        expected: writes * watchers as u64,
    })
}

/// Takes the complete newline-separated messages from `pending`.
fn take_lines(pending: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = pending.drain(..=end).collect();
        if line.iter().any(|b| !b.is_ascii_whitespace()) {
            out.push(line);
        }
    }
    out
}
