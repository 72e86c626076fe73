//! MVCC over three LMDB tables of the `state/` environment:
//! - `kv`: one row per (key, revision) holding a [`Record`] (value or tombstone);
//! - `changes`: one row per revision (main, sub) naming the key written, for
//!   replaying history in revision order and for compaction;
//! - `meta`: current and compacted revision, live key count and whatever the
//!   state machine records beside them (applied log id, membership).
//!
//! Readers use a read transaction and never block the writer; the writer is
//! the Raft state machine applying committed entries.

use super::encoding::{
    escape_bound, escape_key, push_rev, rev_key, row_key, split_row_key, unescape_key,
};
use super::types::*;
use super::KvError;
use heed::types::{Bytes, Str};
use heed::{Database, Env, RoTxn, RwTxn, WithoutTls};
use serde::{Deserialize, Serialize};
use std::ops::Bound;

/// How many tables the state machine has (see [`KvStore::tables`]).
pub const TABLES: usize = 5;

/// Most operations in one transaction, counting nested ones (etcd's default).
pub const TXN_OPS_MAX: usize = 128;

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
const META_KEYS: &str = "keys";

/// One `kv` row: the key's state as of the row's revision.
#[derive(Debug, Clone, Serialize)]
struct Record {
    tombstone: bool,
    create_revision: i64,
    version: i64,
    lease: i64,
    value: Vec<u8>,
}

/// A `kv` row read in place: the same encoding as [`Record`] (which only
/// writers build), with the value borrowed from the row (LMDB's page)
/// instead of copied, so that a reader that does not want the value
/// (keys-only and count-only ranges, the tombstone checks) never copies it,
/// and one that does copies it once.
#[derive(Debug, Deserialize)]
struct RecordRef<'a> {
    tombstone: bool,
    create_revision: i64,
    version: i64,
    lease: i64,
    value: &'a [u8],
}

impl RecordRef<'_> {
    fn to_kv(&self, key: Vec<u8>, mod_revision: i64, with_value: bool) -> KeyValue {
        KeyValue {
            key,
            create_revision: self.create_revision,
            mod_revision,
            version: self.version,
            value: if with_value {
                self.value.to_vec()
            } else {
                Vec::new()
            },
            lease: self.lease,
        }
    }
}

/// Handles on the key-value tables of one environment.
#[derive(Clone, Copy)]
pub struct KvStore {
    env: &'static Env<WithoutTls>,
    kv: Database<'static, Bytes, Bytes>,
    changes: Database<'static, Bytes, Bytes>,
    meta: Database<'static, Str, Bytes>,
    /// Lease id (i64 BE) → [`LeaseRecord`].
    leases: Database<'static, Bytes, Bytes>,
    /// Lease id (i64 BE) ++ key → nothing: the keys attached to each lease.
    lease_keys: Database<'static, Bytes, Bytes>,
}

/// A lease as stored: its granted TTL. When it expires is the leader's
/// business (in memory), as in etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Granted time-to-live in seconds.
    pub ttl: i64,
}

fn lease_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(key);
    out
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, KvError> {
    encode_sized(value, 0)
}

