//! The client HTTP API: etcd's v3 JSON gateway (`/v3/...`), the native `/v1`
//! API, and `/health`, `/ready`, `/version`, `/metrics`. Handlers decode,
//! validate and call the node's typed operations; they never touch storage.

mod admin;
mod concurrency;
mod json;
mod lease;
mod members;
mod v1;
mod v3;
mod watch;

use crate::kv::{grpc_code, KvError};
use crate::server::{Node, NodeError};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use std::time::Instant;

/// An error answered in etcd's gateway format: `{"error","code","message"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: i32,
    message: String,
    /// For a write refused under a mirrored prefix whose rule forwards
    /// writes: the source DC the federation layer sends it to.
    forward_to: Option<String>,
}

/// Header on a refused write naming the DC it should be sent to (a mirrored
/// prefix with `forward_writes`); the federation layer acts on it and never
/// lets it reach a client.
pub const FORWARD_TO_HEADER: &str = "meridian-forward-to";

impl ApiError {
    fn new(code: i32, message: impl Into<String>) -> ApiError {
        ApiError {
            status: http_status(code),
            code,
            message: message.into(),
            forward_to: None,
        }
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(grpc_code::INVALID_ARGUMENT, message)
    }
}

/// grpc-gateway's mapping from gRPC codes to HTTP statuses.
pub fn http_status(code: i32) -> StatusCode {
    match code {
        3 | 11 => StatusCode::BAD_REQUEST,
        9 => StatusCode::PRECONDITION_FAILED,
        4 => StatusCode::GATEWAY_TIMEOUT,
        5 => StatusCode::NOT_FOUND,
        8 => StatusCode::TOO_MANY_REQUESTS,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> ApiError {
        match e {
            NodeError::Kv(k) => k.into(),
            e => ApiError::new(e.grpc_code(), e.to_string()),
        }
    }
}

impl From<KvError> for ApiError {
    fn from(e: KvError) -> ApiError {
        let mut error = ApiError::new(e.grpc_code(), e.to_string());
        if let KvError::MirrorReadOnly {
            source_dc,
            forward_writes: true,
            ..
        } = e
        {
            error.forward_to = Some(source_dc);
        }
        error
    }
}

impl From<json::FieldError> for ApiError {
    fn from(e: json::FieldError) -> ApiError {
        ApiError::invalid(format!("{}: {}", e.field, e.reason))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.message, "code": self.code, "message": self.message });
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        if let Some(dc) = self
            .forward_to
            .and_then(|dc| axum::http::HeaderValue::from_str(&dc).ok())
        {
            response.headers_mut().insert(FORWARD_TO_HEADER, dc);
        }
        response
    }
}

/// Builds the router for a node.
pub fn router(node: Node) -> Router {
    Router::new()
        .route("/v3/kv/range", post(v3::range))
        .route("/v3/kv/put", post(v3::put))
        .route("/v3/kv/deleterange", post(v3::delete_range))
        .route("/v3/kv/txn", post(v3::txn))
        .route("/v3/kv/compaction", post(v3::compaction))
        .route("/v3/maintenance/status", post(v3::status))
        .route("/v3/cluster/member/list", post(v3::member_list))
        .route("/v3/watch", post(watch::watch))
        .route("/v3/lease/grant", post(lease::grant))
        .route("/v3/lease/revoke", post(lease::revoke))
        .route("/v3/kv/lease/revoke", post(lease::revoke))
        .route("/v3/lease/keepalive", post(lease::keep_alive))
        .route("/v3/lease/timetolive", post(lease::time_to_live))
        .route("/v3/kv/lease/timetolive", post(lease::time_to_live))
        .route("/v3/lease/leases", post(lease::leases))
        .route("/v3/kv/lease/leases", post(lease::leases))
        .route("/v3/lock/lock", post(concurrency::lock))
        .route("/v3/lock/unlock", post(concurrency::unlock))
        .route("/v3/election/campaign", post(concurrency::campaign))
        .route("/v3/election/proclaim", post(concurrency::proclaim))
        .route("/v3/election/resign", post(concurrency::resign))
        .route("/v3/election/leader", post(concurrency::leader))
        .route("/v3/election/observe", post(concurrency::observe))
        .route(
            "/v1/kv/{*key}",
            get(v1::get).put(v1::put).delete(v1::delete),
        )
        .route("/v1/watch/{*key}", get(watch::watch_sse))
        .route("/v1/status", get(v1::status))
        .route("/v1/members", get(members::list).post(members::add))
        .route("/v1/members/{name}", axum::routing::delete(members::remove))
        .route("/v1/members/{name}/promote", post(members::promote))
        .route("/admin/snapshot", post(admin::snapshot))
        .route("/admin/compact", post(admin::compact))
        .route("/admin/drain", post(admin::drain).delete(admin::undrain))
        .route("/version", get(version))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(node.clone(), observe))
        .with_state(node)
}

/// Paths a draining server still answers: operators' and probes' own.
fn served_while_draining(path: &str) -> bool {
    path.starts_with("/admin/")
        || matches!(
            path,
            "/health" | "/ready" | "/metrics" | "/version" | "/v1/status" | "/v1/members"
        )
}

async fn observe(State(node): State<Node>, req: Request, next: Next) -> Response {
    let route = route_label(req.uri().path());
    let start = Instant::now();
    let response = if node.draining() && !served_while_draining(req.uri().path()) {
        ApiError::from(NodeError::Draining).into_response()
    } else {
        next.run(req).await
    };
    let m = node.metrics();
    m.api_requests
        .with_label_values(&[route, response.status().as_str()])
        .inc();
    m.api_duration
        .with_label_values(&[route])
        .observe(start.elapsed().as_secs_f64());
    response
}

