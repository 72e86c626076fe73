//! Meridian's QUIC transport: one quinn endpoint per server, mutual TLS, ALPN
//! protocols told apart per connection, and length-prefixed request/response
//! frames on bidirectional streams.
//!
//! The crate knows nothing of Raft or key-value data: callers register a
//! [`Handler`] per ALPN protocol and send requests with [`Endpoint::call`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod endpoint;
mod error;
mod frame;
mod runtime;
pub mod tls;

pub use endpoint::{
    Endpoint, EndpointOptions, FrameReader, FrameWriter, Handler, HandlerFuture, StreamHandler,
};
pub use error::GatewayError;
pub use frame::FRAME_BYTES_MAX;

/// ALPN protocol for Raft RPC and request forwarding between servers of one datacenter.
pub const ALPN_PEER: &[u8] = b"meridian-peer/1";
/// ALPN protocol for traffic between datacenters.
pub const ALPN_WAN: &[u8] = b"meridian-wan/1";
