//! `POST /v3/watch`: etcd's grpc-gateway watch stream. The request body is a
//! sequence of JSON request objects (`create_request`, `cancel_request`,
//! `progress_request`), read as they arrive; the response is a stream of
//! `{"result": WatchResponse}` objects, one per line, flushed per message.
//!
//! Every watcher replays its changes from storage, in revision order, from
//! the revision it has reached: there is no per-watcher event buffer to
//! overflow. The response channel is bounded, so a client that stops reading
//! stalls only its own watchers (they stop reading storage) and never the
//! apply path or other clients; when it reads again its watchers catch up
//! from storage without losing or repeating an event.

use super::json::{self as wire, WatchCreate, WatchRequest};
use super::v1;
use crate::kv::{Event, EventKind, KvError};
use crate::metrics::Held;
use crate::server::{Node, NodeError};
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Messages buffered per stream before its watchers wait for the client.
const STREAM_BUFFER: usize = 16;
/// Events read from storage per response (whole revisions).
const EVENTS_PER_RESPONSE: usize = 1000;
/// Bytes of keys and values read from storage per response (whole revisions).
const BYTES_PER_RESPONSE: usize = 4 * 1024 * 1024;
/// Request bytes buffered while a request object is incomplete.
const PENDING_BYTES_MAX: usize = 4 * 1024 * 1024;

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

/// How a stream's messages are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    /// etcd's `{"result": WatchResponse}` lines.
    V3,
    /// Server-Sent Events, one per change (`/v1/watch`).
    Sse,
}

/// The sending side of a stream, counting what it queues.
#[derive(Clone)]
struct Out {
    tx: mpsc::Sender<Bytes>,
    node: Node,
    format: Format,
}

impl Out {
    async fn send_bytes(&self, b: Bytes) -> bool {
        let ok = self.tx.send(b).await.is_ok();
        if ok {
            self.node.metrics().watch_queued.inc();
        }
        ok
    }

    async fn send(&self, v: &Value) -> bool {
        self.send_bytes(line(v)).await
    }

    /// Sends one revision batch of selected events.
    /// With `fragment`, a response larger than the request size limit is
    /// split into several, all but the last marked `"fragment": true`, as
    /// etcd does.
    async fn events(
        &self,
        id: i64,
        current: i64,
        events: &[&Event],
        prev_kv: bool,
        fragment: bool,
    ) -> bool {
        match self.format {
            Format::V3 => {
                let limit = self.node.config().limits.request_bytes_max;
                let size = |e: &Event| {
                    64 + (e.kv.key.len()
                        + e.kv.value.len()
                        + e.prev_kv
                            .as_ref()
                            .map_or(0, |p| p.key.len() + p.value.len()))
                        * 4
                        / 3
                };
                let mut parts: Vec<Vec<&Event>> = vec![Vec::new()];
                let mut bytes = 0;
                for e in events {
                    let b = size(e);
                    if fragment && bytes + b > limit && !parts[parts.len() - 1].is_empty() {
                        parts.push(Vec::new());
                        bytes = 0;
                    }
                    bytes += b;
                    let n = parts.len();
                    parts[n - 1].push(e);
                }
                let count = parts.len();
                for (i, part) in parts.into_iter().enumerate() {
                    let list: Vec<Value> = part.iter().map(|e| wire::event(e, prev_kv)).collect();
                    let mut fields = obj(json!({ "events": list }));
                    if i + 1 < count {
                        fields.insert("fragment".into(), json!(true));
                    }
                    let msg = wire::watch_response(&self.node.header(current), id, fields);
                    if !self.send(&msg).await {
                        return false;
                    }
                }
                true
            }
            Format::Sse => {
                let mut out = String::new();
                for e in events {
                    let kind = match e.kind {
                        EventKind::Put => "put",
                        EventKind::Delete => "delete",
                    };
                    let mut data = json!({ "type": kind.to_uppercase(), "kv": v1::kv_json(&e.kv) });
                    if prev_kv {
                        if let Some(p) = &e.prev_kv {
                            data["prev_kv"] = v1::kv_json(p);
                        }
                    }
                    out.push_str(&format!(
                        "id: {}\nevent: {kind}\ndata: {data}\n\n",
                        e.kv.mod_revision
                    ));
                }
                self.send_bytes(Bytes::from(out)).await
            }
        }
    }

