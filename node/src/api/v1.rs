//! The native API for people with curl: `/v1/kv/<key>` with the raw value as
//! the body, and `/v1/status`. Errors are `{"error": ..., "field": ...}`.

use super::v3::{check_delete, check_put, check_range};
use super::{read_body, ApiError};
use crate::kv::*;
use crate::server::{Header, Node};
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

pub(super) fn fail(status: StatusCode, field: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": message.into(), "field": field })),
    )
        .into_response()
}

fn from_api(e: ApiError) -> Response {
    (
        e.status,
        Json(json!({ "error": e.message, "code": e.code })),
    )
        .into_response()
}

/// Query options of `/v1/kv`.
#[derive(Default)]
pub(super) struct KvQuery {
    pub(super) prefix: bool,
    pub(super) stale: bool,
    pub(super) rev: i64,
    pub(super) cas: Option<i64>,
}

pub(super) fn parse_query(raw: Option<&str>) -> Result<KvQuery, Response> {
    let mut q = KvQuery::default();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = |field: &str| -> Result<i64, Response> {
            value
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    fail(
                        StatusCode::BAD_REQUEST,
                        field,
                        format!("{field} must be a non-negative integer"),
                    )
                })
        };
        match name {
            "prefix" => q.prefix = true,
            "stale" => q.stale = true,
            "rev" => q.rev = number("rev")?,
            "cas" => q.cas = Some(number("cas")?),
            other => {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    other,
                    format!("unknown query parameter {other:?}"),
                ))
            }
        }
    }
    Ok(q)
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The key named by the path after `prefix`, which must be valid UTF-8 after percent-decoding.
pub(super) fn key_after(uri: &Uri, prefix: &str) -> Result<Vec<u8>, Response> {
    let raw = uri.path().strip_prefix(prefix).unwrap_or("");
    let decoded = percent_decode(raw).ok_or_else(|| {
        fail(
            StatusCode::BAD_REQUEST,
            "key",
            "malformed percent-encoding in key",
        )
    })?;
    if std::str::from_utf8(&decoded).is_err() {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "key",
            "key must be valid UTF-8 in /v1 paths (use /v3 for binary keys)",
        ));
    }
    if decoded.is_empty() {
        return Err(fail(StatusCode::BAD_REQUEST, "key", "key is empty"));
    }
    Ok(decoded)
}

