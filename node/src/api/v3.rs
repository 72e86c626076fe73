//! etcd's v3 JSON gateway: KV, maintenance status and member list.

use super::{json as wire, read_body, ApiError};
use crate::kv::*;
use crate::server::Node;
use axum::body::Body;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

fn check_sizes(node: &Node, key: &[u8], value: &[u8]) -> Result<(), KvError> {
    let limits = &node.config().limits;
    if key.len() > limits.key_bytes_max
        || value.len() > limits.value_bytes_max
        || key.len() + value.len() > limits.request_bytes_max
    {
        return Err(KvError::RequestTooLarge);
    }
    Ok(())
}

/// A non-empty `range_end` other than "\0" (to the end) must be above `key`.
/// etcd answers an empty result instead; Meridian names the mistake.
fn check_range_end(key: &[u8], range_end: &[u8]) -> Result<(), KvError> {
    if !range_end.is_empty() && range_end != b"\0" && range_end <= key {
        return Err(KvError::InvalidArgument(
            "etcdserver: range_end must be above key (or \"\\0\" for all keys from key on)".into(),
        ));
    }
    Ok(())
}

pub(super) fn check_range(node: &Node, r: &RangeRequest) -> Result<(), KvError> {
    if r.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if r.revision < 0 {
        return Err(KvError::InvalidArgument(
            "etcdserver: revision must not be negative (0 reads the current revision)".into(),
        ));
    }
    check_range_end(&r.key, &r.range_end)?;
    check_sizes(node, &r.key, &r.range_end)
}

pub(super) fn check_put(node: &Node, p: &PutRequest) -> Result<(), KvError> {
    if p.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(KvError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(KvError::LeaseProvided);
    }
    check_sizes(node, &p.key, &p.value)
}

pub(super) fn check_delete(node: &Node, d: &DeleteRangeRequest) -> Result<(), KvError> {
    if d.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    check_range_end(&d.key, &d.range_end)?;
    check_sizes(node, &d.key, &d.range_end)
}

fn check_txn_ops(node: &Node, t: &TxnRequest, total: &mut usize) -> Result<(), KvError> {
    for c in &t.compare {
        if c.key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        check_range_end(&c.key, &c.range_end)?;
        *total += c.key.len() + c.range_end.len();
    }
    for op in t.success.iter().chain(t.failure.iter()) {
        match op {
            RequestOp::Range(r) => check_range(node, r)?,
            RequestOp::Put(p) => {
                check_put(node, p)?;
                *total += p.key.len() + p.value.len();
            }
            RequestOp::DeleteRange(d) => check_delete(node, d)?,
            RequestOp::Txn(inner) => check_txn_ops(node, inner, total)?,
        }
    }
    Ok(())
}

pub(super) async fn range(
    State(node): State<Node>,
    body: Body,
) -> Result<Json<wire::RangeAnswer>, ApiError> {
    let body = read_body(&node, body).await?;
    let req = wire::range_request(&wire::object(&body)?)?;
    check_range(&node, &req)?;
    let (header, response) = node.range(req).await?;
    Ok(Json(wire::RangeAnswer { header, response }))
}

pub(super) async fn put(
    State(node): State<Node>,
    body: Body,
) -> Result<Json<wire::PutAnswer>, ApiError> {
    let body = read_body(&node, body).await?;
    let req = wire::put_request(&wire::object(&body)?)?;
    check_put(&node, &req)?;
    let (header, response) = node.put(req).await?;
    Ok(Json(wire::PutAnswer { header, response }))
}

pub(super) async fn delete_range(
    State(node): State<Node>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body = read_body(&node, body).await?;
    let req = wire::delete_request(&wire::object(&body)?)?;
    check_delete(&node, &req)?;
    let (h, r) = node.delete_range(req).await?;
    Ok(Json(wire::delete_response(Some(&h), &r)))
}

pub(super) async fn txn(State(node): State<Node>, body: Body) -> Result<Json<Value>, ApiError> {
    let body = read_body(&node, body).await?;
    let req = wire::txn_request(&wire::object(&body)?)?;
    let mut total = 0;
    check_txn_ops(&node, &req, &mut total)?;
    if total > node.config().limits.request_bytes_max {
        return Err(KvError::RequestTooLarge.into());
    }
    let (h, r) = node.txn(req).await?;
    Ok(Json(wire::txn_response(Some(&h), &r)))
}

pub(super) async fn compaction(
    State(node): State<Node>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body = read_body(&node, body).await?;
    let req = wire::compaction_request(&wire::object(&body)?)?;
    let h = node.compact(req).await?;
    node.metrics().compactions.with_label_values(&["api"]).inc();
    Ok(Json(json!({ "header": wire::header(&h) })))
}

pub(super) async fn status(State(node): State<Node>) -> Result<Json<Value>, ApiError> {
    let s = node.status()?;
    let mut v = json!({
        "header": wire::header(&s.header),
        "version": "3.4.0",
        "dbSize": s.db_size.to_string(),
        "leader": s.leader.to_string(),
        "raftIndex": s.raft_index.to_string(),
        "raftTerm": s.header.raft_term.to_string(),
        "raftAppliedIndex": s.raft_applied_index.to_string(),
        "dbSizeInUse": s.db_size.to_string(),
        "meridian": { "version": s.version, "datacenter": s.datacenter, "name": s.name },
    });
    if !s.alarms.is_empty() {
        v["errors"] = json!(s
            .alarms
            .iter()
            .map(|a| format!("alarm:{a}"))
            .collect::<Vec<_>>());
    }
    Ok(Json(v))
}

pub(super) async fn member_list(State(node): State<Node>) -> Result<Json<Value>, ApiError> {
    let s = node.status()?;
    let members: Vec<Value> = node
        .members()
        .iter()
        .map(|m| {
            let mut o = json!({
                "ID": m.id.to_string(),
                "name": m.name,
                "peerURLs": [format!("quic://{}", m.peer_addr)],
            });
            if !m.client_url.is_empty() {
                o["clientURLs"] = json!([m.client_url]);
            }
            if m.is_learner {
                o["isLearner"] = json!(true);
            }
            o
        })
        .collect();
    Ok(Json(
        json!({ "header": wire::header(&s.header), "members": members }),
    ))
}
