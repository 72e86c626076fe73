//! `GET /v1/lookup/<service>`: healthy instances from this datacenter, or,
//! when it has none or cannot answer, from other datacenters in order:
//! `failover=nearest:N` asks the N nearest by measured WAN round-trip time
//! (linked ones first), `failover=dc2,dc3` the ones named. Each datacenter
//! gets at most one timeout; the answer names the datacenter that served it
//! and every datacenter tried.

use super::model::check_name;
use super::store::{self, Entry};
use super::{Catalog, CatalogError};
use crate::forward::error_with;
use crate::Federation;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// Longest per-datacenter timeout a request may ask for.
const TIMEOUT_MAX_MS: u64 = 60_000;

/// What one datacenter said.
enum Answer {
    Found(Vec<Value>),
    None,
    Failed(String),
}

/// The handler.
pub(super) async fn lookup(
    State(catalog): State<Catalog>,
    Path(service): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match answer(&catalog, &service, &query).await {
        Ok(r) => r,
        Err(e) => {
            catalog.metrics.lookups.with_label_values(&["error"]).inc();
            e.into_response()
        }
    }
}

async fn answer(
    catalog: &Catalog,
    service: &str,
    query: &HashMap<String, String>,
) -> Result<Response, CatalogError> {
    check_name("service", service)?;
    for k in query.keys() {
        if !matches!(
            k.as_str(),
            "failover" | "tag" | "near" | "timeout_ms" | "stale"
        ) {
            return Err(CatalogError::Invalid(format!(
                "unknown parameter {k:?} (known: failover, tag, near, timeout_ms, stale)"
            )));
        }
    }
    let timeout = match query.get("timeout_ms") {
        None => catalog.config.lookup_timeout,
        Some(t) => match t.parse::<u64>() {
            Ok(ms) if (1..=TIMEOUT_MAX_MS).contains(&ms) => Duration::from_millis(ms),
            _ => {
                return Err(CatalogError::Invalid(format!(
                    "timeout_ms: {t:?} is not a number of milliseconds from 1 to {TIMEOUT_MAX_MS}"
                )))
            }
        },
    };
    let near = match query.get("near") {
        None => None,
        Some(n) => Some(
            n.parse::<IpAddr>()
                .map_err(|_| CatalogError::Invalid(format!("near: {n:?} is not an IP address")))?,
        ),
    };
    let federation = catalog
        .federation
        .upgrade()
        .map(|shared| Federation { shared });
    let order = match (query.get("failover"), &federation) {
        (None, _) => Vec::new(),
        (Some(f), Some(fed)) => failover_order(fed, f)?,
        (Some(_), None) => return Err(CatalogError::Unavailable("server stopping".into())),
    };
    let own = catalog.datacenter().to_string();
    let mut tried = Vec::new();
    let local = tokio::time::timeout(timeout, local_instances(catalog, service, query)).await;
    let mut found = match local {
        Ok(Ok(list)) if !list.is_empty() => Some((own.clone(), list)),
        Ok(Ok(_)) => {
            tried.push(json!({ "datacenter": own, "outcome": "none" }));
            None
        }
        Ok(Err(e)) => {
            tried.push(json!({ "datacenter": own, "outcome": "error", "error": e.to_string() }));
            None
        }
        Err(_) => {
            let e = format!("no answer within {} ms", timeout.as_millis());
            tried.push(json!({ "datacenter": own, "outcome": "error", "error": e }));
            None
        }
    };
    if found.is_none() {
        if let Some(fed) = &federation {
            for dc in order {
                let (outcome, answer) = match remote(fed, &dc, service, query, timeout).await {
                    Answer::Found(list) => ("found", Some(list)),
                    Answer::None => ("none", None),
                    Answer::Failed(e) => {
                        tried.push(json!({ "datacenter": dc, "outcome": "error", "error": e }));
                        catalog
                            .metrics
                            .failover_hops
                            .with_label_values(&[&dc, "error"])
                            .inc();
                        continue;
                    }
                };
                catalog
                    .metrics
                    .failover_hops
                    .with_label_values(&[&dc, outcome])
                    .inc();
                match answer {
                    Some(list) => {
                        found = Some((dc, list));
                        break;
                    }
                    None => tried.push(json!({ "datacenter": dc, "outcome": "none" })),
                }
            }
        }
    }
    let Some((dc, mut instances)) = found else {
        let failed = tried.iter().any(|t| t["outcome"] == "error");
        let summary: Vec<String> = tried
            .iter()
            .map(|t| match t["error"].as_str() {
                Some(e) => format!("{}: {e}", t["datacenter"].as_str().unwrap_or("")),
                None => format!("{}: none", t["datacenter"].as_str().unwrap_or("")),
            })
            .collect();
        let extra = json!({ "service": service, "datacenters_tried": tried.len(), "tried": tried });
        let message = format!(
            "no healthy instance of service {service:?} ({})",
            summary.join("; ")
        );
        let (status, code, outcome) = if failed {
            (StatusCode::SERVICE_UNAVAILABLE, 14, "error")
        } else {
            (StatusCode::NOT_FOUND, 5, "none")
        };
        catalog.metrics.lookups.with_label_values(&[outcome]).inc();
        return Ok(error_with(status, code, message, extra));
    };
    tried.push(json!({ "datacenter": dc, "outcome": "found" }));
    let outcome = if dc == own { "local" } else { "failover" };
    catalog.metrics.lookups.with_label_values(&[outcome]).inc();
    arrange(&mut instances, near);
    Ok(Json(json!({
        "service": service,
        "datacenter": dc,
        "failover": dc != own,
        "datacenters_tried": tried.len(),
        "tried": tried,
        "instances": instances,
    }))
    .into_response())
}

