//! One client's HTTP/1.1 keep-alive connection to one endpoint, for the
//! measured loop of `run`.
//!
//! The load generator shares the machine's cores with the servers it
//! measures, so what it spends per request is taken from them. A general
//! HTTP client parses each request's URL, checks a connection out of a pool
//! and back in, and builds its header map anew; a client here only ever
//! sends JSON to one endpoint, one request at a time, over its own
//! connection. It is the same for both systems, and it speaks the same
//! HTTP/1.1 (with `Content-Length` bodies, keep-alive and `TCP_NODELAY`).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::net::TcpStream;

/// How long one request may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to one `http://host:port` endpoint, opened on first use and
/// again after a failure.
pub struct Connection {
    /// `host:port`: where to connect, and the `Host` header.
    authority: String,
    host: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// A connection to `endpoint` (`http://host:port`, no path), not yet
    /// opened.
    pub fn new(endpoint: &str) -> Result<Connection, String> {
        let authority = endpoint
            .strip_prefix("http://")
            .map(|a| a.trim_end_matches('/'))
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .ok_or_else(|| format!("{endpoint}: expected http://host:port"))?
            .to_string();
        let host = HeaderValue::from_str(&authority).map_err(|e| format!("{endpoint}: {e}"))?;
        Ok(Connection {
            authority,
            host,
            sender: None,
        })
    }

    /// POSTs `body` (JSON) to `path` and returns the JSON answer; an answer
    /// other than 2xx is an error carrying it. After any failure the next
    /// request opens a new connection.
    pub async fn post(&mut self, path: &str, body: Vec<u8>) -> Result<serde_json::Value, String> {
        let result = match tokio::time::timeout(TIMEOUT, self.exchange(path, body)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
        };
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn exchange(&mut self, path: &str, body: Vec<u8>) -> Result<serde_json::Value, String> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("{path}: {e}"))?;
        let sender = self.open().await?;
        sender.ready().await.map_err(|e| e.to_string())?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = answer.status();
        let bytes = answer
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "HTTP {status}, not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })?;
        if !status.is_success() {
            return Err(format!("HTTP {status}: {value}"));
        }
        Ok(value)
    }

    /// The open connection, opening one if there is none or it was closed.
    async fn open(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, String> {
        if self.sender.as_ref().is_some_and(|s| s.is_closed()) {
            self.sender = None;
        }
        if self.sender.is_none() {
            let stream = TcpStream::connect(&self.authority)
                .await
                .map_err(|e| format!("{}: {e}", self.authority))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("{}: {e}", self.authority))?;
            // Drives the connection until either side closes it.
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| format!("{}: not connected", self.authority))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_plain_http_authorities() {
        assert_eq!(
            Connection::new("http://127.0.0.1:2379")
                .expect("valid")
                .authority,
            "127.0.0.1:2379"
        );
        assert_eq!(
            Connection::new("http://127.0.0.1:2379/")
                .expect("valid")
                .authority,
            "127.0.0.1:2379"
        );
        for bad in [
            "https://127.0.0.1:2379",
            "127.0.0.1:2379",
            "http://",
            "http://h:1/v3",
        ] {
            assert!(Connection::new(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn posts_json_and_reports_errors_with_their_answer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Answers two requests on one connection: 200 with JSON, then 400.
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            for answer in [
                "HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
                "HTTP/1.1 400 Bad Request\r\ncontent-length: 13\r\n\r\n{\"error\":\"x\"}",
            ] {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.ends_with(b"{}") {
                    let n = socket.read(&mut buf).await.expect("read");
                    assert!(n > 0, "client closed early");
                    request.extend_from_slice(&buf[..n]);
                }
                seen.push(String::from_utf8(request).expect("utf-8"));
                socket.write_all(answer.as_bytes()).await.expect("write");
            }
            seen
        });
        let mut conn = Connection::new(&format!("http://{addr}")).expect("endpoint");
        let first = conn.post("/v3/kv/put", b"{}".to_vec()).await;
        assert_eq!(first, Ok(serde_json::json!({"ok": true})));
        let second = conn.post("/v3/kv/range", b"{}".to_vec()).await;
        let error = second.expect_err("400 is an error");
        assert!(error.contains("400") && error.contains("\"x\""), "{error}");
        let seen = server.await.expect("server");
        assert!(
            seen[0].starts_with("POST /v3/kv/put HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        assert!(
            seen[1].starts_with("POST /v3/kv/range HTTP/1.1\r\n"),
            "{}",
            seen[1]
        );
        assert!(seen[0]
            .to_ascii_lowercase()
            .contains(&format!("host: {addr}")));
        assert!(seen[0]
            .to_ascii_lowercase()
            .contains("content-length: 2\r\n"));
    }
}
