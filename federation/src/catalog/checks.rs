//! Running checks, spread over the datacenter's servers.
//!
//! While the catalog holds any check, each server announces itself under
//! `checkers/<name>` with a short lease it keeps alive (a datacenter that
//! does not use checks gets no such keys). Every server reads the catalog from its own state a few
//! times a second and runs the checks it owns: an instance belongs to the
//! announced server with the highest hash of (server, service, id), so the
//! checks spread evenly, every server agrees without talking, and when a
//! server stops (its lease lapses) only its share moves. A probe's result is
//! written through Raft only when it changes the instance's status, as a
//! conditional transaction (the instance and its health unchanged since the
//! read). The owner also marks a TTL check critical when its report lapses,
//! and removes instances critical for longer than their
//! `deregister_critical_after`.

use super::model::{Check, Probe, Status};
use super::store::{self, Entry, Snapshot};
use super::Catalog;
use meridian_node::kv::PutRequest;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often each server looks for due checks.
const TICK: Duration = Duration::from_millis(200);
/// Longest check output kept.
const OUTPUT_MAX: usize = 512;

/// Keeps this server announced as a checker while the catalog holds checks
/// (`needed`, from the runner's reads) and the server runs.
pub(super) async fn announce(
    catalog: Catalog,
    mut needed: tokio::sync::watch::Receiver<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let node = &catalog.node;
    let ttl = catalog
        .config
        .checker_ttl_seconds
        .max(node.config().lease.min_ttl_seconds)
        .max(1);
    let renew_every = Duration::from_millis((ttl as u64 * 1000) / 3);
    let retry = Duration::from_millis(500);
    loop {
        tokio::select! {
            wanted = needed.wait_for(|n| *n) => if wanted.is_err() { return },
            _ = stop.changed() => return,
        }
        let announced = async {
            let (_, lease, _) = node.lease_grant(0, ttl).await.ok()?;
            node.put(PutRequest {
                key: store::checker_key(catalog.server()),
                lease,
                ..Default::default()
            })
            .await
            .ok()?;
            Some(lease)
        };
        let lease = tokio::select! {
            lease = announced => lease,
            _ = stop.changed() => return,
        };
        let Some(lease) = lease else {
            tokio::select! {
                _ = tokio::time::sleep(retry) => continue,
                _ = stop.changed() => return,
            }
        };
        // Renew until no check is left (then withdraw), or until renewals
        // fail for longer than the lease could last.
        let mut failing_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(renew_every) => {}
                _ = stop.changed() => return,
            }
            if !*needed.borrow() {
                let _ = node.lease_revoke(lease).await;
                break;
            }
            match node.lease_keep_alive(lease).await {
                Ok((_, granted)) if granted > 0 => failing_since = None,
                Ok(_) => break,
                Err(_) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(ttl as u64) {
                        break;
                    }
                }
            }
        }
    }
}

/// One probe's result.
struct Outcome {
    name: (String, String),
    kind: &'static str,
    status: Status,
    output: String,
    took: Duration,
}

/// This server's schedule for one check it owns.
struct Slot {
    check: Check,
    next: Instant,
    in_flight: bool,
}

/// Runs the checks this server owns until `stop`; tells `needed` whether
/// the catalog holds any check.
pub(super) async fn run(
    catalog: Catalog,
    needed: tokio::sync::watch::Sender<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder().no_proxy().build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client for checks; HTTP checks will not run");
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<Outcome>(1024);
    let mut slots: HashMap<(String, String), Slot> = HashMap::new();
    let mut snapshot: Option<Snapshot> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => return,
        }
        // Read again only when something was written since the last read.
        let current = catalog.node.revisions().map_or(-1, |(r, _)| r);
        if !matches!(&snapshot, Some(s) if s.revision == current) {
            match store::read(&catalog.node, None, true).await {
                Ok(s) => {
                    catalog.metrics.observe_instances(&s);
                    snapshot = Some(s);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "catalog unreadable; checks wait");
                    continue;
                }
            }
        }
        let Some(snapshot) = &snapshot else {
            continue;
        };
        needed.send_if_modified(|n| {
            let now = snapshot
                .entries
                .values()
                .any(|e| e.instance.check.is_some());
            std::mem::replace(n, now) != now
        });
        let me = catalog.server();
        if !snapshot.checkers.iter().any(|c| c == me) {
            slots.clear();
            continue;
        }
        // Results first, against the fresh read.
        while let Ok(outcome) = rx.try_recv() {
            let metrics = &catalog.metrics;
            metrics
                .checks
                .with_label_values(&[outcome.kind, outcome.status.as_str()])
                .inc();
            metrics
                .check_duration
                .with_label_values(&[outcome.kind])
                .observe(outcome.took.as_secs_f64());
            if let Some(slot) = slots.get_mut(&outcome.name) {
                slot.in_flight = false;
            }
            if let Some(entry) = snapshot.entries.get(&outcome.name) {
                if entry.health.changes_to(outcome.status) {
                    change(&catalog, entry, outcome.status, &outcome.output, false).await;
                }
            }
        }
        slots.retain(|name, slot| {
            snapshot
                .entries
                .get(name)
                .is_some_and(|e| e.instance.check.as_ref() == Some(&slot.check))
                && owner(snapshot, name) == Some(me)
        });
        for (name, entry) in &snapshot.entries {
            if owner(snapshot, name) != Some(me) {
                continue;
            }
            let Some(check) = &entry.instance.check else {
                continue;
            };
            if expired_critical(entry, check) {
                if let Err(e) =
                    store::deregister(&catalog.node, &name.0, &name.1, Some(entry.health_revision))
                        .await
                {
                    tracing::debug!(service = %name.0, id = %name.1, error = %e, "deregistering a critical instance waits");
                } else {
                    tracing::info!(service = %name.0, id = %name.1, "deregistered after being critical too long");
                }
                continue;
            }
            match &check.probe {
                Probe::Ttl { ttl_ms } => {
                    let lapsed = entry.ttl_lease.is_none()
                        && entry.health.status != Status::Critical
                        && entry.health_revision != 0;
                    if lapsed {
                        catalog
                            .metrics
                            .checks
                            .with_label_values(&["ttl", "critical"])
                            .inc();
                        let output = format!("TTL of {ttl_ms} ms expired without a report");
                        change(&catalog, entry, Status::Critical, &output, true).await;
                    }
                }
                probe => {
                    let now = Instant::now();
                    let slot = slots.entry(name.clone()).or_insert_with(|| Slot {
                        check: check.clone(),
                        next: now,
                        in_flight: false,
                    });
                    if slot.in_flight || now < slot.next {
                        continue;
                    }
                    slot.in_flight = true;
                    slot.next = now + Duration::from_millis(check.interval_ms);
                    let timeout = Duration::from_millis(check.timeout_ms);
                    let (probe, client, tx, name) =
                        (probe.clone(), client.clone(), tx.clone(), name.clone());
                    tokio::spawn(async move {
                        let started = Instant::now();
                        let (status, output) = run_probe(&client, &probe, timeout).await;
                        let _ = tx
                            .send(Outcome {
                                name,
                                kind: probe.kind(),
                                status,
                                output,
                                took: started.elapsed(),
                            })
                            .await;
                    });
                }
            }
        }
    }
}

