//! The QUIC endpoint: accepts connections and dispatches them by ALPN to
//! registered handlers; sends requests over cached connections, reconnecting
//! after a failure.

use crate::frame::{read_frame, read_frame_or_end, write_frame};
use crate::tls::TlsMaterial;
use crate::GatewayError;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The future a handler returns: the response bytes, or an error text sent back to the caller.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;
/// Serves one request (the bytes of one frame) of one ALPN protocol.
pub type Handler = Arc<dyn Fn(Vec<u8>) -> HandlerFuture + Send + Sync>;
/// Serves one bidirectional stream of frames of one ALPN protocol, for
/// exchanges longer than one request and one response.
pub type StreamHandler =
    Arc<dyn Fn(FrameReader, FrameWriter) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

const STATUS_OK: u8 = 0;
const STATUS_ERR: u8 = 1;

/// Limits and timeouts of the endpoint.
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// How long establishing a connection may take.
    pub connect_timeout: Duration,
    /// A connection with no traffic for this long is closed (keep-alives are sent at a third of it).
    pub idle_timeout: Duration,
    /// Concurrent requests per connection.
    pub streams_per_connection_max: u32,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            connect_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(10),
            streams_per_connection_max: 1024,
        }
    }
}

type ConnKey = (SocketAddr, Vec<u8>);

/// One server's QUIC endpoint, both listening and dialling.
#[derive(Clone)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    shared: Arc<Shared>,
}

struct Shared {
    client_configs: HashMap<Vec<u8>, quinn::ClientConfig>,
    /// Live connections, with the server name each was verified for.
    conns: Mutex<HashMap<ConnKey, (quinn::Connection, String)>>,
    handlers: RwLock<HashMap<Vec<u8>, Handler>>,
    stream_handlers: RwLock<HashMap<Vec<u8>, StreamHandler>>,
    /// Per ALPN, the DNS names one of which a connecting peer's certificate must carry.
    admitted: RwLock<HashMap<Vec<u8>, Vec<String>>>,
    options: EndpointOptions,
}

impl Endpoint {
    /// Binds the UDP socket and starts accepting connections for the given ALPN protocols.
    pub fn bind(
        addr: SocketAddr,
        material: &TlsMaterial,
        alpns: &[&[u8]],
        options: EndpointOptions,
    ) -> Result<Endpoint, GatewayError> {
        let transport = Arc::new(transport_config(&options)?);
        let server_tls = material.server_config(alpns)?;
        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
            .map_err(|e| GatewayError::TlsConfig(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport.clone());

        let mut client_configs = HashMap::new();
        for alpn in alpns {
            let client_tls = material.client_config(alpn)?;
            let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
                .map_err(|e| GatewayError::TlsConfig(e.to_string()))?;
            let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
            client_config.transport_config(transport.clone());
            client_configs.insert(alpn.to_vec(), client_config);
        }

        // quinn::Endpoint::server, with the runtime that lets its drivers
        // pack what ready tasks wrote into fewer datagrams (runtime.rs).
        let bind_error = |source| GatewayError::Bind { addr, source };
        let socket = std::net::UdpSocket::bind(addr).map_err(bind_error)?;
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(crate::runtime::CoalescingRuntime::new());
        let inner = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            runtime,
        )
        .map_err(bind_error)?;
        let shared = Arc::new(Shared {
            client_configs,
            conns: Mutex::new(HashMap::new()),
            handlers: RwLock::new(HashMap::new()),
            stream_handlers: RwLock::new(HashMap::new()),
            admitted: RwLock::new(HashMap::new()),
            options,
        });
        tokio::spawn(accept_loop(inner.clone(), shared.clone()));
        Ok(Endpoint { inner, shared })
    }