    /// The watch ends because its start revision was compacted.
    async fn compacted(&self, id: i64, compacted: i64) {
        match self.format {
            Format::V3 => {
                let mut h = self.node.header(0);
                h.revision = 0;
                let msg = wire::watch_response(
                    &h,
                    id,
                    obj(json!({"canceled": true, "compact_revision": compacted.to_string()})),
                );
                self.send(&msg).await;
            }
            Format::Sse => {
                let data =
                    json!({"error": KvError::Compacted.to_string(), "compact_revision": compacted});
                self.send_bytes(Bytes::from(format!("event: error\ndata: {data}\n\n")))
                    .await;
            }
        }
    }

    /// The watch ends on an error.
    async fn failed(&self, id: i64, reason: String) {
        match self.format {
            Format::V3 => {
                let msg = wire::watch_response(
                    &self.node.header(0),
                    id,
                    obj(json!({"canceled": true, "cancel_reason": reason})),
                );
                self.send(&msg).await;
            }
            Format::Sse => {
                let data = json!({ "error": reason });
                self.send_bytes(Bytes::from(format!("event: error\ndata: {data}\n\n")))
                    .await;
            }
        }
    }

    /// Nothing happened up to `revision`.
    async fn progress(&self, id: i64, revision: i64) -> bool {
        match self.format {
            Format::V3 => {
                let msg = wire::watch_response(&self.node.header(revision), id, Map::new());
                self.send(&msg).await
            }
            Format::Sse => {
                self.send_bytes(Bytes::from(format!(": progress {revision}\n\n")))
                    .await
            }
        }
    }
}

pub(super) async fn watch(State(node): State<Node>, body: Body) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    let out = Out {
        tx,
        node: node.clone(),
        format: Format::V3,
    };
    tokio::spawn(session(node.clone(), body, out));
    (
        [(header::CONTENT_TYPE, "application/json")],
        response_body(&node, rx),
    )
        .into_response()
}

fn response_body(node: &Node, rx: mpsc::Receiver<Bytes>) -> Body {
    let queued = node.metrics().watch_queued.clone();
    let stream = futures::stream::unfold((rx, queued), |(mut rx, queued)| async move {
        let b = rx.recv().await?;
        queued.dec();
        Some((Ok::<_, Infallible>(b), (rx, queued)))
    });
    Body::from_stream(stream)
}

