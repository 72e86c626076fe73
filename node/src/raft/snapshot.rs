//! Raft snapshots of the state machine: every row of the `state/` tables,
//! read in one LMDB read transaction (writers keep going meanwhile) and
//! written to a file; installing one replaces the tables in one write
//! transaction, which a server runs in a child process (ADR 0018).
//! Format: magic, header (openraft's snapshot meta), rows (table index, key,
//! value), end marker, row count and an FNV-1a checksum.

use super::types::Member;
use crate::kv::KvStore;
use openraft::SnapshotMeta;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"MRDNSNP1";
const END: u8 = 0xFF;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// File input/output failed.
    #[error("snapshot file: {0}")]
    Io(#[from] std::io::Error),
    /// The storage engine failed.
    #[error("snapshot storage: {0}")]
    Storage(String),
    /// The file is not a complete, intact snapshot.
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
}

struct Checksum(u64);

impl Checksum {
    fn new() -> Self {
        Checksum(0xcbf29ce484222325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

struct HashingWriter<W: Write> {
    inner: W,
    sum: Checksum,
}

impl<W: Write> HashingWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sum.update(bytes);
        self.inner.write_all(bytes)
    }
}

/// What a written snapshot holds: openraft's meta, and the revisions read
/// in the same transaction as the rows.
#[derive(Debug, Clone)]
pub struct Written {
    /// The meta in the file's header.
    pub meta: SnapshotMeta<u64, Member>,
    /// The store's revision in the snapshot.
    pub revision: i64,
    /// The compacted revision in the snapshot.
    pub compacted_revision: i64,
}

/// Writes a snapshot of `store` to `path`; `meta_of` builds openraft's meta
/// from the applied log id and membership read in the same transaction.
pub fn write_snapshot<F>(store: &KvStore, path: &Path, meta_of: F) -> Result<Written, SnapshotError>
where
    F: FnOnce(Option<super::LogId>, super::StoredMembership) -> SnapshotMeta<u64, Member>,
{
    let storage = |e: &dyn std::fmt::Display| SnapshotError::Storage(e.to_string());
    let rtxn = store.env().read_txn().map_err(|e| storage(&e))?;
    let applied = super::state_machine::applied_log_id(store, &rtxn).map_err(|e| storage(&e))?;
    let membership: super::StoredMembership = store
        .meta_get(&rtxn, super::state_machine::META_MEMBERSHIP)
        .map_err(|e| storage(&e))?
        .unwrap_or_default();
    let meta = meta_of(applied, membership);
    let revision = store.revision(&rtxn).map_err(|e| storage(&e))?;
    let compacted_revision = store.compacted_revision(&rtxn).map_err(|e| storage(&e))?;
    let file = std::fs::File::create(path)?;
    let mut w = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        sum: Checksum::new(),
    };
    w.put(MAGIC)?;
    let header = postcard::to_allocvec(&meta).map_err(|e| storage(&e))?;
    w.put(&(header.len() as u32).to_be_bytes())?;
    w.put(&header)?;
    let mut rows: u64 = 0;
    for (index, (_, table)) in store.tables().iter().enumerate() {
        for item in table.iter(&rtxn).map_err(|e| storage(&e))? {
            let (k, v) = item.map_err(|e| storage(&e))?;
            w.put(&[index as u8])?;
            w.put(&(k.len() as u32).to_be_bytes())?;
            w.put(k)?;
            w.put(&(v.len() as u32).to_be_bytes())?;
            w.put(v)?;
            rows += 1;
        }
    }
    w.put(&[END])?;
    w.put(&rows.to_be_bytes())?;
    let sum = w.sum.0;
    w.inner.write_all(&sum.to_be_bytes())?;
    let file = w
        .inner
        .into_inner()
        .map_err(|e| SnapshotError::Io(e.into_error()))?;
    file.sync_all()?;
    Ok(Written {
        meta,
        revision,
        compacted_revision,
    })
}

struct Reader<R: Read> {
    inner: R,
    sum: Checksum,
}

