//! The Consul-compatible reads, in Consul's JSON shapes, so Consul tooling
//! (Prometheus' `consul_sd_configs` among it) works against Meridian:
//! - `GET /v1/agent/self`: the datacenter and this server's name;
//! - `GET /v1/catalog/services`: service names with the union of their tags;
//! - `GET /v1/catalog/service/<name>`: its instances (`tag=` filters);
//! - `GET /v1/health/service/<name>`: its instances with their checks
//!   (`passing` keeps only passing ones), plus Meridian's status history.
//!
//! And for Prometheus builds without Consul discovery (Debian's among them):
//! `GET /v1/catalog/prometheus`, the target groups of Prometheus' HTTP
//! service discovery (`http_sd_configs`).
//!
//! Each answer carries `X-Consul-Index` (the revision read),
//! `X-Consul-KnownLeader` and `X-Consul-LastContact`. Blocking queries work
//! as Consul's: with `index=N` the answer waits (up to `wait`, default 5 min,
//! at most 10 min) until the catalog changes after revision N. `stale` reads
//! this server's state without asking the leader; `dc=` runs the request in
//! another datacenter (the federation's forwarding).

use super::store::{self, Entry, Filter, Snapshot, PREFIX};
use super::{Catalog, CatalogError};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// A blocking query's wait when none is given, and the longest allowed.
const WAIT_DEFAULT: Duration = Duration::from_secs(300);
const WAIT_MAX: Duration = Duration::from_secs(600);
/// Most revisions a blocking query reads through to find a catalog change.
const FOLLOW_MAX: i64 = 100_000;

pub(super) fn routes(catalog: Catalog) -> Router {
    Router::new()
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/catalog/services", get(services))
        .route("/v1/catalog/service/{name}", get(catalog_service))
        .route("/v1/health/service/{name}", get(health_service))
        .route("/v1/catalog/prometheus", get(prometheus_sd))
        .with_state(catalog)
}

type Params = Query<HashMap<String, String>>;

async fn agent_self(State(catalog): State<Catalog>) -> Json<Value> {
    let config = catalog.node.config();
    let (host, port) = (
        config.client_addr.ip().to_string(),
        config.client_addr.port(),
    );
    Json(json!({
        "Config": {
            "Datacenter": config.datacenter,
            "NodeName": config.name,
            "NodeID": catalog.node.id().to_string(),
            "Server": true,
            "Version": env!("CARGO_PKG_VERSION"),
        },
        "Member": {
            "Name": config.name,
            "Addr": host,
            "Port": port,
            "Status": 1,
            "Tags": { "dc": config.datacenter, "role": "meridian" },
        },
        "Meta": {},
    }))
}

async fn services(State(catalog): State<Catalog>, Query(q): Params) -> Response {
    respond(&catalog, None, &q, |snapshot, _| {
        let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for ((service, _), e) in &snapshot.entries {
            out.entry(service)
                .or_default()
                .extend(e.instance.tags.iter().map(String::as_str));
        }
        json!(out)
    })
    .await
}

async fn catalog_service(
    State(catalog): State<Catalog>,
    Path(name): Path<String>,
    Query(q): Params,
) -> Response {
    let filter = Filter::of(&q, false);
    respond(&catalog, Some(&name), &q, |snapshot, dc| {
        let list: Vec<Value> = snapshot
            .entries
            .values()
            .filter(|e| filter.keeps(e))
            .map(|e| {
                let i = &e.instance;
                json!({
                    "ID": "",
                    "Node": i.node,
                    "Address": i.address,
                    "Datacenter": dc,
                    "TaggedAddresses": {},
                    "NodeMeta": {},
                    "ServiceKind": "",
                    "ServiceID": i.id,
                    "ServiceName": i.service,
                    "ServiceTags": i.tags,
                    "ServiceAddress": i.address,
                    "ServicePort": i.port,
                    "ServiceMeta": i.meta,
                    "ServiceTaggedAddresses": {},
                    "ServiceWeights": { "Passing": 1, "Warning": 1 },
                    "ServiceEnableTagOverride": false,
                    "CreateIndex": e.mod_revision,
                    "ModifyIndex": e.mod_revision,
                    "Status": e.health.status,
                })
            })
            .collect();
        json!(list)
    })
    .await
}

async fn health_service(
    State(catalog): State<Catalog>,
    Path(name): Path<String>,
    Query(q): Params,
) -> Response {
    let filter = Filter::of(&q, true);
    respond(&catalog, Some(&name), &q, |snapshot, dc| {
        let list: Vec<Value> = snapshot
            .entries
            .values()
            .filter(|e| filter.keeps(e))
            .map(|e| health_entry(e, dc))
            .collect();
        json!(list)
    })
    .await
}

