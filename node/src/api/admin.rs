//! Admin endpoints:
//! - `POST /admin/snapshot` streams a backup of this server's state (see
//!   [`crate::backup`] for the format);
//! - `POST /admin/drain` drains the server before it is stopped, a leader
//!   handing over to `{"to": NAME}` or the most caught-up voter (see
//!   [`crate::drain`]); `DELETE /admin/drain` ends a drain;
//! - `POST /admin/compact` with `{"revision": N}` or `{"keep": N}` removes
//!   history below a revision, or all but the latest N revisions.

use super::ApiError;
use crate::server::Node;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::json;
use tokio::io::AsyncReadExt;

/// A backup, taken without pausing writes, streamed as it is on disk. The
/// manifest's revision is also in the `Meridian-Backup-Revision` header.
pub(super) async fn snapshot(State(node): State<Node>) -> Response {
    let (path, manifest) = match node.backup().await {
        Ok(taken) => taken,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let opened = tokio::fs::File::open(&path).await;
    // Unlinked at once: the open handle still reads it, and nothing is
    // left behind whatever happens to the download.
    let _ = tokio::fs::remove_file(&path).await;
    let file = match opened {
        Ok(f) => f,
        Err(e) => {
            return ApiError::new(13, format!("backup file: {e}")).into_response();
        }
    };
    let len = file.metadata().await.map(|m| m.len()).ok();
    let chunks = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = len {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    headers.insert(
        "meridian-backup-revision",
        HeaderValue::from(manifest.revision),
    );
    response
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Compact {
    revision: Option<i64>,
    keep: Option<i64>,
}

/// Compacts at a revision, or keeping the latest `keep` revisions. With
/// `keep`, nothing to remove is not an error (`"compacted": false`).
pub(super) async fn compact(State(node): State<Node>, body: Bytes) -> Response {
    let request: Compact = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return ApiError::invalid(format!("bad JSON body: {e}")).into_response(),
    };
    let (current, compacted) = match node.revisions() {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let target = match (request.revision, request.keep) {
        (Some(r), None) => r,
        (None, Some(k)) if k >= 0 => {
            let target = current - k;
            if target <= compacted {
                return Json(json!({
                    "compacted": false,
                    "compacted_revision": compacted,
                    "revision": current,
                }))
                .into_response();
            }
            target
        }
        (None, Some(k)) => {
            return ApiError::invalid(format!("keep: {k} is negative")).into_response()
        }
        _ => return ApiError::invalid("give exactly one of revision or keep").into_response(),
    };
    let started = std::time::Instant::now();
    match node.compact_at(target, "admin").await {
        Ok(h) => Json(json!({
            "compacted": true,
            "compacted_revision": target,
            "revision": h.revision,
            "took_ms": started.elapsed().as_millis() as u64,
        }))
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Drain {
    /// The voter a draining leader hands over to.
    to: Option<String>,
}

/// Drains the server; answers once another server leads. A leader hands
/// over to the voter named by `{"to": NAME}`, or to the most caught-up one.
pub(super) async fn drain(State(node): State<Node>, body: Bytes) -> Response {
    let request: Drain = if body.iter().all(u8::is_ascii_whitespace) {
        Drain::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return ApiError::invalid(format!("bad JSON body: {e}")).into_response(),
        }
    };
    match node.drain(request.to.as_deref()).await {
        Ok(d) => Json(json!({
            "draining": true,
            "was_leader": d.was_leader,
            "leader": d.leader.map(|l| l.to_string()),
            "leader_name": d.leader_name,
            "handover": d.handover.as_str(),
            "took_ms": d.took.as_millis() as u64,
            "leaderless_ms": d.leaderless.as_millis() as u64,
        }))
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Ends a drain.
pub(super) async fn undrain(State(node): State<Node>) -> Response {
    node.undrain();
    Json(json!({ "draining": false })).into_response()
}