impl<R: Read> Reader<R> {
    fn take(&mut self, n: usize) -> Result<Vec<u8>, SnapshotError> {
        let mut buf = vec![0u8; n];
        self.inner
            .read_exact(&mut buf)
            .map_err(|_| SnapshotError::Corrupt("truncated".into()))?;
        self.sum.update(&buf);
        Ok(buf)
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Reads only the header of a snapshot file.
pub fn read_meta(path: &Path) -> Result<SnapshotMeta<u64, Member>, SnapshotError> {
    let mut r = Reader {
        inner: BufReader::new(std::fs::File::open(path)?),
        sum: Checksum::new(),
    };
    read_header(&mut r)
}

fn read_header<R: Read>(r: &mut Reader<R>) -> Result<SnapshotMeta<u64, Member>, SnapshotError> {
    if r.take(8)? != MAGIC {
        return Err(SnapshotError::Corrupt("not a Meridian snapshot".into()));
    }
    let len = r.u32()? as usize;
    if len > 64 * 1024 * 1024 {
        return Err(SnapshotError::Corrupt("header too large".into()));
    }
    let header = r.take(len)?;
    postcard::from_bytes(&header).map_err(|e| SnapshotError::Corrupt(format!("header: {e}")))
}

/// Visits every row of a snapshot file, then checks its count and checksum.
/// Returns the header; a visitor error or a corrupt file stops the walk.
fn walk<F>(path: &Path, visit: F) -> Result<SnapshotMeta<u64, Member>, SnapshotError>
where
    F: FnMut(u8, &[u8], &[u8]) -> Result<(), SnapshotError>,
{
    walk_reader(
        BufReader::with_capacity(1 << 20, std::fs::File::open(path)?),
        visit,
    )
}

/// [`walk`] over a snapshot read from `input` (which must end where the
/// snapshot does).
pub(crate) fn walk_reader<R: Read, F>(
    input: R,
    mut visit: F,
) -> Result<SnapshotMeta<u64, Member>, SnapshotError>
where
    F: FnMut(u8, &[u8], &[u8]) -> Result<(), SnapshotError>,
{
    let mut r = Reader {
        inner: input,
        sum: Checksum::new(),
    };
    let meta = read_header(&mut r)?;
    let mut rows: u64 = 0;
    loop {
        let table = r.take(1)?[0];
        if table == END {
            break;
        }
        let klen = r.u32()? as usize;
        let k = r.take(klen)?;
        let vlen = r.u32()? as usize;
        let v = r.take(vlen)?;
        visit(table, &k, &v)?;
        rows += 1;
    }
    let count = r.take(8)?;
    let expected_sum = r.sum.0;
    let mut sum = [0u8; 8];
    r.inner
        .read_exact(&mut sum)
        .map_err(|_| SnapshotError::Corrupt("truncated".into()))?;
    if u64::from_be_bytes(sum) != expected_sum {
        return Err(SnapshotError::Corrupt("checksum mismatch".into()));
    }
    if u64::from_be_bytes(
        count
            .try_into()
            .map_err(|_| SnapshotError::Corrupt("count".into()))?,
    ) != rows
    {
        return Err(SnapshotError::Corrupt("row count mismatch".into()));
    }
    Ok(meta)
}

/// Checks a snapshot file end to end without touching any store.
pub fn verify(path: &Path) -> Result<SnapshotMeta<u64, Member>, SnapshotError> {
    walk(path, known_table)
}

/// A visitor that accepts the rows of known tables only.
pub(crate) fn known_table(table: u8, _: &[u8], _: &[u8]) -> Result<(), SnapshotError> {
    if table as usize >= crate::kv::TABLES {
        return Err(SnapshotError::Corrupt(format!("unknown table {table}")));
    }
    Ok(())
}

/// The program that installs snapshots for this process, if it does not do
/// so itself (see [`install_in_child_processes`]).
static INSTALLER: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// The subcommand of the installer program, followed by the state
/// directory and the snapshot file.
pub const INSTALL_SUBCOMMAND: &str = "install-state";

/// Has every later [`install`] in this process run as `program install-state
/// STATE_DIR FILE` (see [`install_here`]), a short-lived process of its own.
///
/// LMDB keeps the pages a write transaction dirtied, once freed, for the
/// environment's later transactions until it is closed, and an install is
/// one transaction over the whole state: installed in the server's own
/// process, a snapshot left that much memory held for good (ADR 0018). A
/// child opens the same environment (LMDB serves several processes through
/// its lock file), commits, syncs and exits, which frees it all; readers in
/// the server see the old state until the commit and the new one after.
pub fn install_in_child_processes(program: std::path::PathBuf) {
    let _ = INSTALLER.set(program);
}

/// The installer program's work: installs the snapshot `file` into the state
/// environment in `state_dir` (whose server waits meanwhile) and syncs it.
pub fn install_here(
    state_dir: &Path,
    file: &Path,
) -> Result<SnapshotMeta<u64, Member>, SnapshotError> {
    let storage = |e: &dyn std::fmt::Display| SnapshotError::Storage(e.to_string());
    // A server's environment, never a new one made here by mistake.
    if !state_dir.join("data.mdb").is_file() {
        return Err(storage(&format!(
            "{} holds no state environment",
            state_dir.display()
        )));
    }
    let env =
        crate::store::open_env(state_dir, crate::store::EnvKind::State).map_err(|e| storage(&e))?;
    let store = KvStore::open(env).map_err(|e| storage(&e))?;
    install_in_process(&store, file)
}

/// Replaces the contents of `store` with the snapshot at `path`, in one write
/// transaction, after verifying the whole file; in a child process if this
/// process was set up so ([`install_in_child_processes`]).
pub fn install(store: &KvStore, path: &Path) -> Result<SnapshotMeta<u64, Member>, SnapshotError> {
    let Some(program) = INSTALLER.get() else {
        return install_in_process(store, path);
    };
    let out = match std::process::Command::new(program)
        .arg(INSTALL_SUBCOMMAND)
        .arg(store.env().path())
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            // No child to be had (e.g. no /proc): the install itself matters more.
            tracing::warn!(program = %program.display(), error = %e, "cannot start the snapshot installer; installing in this process");
            return install_in_process(store, path);
        }
    };
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(SnapshotError::Storage(format!(
            "installing {} ({}): {}",
            path.display(),
            out.status,
            why.trim()
        )));
    }
    read_meta(path)
}

