//! Messages between datacenters. Each WAN stream starts with one
//! [`WanRequest`] frame; the answer starts with one [`WanResponse`] frame.
//! An HTTP exchange then carries the request body as further frames from the
//! caller and the response body as further frames from the serving side.

use meridian_node::kv::mirror::{MirrorChange, MirrorRule};
use serde::{Deserialize, Serialize};

/// A datacenter introducing itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Its name.
    pub datacenter: String,
    /// WAN addresses of its current servers.
    pub servers: Vec<String>,
    /// The replication rules it knows (deleted ones too), so that rule
    /// changes and promotions reach every datacenter they involve.
    pub rules: Vec<MirrorRule>,
}

/// A target asking a source for a rule's change stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesRequest {
    /// The asking (target) datacenter.
    pub from: String,
    /// The rule.
    pub rule: String,
    /// The rule epoch the target follows; the source serves only its own.
    pub epoch: u64,
    /// The target's checkpoint: changes after this revision are wanted.
    pub after: i64,
    /// Whether to start with the prefix's complete content (a resync).
    pub resync: bool,
}

/// Changes of a rule's prefix in a run of source revisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeBatch {
    /// Every revision up to this one is covered.
    pub through: i64,
    /// The source's revision when it sent the batch (for lag).
    pub head: i64,
    /// The changes under the prefix, one entry per revision that has any.
    pub revisions: Vec<(i64, Vec<MirrorChange>)>,
}

/// A part of the prefix's complete content at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPart {
    /// The revision the content is read at.
    pub revision: i64,
    /// Keys and values, in key order.
    pub keys: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether more parts follow.
    pub more: bool,
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
    /// Stream a rule's changes (a replication stream).
    Changes(ChangesRequest),
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
    /// Part of a resync's content (a replication stream starts with these
    /// when asked to, or when the target's checkpoint is compacted away).
    Snapshot(SnapshotPart),
    /// Changes after the previous frame (a replication stream).
    Changes(ChangeBatch),
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
