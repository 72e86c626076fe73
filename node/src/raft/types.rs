//! openraft's type configuration for Meridian.

use crate::kv::{Applied, Command};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// A server as Raft membership records it.
///
/// Cheap to clone (shared strings, encoded as plain strings): openraft copies
/// members into its metrics and errors many times per entry, and a write
/// forwarded to the leader takes a copy of the leader's.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Member {
    /// The server's name (also the name in its certificate).
    pub name: Arc<str>,
    /// Its QUIC address for peer traffic.
    pub peer_addr: Arc<str>,
    /// Its client URL as advertised.
    pub client_url: Arc<str>,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_addr)
    }
}

/// One Raft entry's writes: the commands that arrived together, applied in
/// order, each at its own revision as if proposed alone. Grouping them lets
/// one log append and one fsync carry many client writes.
///
/// The commands are shared: the log's in-memory tail hands out a copy of an
/// entry for each follower it is sent to and for applying, and those copies
/// share one set of commands (the encoding is that of a plain list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The writes, in arrival order.
    pub commands: Arc<Vec<Command>>,
}

impl Proposal {
    /// Roughly how many bytes the proposal takes in a log entry.
    pub fn payload_bytes(&self) -> usize {
        self.commands.iter().map(Command::payload_bytes).sum()
    }
}

openraft::declare_raft_types!(
    /// Meridian's Raft types.
    pub TypeConfig:
        D = Proposal,
        R = Vec<Applied>,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<u64>;
/// Stored membership.
pub type StoredMembership = openraft::StoredMembership<u64, Member>;
/// Storage error.
pub type StorageError = openraft::StorageError<u64>;

/// A server's id: a stable hash of its name, so every server derives the same ids from config.
pub fn member_id(name: &str) -> u64 {
    fnv64(name.as_bytes())
}

/// A datacenter's cluster id: a hash of its name and its initial members' names.
pub fn cluster_id(datacenter: &str, member_names: &[String]) -> u64 {
    let mut names = member_names.to_vec();
    names.sort();
    let mut bytes = datacenter.as_bytes().to_vec();
    for n in names {
        bytes.push(0);
        bytes.extend_from_slice(n.as_bytes());
    }
    fnv64(&bytes)
}

/// The cluster id of a datacenter seeded from a backup: its own id mixed
/// with the source's cluster id and revision, so it differs from the source
/// while every member restored from the same backup agrees.
pub fn restored_cluster_id(
    datacenter: &str,
    member_names: &[String],
    source_cluster_id: &str,
    revision: i64,
) -> u64 {
    let mut bytes = cluster_id(datacenter, member_names).to_be_bytes().to_vec();
    bytes.extend_from_slice(source_cluster_id.as_bytes());
    bytes.extend_from_slice(&revision.to_be_bytes());
    fnv64(&bytes)
}

fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    // etcd ids are non-zero and fit JSON clients that read them as uint64.
    h.max(1)
}

pub(crate) fn storage_io(
    subject: openraft::ErrorSubject<u64>,
    verb: openraft::ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members and proposals are stored in the log and in snapshots, and
    /// sent to servers of other versions: their shared parts must encode as
    /// the plain strings and lists they were before.
    #[test]
    fn shared_parts_encode_as_plain_ones() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct PlainMember {
            name: String,
            peer_addr: String,
            client_url: String,
        }
        let plain = PlainMember {
            name: "n1".into(),
            peer_addr: "127.0.0.1:2380".into(),
            client_url: "http://127.0.0.1:2379".into(),
        };
        let member = Member {
            name: "n1".into(),
            peer_addr: "127.0.0.1:2380".into(),
            client_url: "http://127.0.0.1:2379".into(),
        };
        let bytes = postcard::to_allocvec(&plain).unwrap();
        assert_eq!(postcard::to_allocvec(&member).unwrap(), bytes);
        assert_eq!(postcard::from_bytes::<Member>(&bytes).unwrap(), member);

        let commands = vec![Command::Put(crate::kv::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })];
        #[derive(Serialize)]
        struct PlainProposal<'a> {
            commands: &'a Vec<Command>,
        }
        let bytes = postcard::to_allocvec(&PlainProposal {
            commands: &commands,
        })
        .unwrap();
        let proposal = Proposal {
            commands: Arc::new(commands),
        };
        assert_eq!(postcard::to_allocvec(&proposal).unwrap(), bytes);
        assert_eq!(postcard::from_bytes::<Proposal>(&bytes).unwrap(), proposal);
    }
}