fn install_in_process(
    store: &KvStore,
    path: &Path,
) -> Result<SnapshotMeta<u64, Member>, SnapshotError> {
    verify(path)?;
    install_from(store, || {
        Ok(BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(path)?,
        ))
    })
}

/// Replaces the contents of `store` with the snapshot `open` reads, in one
/// write transaction (the caller has verified it).
pub(crate) fn install_from<R: Read>(
    store: &KvStore,
    open: impl FnOnce() -> Result<R, SnapshotError>,
) -> Result<SnapshotMeta<u64, Member>, SnapshotError> {
    let storage = |e: &dyn std::fmt::Display| SnapshotError::Storage(e.to_string());
    let env = store.env();
    let mut wtxn = env.write_txn().map_err(|e| storage(&e))?;
    let tables = store.tables();
    for (_, table) in &tables {
        table.clear(&mut wtxn).map_err(|e| storage(&e))?;
    }
    let meta = walk_reader(open()?, |table, k, v| {
        let (_, db) = tables
            .get(table as usize)
            .ok_or_else(|| SnapshotError::Corrupt(format!("unknown table {table}")))?;
        db.put(&mut wtxn, k, v).map_err(|e| storage(&e))
    })?;
    wtxn.commit().map_err(|e| storage(&e))?;
    env.force_sync().map_err(|e| storage(&e))?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{Command, KvWriter, PutRequest};

    fn store() -> (tempfile::TempDir, KvStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = crate::store::open_env(dir.path(), crate::store::EnvKind::State).expect("env");
        (dir, KvStore::open(env).expect("store"))
    }

    fn apply(store: &KvStore, cmd: Command) {
        let mut wtxn = store.env().write_txn().expect("txn");
        let mut w = KvWriter::new(*store, &mut wtxn).expect("writer");
        w.apply(&cmd).expect("apply");
        w.finish().expect("finish");
        wtxn.commit().expect("commit");
    }

    /// A snapshot of `store` in a temporary file.
    fn snapshot_of(store: &KvStore) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("file");
        write_snapshot(store, file.path(), |last_log_id, last_membership| {
            SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id: "t".into(),
            }
        })
        .expect("write");
        file
    }

    #[test]
    fn an_installer_that_cannot_be_started_leaves_the_install_to_this_process() {
        // (Process-wide: other installs in these tests take the same path,
        // which installs in process as they would without it.)
        install_in_child_processes("/nonexistent/meridian".into());
        let (_a_dir, a) = store();
        apply(
            &a,
            Command::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            }),
        );
        let file = snapshot_of(&a);
        let (_b_dir, b) = store();
        install(&b, file.path()).expect("install");
        let rtxn = b.env().read_txn().expect("txn");
        assert_eq!(b.revision(&rtxn).expect("read"), 2);
    }

    #[test]
    fn a_snapshot_carries_every_table_including_leases() {
        let (_a_dir, a) = store();
        apply(&a, Command::LeaseGrant { id: 7, ttl: 30 });
        apply(
            &a,
            Command::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                lease: 7,
                ..Default::default()
            }),
        );
        let file = snapshot_of(&a);
        let (_b_dir, b) = store();
        install(&b, file.path()).expect("install");
        let rtxn = b.env().read_txn().expect("txn");
        assert_eq!(b.lease(&rtxn, 7).expect("read").map(|l| l.ttl), Some(30));
        assert_eq!(b.lease_keys(&rtxn, 7).expect("read"), vec![b"k".to_vec()]);
        assert_eq!(
            b.revision(&rtxn).expect("read"),
            a.revision(&a.env().read_txn().expect("txn")).expect("read")
        );
    }
}
