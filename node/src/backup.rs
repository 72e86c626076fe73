//! Backups: a consistent snapshot of one server's state with a manifest, and
//! the restore that seeds a new datacenter from it.
//!
//! A backup file is:
//! `MRDNBAK1` | manifest length (u32, big-endian) | manifest (JSON) |
//! snapshot (the Raft snapshot format, `raft::snapshot`) | SHA-256 of
//! everything before it (32 bytes).
//!
//! The manifest carries the SHA-256 and length of the snapshot part too, so
//! a file is checked three ways before anything is written: the trailing
//! digest over the whole file, the snapshot's digest and length, and the
//! snapshot's own structure (row count and checksum).
//!
//! The snapshot is read in one LMDB read transaction: writers keep going
//! while a backup is taken, and the rows, revision and applied index agree.

use crate::kv::KvStore;
use crate::raft::snapshot::{self, SnapshotError};
use crate::raft::{LogId, StoredMembership};
use crate::store::{open_env, EnvKind};
use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"MRDNBAK1";
/// The backup format this version writes and reads.
pub const FORMAT: u32 = 1;
/// Largest manifest accepted.
const MANIFEST_MAX: usize = 1 << 20;
/// Meta key of a restored store: where it came from and for whom.
pub(crate) const META_RESTORED: &str = "restored";

/// Why a backup could not be taken, checked or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file is not an intact backup; nothing was written.
    #[error("backup is corrupt: {0}")]
    Corrupt(String),
    /// The storage engine failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The restore was refused before anything was written.
    #[error("{0}")]
    Refused(String),
}

impl From<SnapshotError> for BackupError {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Io(e) => BackupError::Io(e),
            SnapshotError::Storage(e) => BackupError::Storage(e),
            SnapshotError::Corrupt(e) => BackupError::Corrupt(e),
        }
    }
}

/// A member as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestMember {
    /// Its name.
    pub name: String,
    /// Its peer address.
    pub peer_addr: String,
    /// Its client URL.
    pub client_url: String,
    /// Whether it is a learner.
    pub learner: bool,
}

/// What a backup says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The backup format ([`FORMAT`]).
    pub format: u32,
    /// The Meridian version that took it.
    pub meridian_version: String,
    /// The datacenter it was taken in.
    pub datacenter: String,
    /// That datacenter's cluster id (decimal).
    pub cluster_id: String,
    /// The server that took it.
    pub server: String,
    /// The store's revision in the backup.
    pub revision: i64,
    /// The compacted revision in the backup.
    pub compacted_revision: i64,
    /// The Raft log index applied in the backup.
    pub applied_index: u64,
    /// The datacenter's members when it was taken.
    pub members: Vec<ManifestMember>,
    /// When it was taken (ms since the Unix epoch).
    pub taken_at_ms: u64,
    /// Length of the snapshot part in bytes.
    pub snapshot_bytes: u64,
    /// SHA-256 of the snapshot part (hex).
    pub snapshot_sha256: String,
}

/// Where a restored store came from, and the members it was restored for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// The source datacenter's cluster id.
    pub source_cluster_id: String,
    /// The revision restored.
    pub revision: i64,
    /// The server it was restored for.
    pub name: String,
    /// The new datacenter's initial members (sorted).
    pub members: Vec<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's first `len` bytes from `offset`.
fn sha256_of(file: &mut std::fs::File, offset: u64, len: u64) -> Result<Vec<u8>, BackupError> {
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::with_capacity(1 << 20, file.take(len));
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 16];
    let mut seen = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        seen += n as u64;
    }
    if seen != len {
        return Err(BackupError::Corrupt("truncated".into()));
    }
    Ok(ctx.finish().as_ref().to_vec())
}