/// `GET /v1/watch/<key>?prefix&rev=N`: changes as Server-Sent Events, one per
/// change, with the change's revision as the event id (a reconnecting
/// EventSource resumes after `Last-Event-ID`). Without `rev`, changes after
/// the current revision.
pub(super) async fn watch_sse(
    State(node): State<Node>,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let key = match v1::key_after(&uri, "/v1/watch/") {
        Ok(k) => k,
        Err(r) => return r,
    };
    let q = match v1::parse_query(query.as_deref()) {
        Ok(q) => q,
        Err(r) => return r,
    };
    if q.stale || q.cas.is_some() {
        return v1::fail(
            StatusCode::BAD_REQUEST,
            if q.stale { "stale" } else { "cas" },
            "watch takes prefix and rev only",
        );
    }
    let mut start = q.rev;
    if let Some(last) = headers.get("last-event-id") {
        match last
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
        {
            Some(id) if id >= 0 => start = id + 1,
            _ => {
                return v1::fail(
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID",
                    "Last-Event-ID must be a revision",
                )
            }
        }
    }
    let create = WatchCreate {
        range_end: if q.prefix {
            crate::kv::prefix_end(&key)
        } else {
            Vec::new()
        },
        key,
        start_revision: start,
        prev_kv: true,
        ..Default::default()
    };
    if let Err(reason) = check_create(&node, &create) {
        return v1::fail(StatusCode::BAD_REQUEST, "key", reason);
    }
    let current = match node.revisions() {
        Ok((current, _)) => current,
        Err(e) => return super::ApiError::from(e).into_response(),
    };
    let start = if start > 0 { start } else { current + 1 };
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    let out = Out {
        tx,
        node: node.clone(),
        format: Format::Sse,
    };
    let hello = Bytes::from(format!(": watching from revision {start}\n\n"));
    out.send_bytes(hello).await;
    let synced = Arc::new(AtomicI64::new(start - 1));
    let closed = out.tx.clone();
    let task = tokio::spawn(run_watcher(node.clone(), out, 0, create, start, synced));
    // Stop the watcher as soon as the client goes away, even if idle.
    tokio::spawn(async move {
        closed.closed().await;
        task.abort();
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        response_body(&node, rx),
    )
        .into_response()
}

struct Watcher {
    task: JoinHandle<()>,
    /// Every event up to this revision has been sent.
    synced: Arc<AtomicI64>,
}

/// Reads request objects from the body and runs the stream's watchers.
async fn session(node: Node, body: Body, tx: Out) {
    let _stream = Held::new(&node.metrics().watch_streams);
    let mut watchers: HashMap<i64, Watcher> = HashMap::new();
    let mut next_id: i64 = 0;
    let mut pending: Vec<u8> = Vec::new();
    let mut stream = body.into_data_stream();
    let mut ended_by_error = false;
    'body: while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        pending.extend_from_slice(&chunk);
        let mut objects = super::take_objects(&mut pending);
        if pending.len() > PENDING_BYTES_MAX {
            objects.push(Err("watch request object too large".into()));
        }
        for object in objects {
            let request = object.and_then(|v| match v {
                Value::Object(o) => {
                    wire::watch_request(&o).map_err(|e| format!("{}: {}", e.field, e.reason))
                }
                _ => Err("expected a JSON object".into()),
            });
            let request = match request {
                Ok(r) => r,
                Err(message) => {
                    // etcd ends the stream on a request it cannot decode.
                    tx.send(&json!({
                        "error": message, "message": message,
                        "code": crate::kv::grpc_code::INVALID_ARGUMENT
                    }))
                    .await;
                    ended_by_error = true;
                    break 'body;
                }
            };
            if !handle(&node, &tx, &mut watchers, &mut next_id, request).await {
                break 'body;
            }
        }
    }
    // The request body has ended; the watchers run until the client goes
    // away (or, after a request that could not be decoded, the stream ends).
    if !ended_by_error {
        tx.tx.closed().await;
    }
    for w in watchers.into_values() {
        w.task.abort();
    }
}

fn header_now(node: &Node) -> Result<crate::server::Header, NodeError> {
    let (current, _) = node.revisions()?;
    Ok(node.header(current))
}

/// Handles one request; false when the client is gone.
async fn handle(
    node: &Node,
    tx: &Out,
    watchers: &mut HashMap<i64, Watcher>,
    next_id: &mut i64,
    request: WatchRequest,
) -> bool {
    watchers.retain(|_, w| !w.task.is_finished());
    let Ok(h) = header_now(node) else {
        return false;
    };
    let reply = match request {
        WatchRequest::Create(create) => {
            let id = if create.watch_id != 0 {
                create.watch_id
            } else {
                while watchers.contains_key(next_id) {
                    *next_id += 1;
                }
                *next_id
            };
            if id < 0 || watchers.contains_key(&id) {
                let reason = format!("watch id {id} is already in use or invalid");
                wire::watch_response(
                    &h,
                    id,
                    obj(json!({"created": true, "canceled": true, "cancel_reason": reason})),
                )
            } else if let Err(reason) = check_create(node, &create) {
                wire::watch_response(
                    &h,
                    id,
                    obj(json!({"created": true, "canceled": true, "cancel_reason": reason})),
                )
            } else {
                if create.watch_id == 0 {
                    *next_id += 1;
                }
                // The created response goes out before any event of this watcher.
                if !tx
                    .send(&wire::watch_response(&h, id, obj(json!({"created": true}))))
                    .await
                {
                    return false;
                }
                let start = if create.start_revision > 0 {
                    create.start_revision
                } else {
                    h.revision + 1
                };
                let synced = Arc::new(AtomicI64::new(start - 1));
                let task = tokio::spawn(run_watcher(
                    node.clone(),
                    tx.clone(),
                    id,
                    create,
                    start,
                    synced.clone(),
                ));
                watchers.insert(id, Watcher { task, synced });
                return true;
            }
        }
        WatchRequest::Cancel(id) => match watchers.remove(&id) {
            Some(w) => {
                w.task.abort();
                wire::watch_response(&h, id, obj(json!({"canceled": true})))
            }
            None => wire::watch_response(
                &h,
                id,
                obj(json!({"canceled": true, "cancel_reason": format!("watch id {id} not found")})),
            ),
        },
        WatchRequest::Progress => {
            // Everything up to the slowest watcher's position has been sent.
            let revision = watchers
                .values()
                .map(|w| w.synced.load(Ordering::Relaxed))
                .min()
                .unwrap_or(h.revision);
            wire::watch_response(&node.header(revision), -1, Map::new())
        }
    };
    tx.send(&reply).await
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(o) => o,
        _ => Map::new(),
    }
}