    /// The bound address (useful when binding port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, GatewayError> {
        self.inner
            .local_addr()
            .map_err(|e| GatewayError::Transport {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                reason: e.to_string(),
            })
    }

    /// Installs the handler for an ALPN protocol; requests that arrive before
    /// it is installed are answered with an error the caller may retry.
    pub fn register(&self, alpn: &[u8], handler: Handler) {
        if let Ok(mut handlers) = self.shared.handlers.write() {
            handlers.insert(alpn.to_vec(), handler);
        }
    }

    /// Installs the handler for streams of an ALPN protocol; connections of
    /// that protocol are then served stream by stream instead of by request.
    pub fn register_streams(&self, alpn: &[u8], handler: StreamHandler) {
        if let Ok(mut handlers) = self.shared.stream_handlers.write() {
            handlers.insert(alpn.to_vec(), handler);
        }
    }

    /// Accepts connections of `alpn` only from peers whose certificate (signed
    /// by the CA, as always) carries one of `names`; others are closed at once.
    /// Without a call, any certificate signed by the CA is accepted.
    pub fn admit(&self, alpn: &[u8], names: Vec<String>) {
        if let Ok(mut admitted) = self.shared.admitted.write() {
            admitted.insert(alpn.to_vec(), names);
        }
    }

    /// Opens a stream of frames to `addr`, connecting first if needed
    /// (within `timeout`).
    pub async fn open_stream(
        &self,
        addr: SocketAddr,
        server_name: &str,
        alpn: &[u8],
        timeout: Duration,
    ) -> Result<(FrameWriter, FrameReader), GatewayError> {
        let open = async {
            let mut retried = false;
            loop {
                let conn = self.connection(addr, server_name, alpn).await?;
                match conn.open_bi().await {
                    Ok((send, recv)) => {
                        return Ok((FrameWriter { send, addr }, FrameReader { recv, addr }))
                    }
                    Err(e) if !retried => {
                        tracing::debug!(error = %e, %addr, "stale connection; reconnecting");
                        self.forget(addr, alpn);
                        retried = true;
                    }
                    Err(e) => {
                        return Err(GatewayError::Transport {
                            addr,
                            reason: e.to_string(),
                        })
                    }
                }
            }
        };
        self.within(addr, alpn, timeout, open).await
    }

    /// Sends one request and waits for its response, within `timeout`.
    /// A broken cached connection is replaced and the request sent once more.
    pub async fn call(
        &self,
        addr: SocketAddr,
        server_name: &str,
        alpn: &[u8],
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, GatewayError> {
        let attempt = async {
            match self.call_once(addr, server_name, alpn, request).await {
                Err(e) if e.is_retryable() => {
                    self.forget(addr, alpn);
                    self.call_once(addr, server_name, alpn, request).await
                }
                other => other,
            }
        };
        self.within(addr, alpn, timeout, attempt).await
    }

    /// Runs `work` against `addr` within `timeout`; on timeout the cached
    /// connection is dropped, as it may be the reason.
    async fn within<T>(
        &self,
        addr: SocketAddr,
        alpn: &[u8],
        timeout: Duration,
        work: impl Future<Output = Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => {
                self.forget(addr, alpn);
                Err(GatewayError::Timeout {
                    addr,
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    /// The smoothed round-trip time of the live connection to `addr`, if any.
    pub fn rtt(&self, addr: SocketAddr, alpn: &[u8]) -> Option<Duration> {
        let conns = self.shared.conns.lock().ok()?;
        let (conn, _) = conns.get(&(addr, alpn.to_vec()))?;
        conn.close_reason().is_none().then(|| conn.rtt())
    }

    /// Closes every connection, stops accepting new ones and waits until the
    /// peers have been told, so the UDP port can be bound again.
    pub async fn shutdown(&self) {
        self.inner.close(0u32.into(), b"shutdown");
        self.inner.wait_idle().await;
    }

    async fn call_once(
        &self,
        addr: SocketAddr,
        server_name: &str,
        alpn: &[u8],
        request: &[u8],
    ) -> Result<Vec<u8>, GatewayError> {
        let conn = self.connection(addr, server_name, alpn).await?;
        let transport = |e: &dyn std::fmt::Display| GatewayError::Transport {
            addr,
            reason: e.to_string(),
        };
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| transport(&e))?;
        write_frame(&mut send, request)
            .await
            .map_err(|e| transport(&e))?;
        send.finish().map_err(|e| transport(&e))?;
        let response = read_frame(&mut recv)
            .await
            .map_err(|e| e.into_gateway(addr))?;
        take_end_if_arrived(&mut recv).await;
        match response.split_first() {
            Some((&STATUS_OK, body)) => Ok(body.to_vec()),
            Some((&STATUS_ERR, body)) => Err(GatewayError::Remote(
                String::from_utf8_lossy(body).into_owned(),
            )),
            _ => Err(GatewayError::Codec(
                "response without status byte".to_string(),
            )),
        }
    }

    async fn connection(
        &self,
        addr: SocketAddr,
        server_name: &str,
        alpn: &[u8],
    ) -> Result<quinn::Connection, GatewayError> {
        let key = (addr, alpn.to_vec());
        if let Ok(conns) = self.shared.conns.lock() {
            if let Some((conn, name)) = conns.get(&key) {
                // A connection verified for another name does not vouch for this one.
                if conn.close_reason().is_none() && name == server_name {
                    return Ok(conn.clone());
                }
            }
        }
        let config = self
            .shared
            .client_configs
            .get(alpn)
            .cloned()
            .ok_or_else(|| {
                GatewayError::TlsConfig(format!(
                    "ALPN {} not configured",
                    String::from_utf8_lossy(alpn)
                ))
            })?;
        let connect_error = |reason: String| GatewayError::Connect { addr, reason };
        let connecting = self
            .inner
            .connect_with(config, addr, server_name)
            .map_err(|e| connect_error(e.to_string()))?;
        let conn = tokio::time::timeout(self.shared.options.connect_timeout, connecting)
            .await
            .map_err(|_| connect_error("connect timed out".to_string()))?
            .map_err(|e| connect_error(e.to_string()))?;
        if let Ok(mut conns) = self.shared.conns.lock() {
            conns.insert(key, (conn.clone(), server_name.to_string()));
        }
        Ok(conn)
    }

    fn forget(&self, addr: SocketAddr, alpn: &[u8]) {
        if let Ok(mut conns) = self.shared.conns.lock() {
            conns.remove(&(addr, alpn.to_vec()));
        }
    }
}

/// The sending half of a stream of frames.
pub struct FrameWriter {
    send: quinn::SendStream,
    addr: SocketAddr,
}

impl FrameWriter {
    /// Sends one frame; waits while the peer's flow control window is full,
    /// so a slow reader slows the writer instead of growing a buffer.
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), GatewayError> {
        write_frame(&mut self.send, payload)
            .await
            .map_err(|e| GatewayError::Transport {
                addr: self.addr,
                reason: e.to_string(),
            })
    }

    /// Ends the stream cleanly: the reader's next `next()` is `Ok(None)`.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// Waits until the peer stops reading, has read everything after
    /// [`FrameWriter::finish`], or the connection ends.
    pub async fn stopped(&mut self) {
        let _ = self.send.stopped().await;
    }
}

/// The receiving half of a stream of frames.
pub struct FrameReader {
    recv: quinn::RecvStream,
    addr: SocketAddr,
}

impl FrameReader {
    /// The next frame, `Ok(None)` once the peer finished the stream.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, GatewayError> {
        read_frame_or_end(&mut self.recv)
            .await
            .map_err(|e| e.into_gateway(self.addr))
    }

    /// Tells the peer to stop sending (the stream is no longer wanted).
    pub fn stop(mut self) {
        let _ = self.recv.stop(0u32.into());
    }
}

fn transport_config(options: &EndpointOptions) -> Result<quinn::TransportConfig, GatewayError> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(options.idle_timeout)
        .map_err(|e| GatewayError::TlsConfig(format!("idle timeout: {e}")))?;
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(Some(options.idle_timeout / 3));
    transport.max_concurrent_bidi_streams(options.streams_per_connection_max.into());
    transport.max_concurrent_uni_streams(0u32.into());
    Ok(transport)
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!(error = %e, "incoming QUIC connection failed");
                    return;
                }
            };
            let alpn = conn
                .handshake_data()
                .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|d| d.protocol)
                .unwrap_or_default();
            if !admitted(&conn, &alpn, &shared) {
                tracing::warn!(
                    remote = %conn.remote_address(),
                    alpn = %String::from_utf8_lossy(&alpn),
                    "refused a connection: its certificate is not issued for a datacenter this server accepts on that protocol"
                );
                conn.close(1u32.into(), b"certificate not accepted");
                return;
            }
            serve_connection(conn, alpn, shared).await;
        });
    }
}