/// Encodes into a buffer allocated with room for `bytes`: given enough, it
/// is never grown.
fn encode_sized<T: Serialize>(value: &T, bytes: usize) -> Result<Vec<u8>, KvError> {
    postcard::to_extend(value, Vec::with_capacity(bytes))
        .map_err(|e| KvError::Storage(format!("encode: {e}")))
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, KvError> {
    postcard::from_bytes(bytes).map_err(|e| KvError::Storage(format!("decode: {e}")))
}

impl KvStore {
    /// Creates (or opens) the tables in `env`.
    pub fn open(env: &'static Env<WithoutTls>) -> Result<KvStore, KvError> {
        let wtxn = env.write_txn()?;
        let tables = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
                let kv = opener.create_database::<Bytes, Bytes>(wtxn, Some("kv"))?;
                let changes = opener.create_database::<Bytes, Bytes>(wtxn, Some("changes"))?;
                let meta = opener.create_database::<Str, Bytes>(wtxn, Some("meta"))?;
                let leases = opener.create_database::<Bytes, Bytes>(wtxn, Some("leases"))?;
                let lease_keys =
                    opener.create_database::<Bytes, Bytes>(wtxn, Some("lease_keys"))?;
                Ok(heed::CommitOrAbort::<_, ()>::Commit((
                    kv, changes, meta, leases, lease_keys,
                )))
            })?
            .unwrap_commit();
        let (kv, changes, meta, leases, lease_keys) = tables;
        Ok(KvStore {
            env,
            kv,
            changes,
            meta,
            leases,
            lease_keys,
        })
    }

    /// The environment the tables live in.
    pub fn env(&self) -> &'static Env<WithoutTls> {
        self.env
    }

    /// Reads a metadata value.
    pub fn meta_get<T: for<'a> Deserialize<'a>>(
        &self,
        txn: &RoTxn,
        name: &str,
    ) -> Result<Option<T>, KvError> {
        match self.meta.get(txn, name)? {
            Some(bytes) => Ok(Some(decode(bytes)?)),
            None => Ok(None),
        }
    }

    /// Writes a metadata value.
    pub fn meta_put<T: Serialize>(
        &self,
        txn: &mut RwTxn,
        name: &str,
        value: &T,
    ) -> Result<(), KvError> {
        self.meta.put(txn, name, &encode(value)?)?;
        Ok(())
    }

    /// The current revision (1 for an empty store, as in etcd).
    pub fn revision(&self, txn: &RoTxn) -> Result<i64, KvError> {
        // As in etcd, an empty store is at revision 1: the first write makes revision 2.
        Ok(self.meta_get(txn, META_REVISION)?.unwrap_or(1))
    }

    /// The changes from revision `from` on, in revision order, as watch
    /// events: whole revisions, stopping after the revision at which `max`
    /// events or `max_bytes` of keys and values are reached. Returns the
    /// events and the last revision fully read (`from - 1` if none).
    /// `Compacted` if `from` is below the compacted revision.
    pub fn events(
        &self,
        txn: &RoTxn,
        from: i64,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Event>, i64), KvError> {
        let from = from.max(1);
        if from < self.compacted_revision(txn)? {
            return Err(KvError::Compacted);
        }
        let current = self.revision(txn)?;
        let mut events: Vec<Event> = Vec::new();
        let mut bytes = 0;
        let mut last = from - 1;
        let mut full = false;
        let lower = rev_key(from, 0);
        for item in self
            .changes
            .range(txn, &(Bound::Included(lower.as_slice()), Bound::Unbounded))?
        {
            let (rev, key) = item?;
            let (main, sub) = super::encoding::parse_rev(rev)
                .ok_or_else(|| KvError::Storage("bad change key".into()))?;
            if main > current {
                break;
            }
            if main != last && (events.len() >= max || bytes >= max_bytes) {
                full = true;
                break;
            }
            last = main;
            let event = self.event_at(txn, key, main, sub)?;
            bytes += event.payload_bytes();
            events.push(event);
        }
        // Revisions with no change rows left (compacted history) count as read.
        if !full {
            last = current.max(from - 1);
        }
        Ok((events, last))
    }

    fn event_at(&self, txn: &RoTxn, key: &[u8], main: i64, sub: u32) -> Result<Event, KvError> {
        let mut this_row = escape_key(key);
        let mut lower = this_row.clone();
        push_rev(&mut this_row, main, sub);
        push_rev(&mut lower, 0, 0);
        let record: RecordRef = match self.kv.get(txn, &this_row)? {
            Some(bytes) => decode(bytes)?,
            None => return Err(KvError::Storage("change without its row".into())),
        };
        let prev = match self
            .kv
            .rev_range(
                txn,
                &(
                    Bound::Included(lower.as_slice()),
                    Bound::Excluded(this_row.as_slice()),
                ),
            )?
            .next()
        {
            Some(item) => {
                let (row, bytes) = item?;
                let (_, pmain, _) = super::encoding::split_row_key(row)
                    .ok_or_else(|| KvError::Storage("bad row key".into()))?;
                let r: RecordRef = decode(bytes)?;
                (!r.tombstone).then(|| r.to_kv(key.to_vec(), pmain, true))
            }
            None => None,
        };
        Ok(if record.tombstone {
            Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.to_vec(),
                    mod_revision: main,
                    ..Default::default()
                },
                prev_kv: prev,
            }
        } else {
            Event {
                kind: EventKind::Put,
                kv: record.to_kv(key.to_vec(), main, true),
                prev_kv: prev,
            }
        })
    }

    /// The compacted revision (0 if never compacted).
    pub fn compacted_revision(&self, txn: &RoTxn) -> Result<i64, KvError> {
        Ok(self.meta_get(txn, META_COMPACTED)?.unwrap_or(0))
    }

    /// Number of live keys.
    pub fn key_count(&self, txn: &RoTxn) -> Result<i64, KvError> {
        Ok(self.meta_get(txn, META_KEYS)?.unwrap_or(0))
    }

    /// Every table, for snapshots, in a fixed order (a snapshot names tables
    /// by index).
    pub fn tables(&self) -> [(&'static str, Database<'static, Bytes, Bytes>); TABLES] {
        [
            ("kv", self.kv),
            ("changes", self.changes),
            ("meta", self.meta.remap_key_type::<Bytes>()),
            ("leases", self.leases),
            ("lease_keys", self.lease_keys),
        ]
    }

    /// A lease, if it exists.
    pub fn lease(&self, txn: &RoTxn, id: i64) -> Result<Option<LeaseRecord>, KvError> {
        match self.leases.get(txn, &id.to_be_bytes())? {
            Some(bytes) => Ok(Some(decode(bytes)?)),
            None => Ok(None),
        }
    }

    /// How many leases exist.
    pub fn lease_count(&self, txn: &RoTxn) -> Result<u64, KvError> {
        Ok(self.leases.len(txn)?)
    }

    /// Every lease, by id.
    pub fn leases(&self, txn: &RoTxn) -> Result<Vec<(i64, LeaseRecord)>, KvError> {
        let mut out = Vec::new();
        for item in self.leases.iter(txn)? {
            let (id, bytes) = item?;
            let id = i64::from_be_bytes(
                id.try_into()
                    .map_err(|_| KvError::Storage("bad lease id".into()))?,
            );
            out.push((id, decode(bytes)?));
        }
        Ok(out)
    }

    /// The keys attached to a lease, in key order.
    pub fn lease_keys(&self, txn: &RoTxn, id: i64) -> Result<Vec<Vec<u8>>, KvError> {
        let prefix = id.to_be_bytes();
        let mut out = Vec::new();
        for item in self.lease_keys.prefix_iter(txn, &prefix)? {
            let (k, _) = item?;
            out.push(k[8..].to_vec());
        }
        Ok(out)
    }

    /// Answers a range at the revision it asks for.
    pub fn range(&self, txn: &RoTxn, req: &RangeRequest) -> Result<RangeResponse, KvError> {
        let current = self.revision(txn)?;
        self.range_at(txn, req, current)
    }

    fn range_at(
        &self,
        txn: &RoTxn,
        req: &RangeRequest,
        current: i64,
    ) -> Result<RangeResponse, KvError> {
        let rev = if req.revision <= 0 {
            current
        } else {
            req.revision
        };
        if rev > current {
            return Err(KvError::FutureRevision);
        }
        if rev < self.compacted_revision(txn)? {
            return Err(KvError::Compacted);
        }
        let filters = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let mut sort_order = req.sort_order;
        if req.sort_target != SortTarget::Key && sort_order == SortOrder::None {
            sort_order = SortOrder::Ascend;
        }
        let needs_all = filters || sort_order != SortOrder::None;
        // Without sorting or filters only limit + 1 rows are kept; the rest are counted.
        let keep_max = if req.limit > 0 && !needs_all {
            req.limit as usize + 1
        } else {
            usize::MAX
        };
        let keep_values = !req.keys_only && !req.count_only;

        let mut kvs = Vec::new();
        let mut count = 0i64;
        self.scan(txn, &req.key, &req.range_end, rev, |kv_fn| {
            count += 1;
            if !req.count_only && kvs.len() < keep_max {
                kvs.push(kv_fn(keep_values)?);
            }
            Ok(())
        })?;

        if filters {
            kvs.retain(|kv: &KeyValue| {
                (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                    && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                    && (req.min_create_revision == 0
                        || kv.create_revision >= req.min_create_revision)
                    && (req.max_create_revision == 0
                        || kv.create_revision <= req.max_create_revision)
            });
        }
        if sort_order != SortOrder::None {
            // Keys arrive ascending; a stable sort keeps key order among equal
            // targets, in both directions (as etcd's answers show).
            let descend = sort_order == SortOrder::Descend;
            let target = req.sort_target;
            if target != SortTarget::Key || descend {
                kvs.sort_by(|a, b| {
                    let o = match target {
                        SortTarget::Key => a.key.cmp(&b.key),
                        SortTarget::Version => a.version.cmp(&b.version),
                        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                        SortTarget::Value => a.value.cmp(&b.value),
                    };
                    if descend {
                        o.reverse()
                    } else {
                        o
                    }
                });
            }
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        Ok(RangeResponse { kvs, more, count })
    }

    /// Calls `visit` once per key live at `rev` in `[key, range_end)`, in key
    /// order, with a function that materialises the key-value (with or without its value).
    fn scan<F>(
        &self,
        txn: &RoTxn,
        key: &[u8],
        range_end: &[u8],
        rev: i64,
        mut visit: F,
    ) -> Result<(), KvError>
    where
        F: FnMut(&dyn Fn(bool) -> Result<KeyValue, KvError>) -> Result<(), KvError>,
    {
        if range_end.is_empty() {
            if let Some((main, record)) = self.row_at(txn, key, rev)? {
                visit(&|with_value| Ok(record.to_kv(key.to_vec(), main, with_value)))?;
            }
            return Ok(());
        }
        let lower = escape_key(key);
        let upper = if range_end == [0] {
            None
        } else {
            Some(escape_bound(range_end))
        };
        if let Some(upper) = &upper {
            if upper.as_slice() <= lower.as_slice() {
                return Ok(());
            }
        }
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = (
            Bound::Included(lower.as_slice()),
            match &upper {
                Some(u) => Bound::Excluded(u.as_slice()),
                None => Bound::Unbounded,
            },
        );
        // Rows of one key are adjacent and ascending by revision: remember the
        // newest row at or below `rev` and emit it when the key changes. The
        // rows stay in LMDB's pages (valid for the transaction): a key is
        // unescaped and a value copied only for a visitor that asks.
        let mut group: Option<(&[u8], i64, &[u8])> = None; // (escaped key, mod revision, row bytes)
        let emit = |group: Option<(&[u8], i64, &[u8])>, visit: &mut F| -> Result<(), KvError> {
            if let Some((escaped, main, row)) = group {
                let record: RecordRef = decode(row)?;
                if !record.tombstone {
                    visit(&|with_value| {
                        let user_key = unescape_key(escaped)
                            .ok_or_else(|| KvError::Storage("bad key encoding".into()))?;
                        Ok(record.to_kv(user_key, main, with_value))
                    })?;
                }
            }
            Ok(())
        };
        for item in self.kv.range(txn, &bounds)? {
            let (row_key, row) = item?;
            let (escaped, main, _sub) =
                split_row_key(row_key).ok_or_else(|| KvError::Storage("bad row key".into()))?;
            let same_key = group.is_some_and(|(g, _, _)| g == escaped);
            if !same_key {
                emit(group.take(), &mut visit)?;
            }
            if main <= rev {
                group = Some((escaped, main, row));
            } else if !same_key {
                // First row of this key is above rev: the key did not exist at rev yet.
                group = None;
            }
        }
        emit(group.take(), &mut visit)?;
        Ok(())
    }

    /// The key's state at `rev`, if it was live then. One backwards seek.
    fn get_at(&self, txn: &RoTxn, key: &[u8], rev: i64) -> Result<Option<KeyValue>, KvError> {
        Ok(self
            .row_at(txn, key, rev)?
            .map(|(main, record)| record.to_kv(key.to_vec(), main, true)))
    }

    /// The key's row live at `rev`, read in place, with its mod revision.
    fn row_at<'t>(
        &self,
        txn: &'t RoTxn,
        key: &[u8],
        rev: i64,
    ) -> Result<Option<(i64, RecordRef<'t>)>, KvError> {
        let probe = row_key(key, rev, u32::MAX);
        let Some((found, row)) = self.kv.get_lower_than_or_equal_to(txn, &probe)? else {
            return Ok(None);
        };
        let (escaped, main, _) =
            split_row_key(found).ok_or_else(|| KvError::Storage("bad row key".into()))?;
        if escaped != &probe[..probe.len() - 12] {
            return Ok(None);
        }
        let record: RecordRef = decode(row)?;
        if record.tombstone {
            return Ok(None);
        }
        Ok(Some((main, record)))
    }
}