/// A bounded set of route labels, so metric cardinality does not follow keys.
fn route_label(path: &str) -> &'static str {
    match path {
        "/v3/kv/range" => "/v3/kv/range",
        "/v3/kv/put" => "/v3/kv/put",
        "/v3/kv/deleterange" => "/v3/kv/deleterange",
        "/v3/kv/txn" => "/v3/kv/txn",
        "/v3/kv/compaction" => "/v3/kv/compaction",
        "/v3/maintenance/status" => "/v3/maintenance/status",
        "/v3/cluster/member/list" => "/v3/cluster/member/list",
        "/v3/watch" => "/v3/watch",
        "/v3/lease/grant" => "/v3/lease/grant",
        "/v3/lease/revoke" | "/v3/kv/lease/revoke" => "/v3/lease/revoke",
        "/v3/lease/keepalive" => "/v3/lease/keepalive",
        "/v3/lease/timetolive" | "/v3/kv/lease/timetolive" => "/v3/lease/timetolive",
        "/v3/lease/leases" | "/v3/kv/lease/leases" => "/v3/lease/leases",
        "/v3/lock/lock" => "/v3/lock/lock",
        "/v3/lock/unlock" => "/v3/lock/unlock",
        "/v3/election/campaign" => "/v3/election/campaign",
        "/v3/election/proclaim" => "/v3/election/proclaim",
        "/v3/election/resign" => "/v3/election/resign",
        "/v3/election/leader" => "/v3/election/leader",
        "/v3/election/observe" => "/v3/election/observe",
        "/v1/status" => "/v1/status",
        "/admin/snapshot" => "/admin/snapshot",
        "/v1/members" => "/v1/members",
        "/admin/compact" => "/admin/compact",
        "/admin/drain" => "/admin/drain",
        "/version" => "/version",
        "/health" => "/health",
        "/ready" => "/ready",
        "/metrics" => "/metrics",
        p if p.starts_with("/v1/kv/") => "/v1/kv",
        p if p.starts_with("/v1/watch/") => "/v1/watch",
        _ => "other",
    }
}

/// Takes every complete JSON value from the front of a streaming request
/// body's bytes, leaving an incomplete tail for the next chunk. A value that
/// cannot be parsed ends the list with its error.
fn take_objects(pending: &mut Vec<u8>) -> Vec<Result<serde_json::Value, String>> {
    let mut consumed = 0;
    let mut objects = Vec::new();
    let mut it = serde_json::Deserializer::from_slice(pending).into_iter::<serde_json::Value>();
    loop {
        match it.next() {
            Some(Ok(v)) => {
                consumed = it.byte_offset();
                objects.push(Ok(v));
            }
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(e)) => {
                objects.push(Err(e.to_string()));
                break;
            }
            None => {
                consumed = pending.len();
                break;
            }
        }
    }
    pending.drain(..consumed);
    objects
}

/// Reads a request body, refusing bodies above the limit with etcd's error.
async fn read_body(node: &Node, body: Body) -> Result<axum::body::Bytes, ApiError> {
    use futures::StreamExt;
    // Base64 makes bytes 4/3 larger; allow for it and for the JSON around them.
    let limit = node.config().limits.request_bytes_max * 4 / 3 + 64 * 1024;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return Err(ApiError::invalid("the request body could not be read"));
        };
        if buf.len() + chunk.len() > limit {
            // Read (and drop) the rest of a too-large request, up to a bound,
            // so the client gets the answer: closing the connection with its
            // request unread would reset it before the answer is read.
            let mut dropped = buf.len() + chunk.len();
            drop(buf);
            while let Some(Ok(chunk)) = stream.next().await {
                dropped += chunk.len();
                if dropped > DRAIN_BYTES_MAX {
                    break;
                }
            }
            return Err(ApiError::from(KvError::RequestTooLarge));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// How much of a too-large request is read before answering; a larger one
/// is cut off with the connection.
const DRAIN_BYTES_MAX: usize = 32 * 1024 * 1024;

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: grpc_code::NOT_FOUND,
        message: "Not Found".into(),
        forward_to: None,
    }
}

async fn version() -> impl IntoResponse {
    axum::Json(
        json!({ "etcdserver": "3.4.0", "etcdcluster": "3.4.0", "meridian": env!("CARGO_PKG_VERSION") }),
    )
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({ "health": "true" }))
}

async fn ready(State(node): State<Node>) -> Response {
    if node.ready().await {
        axum::Json(json!({ "ready": true })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "ready": false,
                "reason": if node.draining() { "draining" } else { "no leader or not caught up" },
            })),
        )
            .into_response()
    }
}

async fn metrics(State(node): State<Node>) -> impl IntoResponse {
    // The store's gauges are read when scraped rather than after each apply.
    node.refresh_store_metrics();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics().render(),
    )
}

#[cfg(test)]
mod tests {
    use super::take_objects;

    #[test]
    fn streamed_objects_are_taken_whole_and_a_tail_waits() {
        let mut pending = br#"{"a":1} {"b":2}{"c":"#.to_vec();
        let got = take_objects(&mut pending);
        assert_eq!(got.len(), 2);
        assert_eq!(pending, br#"{"c":"#.to_vec());
        pending.extend_from_slice(br#"3}"#);
        assert_eq!(take_objects(&mut pending).len(), 1);
        assert!(pending.is_empty());
        let mut bad = b"{\"a\":1} nonsense".to_vec();
        let got = take_objects(&mut bad);
        assert!(got[0].is_ok() && got[1].is_err());
    }
}