fn check_create(node: &Node, c: &WatchCreate) -> Result<(), String> {
    if c.key.is_empty() {
        return Err(KvError::EmptyKey.to_string());
    }
    if !c.range_end.is_empty() && c.range_end != b"\0" && c.range_end <= c.key {
        return Err("etcdserver: range_end must be above key".into());
    }
    if c.start_revision < 0 {
        return Err("etcdserver: start_revision must not be negative".into());
    }
    if c.key.len() > node.config().limits.key_bytes_max {
        return Err(KvError::RequestTooLarge.to_string());
    }
    Ok(())
}

fn in_range(c: &WatchCreate, key: &[u8]) -> bool {
    if c.range_end.is_empty() {
        key == c.key.as_slice()
    } else if c.range_end == b"\0" {
        key >= c.key.as_slice()
    } else {
        key >= c.key.as_slice() && key < c.range_end.as_slice()
    }
}

/// Delivers one watcher's events from `start` on until cancelled, compacted
/// past, or the client is gone.
async fn run_watcher(
    node: Node,
    tx: Out,
    id: i64,
    create: WatchCreate,
    start: i64,
    synced: Arc<AtomicI64>,
) {
    let _watcher = Held::new(&node.metrics().watchers);
    let mut behind: Option<Held> = None;
    let mut revisions = node.subscribe_feed();
    let progress_every = node.config().watch.progress_notify_interval;
    let mut next = start;
    let mut idle_since = tokio::time::Instant::now();
    loop {
        let (events, last, current) =
            match node.events(next, EVENTS_PER_RESPONSE, BYTES_PER_RESPONSE) {
                Ok(r) => r,
                Err(NodeError::Kv(KvError::Compacted)) => {
                    let compacted = node.revisions().map(|(_, c)| c).unwrap_or(0);
                    tx.compacted(id, compacted).await;
                    return;
                }
                Err(e) => {
                    tx.failed(id, e.to_string()).await;
                    return;
                }
            };
        let selected: Vec<&Event> = events
            .iter()
            .map(|e| e.as_ref())
            .filter(|e| in_range(&create, &e.kv.key))
            .filter(|e| match e.kind {
                EventKind::Put => !create.no_put,
                EventKind::Delete => !create.no_delete,
            })
            .collect();
        if !selected.is_empty() {
            if tx.tx.capacity() == 0 && behind.is_none() {
                // The client is not keeping up: this send will wait.
                behind = Some(Held::new(&node.metrics().watch_catching_up));
            }
            if !tx
                .events(id, current, &selected, create.prev_kv, create.fragment)
                .await
            {
                return;
            }
            node.metrics().watch_events.inc_by(selected.len() as u64);
            idle_since = tokio::time::Instant::now();
        }
        if last >= next {
            next = last + 1;
        }
        synced.store(next - 1, Ordering::Relaxed);
        if last < current {
            // More history to read: go on at once.
            if behind.is_none() {
                behind = Some(Held::new(&node.metrics().watch_catching_up));
            }
            continue;
        }
        if tx.tx.capacity() > 0 {
            behind = None;
        }
        // Caught up: wait for new revisions (or, now and then, check storage
        // anyway, e.g. after a snapshot was installed).
        let wait = if create.progress_notify {
            progress_every
                .saturating_sub(idle_since.elapsed())
                .min(Duration::from_secs(1))
        } else {
            Duration::from_secs(1)
        };
        if let Ok(Err(_)) = tokio::time::timeout(wait, revisions.changed()).await {
            return; // the server is stopping
        }
        if create.progress_notify && idle_since.elapsed() >= progress_every {
            if !tx.progress(id, next - 1).await {
                return;
            }
            idle_since = tokio::time::Instant::now();
        }
    }
}
