//! Reads the Raft log that servers before ADR 0013 kept in LMDB (`raft/`:
//! entries by big-endian index in table `log`; vote, committed id and last
//! purged id in table `meta`, postcard-encoded), so that an upgraded server
//! carries its log, vote and all over into `log/`.

use super::log_store::Imported;
use super::types::LogId;
use crate::store::{open_env, EnvKind};
use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use openraft::{Entry, Vote};
use std::path::Path;

/// The LMDB log in `raft_dir`, if there is one.
pub fn read(raft_dir: &Path) -> Result<Option<Imported>, String> {
    if !raft_dir.join("data.mdb").is_file() {
        return Ok(None);
    }
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", raft_dir.display());
    let env = open_env(raft_dir, EnvKind::Raft).map_err(|e| err(&e))?;
    let rtxn = env.read_txn().map_err(|e| err(&e))?;
    let (log, meta) = env
        .open_databases_and_commit(rtxn, |opener, rtxn| -> Result<_, heed::Error> {
            let log = opener.open_database::<U64<BigEndian>, Bytes>(rtxn, Some("log"))?;
            let meta = opener.open_database::<Str, Bytes>(rtxn, Some("meta"))?;
            Ok(heed::CommitOrAbort::<_, ()>::Commit((log, meta)))
        })
        .map_err(|e| err(&e))?
        .unwrap_commit();
    let rtxn = env.read_txn().map_err(|e| err(&e))?;
    fn value<T: serde::de::DeserializeOwned>(
        meta: Option<heed::Database<Str, Bytes>>,
        rtxn: &heed::RoTxn<heed::WithoutTls>,
        name: &str,
    ) -> Result<Option<T>, String> {
        let Some(meta) = meta else { return Ok(None) };
        match meta.get(rtxn, name).map_err(|e| e.to_string())? {
            Some(bytes) => postcard::from_bytes(bytes)
                .map(Some)
                .map_err(|e| format!("{name}: {e}")),
            None => Ok(None),
        }
    }
    let vote: Option<Vote<u64>> = value(meta, &rtxn, "vote").map_err(|e| err(&e))?;
    let committed: Option<LogId> = value::<Option<LogId>>(meta, &rtxn, "committed")
        .map_err(|e| err(&e))?
        .flatten();
    let purged: Option<LogId> = value(meta, &rtxn, "last_purged").map_err(|e| err(&e))?;
    let mut entries = Vec::new();
    if let Some(log) = log {
        for item in log.iter(&rtxn).map_err(|e| err(&e))? {
            let (index, bytes) = item.map_err(|e| err(&e))?;
            let entry: Entry<super::TypeConfig> =
                postcard::from_bytes(bytes).map_err(|e| err(&format!("entry {index}: {e}")))?;
            entries.push((entry.log_id, bytes.to_vec()));
        }
    }
    Ok(Some(Imported {
        vote,
        committed,
        purged,
        entries,
    }))
}