/// Applies writes of one Raft entry inside the caller's write transaction.
/// All writes of one command share one main revision; each gets the next sub revision.
pub struct KvWriter<'t, 'e> {
    store: KvStore,
    txn: &'t mut RwTxn<'e>,
    revision: i64,
    sub: u32,
    keys_delta: i64,
}

impl<'t, 'e> KvWriter<'t, 'e> {
    /// Starts a command at the store's current revision.
    pub fn new(store: KvStore, txn: &'t mut RwTxn<'e>) -> Result<Self, KvError> {
        let revision = store.revision(txn)?;
        Ok(KvWriter {
            store,
            txn,
            revision,
            sub: 0,
            keys_delta: 0,
        })
    }

    /// The revision a read inside this command sees: its own writes included.
    fn read_revision(&self) -> i64 {
        if self.sub > 0 {
            self.revision + 1
        } else {
            self.revision
        }
    }

    /// Runs one command; returns its outcome. The caller commits or aborts.
    pub fn apply(&mut self, command: &Command) -> Result<Outcome, KvError> {
        match command {
            Command::Put(req) => self.put(req).map(Outcome::Put),
            Command::DeleteRange(req) => self.delete_range(req).map(Outcome::DeleteRange),
            Command::Txn(req) => self.txn(req).map(Outcome::Txn),
            Command::Compact(req) => self.compact(req.revision).map(|_| Outcome::Compacted),
            Command::LeaseGrant { id, ttl } => self.lease_grant(*id, *ttl),
            Command::LeaseRevoke { id } => self.lease_revoke(*id),
            // They span revisions and need the DC's name: the state machine applies them.
            Command::SetRule(_) | Command::Mirror(_) | Command::SetClusterLevel { .. } => {
                Err(KvError::InvalidArgument(
                    "replication and cluster-level commands are applied by the state machine"
                        .into(),
                ))
            }
        }
    }

