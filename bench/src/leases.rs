//! Leases at scale: grants N leases, then keeps all of them alive from C
//! clients for the measured time (each client cycles through its share,
//! one `/v3/lease/keepalive` request per renewal), and finally checks how
//! many still exist. Reports the grant rate, keep-alive throughput and
//! latency, and the leases alive at the end.

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a lease run measured.
pub struct Leases {
    /// Grants per second while creating them.
    pub grants_per_s: f64,
    /// Keep-alives answered per second.
    pub keepalives_per_s: f64,
    /// Keep-alive latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Leases that exist at the end.
    pub alive: usize,
    /// Keep-alives that failed.
    pub errors: u64,
}

fn id_of(v: &Value) -> Option<i64> {
    v["ID"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v["ID"].as_i64())
        .or_else(|| v["result"]["ID"].as_str().and_then(|s| s.parse().ok()))
}

/// Runs the lease workload.
pub async fn run(
    endpoints: &[String],
    leases: usize,
    clients: usize,
    ttl: i64,
    duration: Duration,
) -> anyhow::Result<Leases> {
    if endpoints.is_empty() || clients == 0 {
        bail!("leases need endpoints and clients");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    // Grant.
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, next) = (http.clone(), next.clone());
        let url = format!("{}/v3/lease/grant", endpoints[c % endpoints.len()]);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < leases {
                let v: Value = http
                    .post(&url)
                    .body(json!({"TTL": ttl}).to_string())
                    .send()
                    .await
                    .context("grant")?
                    .json()
                    .await?;
                ids.push(id_of(&v).with_context(|| format!("grant answered {v}"))?);
            }
            Ok::<_, anyhow::Error>(ids)
        }));
    }
    let mut shares = Vec::new();
    for t in tasks {
        shares.push(t.await??);
    }
    let grants_per_s = leases as f64 / started.elapsed().as_secs_f64();
    // Keep every lease alive: each client renews its share in turn.
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for (c, ids) in shares.iter().enumerate() {
        let (http, ids) = (http.clone(), ids.clone());
        let url = format!("{}/v3/lease/keepalive", endpoints[c % endpoints.len()]);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut errors = 0u64;
            let mut i = 0usize;
            while Instant::now() < deadline && !ids.is_empty() {
                let id = ids[i % ids.len()];
                i += 1;
                let sent = Instant::now();
                let ok = match http
                    .post(&url)
                    .body(json!({"ID": id.to_string()}).to_string())
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                if ok {
                    hist.saturating_record(sent.elapsed().as_micros().max(1) as u64);
                } else {
                    errors += 1;
                }
            }
            Ok::<_, anyhow::Error>((hist, errors))
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await??;
        all.add(h)?;
        errors += e;
    }
    // How many exist now.
    let v: Value = http
        .post(format!("{}/v3/lease/leases", endpoints[0]))
        .body("{}")
        .send()
        .await
        .context("list leases")?
        .json()
        .await?;
    // This run's leases only (an earlier round's may still be alive).
    let existing: std::collections::HashSet<i64> = v["leases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(id_of)
        .collect();
    let alive = shares
        .iter()
        .flatten()
        .filter(|id| existing.contains(id))
        .count();
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Leases {
        grants_per_s,
        keepalives_per_s: all.len() as f64 / duration.as_secs_f64(),
        p50_ms: ms(all.value_at_quantile(0.5)),
        p99_ms: ms(all.value_at_quantile(0.99)),
        alive,
        errors,
    })
}