/// Writes a backup of `store` to `path` (through a temporary file beside it).
/// `describe` fills in the manifest's datacenter fields.
pub fn write(
    store: &KvStore,
    path: &Path,
    describe: impl FnOnce(&mut Manifest),
) -> Result<Manifest, BackupError> {
    let part = path.with_extension("snapshot-part");
    let written =
        snapshot::write_snapshot(store, &part, |applied, membership| openraft::SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: "backup".into(),
        });
    let result = (|| {
        let written = written?;
        let mut payload = std::fs::File::open(&part)?;
        let snapshot_bytes = payload.metadata()?.len();
        let digest = sha256_of(&mut payload, 0, snapshot_bytes)?;
        let mut manifest = Manifest {
            format: FORMAT,
            meridian_version: env!("CARGO_PKG_VERSION").to_string(),
            datacenter: String::new(),
            cluster_id: String::new(),
            server: String::new(),
            revision: written.revision,
            compacted_revision: written.compacted_revision,
            applied_index: written.meta.last_log_id.map_or(0, |l: LogId| l.index),
            members: Vec::new(),
            taken_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            snapshot_bytes,
            snapshot_sha256: hex(&digest),
        };
        describe(&mut manifest);
        let json = serde_json::to_vec(&manifest)
            .map_err(|e| BackupError::Storage(format!("manifest: {e}")))?;
        let tmp = path.with_extension("part");
        let file = std::fs::File::create(&tmp)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut ctx = Context::new(&SHA256);
        let mut put = |out: &mut std::io::BufWriter<std::fs::File>, b: &[u8]| {
            ctx.update(b);
            out.write_all(b)
        };
        put(&mut out, MAGIC)?;
        put(&mut out, &(json.len() as u32).to_be_bytes())?;
        put(&mut out, &json)?;
        payload.seek(SeekFrom::Start(0))?;
        let mut reader = BufReader::with_capacity(1 << 20, payload);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            put(&mut out, &buf[..n])?;
        }
        let total = ctx.finish();
        out.write_all(total.as_ref())?;
        let file = out
            .into_inner()
            .map_err(|e| BackupError::Io(e.into_error()))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(manifest)
    })();
    let _ = std::fs::remove_file(&part);
    result
}

/// Checks a backup file end to end and answers its manifest.
pub fn verify(path: &Path) -> Result<Manifest, BackupError> {
    verify_at(path).map(|(manifest, _)| manifest)
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    ctx: Context,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
}

/// [`verify`], also answering where the snapshot part starts.
fn verify_at(path: &Path) -> Result<(Manifest, u64), BackupError> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len < (MAGIC.len() + 4 + 32) as u64 {
        return Err(BackupError::Corrupt(format!(
            "{} bytes is too short for a backup",
            len
        )));
    }
    let mut head = [0u8; 12];
    file.read_exact(&mut head)?;
    if &head[..8] != MAGIC {
        return Err(BackupError::Corrupt("not a Meridian backup".into()));
    }
    let manifest_len = u32::from_be_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if manifest_len > MANIFEST_MAX || (12 + manifest_len + 32) as u64 > len {
        return Err(BackupError::Corrupt(
            "truncated or bad manifest length".into(),
        ));
    }
    // The whole file first: a flipped bit anywhere is found here.
    let body = len - 32;
    let digest = sha256_of(&mut file, 0, body)?;
    let mut trailer = [0u8; 32];
    file.seek(SeekFrom::Start(body))?;
    file.read_exact(&mut trailer)?;
    if digest != trailer {
        return Err(BackupError::Corrupt(
            "SHA-256 mismatch: the file is truncated or altered".into(),
        ));
    }
    let mut json = vec![0u8; manifest_len];
    file.seek(SeekFrom::Start(12))?;
    file.read_exact(&mut json)?;
    let manifest: Manifest = serde_json::from_slice(&json)
        .map_err(|e| BackupError::Corrupt(format!("manifest: {e}")))?;
    if manifest.format != FORMAT {
        return Err(BackupError::Corrupt(format!(
            "backup format {} is not {FORMAT}, the one this version reads",
            manifest.format
        )));
    }
    let start = (12 + manifest_len) as u64;
    if start.checked_add(manifest.snapshot_bytes) != Some(body) {
        return Err(BackupError::Corrupt(
            "snapshot length does not match the manifest".into(),
        ));
    }
    // The snapshot's structure and its own digest, in one pass.
    file.seek(SeekFrom::Start(start))?;
    let mut snapshot = Hashing {
        inner: BufReader::with_capacity(1 << 20, file.take(manifest.snapshot_bytes)),
        ctx: Context::new(&SHA256),
    };
    snapshot::walk_reader(&mut snapshot, snapshot::known_table)?;
    if std::io::copy(&mut snapshot, &mut std::io::sink())? != 0 {
        return Err(BackupError::Corrupt(
            "bytes after the snapshot's end".into(),
        ));
    }
    if hex(snapshot.ctx.finish().as_ref()) != manifest.snapshot_sha256 {
        return Err(BackupError::Corrupt(
            "snapshot SHA-256 does not match the manifest".into(),
        ));
    }
    Ok((manifest, start))
}

