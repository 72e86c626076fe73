//! A server's LMDB environments: `state/` (the state machine), and `raft/`,
//! where versions before ADR 0013 kept the Raft log (read once, to carry it
//! over to `log/`). Each is opened once and kept for the life of the
//! process, since heed ties table handles to it.

pub mod boot;

use heed::{Env, EnvFlags, EnvOpenOptions, WithoutTls};
use std::path::Path;

/// Which environment to open; they differ in durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvKind {
    /// The Raft log of earlier versions: every commit is fsynced before it
    /// returns.
    Raft,
    /// The state machine: commits are not fsynced one by one. The fsynced Raft
    /// log is the durable record; after a crash the entries after the last
    /// state commit that reached disk are applied again. The environment is
    /// synced before a snapshot allows the log below it to be purged.
    State,
}

/// Upper bound of each environment's memory map (the database quota is enforced separately).
pub const MAP_BYTES: usize = 64 * 1024 * 1024 * 1024;

/// Opens (creating if needed) the environment in `dir`, for the life of the process.
pub fn open_env(dir: &Path, kind: EnvKind) -> Result<&'static Env<WithoutTls>, heed::Error> {
    std::fs::create_dir_all(dir)?;
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options.map_size(MAP_BYTES).max_dbs(8).max_readers(1024);
    if kind == EnvKind::State {
        // SAFETY: NO_SYNC only skips fsync at commit; LMDB stays consistent after a process
        // crash. Durability comes from the Raft log (see EnvKind::State).
        unsafe {
            options.flags(EnvFlags::NO_SYNC);
        }
    }
    // SAFETY: each directory is opened once per process (callers keep the
    // handle for the process's life) and the files are not modified by anyone else.
    let env = unsafe { options.open(dir)? };
    Ok(Box::leak(Box::new(env)))
}

/// Makes the entries of directory `dir` (files created, renamed or
/// deleted) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Bytes of the environment's data file in use (the high-water mark of its pages).
pub fn used_bytes(env: &Env<WithoutTls>) -> u64 {
    let info = env.info();
    (info.last_page_number as u64 + 1) * page_size()
}

fn page_size() -> u64 {
    4096
}

/// Takes the data directory's lock (`LOCK`, held while a server runs, or
/// while a tool rewrites the directory); fails if another process holds it.
pub fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, String> {
    std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "{} is in use by a running server (stop it first)",
            data_dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("{}: {e}", path.display())),
    }
}

/// The sizes of a server's database files before and after a defragmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defragmented {
    /// Bytes of `state/data.mdb` before.
    pub before: u64,
    /// The same after.
    pub after: u64,
}

/// Rewrites a stopped server's state file compactly (a compacting copy,
/// then renamed over the original), so that space freed by compaction and
/// deletes goes back to the file system. (The Raft log needs none: a purge
/// deletes whole segment files.) Refuses while a server holds the
/// directory.
pub fn defrag(data_dir: &Path) -> Result<Defragmented, String> {
    if !data_dir.join("state").join("data.mdb").is_file() {
        return Err(format!(
            "{} holds no Meridian data (state/data.mdb is missing)",
            data_dir.display()
        ));
    }
    let _lock = lock_data_dir(data_dir)?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let dir = data_dir.join("state");
    let verdict = boot::check(&dir, boot::current_boot_id().as_deref())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    if let boot::Verdict::MayBeTorn { why } = verdict {
        return Err(format!(
            "{}: {why}; start the server once (it rebuilds its state from its snapshot and log), then defragment",
            data_dir.display()
        ));
    }
    let data = dir.join("data.mdb");
    let before = size(&data);
    let env = open_env(&dir, EnvKind::State).map_err(|e| format!("{}: {e}", dir.display()))?;
    let copy = dir.join("data.mdb.compact");
    let _ = std::fs::remove_file(&copy);
    let file = env
        .copy_to_path(&copy, heed::CompactionOption::Enabled)
        .map_err(|e| format!("{}: compacting copy: {e}", dir.display()))?;
    file.sync_all()
        .map_err(|e| format!("{}: {e}", copy.display()))?;
    // The environment stays mapped in this process until it exits; the
    // rename swaps the directory entry, which is what the next server
    // start opens.
    std::fs::rename(&copy, &data).map_err(|e| format!("{}: {e}", data.display()))?;
    let _ = sync_dir(&dir);
    let after = size(&data);
    Ok(Defragmented { before, after })
}