fn text_or_base64(o: &mut serde_json::Map<String, Value>, name: &str, bytes: &[u8]) {
    use base64::Engine;
    match std::str::from_utf8(bytes) {
        Ok(s) => o.insert(name.into(), json!(s)),
        Err(_) => o.insert(
            format!("{name}_base64"),
            json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
}

fn key_of(uri: &Uri) -> Result<Vec<u8>, Response> {
    key_after(uri, "/v1/kv/")
}

pub(super) fn kv_json(kv: &KeyValue) -> Value {
    let mut o = serde_json::Map::new();
    text_or_base64(&mut o, "key", &kv.key);
    text_or_base64(&mut o, "value", &kv.value);
    o.insert("create_revision".into(), json!(kv.create_revision));
    o.insert("mod_revision".into(), json!(kv.mod_revision));
    o.insert("version".into(), json!(kv.version));
    o.insert("lease".into(), json!(kv.lease));
    Value::Object(o)
}

fn with_revision(h: &Header, response: Response) -> Response {
    let mut response = response;
    if let Ok(v) = h.revision.to_string().parse() {
        response.headers_mut().insert("Meridian-Revision", v);
    }
    response
}

pub(super) async fn get(
    State(node): State<Node>,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (key, q) = match (key_of(&uri), parse_query(query.as_deref())) {
        (Ok(k), Ok(q)) => (k, q),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let wants_json = q.prefix
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"));
    let req = RangeRequest {
        range_end: if q.prefix {
            prefix_end(&key)
        } else {
            Vec::new()
        },
        key,
        revision: q.rev,
        serializable: q.stale,
        ..Default::default()
    };
    if let Err(e) = check_range(&node, &req) {
        return from_api(e.into());
    }
    let (h, r) = match node.range(req).await {
        Ok(x) => x,
        Err(e) => return from_api(e.into()),
    };
    if wants_json {
        let body = json!({ "revision": h.revision, "count": r.count, "kvs": r.kvs.iter().map(kv_json).collect::<Vec<_>>() });
        return with_revision(&h, Json(body).into_response());
    }
    match r.kvs.into_iter().next() {
        Some(kv) => with_revision(
            &h,
            (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                kv.value,
            )
                .into_response(),
        ),
        None => with_revision(&h, fail(StatusCode::NOT_FOUND, "key", "key not found")),
    }
}

pub(super) async fn put(
    State(node): State<Node>,
    uri: Uri,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    let (key, q) = match (key_of(&uri), parse_query(query.as_deref())) {
        (Ok(k), Ok(q)) => (k, q),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    if q.prefix || q.stale || q.rev != 0 {
        return fail(
            StatusCode::BAD_REQUEST,
            "query",
            "put accepts only ?cas=MOD_REVISION",
        );
    }
    let value = match read_body(&node, body).await {
        Ok(b) => b.to_vec(),
        Err(e) => return from_api(e),
    };
    let put = PutRequest {
        key: key.clone(),
        value,
        ..Default::default()
    };
    if let Err(e) = check_put(&node, &put) {
        return from_api(e.into());
    }
    match q.cas {
        None => match node.put(put).await {
            Ok((h, _)) => {
                with_revision(&h, Json(json!({ "revision": h.revision })).into_response())
            }
            Err(e) => from_api(e.into()),
        },
        Some(expected) => {
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal,
                    target: CompareTarget::Mod(expected),
                    key,
                    range_end: Vec::new(),
                }],
                success: vec![RequestOp::Put(put)],
                failure: Vec::new(),
            };
            match node.txn(txn).await {
                Ok((h, r)) if r.succeeded => {
                    with_revision(&h, Json(json!({ "revision": h.revision })).into_response())
                }
                Ok((h, _)) => with_revision(
                    &h,
                    fail(
                        StatusCode::CONFLICT,
                        "cas",
                        format!("mod_revision is not {expected}"),
                    ),
                ),
                Err(e) => from_api(e.into()),
            }
        }
    }
}

pub(super) async fn delete(
    State(node): State<Node>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Response {
    let (key, q) = match (key_of(&uri), parse_query(query.as_deref())) {
        (Ok(k), Ok(q)) => (k, q),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    if q.stale || q.rev != 0 || q.cas.is_some() {
        return fail(
            StatusCode::BAD_REQUEST,
            "query",
            "delete accepts only ?prefix",
        );
    }
    let req = DeleteRangeRequest {
        range_end: if q.prefix {
            prefix_end(&key)
        } else {
            Vec::new()
        },
        key,
        prev_kv: false,
    };
    if let Err(e) = check_delete(&node, &req) {
        return from_api(e.into());
    }
    match node.delete_range(req).await {
        Ok((h, r)) => with_revision(
            &h,
            Json(json!({ "revision": h.revision, "deleted": r.deleted })).into_response(),
        ),
        Err(e) => from_api(e.into()),
    }
}

pub(super) async fn status(State(node): State<Node>) -> Response {
    let s = match node.status() {
        Ok(s) => s,
        Err(e) => return from_api(e.into()),
    };
    let members: Vec<Value> = node
        .members()
        .iter()
        .map(|m| json!({ "id": m.id.to_string(), "name": m.name, "peer_addr": m.peer_addr, "client_url": m.client_url, "learner": m.is_learner }))
        .collect();
    Json(json!({
        "datacenter": s.datacenter,
        "name": s.name,
        "version": s.version,
        "feature_level": node.advertised().level,
        "cluster_level": node.cluster_level(),
        "features": crate::version::GATED
            .iter()
            .map(|(name, since)| json!({ "name": name, "since_level": since, "on": node.feature_on(name) }))
            .collect::<Vec<_>>(),
        "member_id": s.header.member_id.to_string(),
        "cluster_id": s.header.cluster_id.to_string(),
        "leader": s.leader.to_string(),
        "is_leader": s.leader == s.header.member_id,
        "raft_term": s.header.raft_term,
        "raft_index": s.raft_index,
        "raft_applied_index": s.raft_applied_index,
        "revision": s.header.revision,
        "compacted_revision": s.compacted_revision,
        "keys": s.keys,
        "db_size_bytes": s.db_size,
        "alarms": s.alarms,
        "members": members,
    }))
    .into_response()
}