/// Seeds `data_dir` for server `name` of a new datacenter whose initial
/// members are `members`, from the backup at `path`: the same keys,
/// leases and revision, no Raft log (the new datacenter bootstraps from its
/// configuration), and a new cluster id. Refuses a corrupt file or a data
/// directory that already holds data before writing anything.
pub fn restore(
    path: &Path,
    data_dir: &Path,
    name: &str,
    members: &[String],
) -> Result<Manifest, BackupError> {
    let (manifest, start) = verify_at(path)?;
    let mut members: Vec<String> = members.to_vec();
    members.sort();
    members.dedup();
    if !members.iter().any(|m| m == name) {
        return Err(BackupError::Refused(format!(
            "the initial members ({}) must include this server's name {name:?}",
            members.join(", ")
        )));
    }
    for part in ["log", "raft", "state"] {
        let dir = data_dir.join(part);
        if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
            return Err(BackupError::Refused(format!(
                "{} already holds data; restore into an empty data directory",
                dir.display()
            )));
        }
    }
    let storage = |e: &dyn std::fmt::Display| BackupError::Storage(e.to_string());
    let env = open_env(&data_dir.join("state"), EnvKind::State).map_err(|e| storage(&e))?;
    let store = KvStore::open(env).map_err(|e| storage(&e))?;
    snapshot::install_from(&store, || {
        let mut f = std::fs::File::open(path)?;
        f.seek(SeekFrom::Start(start))?;
        Ok(BufReader::with_capacity(
            1 << 20,
            f.take(manifest.snapshot_bytes),
        ))
    })?;
    // A store with no applied entry and no membership: the new datacenter's
    // bootstrap entry is the first it applies.
    let mut wtxn = env.write_txn().map_err(|e| storage(&e))?;
    store
        .meta_put(&mut wtxn, crate::raft::META_APPLIED, &None::<LogId>)
        .map_err(|e| storage(&e))?;
    store
        .meta_put(
            &mut wtxn,
            crate::raft::META_MEMBERSHIP,
            &StoredMembership::default(),
        )
        .map_err(|e| storage(&e))?;
    let restored = Restored {
        source_cluster_id: manifest.cluster_id.clone(),
        revision: manifest.revision,
        name: name.to_string(),
        members,
    };
    store
        .meta_put(&mut wtxn, META_RESTORED, &restored)
        .map_err(|e| storage(&e))?;
    wtxn.commit().map_err(|e| storage(&e))?;
    env.force_sync().map_err(|e| storage(&e))?;
    // The restored state is in no Raft log: until the server's first
    // snapshot covers it, this copy is what a rebuild after a machine crash
    // starts from (ADR 0017).
    let snapshots = data_dir.join("snapshots");
    std::fs::create_dir_all(&snapshots)?;
    let tmp = snapshots.join(format!("{}.tmp", crate::raft::RESTORED_SNAPSHOT));
    snapshot::write_snapshot(&store, &tmp, |last_log_id, last_membership| {
        openraft::SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id: format!("restored-{}", manifest.revision),
        }
    })?;
    std::fs::rename(&tmp, snapshots.join(crate::raft::RESTORED_SNAPSHOT))?;
    crate::store::sync_dir(&snapshots)?;
    crate::store::boot::mark_synced(&data_dir.join("state"))?;
    Ok(manifest)
}

/// The restore record of a store, if it was restored from a backup.
pub(crate) fn restored(store: &KvStore) -> Result<Option<Restored>, BackupError> {
    let rtxn = store
        .env()
        .read_txn()
        .map_err(|e| BackupError::Storage(e.to_string()))?;
    store
        .meta_get(&rtxn, META_RESTORED)
        .map_err(|e| BackupError::Storage(e.to_string()))
}

/// A temporary path for a backup taken by a server, in its snapshot directory.
pub(crate) fn scratch_path(data_dir: &Path) -> PathBuf {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    data_dir.join("snapshots").join(format!("backup-{n}.mbak"))
}