/// Writes a status change, logging a refusal (the next read decides again).
async fn change(catalog: &Catalog, entry: &Entry, status: Status, output: &str, ttl: bool) {
    let by = catalog.server();
    match store::set_health(&catalog.node, entry, status, output, by, ttl).await {
        Ok(true) => tracing::info!(
            service = %entry.instance.service, id = %entry.instance.id,
            status = status.as_str(), output, "instance health changed"
        ),
        Ok(false) => {}
        Err(e) => {
            tracing::debug!(error = %e, "health change not written; retried on the next result")
        }
    }
}

/// Whether the instance has been critical longer than its check allows.
fn expired_critical(entry: &Entry, check: &Check) -> bool {
    let Some(after) = check.deregister_after_ms else {
        return false;
    };
    entry.health.status == Status::Critical
        && entry.health_revision != 0
        && store::now_ms().saturating_sub(entry.health.since_ms) >= after
}

/// The announced server that owns an instance's check.
fn owner<'a>(snapshot: &'a Snapshot, name: &(String, String)) -> Option<&'a str> {
    snapshot
        .checkers
        .iter()
        .max_by_key(|server| {
            let mut h = Fnv::default();
            h.write(server.as_bytes());
            h.write(b"\0");
            h.write(name.0.as_bytes());
            h.write(b"\0");
            h.write(name.1.as_bytes());
            h.finish()
        })
        .map(String::as_str)
}

/// FNV-1a with a final avalanche (MurmurHash3's fmix64), so inputs that
/// differ in one byte still rank servers independently: a hash every server
/// version computes the same.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// Probes once: (status, output).
async fn run_probe(client: &reqwest::Client, probe: &Probe, timeout: Duration) -> (Status, String) {
    let (status, output) = match probe {
        Probe::Http { url } => match client.get(url).timeout(timeout).send().await {
            Ok(r) => {
                let code = r.status();
                let status = if code.is_success() {
                    Status::Passing
                } else if code.as_u16() == 429 {
                    Status::Warning
                } else {
                    Status::Critical
                };
                (status, format!("HTTP GET {url}: {code}"))
            }
            Err(e) if e.is_timeout() => (
                Status::Critical,
                format!(
                    "HTTP GET {url}: no answer within {} ms",
                    timeout.as_millis()
                ),
            ),
            Err(e) => (Status::Critical, format!("HTTP GET {url}: {e}")),
        },
        Probe::Tcp { addr } => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr.as_str())).await
            {
                Ok(Ok(_)) => (Status::Passing, format!("TCP connect {addr}: connected")),
                Ok(Err(e)) => (Status::Critical, format!("TCP connect {addr}: {e}")),
                Err(_) => (
                    Status::Critical,
                    format!(
                        "TCP connect {addr}: no connection within {} ms",
                        timeout.as_millis()
                    ),
                ),
            }
        }
        Probe::Ttl { .. } => (
            Status::Critical,
            "TTL checks are reported, not probed".into(),
        ),
    };
    let mut output = output;
    if output.len() > OUTPUT_MAX {
        let mut cut = OUTPUT_MAX;
        while !output.is_char_boundary(cut) {
            cut -= 1;
        }
        output.truncate(cut);
    }
    (status, output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_spread_over_checkers_and_only_a_leaving_one_moves_its_share() {
        let names: Vec<(String, String)> = (0..300)
            .map(|i| ("api".to_string(), format!("i-{i}")))
            .collect();
        let three = Snapshot {
            checkers: vec!["s1".into(), "s2".into(), "s3".into()],
            ..Default::default()
        };
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for n in &names {
            *counts.entry(owner(&three, n).expect("owner")).or_default() += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert!(counts.values().all(|c| *c > 60), "{counts:?}");
        let two = Snapshot {
            checkers: vec!["s1".into(), "s3".into()],
            ..Default::default()
        };
        for n in &names {
            let before = owner(&three, n).expect("owner");
            let after = owner(&two, n).expect("owner");
            if before != "s2" {
                assert_eq!(before, after, "{n:?} moved although its owner stayed");
            }
        }
        assert_eq!(owner(&Snapshot::default(), &names[0]), None);
    }
}
