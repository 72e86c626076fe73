//! Messages between datacenters. Each WAN stream starts with one
//! [`WanRequest`] frame; the answer starts with one [`WanResponse`] frame.
//! An HTTP exchange then carries the request body as further frames from the
//! caller and the response body as further frames from the serving side.

use serde::{Deserialize, Serialize};

/// A datacenter introducing itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Its name.
    pub datacenter: String,
    /// WAN addresses of its current servers.
    pub servers: Vec<String>,
}

/// The head of a forwarded HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpHead {
    /// The calling datacenter.
    pub from: String,
    /// HTTP method.
    pub method: String,
    /// Path and query (the datacenter selector removed).
    pub uri: String,
    /// Headers worth carrying (content type, Last-Event-ID, ...).
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The head of the answer to a forwarded HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHead {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// First frame of a WAN stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WanRequest {
    /// Link probe: who are you, which servers do you have.
    Hello(Hello),
    /// Run an HTTP request of the client API here.
    Http(HttpHead),
}

/// Frames the serving side sends before any body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WanResponse {
    /// Answer to a hello.
    Hello(Hello),
    /// The request arrived and runs now (its answer may take long: a lock wait).
    Accepted,
    /// The response head; body frames follow.
    Http(ResponseHead),
    /// The request is refused (e.g. from a datacenter not in the configuration).
    Refused(String),
}

/// Encodes a message (infallible for these types; an error becomes a refusal text).
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    postcard::to_allocvec(message).unwrap_or_default()
}

/// Decodes a message.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("undecodable WAN message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let m = WanRequest::Http(HttpHead {
            from: "dc1".into(),
            method: "POST".into(),
            uri: "/v3/kv/range".into(),
            headers: vec![("content-type".into(), b"application/json".to_vec())],
        });
        assert_eq!(decode::<WanRequest>(&encode(&m)).unwrap(), m);
        assert!(decode::<WanRequest>(&[0xff, 0xff, 0xff]).is_err());
    }
}
