//! Cross-datacenter forwarding. A client request with `dc=<name>` in its
//! query or a `Meridian-Datacenter: <name>` header is sent over the WAN link
//! to that datacenter and run there by its own client API, exactly as a
//! request made there would run (its header, its revision, linearizable
//! there unless the request says otherwise). Both bodies stream, so watches,
//! keep-alives and lock waits work across datacenters. Every answer names
//! the datacenter that served it in the `Meridian-Datacenter` header.

use crate::metrics::FederationMetrics;
use crate::wire::{self, HttpHead, ResponseHead, WanRequest, WanResponse};
use crate::{Federation, DATACENTER_HEADER};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use meridian_gateway::{FrameReader, FrameWriter};
use meridian_node::api::FORWARD_TO_HEADER;
use std::time::Instant;
use tower::ServiceExt;

/// Request headers carried to the other datacenter; the rest (hop-by-hop,
/// host, the selector itself) stay behind.
const CARRIED: [&str; 4] = ["content-type", "accept", "last-event-id", "authorization"];

/// The middleware: runs requests for this datacenter here, forwards the rest.
pub async fn route(State(fed): State<Federation>, req: Request, next: Next) -> Response {
    let own = fed.datacenter().to_string();
    let (target, uri) = match target(&req) {
        Ok(t) => t,
        Err(response) => return *response,
    };
    let mut req = req;
    if let Some(uri) = uri {
        *req.uri_mut() = uri;
    }
    let mut response = match target {
        Some(dc) if dc != own => forward(&fed, &dc, req).await,
        _ if fed.shared.replication.forwards_writes() && is_kv_write(&req) => {
            local_or_source(&fed, req, next).await
        }
        _ => next.run(req).await,
    };
    response.headers_mut().remove(FORWARD_TO_HEADER);
    if !response.headers().contains_key(DATACENTER_HEADER) {
        if let Ok(v) = HeaderValue::from_str(&own) {
            response.headers_mut().insert(DATACENTER_HEADER, v);
        }
    }
    response
}

/// Whether a request writes keys (the requests a mirrored prefix refuses).
fn is_kv_write(req: &Request) -> bool {
    let path = req.uri().path();
    match *req.method() {
        Method::POST => matches!(path, "/v3/kv/put" | "/v3/kv/deleterange" | "/v3/kv/txn"),
        Method::PUT | Method::DELETE => path.starts_with("/v1/kv/"),
        _ => false,
    }
}

/// Runs a write here; if it is refused because it touches a prefix mirrored
/// with `forward_writes`, sends it to the rule's source DC instead, which
/// answers it (and names itself in `Meridian-Datacenter`).
async fn local_or_source(fed: &Federation, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    // Room for the largest request the API accepts, in JSON's base64.
    let limit = fed.shared.node.config().limits.request_bytes_max * 2 + 64 * 1024;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                3,
                "etcdserver: request is too large".into(),
                None,
            )
        }
    };
    let again = Request::from_parts(parts.clone(), Body::from(bytes.clone()));
    let mut response = next.run(again).await;
    let Some(source) = response
        .headers_mut()
        .remove(FORWARD_TO_HEADER)
        .and_then(|v| v.to_str().ok().map(str::to_string))
    else {
        return response;
    };
    fed.shared
        .metrics
        .forwarded
        .with_label_values(&[&source, "write_to_source"])
        .inc();
    forward(fed, &source, Request::from_parts(parts, Body::from(bytes))).await
}

/// The datacenter a request names (query `dc=` wins over the header) and
/// its URI without the `dc` parameter.
#[allow(clippy::type_complexity)]
fn target(req: &Request) -> Result<(Option<String>, Option<Uri>), Box<Response>> {
    let mut dc = req
        .headers()
        .get(DATACENTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(query) = req.uri().query() else {
        return Ok((dc, None));
    };
    let mut kept = Vec::new();
    let mut found = false;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("dc", name)) => {
                dc = Some(name.to_string());
                found = true;
            }
            None if pair == "dc" => {
                return Err(Box::new(error(
                    StatusCode::BAD_REQUEST,
                    3,
                    "dc needs a datacenter name: dc=<name>".into(),
                    None,
                )))
            }
            _ => kept.push(pair),
        }
    }
    if !found {
        return Ok((dc, None));
    }
    let path = req.uri().path();
    let rebuilt = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let uri = rebuilt.parse::<Uri>().map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            3,
            format!("bad request URI: {e}"),
            None,
        ))
    })?;
    Ok((dc, Some(uri)))
}

