//! Runs a workload with N concurrent clients, closed-loop (each client sends
//! its next request when the previous one is answered) or open-loop (requests
//! start on a fixed schedule whatever the answers; latency counts from the
//! scheduled start, so a stalled server is not hidden by clients waiting).

use crate::conn::Connection;
use crate::workload::{Outcome, Worker, Workload};
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub endpoints: Vec<String>,
    pub workload: Workload,
    pub clients: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Requests per second in all (open loop); `None` for closed loop.
    pub rate: Option<f64>,
    pub keys: usize,
    pub value_bytes: usize,
    /// The servers' processes, whose CPU time over the measured period is
    /// divided by its operations (`server_cpu_us_per_op`); empty for none.
    pub server_pids: Vec<u32>,
}

/// One measured run.
#[derive(Debug, Serialize)]
pub struct Measurement {
    pub workload: Workload,
    pub clients: usize,
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub ops: u64,
    pub errors: u64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// CAS workload: the share of txns whose compare held.
    pub cas_success_rate: Option<f64>,
    /// The first error seen, if any, to tell a broken run from a slow one.
    pub first_error: Option<String>,
    /// CPU time (user + system) of the servers' processes over the measured
    /// period, per operation, in microseconds; when their pids were given.
    pub server_cpu_us_per_op: Option<f64>,
    /// The same for this load generator itself: what the client costs per
    /// operation on the cores it shares with the servers.
    pub client_cpu_us_per_op: Option<f64>,
}

struct Tally {
    histogram: Histogram<u64>,
    ops: u64,
    errors: u64,
    cas_lost: u64,
    first_error: Option<String>,
}

/// Sends one request: the body serialized, then [`Connection::post`].
async fn send(
    conn: &mut Connection,
    path: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    conn.post(path, body).await
}

/// Prepares the keyspace the workload reads or swaps.
pub async fn setup(plan: &Plan) -> anyhow::Result<()> {
    let value = vec![b'v'; plan.value_bytes];
    let base = plan.endpoints.first().context("no endpoint")?;
    let mut conn = Connection::new(base).map_err(anyhow::Error::msg)?;
    for (path, body) in crate::workload::setup(plan.workload, plan.keys, &value) {
        send(&mut conn, path, &body)
            .await
            .map_err(|e| anyhow::anyhow!("setup {path}: {e}"))?;
    }
    Ok(())
}

/// Runs the plan: warm-up (not recorded), then the measured period.
pub async fn run(plan: &Plan) -> anyhow::Result<Measurement> {
    if plan.endpoints.is_empty() || plan.clients == 0 {
        bail!("need at least one endpoint and one client");
    }
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    // The servers' and this process's CPU time at the start and the end of
    // the measured period.
    let cpu = {
        let pids = plan.server_pids.clone();
        let me = std::process::id();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            let (servers, client) = (
                crate::cpu::total_seconds(&pids)?,
                crate::cpu::process_seconds(me)?,
            );
            tokio::time::sleep_until(end.into()).await;
            anyhow::Ok((
                crate::cpu::total_seconds(&pids)? - servers,
                crate::cpu::process_seconds(me)? - client,
            ))
        })
    };
    // Open loop: a shared ticket counter hands out scheduled start times.
    let tickets = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for id in 0..plan.clients {
        let plan = plan.clone();
        let tickets = tickets.clone();
        tasks.push(tokio::spawn(async move {
            let endpoint = &plan.endpoints[id % plan.endpoints.len()];
            let mut conn = Connection::new(endpoint).map_err(anyhow::Error::msg)?;
            let value = vec![b'v'; plan.value_bytes];
            let mut worker = Worker::new(id, plan.keys);
            let mut tally = Tally {
                histogram: Histogram::new_with_bounds(1, 60_000_000, 3)?,
                ops: 0,
                errors: 0,
                cas_lost: 0,
                first_error: None,
            };
            loop {
                let scheduled = match plan.rate {
                    Some(rate) => {
                        let n = tickets.fetch_add(1, Ordering::Relaxed);
                        let at = start + Duration::from_secs_f64(n as f64 / rate);
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => Instant::now(),
                };
                if scheduled >= end {
                    break;
                }
                let (path, body, key) = worker.next(plan.workload, plan.keys, &value);
                let result = send(&mut conn, path, &body).await;
                let took = scheduled.elapsed();
                if scheduled < measure_from {
                    if let Ok(v) = &result {
                        worker.answer(plan.workload, key, v);
                    }
                    continue;
                }
                match result {
                    Ok(v) => {
                        tally.ops += 1;
                        tally
                            .histogram
                            .saturating_record(took.as_micros().max(1) as u64);
                        if let Outcome::CasLost = worker.answer(plan.workload, key, &v) {
                            tally.cas_lost += 1;
                        }
                    }
                    Err(e) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert(e);
                    }
                }
            }
            anyhow::Ok(tally)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ops, mut errors, mut cas_lost, mut first_error) = (0, 0, 0, None);
    for t in tasks {
        let t = t.await??;
        all.add(&t.histogram)?;
        ops += t.ops;
        errors += t.errors;
        cas_lost += t.cas_lost;
        if first_error.is_none() {
            first_error = t.first_error;
        }
    }
    let (server_cpu, client_cpu) = cpu.await??;
    let secs = plan.duration.as_secs_f64();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    Ok(Measurement {
        workload: plan.workload,
        clients: plan.clients,
        rate: plan.rate,
        duration_s: secs,
        ops,
        errors,
        throughput: ops as f64 / secs,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: all.max() as f64 / 1000.0,
        cas_success_rate: (plan.workload == Workload::TxnCas && ops > 0)
            .then(|| (ops - cas_lost) as f64 / ops as f64),
        first_error,
        server_cpu_us_per_op: (!plan.server_pids.is_empty() && ops > 0)
            .then(|| server_cpu * 1e6 / ops as f64),
        client_cpu_us_per_op: (ops > 0).then(|| client_cpu * 1e6 / ops as f64),
    })
}
