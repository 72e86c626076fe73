//! Admin endpoints: `POST /admin/snapshot` streams a backup of this
//! server's state (see [`crate::backup`] for the format).

use super::ApiError;
use crate::server::Node;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
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