/// An error in the client API's JSON shape (etcd's `error`, `code`,
/// `message`), with the known datacenters when that helps.
pub(crate) fn error(
    status: StatusCode,
    code: i32,
    message: String,
    known: Option<Vec<String>>,
) -> Response {
    let extra = match known {
        Some(known) => serde_json::json!({ "datacenters": known }),
        None => serde_json::Value::Null,
    };
    error_with(status, code, message, extra)
}

/// An error in the client API's JSON shape with `extra`'s fields beside
/// `error`, `code` and `message`.
pub(crate) fn error_with(
    status: StatusCode,
    code: i32,
    message: String,
    extra: serde_json::Value,
) -> Response {
    let mut body = serde_json::json!({ "error": message, "code": code, "message": message });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(crate) async fn forward(fed: &Federation, dc: &str, req: Request) -> Response {
    let shared = &fed.shared;
    let metrics = &shared.metrics;
    if !shared.links.knows(dc) {
        let mut known = vec![fed.datacenter().to_string()];
        known.extend(shared.links.names());
        known.sort();
        return error(
            StatusCode::NOT_FOUND,
            5,
            format!("unknown datacenter {dc:?}; known: {}", known.join(", ")),
            Some(known),
        );
    }
    let start = Instant::now();
    let timeout = shared.config.forward_timeout;
    let (parts, body) = req.into_parts();
    let head = HttpHead {
        from: fed.datacenter().to_string(),
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string()),
        headers: parts
            .headers
            .iter()
            .filter(|(name, _)| CARRIED.contains(&name.as_str()))
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect(),
    };
    let unreachable = |cause: String| {
        metrics
            .forwarded
            .with_label_values(&[dc, "unreachable"])
            .inc();
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            14,
            format!("datacenter {dc:?} is unreachable: {cause}"),
            None,
        )
    };
    // Reaching the datacenter and having the request accepted there is
    // bounded by the timeout; the answer itself may take as long as the
    // request does there (a lock wait, a watch).
    let reach = async {
        let (mut w, mut r, _) = shared.links.open(dc, timeout).await.map_err(|e| match e {
            crate::LinkError::Unreachable { cause, .. } => cause,
            other => other.to_string(),
        })?;
        let first = wire::encode(&WanRequest::Http(head));
        metrics
            .send(dc, &mut w, &first)
            .await
            .map_err(|e| e.to_string())?;
        // The body follows the head at once (one round trip in all, not
        // two); it streams on while the answer comes back.
        tokio::spawn(send_body(body, w, dc.to_string(), metrics.clone()));
        let accepted = metrics
            .next(dc, &mut r)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("stream closed before the request was accepted")?;
        match wire::decode::<WanResponse>(&accepted)? {
            WanResponse::Accepted => Ok(r),
            WanResponse::Refused(why) => Err(format!("refused: {why}")),
            other => Err(format!("unexpected answer: {other:?}")),
        }
    };
    let mut r = match tokio::time::timeout(timeout, reach).await {
        Ok(Ok(r)) => r,
        Ok(Err(cause)) => return unreachable(cause),
        Err(_) => return unreachable(format!("no answer within {} ms", timeout.as_millis())),
    };
    let head = match metrics.next(dc, &mut r).await {
        Ok(Some(frame)) => match wire::decode::<WanResponse>(&frame) {
            Ok(WanResponse::Http(head)) => head,
            Ok(other) => return unreachable(format!("unexpected answer: {other:?}")),
            Err(e) => return unreachable(e),
        },
        Ok(None) => return unreachable("the stream ended before the answer".into()),
        Err(e) => return unreachable(e.to_string()),
    };
    metrics.forwarded.with_label_values(&[dc, "ok"]).inc();
    metrics
        .forward_duration
        .with_label_values(&[dc])
        .observe(start.elapsed().as_secs_f64());
    let body = frames_body(r, dc.to_string(), metrics.clone());
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, value) in head.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    if let Ok(v) = HeaderValue::from_str(dc) {
        response.headers_mut().insert(DATACENTER_HEADER, v);
    }
    response
}