    /// Creates a lease (the revision does not change, as in etcd).
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<Outcome, KvError> {
        if id <= 0 {
            return Err(KvError::InvalidArgument(
                "etcdserver: lease ID must be positive".into(),
            ));
        }
        if self.store.lease(self.txn, id)?.is_some() {
            return Err(KvError::LeaseExists);
        }
        self.store
            .leases
            .put(self.txn, &id.to_be_bytes(), &encode(&LeaseRecord { ttl })?)?;
        Ok(Outcome::LeaseGranted { id, ttl })
    }

    /// Removes a lease and deletes every key attached to it, all at one revision.
    pub fn lease_revoke(&mut self, id: i64) -> Result<Outcome, KvError> {
        if self.store.lease(self.txn, id)?.is_none() {
            return Err(KvError::LeaseNotFound);
        }
        let keys = self.store.lease_keys(self.txn, id)?;
        for key in keys {
            self.delete_range(&DeleteRangeRequest {
                key,
                ..Default::default()
            })?;
        }
        self.store.leases.delete(self.txn, &id.to_be_bytes())?;
        Ok(Outcome::LeaseRevoked)
    }

    /// Finishes the command: records the new revision if anything was written.
    /// Returns the store's revision after the command.
    pub fn finish(self) -> Result<i64, KvError> {
        if self.sub > 0 {
            let revision = self.revision + 1;
            self.store.meta_put(self.txn, META_REVISION, &revision)?;
            let keys: i64 = self.store.meta_get(self.txn, META_KEYS)?.unwrap_or(0);
            self.store
                .meta_put(self.txn, META_KEYS, &(keys + self.keys_delta))?;
            Ok(revision)
        } else {
            Ok(self.revision)
        }
    }

