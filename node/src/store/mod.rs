//! The two LMDB environments of a server: `raft/` (the log, durable on every
//! commit) and `state/` (the state machine). Each is opened once and kept for
//! the life of the process, since heed ties table handles to it.

use heed::{Env, EnvFlags, EnvOpenOptions, WithoutTls};
use std::path::Path;

/// Which environment to open; they differ in durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvKind {
    /// The Raft log: every commit is fsynced before it returns.
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

/// Bytes of the environment's data file in use (the high-water mark of its pages).
pub fn used_bytes(env: &Env<WithoutTls>) -> u64 {
    let info = env.info();
    (info.last_page_number as u64 + 1) * page_size()
}

fn page_size() -> u64 {
    4096
}
