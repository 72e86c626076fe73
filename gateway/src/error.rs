//! Errors of the transport, precise enough for a caller to decide whether to retry.

use std::net::SocketAddr;

/// What can go wrong while setting up the endpoint or exchanging a request.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A TLS file could not be read or holds no usable certificate or key.
    #[error("TLS material {path}: {reason}")]
    TlsMaterial {
        /// The file that was being read.
        path: String,
        /// Why it could not be used.
        reason: String,
    },
    /// The TLS configuration was refused by rustls or quinn.
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind QUIC endpoint on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's answer.
        source: std::io::Error,
    },
    /// No connection could be made to the peer.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The peer's address.
        addr: SocketAddr,
        /// Why the connection failed.
        reason: String,
    },
    /// The connection or stream broke while the request was in flight.
    #[error("transport to {addr} failed: {reason}")]
    Transport {
        /// The peer's address.
        addr: SocketAddr,
        /// What broke.
        reason: String,
    },
    /// The peer did not answer within the deadline.
    #[error("request to {addr} timed out after {timeout_ms} ms")]
    Timeout {
        /// The peer's address.
        addr: SocketAddr,
        /// The deadline that passed.
        timeout_ms: u64,
    },
    /// A frame was larger than [`crate::FRAME_BYTES_MAX`].
    #[error("frame of {bytes} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The announced size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A message could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// The remote handler answered with an error.
    #[error("remote error: {0}")]
    Remote(String),
}

impl GatewayError {
    /// Whether trying again (possibly after reconnecting) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            GatewayError::Connect { .. }
                | GatewayError::Transport { .. }
                | GatewayError::Timeout { .. }
        )
    }
}