/// Prometheus' HTTP service discovery (`http_sd_configs`): one target group
/// per instance, with `__meta_meridian_*` labels (`service=`, `tag=` and
/// `passing` filter).
async fn prometheus_sd(State(catalog): State<Catalog>, Query(q): Params) -> Response {
    let filter = Filter::of(&q, true);
    let service = q.get("service").cloned();
    respond(&catalog, service.as_deref(), &q, |snapshot, dc| {
        let groups: Vec<Value> = snapshot
            .entries
            .values()
            .filter(|e| filter.keeps(e))
            .map(|e| {
                let i = &e.instance;
                let host = if i.address.contains(':') {
                    format!("[{}]:{}", i.address, i.port)
                } else {
                    format!("{}:{}", i.address, i.port)
                };
                let mut labels = serde_json::Map::new();
                for (k, v) in [
                    ("datacenter", dc.to_string()),
                    ("service", i.service.clone()),
                    ("service_id", i.id.clone()),
                    ("node", i.node.clone()),
                    ("address", i.address.clone()),
                    ("port", i.port.to_string()),
                    ("tags", format!(",{},", i.tags.join(","))),
                    ("health", e.health.status.as_str().to_string()),
                ] {
                    labels.insert(format!("__meta_meridian_{k}"), json!(v));
                }
                for (k, v) in &i.meta {
                    let name: String = k
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    labels.insert(format!("__meta_meridian_service_meta_{name}"), json!(v));
                }
                json!({ "targets": [host], "labels": labels })
            })
            .collect();
        json!(groups)
    })
    .await
}

/// One instance as Consul's `/v1/health/service` lists it.
fn health_entry(e: &Entry, dc: &str) -> Value {
    let i = &e.instance;
    let checks = match &i.check {
        None => Vec::new(),
        Some(c) => vec![json!({
            "Node": i.node,
            "CheckID": format!("service:{}", i.id),
            "Name": format!("Service '{}' check", i.service),
            "Status": e.health.status,
            "Notes": "",
            "Output": e.health.output,
            "ServiceID": i.id,
            "ServiceName": i.service,
            "ServiceTags": i.tags,
            "Type": c.probe.kind(),
            "CreateIndex": e.mod_revision,
            "ModifyIndex": e.health_revision.max(e.mod_revision),
        })],
    };
    json!({
        "Node": {
            "ID": "",
            "Node": i.node,
            "Address": i.address,
            "Datacenter": dc,
            "TaggedAddresses": {},
            "Meta": {},
        },
        "Service": {
            "ID": i.id,
            "Service": i.service,
            "Tags": i.tags,
            "Address": i.address,
            "Meta": i.meta,
            "Port": i.port,
            "Weights": { "Passing": 1, "Warning": 1 },
            "EnableTagOverride": false,
        },
        "Checks": checks,
        "Status": e.health.status,
        "StatusSince": e.health.since_ms,
        "History": e.health.history,
    })
}

/// Reads (after waiting, for a blocking query), renders and adds Consul's
/// headers.
async fn respond(
    catalog: &Catalog,
    service: Option<&str>,
    q: &HashMap<String, String>,
    render: impl FnOnce(&Snapshot, &str) -> Value,
) -> Response {
    let result = async {
        if let Some(s) = service {
            super::model::check_name("service", s)?;
        }
        let wait = match q.get("wait") {
            None => WAIT_DEFAULT,
            Some(w) => super::model::parse_duration(w)
                .ok_or_else(|| {
                    CatalogError::Invalid(format!("wait: {w:?} is not a duration (e.g. \"30s\")"))
                })?
                .min(WAIT_MAX),
        };
        if let Some(index) = q.get("index") {
            let index = index
                .parse::<i64>()
                .map_err(|_| CatalogError::Invalid(format!("index: {index:?} is not an index")))?;
            if index > 0 {
                wait_for_change(catalog, service, index, wait).await;
            }
        }
        let stale = q.contains_key("stale");
        store::read(&catalog.node, service, stale).await
    }
    .await;
    match result {
        Ok(snapshot) => {
            let body = render(&snapshot, catalog.datacenter());
            let mut response = Json(body).into_response();
            consul_headers(response.headers_mut(), snapshot.revision);
            response
        }
        Err(e) => e.into_response(),
    }
}

fn consul_headers(headers: &mut HeaderMap, index: i64) {
    if let Ok(v) = HeaderValue::from_str(&index.max(1).to_string()) {
        headers.insert("x-consul-index", v);
    }
    headers.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    headers.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
}

/// Waits until a catalog key (of `service`, if given) changes after
/// revision `index`, or `wait` passes. Returns early on anything it cannot
/// follow (history compacted past `index`): a blocking query may always
/// answer early, and its caller compares the index.
async fn wait_for_change(catalog: &Catalog, service: Option<&str>, index: i64, wait: Duration) {
    let node = &catalog.node;
    let watched: Vec<Vec<u8>> = ["service", "health"]
        .iter()
        .map(|part| match service {
            Some(s) => format!("{PREFIX}{part}/{s}/").into_bytes(),
            None => format!("{PREFIX}{part}/").into_bytes(),
        })
        .collect();
    let deadline = tokio::time::Instant::now() + wait;
    // Woken when the window `Node::events` reads has taken in new changes.
    let mut feed = node.subscribe_feed();
    let mut from = index + 1;
    // An index far behind is answered at once rather than followed through
    // its whole history (a client from before a restore, or a made-up one).
    if node
        .revisions()
        .is_ok_and(|(current, _)| current - index > FOLLOW_MAX)
    {
        return;
    }
    loop {
        let current = match node.revisions() {
            Ok((current, _)) => current,
            Err(_) => return,
        };
        while from <= current {
            let Ok((events, last, _)) = node.events(from, 1024, 4 << 20) else {
                return;
            };
            if events
                .iter()
                .any(|e| watched.iter().any(|p| e.kv.key.starts_with(p)))
            {
                return;
            }
            if last < from {
                break;
            }
            from = last + 1;
        }
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        // New changes in the window wake the wait; the short sleep is a
        // second line for a wake-up missed all the same.
        tokio::select! {
            changed = feed.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}