/// Whether the peer's certificate carries a name admitted for `alpn`.
fn admitted(conn: &quinn::Connection, alpn: &[u8], shared: &Shared) -> bool {
    let names = match shared.admitted.read() {
        Ok(admitted) => match admitted.get(alpn) {
            Some(names) => names.clone(),
            None => return true,
        },
        Err(_) => return false,
    };
    let chain = conn.peer_identity().and_then(|id| {
        id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()
    });
    match chain {
        Some(chain) => names
            .iter()
            .any(|name| crate::tls::certificate_names(&chain, name)),
        None => false,
    }
}

async fn serve_connection(conn: quinn::Connection, alpn: Vec<u8>, shared: Arc<Shared>) {
    let streams = shared
        .stream_handlers
        .read()
        .ok()
        .and_then(|h| h.get(&alpn).cloned());
    if let Some(handler) = streams {
        let addr = conn.remote_address();
        while let Ok((send, recv)) = conn.accept_bi().await {
            tokio::spawn(handler(
                FrameReader { recv, addr },
                FrameWriter { send, addr },
            ));
        }
        return;
    }
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(streams) => streams,
            Err(_) => return,
        };
        let shared = shared.clone();
        let alpn = alpn.clone();
        tokio::spawn(async move {
            let request = match read_frame(&mut recv).await {
                Ok(request) => request,
                Err(_) => return,
            };
            let handler = shared
                .handlers
                .read()
                .ok()
                .and_then(|h| h.get(&alpn).cloned());
            let result = match handler {
                Some(handler) => handler(request).await,
                None => Err("server not ready for this protocol".to_string()),
            };
            let mut response = Vec::new();
            match result {
                Ok(body) => {
                    response.push(STATUS_OK);
                    response.extend_from_slice(&body);
                }
                Err(text) => {
                    response.push(STATUS_ERR);
                    response.extend_from_slice(text.as_bytes());
                }
            }
            // A finished stream's data is still delivered after the handle
            // is dropped, so nothing waits for the peer's acknowledgement.
            if write_frame(&mut send, &response).await.is_ok() {
                let _ = send.finish();
            }
            take_end_if_arrived(&mut recv).await;
        });
    }
}

