//! `GET /v1/datacenters`: this datacenter and every linked one.

use crate::Federation;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

pub(crate) fn routes(fed: Federation) -> Router {
    Router::new()
        .route("/v1/datacenters", get(datacenters))
        .with_state(fed)
}

async fn datacenters(State(fed): State<Federation>) -> Json<Value> {
    let local = json!({
        "name": fed.datacenter(),
        "local": true,
        "state": "up",
        "servers": fed.shared.links.local_servers(),
    });
    let mut list = vec![local];
    for link in fed.links() {
        let mut v = serde_json::to_value(&link).unwrap_or(Value::Null);
        v["local"] = json!(false);
        list.push(v);
    }
    Json(json!({ "datacenter": fed.datacenter(), "datacenters": list }))
}