/// Sends a body as frames, then ends the stream; stops early when the other
/// side stops reading (a caller that went away stops the producer).
async fn send_body(body: Body, mut w: FrameWriter, dc: String, metrics: FederationMetrics) {
    let mut chunks = body.into_data_stream();
    loop {
        let chunk = tokio::select! {
            chunk = chunks.next() => chunk,
            _ = w.stopped() => return,
        };
        match chunk {
            Some(Ok(chunk)) if chunk.is_empty() => continue,
            Some(Ok(chunk)) => {
                if metrics.send(&dc, &mut w, &chunk).await.is_err() {
                    return;
                }
            }
            _ => break,
        }
    }
    w.finish();
}

/// A body made of the frames still to come on `r`.
fn frames_body(r: FrameReader, dc: String, metrics: FederationMetrics) -> Body {
    Body::from_stream(futures::stream::unfold(r, move |mut r| {
        let dc = dc.clone();
        let metrics = metrics.clone();
        async move {
            match metrics.next(&dc, &mut r).await {
                Ok(Some(frame)) => Some((Ok::<Bytes, std::io::Error>(Bytes::from(frame)), r)),
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), r)),
            }
        }
    }))
}

/// Serves one WAN stream from another datacenter.
pub(crate) async fn serve(fed: Federation, mut r: FrameReader, mut w: FrameWriter) {
    let Ok(Some(first)) = r.next().await else {
        return;
    };
    // Counted once the sender is known to be a peer.
    let shared = &fed.shared;
    let request = match wire::decode::<WanRequest>(&first) {
        Ok(request) => request,
        Err(e) => {
            let _ = w.send(&wire::encode(&WanResponse::Refused(e))).await;
            w.finish();
            return;
        }
    };
    let from = match &request {
        WanRequest::Hello(h) => h.datacenter.clone(),
        WanRequest::Http(h) => h.from.clone(),
        WanRequest::Changes(c) => c.from.clone(),
    };
    if !shared.links.knows(&from) {
        let why = format!(
            "datacenter {from:?} is not among {}'s peers",
            fed.datacenter()
        );
        let _ = w.send(&wire::encode(&WanResponse::Refused(why))).await;
        w.finish();
        return;
    }
    shared.metrics.received(&from, first.len());
    match request {
        WanRequest::Hello(hello) => {
            shared.links.heard(hello);
            let hello = wire::encode(&WanResponse::Hello(shared.links.own_hello()));
            let _ = shared.metrics.send(&from, &mut w, &hello).await;
            w.finish();
            w.stopped().await;
        }
        WanRequest::Http(head) => serve_http(&fed, &from, head, r, w).await,
        WanRequest::Changes(request) => crate::replication::source::serve(&fed, request, w).await,
    }
}

async fn serve_http(
    fed: &Federation,
    from: &str,
    head: HttpHead,
    r: FrameReader,
    mut w: FrameWriter,
) {
    let metrics = fed.shared.metrics.clone();
    let accepted = wire::encode(&WanResponse::Accepted);
    if metrics.send(from, &mut w, &accepted).await.is_err() {
        return;
    }
    let body = frames_body(r, from.to_string(), metrics.clone());
    let mut builder = Request::builder()
        .method(head.method.as_str())
        .uri(head.uri.as_str());
    for (name, value) in &head.headers {
        builder = builder.header(name.as_str(), value.as_slice());
    }
    let response = match builder.body(body) {
        Ok(request) => match fed.shared.local.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            3,
            format!("malformed forwarded request: {e}"),
            None,
        ),
    };
    let (parts, body) = response.into_parts();
    let head = wire::encode(&WanResponse::Http(ResponseHead {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect(),
    }));
    if metrics.send(from, &mut w, &head).await.is_err() {
        return;
    }
    send_body(body, w, from.to_string(), metrics).await;
}
