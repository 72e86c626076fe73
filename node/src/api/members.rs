//! Membership: `GET /v1/members` (role, applied log and lag as the leader
//! sees them), `POST /v1/members` (add a learner), `POST
//! /v1/members/<name>/promote`, `DELETE /v1/members/<name>`. Changes run on
//! the leader; a follower answers 412 naming it.

use super::ApiError;
use crate::membership::MemberStatus;
use crate::server::Node;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

fn member_json(m: &MemberStatus, seen: Option<&crate::version::Advertised>) -> Value {
    json!({
        "version": seen.map(|a| a.version.clone()),
        "feature_level": seen.map(|a| a.level),
        "id": m.id.to_string(),
        "name": m.name,
        "peer_addr": m.peer_addr,
        "client_url": m.client_url,
        "role": if m.learner { "learner" } else { "voter" },
        "matched_index": m.matched,
        "lag": m.lag,
    })
}

pub(super) async fn list(State(node): State<Node>) -> Response {
    let status = match node.status() {
        Ok(s) => s,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let seen = node.member_versions();
    let members: Vec<Value> = node
        .member_status()
        .iter()
        .map(|m| member_json(m, seen.get(&m.id)))
        .collect();
    Json(json!({
        "leader": status.leader.to_string(),
        "cluster_level": node.cluster_level(),
        "answered_by": status.name,
        "members": members,
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Add {
    name: String,
    peer_addr: String,
    client_url: String,
    #[serde(default)]
    learner: bool,
}

pub(super) async fn add(State(node): State<Node>, body: Bytes) -> Response {
    let add: Add = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return ApiError::invalid(format!("bad JSON body: {e}")).into_response(),
    };
    if !add.learner {
        return ApiError::invalid(
            "a new server joins as a learner (\"learner\": true) and is promoted once it has caught up",
        )
        .into_response();
    }
    match node
        .add_learner(&add.name, &add.peer_addr, &add.client_url)
        .await
    {
        Ok(m) => Json(member_json(&m, None)).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

pub(super) async fn promote(State(node): State<Node>, Path(name): Path<String>) -> Response {
    match node.promote(&name).await {
        Ok(m) => Json(member_json(&m, None)).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

pub(super) async fn remove(State(node): State<Node>, Path(name): Path<String>) -> Response {
    match node.remove_member(&name).await {
        Ok(()) => Json(json!({ "removed": name })).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