/// Reads the end of a stream whose one frame has been read, if the end has
/// already arrived (the peer finishes right after its frame, so it usually
/// comes in the same packet). A stream dropped before its end is seen is
/// stopped, which costs the peer a STOP_SENDING frame and both sides the
/// packets that carry and acknowledge it. Never waits: an end still on its
/// way leaves the stream to be stopped as before.
async fn take_end_if_arrived(recv: &mut quinn::RecvStream) {
    let mut probe = [0u8; 1];
    let mut read = std::pin::pin!(recv.read(&mut probe));
    let _ = std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{generate, TlsPaths};

    fn endpoint(dir: &std::path::Path, name: &str) -> Endpoint {
        let material = TlsMaterial::load(&TlsPaths::in_dir(dir, name)).unwrap();
        Endpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            &material,
            &[crate::ALPN_PEER],
            EndpointOptions::default(),
        )
        .unwrap()
    }

    /// Endpoints "a" and "b" of one datacenter, with the directory of their TLS material.
    fn two_endpoints() -> (tempfile::TempDir, Endpoint, Endpoint) {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), "dc1", &["a".into(), "b".into()]).unwrap();
        let a = endpoint(dir.path(), "a");
        let b = endpoint(dir.path(), "b");
        (dir, a, b)
    }

    #[tokio::test]
    async fn request_response_over_mutual_tls_and_reconnect_after_restart() {
        let (dir, a, b) = two_endpoints();
        b.register(
            crate::ALPN_PEER,
            Arc::new(|req: Vec<u8>| {
                Box::pin(async move {
                    if req == b"fail" {
                        Err("refused".to_string())
                    } else {
                        Ok([b"echo:".as_slice(), &req].concat())
                    }
                })
            }),
        );
        let addr = b.local_addr().unwrap();
        let t = Duration::from_secs(5);
        assert_eq!(
            a.call(addr, "b", crate::ALPN_PEER, b"hi", t).await.unwrap(),
            b"echo:hi"
        );
        assert!(a.rtt(addr, crate::ALPN_PEER).is_some());
        match a.call(addr, "b", crate::ALPN_PEER, b"fail", t).await {
            Err(GatewayError::Remote(text)) => assert_eq!(text, "refused"),
            other => panic!("unexpected {other:?}"),
        }
        // A server on the same port after a restart is reached through a fresh connection.
        b.shutdown().await;
        drop(b);
        let material = TlsMaterial::load(&TlsPaths::in_dir(dir.path(), "b")).unwrap();
        let mut b2 = None;
        for _ in 0..100 {
            match Endpoint::bind(
                addr,
                &material,
                &[crate::ALPN_PEER],
                EndpointOptions::default(),
            ) {
                Ok(e) => {
                    b2 = Some(e);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let b2 = b2.expect("port released after shutdown");
        b2.register(
            crate::ALPN_PEER,
            Arc::new(|req: Vec<u8>| Box::pin(async move { Ok(req) })),
        );
        assert_eq!(
            a.call(addr, "b", crate::ALPN_PEER, b"again", t)
                .await
                .unwrap(),
            b"again"
        );
    }

    #[tokio::test]
    async fn requests_and_responses_end_their_streams_without_stopping_them() {
        let (_dir, a, b) = two_endpoints();
        b.register(
            crate::ALPN_PEER,
            Arc::new(|req: Vec<u8>| Box::pin(async move { Ok(req) })),
        );
        let addr = b.local_addr().unwrap();
        for i in 0..20u8 {
            let reply = a
                .call(addr, "b", crate::ALPN_PEER, &[i], Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(reply, [i]);
        }
        // Both sides read each stream to its end, so neither tells the other
        // to stop sending on it.
        let conn = a.shared.conns.lock().unwrap()[&(addr, crate::ALPN_PEER.to_vec())]
            .0
            .clone();
        // Time for the server's side of the last streams to be dropped.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stats = conn.stats();
        assert_eq!(stats.frame_tx.stop_sending, 0, "{stats:?}");
        assert_eq!(stats.frame_rx.stop_sending, 0, "{stats:?}");
        assert_eq!(stats.frame_rx.stream, 20);
    }

    #[tokio::test]
    async fn a_peer_with_a_foreign_ca_is_refused() {
        let ours = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        generate(ours.path(), "dc1", &["a".into()]).unwrap();
        generate(theirs.path(), "dc1", &["x".into()]).unwrap();
        let a = endpoint(ours.path(), "a");
        a.register(
            crate::ALPN_PEER,
            Arc::new(|req: Vec<u8>| Box::pin(async move { Ok(req) })),
        );
        let x = endpoint(theirs.path(), "x");
        let result = x
            .call(
                a.local_addr().unwrap(),
                "a",
                crate::ALPN_PEER,
                b"hi",
                Duration::from_secs(2),
            )
            .await;
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn streams_carry_many_frames_each_way_and_a_slow_reader_holds_back_the_writer() {
        let (_dir, a, b) = two_endpoints();
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = sent.clone();
        b.register_streams(
            crate::ALPN_PEER,
            Arc::new(move |mut reader: FrameReader, mut writer: FrameWriter| {
                let counter = counter.clone();
                Box::pin(async move {
                    // Echo each request frame, then send 1 MiB frames until stopped.
                    while let Ok(Some(frame)) = reader.next().await {
                        if frame == b"flood" {
                            break;
                        }
                        if writer.send(&frame).await.is_err() {
                            return;
                        }
                    }
                    let big = vec![7u8; 1 << 20];
                    while writer.send(&big).await.is_ok() {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            }),
        );
        let addr = b.local_addr().unwrap();
        let (mut w, mut r) = a
            .open_stream(addr, "b", crate::ALPN_PEER, Duration::from_secs(5))
            .await
            .unwrap();
        for i in 0..100u32 {
            w.send(&i.to_be_bytes()).await.unwrap();
            assert_eq!(r.next().await.unwrap().unwrap(), i.to_be_bytes());
        }
        w.send(b"flood").await.unwrap();
        assert_eq!(r.next().await.unwrap().unwrap().len(), 1 << 20);
        // Not reading: the writer stops after the flow control window, far
        // short of 1,000 frames.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let written = sent.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            written < 100,
            "{written} MiB written to a reader that reads nothing"
        );
        r.stop();
        w.finish();
    }

    #[tokio::test]
    async fn admission_refuses_certificates_of_other_datacenters() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), "dc1", &["a".into()]).unwrap();
        generate(dir.path(), "dc2", &["b".into()]).unwrap();
        generate(dir.path(), "dc3", &["c".into()]).unwrap();
        let a = endpoint(dir.path(), "a");
        a.register(
            crate::ALPN_PEER,
            Arc::new(|req: Vec<u8>| Box::pin(async move { Ok(req) })),
        );
        a.admit(crate::ALPN_PEER, vec![crate::tls::datacenter_name("dc2")]);
        let addr = a.local_addr().unwrap();
        let t = Duration::from_secs(2);
        // The client checks the server's datacenter name too.
        let b = endpoint(dir.path(), "b");
        let dc1 = crate::tls::datacenter_name("dc1");
        assert_eq!(
            b.call(addr, &dc1, crate::ALPN_PEER, b"hi", t)
                .await
                .unwrap(),
            b"hi"
        );
        assert!(b
            .call(
                addr,
                &crate::tls::datacenter_name("dc3"),
                crate::ALPN_PEER,
                b"hi",
                t
            )
            .await
            .is_err());
        let c = endpoint(dir.path(), "c");
        assert!(c
            .call(addr, &dc1, crate::ALPN_PEER, b"hi", t)
            .await
            .is_err());
    }
}
