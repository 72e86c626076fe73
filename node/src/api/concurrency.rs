//! etcd's v3lock (`/v3/lock/*`) and v3election (`/v3/election/*`) services
//! on the JSON gateway.

use super::json::{self as wire, FieldError};
use super::{read_body, ApiError};
use crate::concurrency::{self as cc, ConcurrencyError, LeaderKey};
use crate::kv::grpc_code;
use crate::server::{Header, Node};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use tokio::sync::mpsc;

type Obj = Map<String, Value>;

impl From<ConcurrencyError> for ApiError {
    fn from(e: ConcurrencyError) -> ApiError {
        match e {
            ConcurrencyError::Node(e) => e.into(),
            ConcurrencyError::SessionExpired(_) => {
                ApiError::new(grpc_code::FAILED_PRECONDITION, e.to_string())
            }
            ConcurrencyError::NotLeader => {
                ApiError::new(grpc_code::FAILED_PRECONDITION, e.to_string())
            }
            ConcurrencyError::NoLeader => ApiError::new(grpc_code::NOT_FOUND, e.to_string()),
        }
    }
}

fn field_err(field: &str, reason: &str) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn only(o: &Obj, names: &[&str]) -> Result<(), FieldError> {
    match o.keys().find(|k| !names.contains(&k.as_str())) {
        Some(k) => Err(field_err(k, &format!("unknown field {k:?}"))),
        None => Ok(()),
    }
}

fn bytes(o: &Obj, name: &str, required: bool) -> Result<Vec<u8>, FieldError> {
    match o.get(name) {
        None | Some(Value::Null) if required => Err(field_err(name, "is required")),
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => STANDARD
            .decode(s)
            .map_err(|e| field_err(name, &format!("invalid base64: {e}"))),
        Some(_) => Err(field_err(name, "expected a base64 string")),
    }
}

fn int(o: &Obj, name: &str) -> Result<i64, FieldError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| field_err(name, "expected a 64-bit integer")),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| field_err(name, "expected a 64-bit integer")),
        Some(_) => Err(field_err(name, "expected a 64-bit integer")),
    }
}

fn leader_key(o: &Obj) -> Result<LeaderKey, FieldError> {
    let l = match o.get("leader") {
        Some(Value::Object(l)) => l,
        _ => return Err(field_err("leader", "expected an object")),
    };
    only(l, &["name", "key", "rev", "lease"])?;
    Ok(LeaderKey {
        name: bytes(l, "name", true)?,
        key: bytes(l, "key", true)?,
        rev: int(l, "rev")?,
        lease: int(l, "lease")?,
    })
}

fn reply(h: &Header, mut fields: Obj) -> Value {
    fields.insert("header".into(), wire::header(h));
    Value::Object(fields)
}

async fn body_object(node: &Node, body: Body) -> Result<Obj, ApiError> {
    Ok(wire::object(&read_body(node, body).await?)?)
}

fn nonempty(name: &str, v: &[u8]) -> Result<(), FieldError> {
    if v.is_empty() {
        return Err(field_err(name, "must not be empty"));
    }
    Ok(())
}

pub(super) async fn lock(State(node): State<Node>, body: Body) -> Result<Json<Value>, ApiError> {
    let o = body_object(&node, body).await?;
    only(&o, &["name", "lease"])?;
    let name = bytes(&o, "name", true)?;
    nonempty("name", &name)?;
    let lease = int(&o, "lease")?;
    if lease <= 0 {
        return Err(field_err("lease", "a lock needs a lease").into());
    }
    let (h, key, _rev) = cc::lock(&node, &name, lease).await?;
    let mut f = Obj::new();
    f.insert("key".into(), json!(wire::b64(&key)));
    Ok(Json(reply(&h, f)))
}

pub(super) async fn unlock(State(node): State<Node>, body: Body) -> Result<Json<Value>, ApiError> {
    let o = body_object(&node, body).await?;
    only(&o, &["key"])?;
    let key = bytes(&o, "key", true)?;
    nonempty("key", &key)?;
    let h = cc::unlock(&node, &key).await?;
    Ok(Json(reply(&h, Obj::new())))
}

fn leader_json(l: &LeaderKey) -> Value {
    json!({
        "name": wire::b64(&l.name),
        "key": wire::b64(&l.key),
        "rev": l.rev.to_string(),
        "lease": l.lease.to_string(),
    })
}

pub(super) async fn campaign(
    State(node): State<Node>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let o = body_object(&node, body).await?;
    only(&o, &["name", "lease", "value"])?;
    let name = bytes(&o, "name", true)?;
    nonempty("name", &name)?;
    let lease = int(&o, "lease")?;
    if lease <= 0 {
        return Err(field_err("lease", "a campaign needs a lease").into());
    }
    let value = bytes(&o, "value", false)?;
    let (h, leader) = cc::campaign(&node, &name, lease, &value).await?;
    let mut f = Obj::new();
    f.insert("leader".into(), leader_json(&leader));
    Ok(Json(reply(&h, f)))
}

pub(super) async fn proclaim(
    State(node): State<Node>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let o = body_object(&node, body).await?;
    only(&o, &["leader", "value"])?;
    let leader = leader_key(&o)?;
    let value = bytes(&o, "value", false)?;
    let h = cc::proclaim(&node, &leader, &value).await?;
    Ok(Json(reply(&h, Obj::new())))
}

pub(super) async fn resign(State(node): State<Node>, body: Body) -> Result<Json<Value>, ApiError> {
    let o = body_object(&node, body).await?;
    only(&o, &["leader"])?;
    let h = cc::resign(&node, &leader_key(&o)?).await?;
    Ok(Json(reply(&h, Obj::new())))
}

pub(super) async fn leader(State(node): State<Node>, body: Body) -> Result<Json<Value>, ApiError> {
    let o = body_object(&node, body).await?;
    only(&o, &["name"])?;
    let name = bytes(&o, "name", true)?;
    nonempty("name", &name)?;
    let (h, kv) = cc::leader(&node, &name).await?;
    let mut f = Obj::new();
    f.insert("kv".into(), wire::kv(&kv));
    Ok(Json(reply(&h, f)))
}

/// `POST /v3/election/observe`: one `{"result": {"header", "kv"}}` line for
/// the current leader and one for every change of leader or of its value.
pub(super) async fn observe(State(node): State<Node>, body: Body) -> Result<Response, ApiError> {
    let o = body_object(&node, body).await?;
    only(&o, &["name"])?;
    let name = bytes(&o, "name", true)?;
    nonempty("name", &name)?;
    node.read_barrier().await?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut seen = None;
        loop {
            let (h, now) = tokio::select! {
                r = cc::next_leader(&node, &name, seen.as_ref()) => match r {
                    Ok(x) => x,
                    Err(_) => return,
                },
                _ = tx.closed() => return,
            };
            if let Some(kv) = &now {
                let mut f = Obj::new();
                f.insert("kv".into(), wire::kv(kv));
                let mut line = json!({ "result": reply(&h, f) }).to_string();
                line.push('\n');
                if tx.send(Bytes::from(line)).await.is_err() {
                    return;
                }
            }
            seen = now;
        }
    });
    let stream =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|b| b.map(Ok::<_, Infallible>)));
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}