    fn write_row(&mut self, key: &[u8], record: &Record) -> Result<(), KvError> {
        let main = self.revision + 1;
        let sub = self.sub;
        self.sub += 1;
        self.store.kv.put(
            self.txn,
            &row_key(key, main, sub),
            // The value plus a flag byte and four varints of at most 10 bytes.
            &encode_sized(record, record.value.len() + 41)?,
        )?;
        self.store.changes.put(self.txn, &rev_key(main, sub), key)?;
        Ok(())
    }

    /// etcd's put.
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, KvError> {
        let rev = self.read_revision();
        let prev = self.store.get_at(self.txn, &req.key, rev)?;
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(KvError::KeyNotFound);
        }
        let lease = if req.ignore_lease {
            prev.as_ref().map_or(0, |p| p.lease)
        } else {
            req.lease
        };
        if lease != 0 && self.store.lease(self.txn, lease)?.is_none() {
            return Err(KvError::LeaseNotFound);
        }
        let value = if req.ignore_value {
            prev.as_ref().map(|p| p.value.clone()).unwrap_or_default()
        } else {
            req.value.clone()
        };
        let record = match &prev {
            Some(p) => Record {
                tombstone: false,
                create_revision: p.create_revision,
                version: p.version + 1,
                lease,
                value,
            },
            None => {
                self.keys_delta += 1;
                Record {
                    tombstone: false,
                    create_revision: self.revision + 1,
                    version: 1,
                    lease,
                    value,
                }
            }
        };
        self.write_row(&req.key, &record)?;
        let before = prev.as_ref().map_or(0, |p| p.lease);
        if before != lease {
            if before != 0 {
                self.store
                    .lease_keys
                    .delete(self.txn, &lease_key(before, &req.key))?;
            }
            if lease != 0 {
                self.store
                    .lease_keys
                    .put(self.txn, &lease_key(lease, &req.key), &[])?;
            }
        }
        Ok(PutResponse {
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    /// etcd's delete_range.
    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, KvError> {
        let rev = self.read_revision();
        let mut victims = Vec::new();
        self.store
            .scan(self.txn, &req.key, &req.range_end, rev, |kv| {
                victims.push(kv(req.prev_kv)?);
                Ok(())
            })?;
        for kv in &victims {
            let tomb = Record {
                tombstone: true,
                create_revision: 0,
                version: 0,
                lease: 0,
                value: Vec::new(),
            };
            self.write_row(&kv.key, &tomb)?;
            self.keys_delta -= 1;
            if kv.lease != 0 {
                self.store
                    .lease_keys
                    .delete(self.txn, &lease_key(kv.lease, &kv.key))?;
            }
        }
        let deleted = victims.len() as i64;
        Ok(DeleteRangeResponse {
            deleted,
            prev_kvs: if req.prev_kv { victims } else { Vec::new() },
        })
    }

    /// etcd's range, seeing this command's own writes.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, KvError> {
        self.store.range_at(self.txn, req, self.read_revision())
    }

    /// etcd's txn. A failing operation is reported to the caller, who aborts the whole entry.
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, KvError> {
        let mut succeeded = true;
        for cmp in &req.compare {
            if !self.compare(cmp)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range(r)?),
                RequestOp::Put(p) => ResponseOp::Put(self.put(p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete_range(d)?),
                RequestOp::Txn(t) => ResponseOp::Txn(self.txn(t)?),
            });
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }

