//! The federation's HTTP API: `GET /v1/datacenters` (this datacenter and
//! every linked one, with replication lag per rule) and the replication rules
//! at `/v1/federation/replication` (list, create or change, delete, promote).

use crate::replication::rules::{self, RuleError, RuleSpec};
use crate::Federation;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use meridian_node::kv::mirror::MirrorRule;
use serde_json::{json, Value};

pub(crate) fn routes(fed: Federation) -> Router {
    Router::new()
        .route("/v1/datacenters", get(datacenters))
        .route("/v1/federation/replication", get(list))
        .route(
            "/v1/federation/replication/{name}",
            put(put_rule).delete(delete_rule).get(one),
        )
        .route("/v1/federation/replication/{name}/promote", post(promote))
        .with_state(fed)
}

async fn datacenters(State(fed): State<Federation>) -> Json<Value> {
    let local = json!({
        "name": fed.datacenter(),
        "local": true,
        "state": "up",
        "servers": fed.shared.links.local_servers(),
    });
    let progress = fed.replication();
    let mut list = vec![local];
    for link in fed.links() {
        let mut v = serde_json::to_value(&link).unwrap_or(Value::Null);
        v["local"] = json!(false);
        v["replication"] = json!(progress
            .iter()
            .filter(|p| p.source == link.name)
            .collect::<Vec<_>>());
        list.push(v);
    }
    Json(json!({ "datacenter": fed.datacenter(), "datacenters": list }))
}

/// A rule as JSON, with this DC's part in it: role, checkpoint, lag as the
/// DC's leader measures it, and writes lost to a promotion.
fn rule_json(fed: &Federation, rule: &MirrorRule) -> Value {
    let own = fed.datacenter();
    let role = if rule.deleted {
        "none"
    } else if rule.source == own {
        "source"
    } else if rule.is_target(own) {
        "target"
    } else {
        "none"
    };
    let mut v = json!({
        "name": rule.name,
        "prefix": String::from_utf8_lossy(&rule.prefix),
        "source": rule.source,
        "targets": rule.targets,
        "forward_writes": rule.forward_writes,
        "epoch": rule.epoch,
        "set_by": rule.set_by,
        "deleted": rule.deleted,
        "role": role,
    });
    if let Some(h) = &rule.handover {
        v["handover"] = json!({ "from": h.from, "revision": h.revision });
    }
    if let Ok((checkpoint, orphans)) = fed.shared.node.mirror_state(&rule.name) {
        if role == "target" {
            v["checkpoint"] =
                json!({ "epoch": checkpoint.epoch, "source_revision": checkpoint.source_revision });
        }
        if !orphans.is_empty() {
            v["unreplicated_writes"] = json!(orphans
                .iter()
                .map(|o| json!({
                    "key": String::from_utf8_lossy(&o.key),
                    "value": String::from_utf8_lossy(&o.value),
                    "revision": o.revision,
                }))
                .collect::<Vec<_>>());
        }
    }
    if let Some(p) = fed.replication().into_iter().find(|p| p.rule == rule.name) {
        v["progress"] = serde_json::to_value(p).unwrap_or(Value::Null);
    }
    v
}

async fn list(State(fed): State<Federation>) -> Response {
    match fed.shared.node.mirror_rules() {
        Ok(rules) => Json(json!({
            "datacenter": fed.datacenter(),
            "rules": rules.values().map(|r| rule_json(&fed, r)).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => error(RuleError::Node(e)),
    }
}

async fn one(State(fed): State<Federation>, Path(name): Path<String>) -> Response {
    match fed.shared.node.mirror_rules() {
        Ok(rules) => match rules.get(&name) {
            Some(rule) => Json(rule_json(&fed, rule)).into_response(),
            None => error(RuleError::NotFound(name)),
        },
        Err(e) => error(RuleError::Node(e)),
    }
}

async fn put_rule(
    State(fed): State<Federation>,
    Path(name): Path<String>,
    body: Result<Json<RuleSpec>, JsonRejection>,
) -> Response {
    let spec = match body {
        Ok(Json(spec)) => spec,
        Err(e) => return error(RuleError::Invalid(format!("bad rule: {}", e.body_text()))),
    };
    answer(&fed, rules::put(&fed, &name, spec).await)
}

async fn delete_rule(State(fed): State<Federation>, Path(name): Path<String>) -> Response {
    answer(&fed, rules::delete(&fed, &name).await)
}

async fn promote(State(fed): State<Federation>, Path(name): Path<String>) -> Response {
    answer(&fed, rules::promote(&fed, &name).await)
}

fn answer(fed: &Federation, result: Result<MirrorRule, RuleError>) -> Response {
    match result {
        Ok(rule) => Json(rule_json(fed, &rule)).into_response(),
        Err(e) => error(e),
    }
}

/// An error in the client API's JSON shape, with grpc-gateway's status for its code.
fn error(e: RuleError) -> Response {
    let code = match &e {
        RuleError::Invalid(_) => 3,
        RuleError::NotFound(_) => 5,
        RuleError::Node(n) => n.grpc_code(),
    };
    crate::forward::error(
        meridian_node::api::http_status(code),
        code,
        e.to_string(),
        None,
    )
}