/// The passing instances of `service` here, as lookups list them.
async fn local_instances(
    catalog: &Catalog,
    service: &str,
    query: &HashMap<String, String>,
) -> Result<Vec<Value>, CatalogError> {
    let stale = query.contains_key("stale");
    let snapshot = store::read(&catalog.node, Some(service), stale).await?;
    let filter = store::Filter {
        tag: query.get("tag").cloned(),
        passing: true,
    };
    Ok(snapshot
        .entries
        .values()
        .filter(|e| filter.keeps(e))
        .map(|e| instance_json(catalog.datacenter(), e))
        .collect())
}

/// An instance as lookups return it.
pub(super) fn instance_json(dc: &str, e: &Entry) -> Value {
    let i = &e.instance;
    json!({
        "service": i.service,
        "id": i.id,
        "node": i.node,
        "address": i.address,
        "port": i.port,
        "tags": i.tags,
        "meta": i.meta,
        "status": e.health.status,
        "datacenter": dc,
    })
}

/// The datacenters a failover asks, in order.
fn failover_order(fed: &Federation, spec: &str) -> Result<Vec<String>, CatalogError> {
    let own = fed.datacenter();
    let links = fed.links();
    if let Some(n) = spec.strip_prefix("nearest:") {
        let n = n.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            CatalogError::Invalid(format!(
                "failover: {spec:?}: nearest:N needs N of 1 or more"
            ))
        })?;
        let mut up: Vec<(f64, String)> = links
            .iter()
            .filter(|l| l.state == "up")
            .map(|l| (l.rtt_ms.unwrap_or(f64::MAX), l.name.clone()))
            .collect();
        up.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let down = links
            .iter()
            .filter(|l| l.state != "up")
            .map(|l| l.name.clone());
        return Ok(up.into_iter().map(|(_, n)| n).chain(down).take(n).collect());
    }
    let mut order = Vec::new();
    for dc in spec.split(',').map(str::trim) {
        if dc == own || order.iter().any(|o| o == dc) {
            continue;
        }
        if !links.iter().any(|l| l.name == dc) {
            let mut known: Vec<String> = links.iter().map(|l| l.name.clone()).collect();
            known.push(own.to_string());
            known.sort();
            return Err(CatalogError::Invalid(format!(
                "failover: unknown datacenter {dc:?}; known: {} (or nearest:N)",
                known.join(", ")
            )));
        }
        order.push(dc.to_string());
    }
    Ok(order)
}

/// Asks `dc` for its own healthy instances, within `timeout`.
async fn remote(
    fed: &Federation,
    dc: &str,
    service: &str,
    query: &HashMap<String, String>,
    timeout: Duration,
) -> Answer {
    let mut uri = format!("/v1/lookup/{service}");
    let mut sep = '?';
    for k in ["tag", "stale"] {
        if let Some(v) = query.get(k) {
            uri.push(sep);
            uri.push_str(k);
            uri.push('=');
            uri.push_str(&percent(v));
            sep = '&';
        }
    }
    let request = match Request::builder()
        .method("GET")
        .uri(uri)
        .body(Body::empty())
    {
        Ok(r) => r,
        Err(e) => return Answer::Failed(e.to_string()),
    };
    let asked = async {
        let response = crate::forward::forward(fed, dc, request).await;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 16 << 20)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((status, body))
    };
    match tokio::time::timeout(timeout, asked).await {
        Err(_) => Answer::Failed(format!("no answer within {} ms", timeout.as_millis())),
        Ok(Err(e)) => Answer::Failed(e),
        Ok(Ok((status, body))) => {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            match status {
                StatusCode::OK => match v["instances"].as_array() {
                    Some(list) if !list.is_empty() => Answer::Found(list.clone()),
                    _ => Answer::None,
                },
                StatusCode::NOT_FOUND => Answer::None,
                _ => Answer::Failed(
                    v["message"]
                        .as_str()
                        .map_or_else(|| format!("answered {status}"), str::to_string),
                ),
            }
        }
    }
}

/// Escapes a query value.
fn percent(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Orders instances: nearest to `near` first (the longest common address
/// prefix: the same host, then the same subnet), shuffled otherwise and
/// among equals.
fn arrange(instances: &mut [Value], near: Option<IpAddr>) {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in (1..instances.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        instances.swap(i, j);
    }
    if let Some(near) = near {
        instances.sort_by_key(|v| {
            let shared = v["address"]
                .as_str()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .map_or(0, |a| common_bits(a, near));
            std::cmp::Reverse(shared)
        });
    }
}

/// Leading bits two addresses share (0 across families).
fn common_bits(a: IpAddr, b: IpAddr) -> u32 {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) ^ u32::from(b)).leading_zeros(),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a) ^ u128::from(b)).leading_zeros(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_orders_by_shared_address_prefix() {
        let mut list: Vec<Value> = ["10.1.0.9", "192.168.1.4", "10.1.0.7", "10.2.0.1"]
            .iter()
            .map(|a| json!({ "address": a }))
            .collect();
        arrange(&mut list, Some("10.1.0.7".parse().expect("ip")));
        let order: Vec<&str> = list.iter().filter_map(|v| v["address"].as_str()).collect();
        assert_eq!(order[0], "10.1.0.7");
        assert_eq!(order[1], "10.1.0.9");
        assert_eq!(order[2], "10.2.0.1");
        assert_eq!(order[3], "192.168.1.4");
    }
}