    fn compare(&self, cmp: &Compare) -> Result<bool, KvError> {
        let rev = self.read_revision();
        let mut kvs = Vec::new();
        self.store
            .scan(self.txn, &cmp.key, &cmp.range_end, rev, |kv| {
                kvs.push(kv(matches!(cmp.target, CompareTarget::Value(_)))?);
                Ok(())
            })?;
        if kvs.is_empty() {
            // A value compare on a missing key always fails; other targets compare against zero.
            if matches!(cmp.target, CompareTarget::Value(_)) {
                return Ok(false);
            }
            return Ok(compare_kv(cmp, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(cmp, kv)))
    }

    /// Removes history below `revision`, keeping each key's newest state at or below it.
    pub fn compact(&mut self, revision: i64) -> Result<(), KvError> {
        let compacted = self.store.compacted_revision(self.txn)?;
        if revision <= compacted {
            return Err(KvError::Compacted);
        }
        if revision > self.revision {
            return Err(KvError::FutureRevision);
        }
        let upper = rev_key(revision, u32::MAX);
        let mut changes = Vec::new();
        for item in self.store.changes.range(
            self.txn,
            &(Bound::Unbounded, Bound::Included(upper.as_slice())),
        )? {
            let (rev, key) = item?;
            changes.push((rev.to_vec(), key.to_vec()));
        }
        for (rev, key) in changes {
            let (main, sub) = super::encoding::parse_rev(&rev)
                .ok_or_else(|| KvError::Storage("bad change key".into()))?;
            // Every older row of this key is superseded by this one, which is at or below `revision`.
            let mut lower = escape_key(&key);
            let mut this_row = lower.clone();
            push_rev(&mut lower, 0, 0);
            push_rev(&mut this_row, main, sub);
            let older = (
                Bound::Included(lower.as_slice()),
                Bound::Excluded(this_row.as_slice()),
            );
            self.store.kv.delete_range(self.txn, &older)?;
            if main < revision {
                let tombstone = match self.store.kv.get(self.txn, &this_row)? {
                    Some(bytes) => decode::<RecordRef>(bytes)?.tombstone,
                    None => false,
                };
                if tombstone {
                    self.store.kv.delete(self.txn, &this_row)?;
                }
                self.store.changes.delete(self.txn, &rev)?;
            }
        }
        self.store.meta_put(self.txn, META_COMPACTED, &revision)?;
        Ok(())
    }
}

fn compare_kv(cmp: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match &cmp.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
    };
    match cmp.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

/// Checks a transaction before it is proposed: the operation count and that
/// no key is written twice (etcd's duplicate-key rule).
pub fn check_txn(req: &TxnRequest) -> Result<(), KvError> {
    fn count(req: &TxnRequest) -> usize {
        let branch = |ops: &[RequestOp]| -> usize {
            ops.iter()
                .map(|op| match op {
                    RequestOp::Txn(t) => 1 + count(t),
                    _ => 1,
                })
                .sum()
        };
        branch(&req.success).max(branch(&req.failure))
    }
    if count(req) > TXN_OPS_MAX || req.compare.len() > TXN_OPS_MAX {
        return Err(KvError::TooManyOps);
    }
    fn check_branch(ops: &[RequestOp]) -> Result<(), KvError> {
        let mut puts: Vec<&[u8]> = Vec::new();
        let mut deletes: Vec<(&[u8], &[u8])> = Vec::new();
        for op in ops {
            match op {
                RequestOp::Put(p) => {
                    if puts.contains(&p.key.as_slice()) {
                        return Err(KvError::DuplicateKey);
                    }
                    puts.push(&p.key);
                }
                RequestOp::DeleteRange(d) => deletes.push((&d.key, &d.range_end)),
                RequestOp::Txn(t) => {
                    check_branch(&t.success)?;
                    check_branch(&t.failure)?;
                }
                RequestOp::Range(_) => {}
            }
        }
        for key in &puts {
            for (start, end) in &deletes {
                let hit = if end.is_empty() {
                    key == start
                } else {
                    *key >= *start && (*end == [0] || key < end)
                };
                if hit {
                    return Err(KvError::DuplicateKey);
                }
            }
        }
        Ok(())
    }
    check_branch(&req.success)?;
    check_branch(&req.failure)
}

#[cfg(test)]
mod tests;
