//! etcd's Lease service on the JSON gateway: grant, revoke, keep-alive (a
//! stream), time-to-live and the list of leases.

use super::json::{self as wire, FieldError};
use super::{read_body, ApiError};
use crate::server::Node;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use tokio::sync::mpsc;

type Obj = Map<String, Value>;

/// Reads an int64 field that etcd names in capitals ("ID", "TTL").
fn id_field(o: &Obj, name: &str) -> Result<i64, FieldError> {
    match o.get(name).or_else(|| o.get(&name.to_lowercase())) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| bad(name)),
        Some(Value::String(s)) => s.parse().map_err(|_| bad(name)),
        Some(_) => Err(bad(name)),
    }
}

fn bad(name: &str) -> FieldError {
    FieldError {
        field: name.into(),
        reason: "expected a 64-bit integer".into(),
    }
}

fn only(o: &Obj, names: &[&str]) -> Result<(), FieldError> {
    for k in o.keys() {
        if !names.iter().any(|n| n == k || n.to_lowercase() == *k) {
            return Err(FieldError {
                field: k.clone(),
                reason: format!("unknown field {k:?}"),
            });
        }
    }
    Ok(())
}

fn with(h: &crate::server::Header, mut fields: Obj) -> Value {
    fields.insert("header".into(), wire::header(h));
    Value::Object(fields)
}

fn int(v: i64) -> Value {
    Value::String(v.to_string())
}

pub(super) async fn grant(State(node): State<Node>, body: Body) -> Result<Json<Value>, ApiError> {
    let o = wire::object(&read_body(&node, body).await?)?;
    only(&o, &["TTL", "ID"])?;
    let (ttl, id) = (id_field(&o, "TTL")?, id_field(&o, "ID")?);
    let (h, id, ttl) = node.lease_grant(id, ttl).await?;
    let mut f = Obj::new();
    f.insert("ID".into(), int(id));
    f.insert("TTL".into(), int(ttl));
    Ok(Json(with(&h, f)))
}

pub(super) async fn revoke(State(node): State<Node>, body: Body) -> Result<Json<Value>, ApiError> {
    let o = wire::object(&read_body(&node, body).await?)?;
    only(&o, &["ID"])?;
    let h = node.lease_revoke(id_field(&o, "ID")?).await?;
    Ok(Json(with(&h, Obj::new())))
}

pub(super) async fn time_to_live(
    State(node): State<Node>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let o = wire::object(&read_body(&node, body).await?)?;
    only(&o, &["ID", "keys"])?;
    let id = id_field(&o, "ID")?;
    let keys = match o.get("keys") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(FieldError {
                field: "keys".into(),
                reason: "expected true or false".into(),
            }
            .into())
        }
    };
    let (h, status) = node.lease_time_to_live(id, keys).await?;
    let mut f = Obj::new();
    f.insert("ID".into(), int(id));
    match status {
        // etcd answers an unknown lease with TTL -1.
        None => {
            f.insert("TTL".into(), int(-1));
        }
        Some((remaining, granted, list)) => {
            if remaining != 0 {
                f.insert("TTL".into(), int(remaining));
            }
            if granted != 0 {
                f.insert("grantedTTL".into(), int(granted));
            }
            if !list.is_empty() {
                f.insert(
                    "keys".into(),
                    Value::Array(list.iter().map(|k| json!(wire::b64(k))).collect()),
                );
            }
        }
    }
    Ok(Json(with(&h, f)))
}

pub(super) async fn leases(State(node): State<Node>, body: Body) -> Result<Json<Value>, ApiError> {
    let o = wire::object(&read_body(&node, body).await?)?;
    only(&o, &[])?;
    let (h, ids) = node.lease_list().await?;
    let mut f = Obj::new();
    if !ids.is_empty() {
        f.insert(
            "leases".into(),
            Value::Array(ids.into_iter().map(|id| json!({ "ID": int(id) })).collect()),
        );
    }
    Ok(Json(with(&h, f)))
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

/// `POST /v3/lease/keepalive`: each `{"ID": ...}` object in the body gets one
/// `{"result": {"header", "ID", "TTL"}}` line (TTL 0: no such lease).
pub(super) async fn keep_alive(State(node): State<Node>, body: Body) -> Response {
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            pending.extend_from_slice(&chunk);
            let objects = super::take_objects(&mut pending);
            for object in objects {
                let id = object.and_then(|v| match v {
                    Value::Object(o) => only(&o, &["ID"])
                        .and_then(|_| id_field(&o, "ID"))
                        .map_err(|e| format!("{}: {}", e.field, e.reason)),
                    _ => Err("expected a JSON object".into()),
                });
                let reply = match id {
                    Ok(id) => match node.lease_keep_alive(id).await {
                        Ok((h, ttl)) => {
                            let mut f = Obj::new();
                            f.insert("ID".into(), int(id));
                            if ttl != 0 {
                                f.insert("TTL".into(), int(ttl));
                            }
                            json!({ "result": with(&h, f) })
                        }
                        Err(e) => {
                            let e = ApiError::from(e);
                            json!({"error": e.message, "message": e.message, "code": e.code})
                        }
                    },
                    Err(message) => json!({
                        "error": message, "message": message,
                        "code": crate::kv::grpc_code::INVALID_ARGUMENT
                    }),
                };
                let ended = reply.get("error").is_some();
                if tx.send(line(&reply)).await.is_err() || ended {
                    return;
                }
            }
        }
    });
    let stream =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|b| b.map(Ok::<_, Infallible>)));
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}
