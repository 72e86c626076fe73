//! Prefix mirroring as the state machine sees it: replication rules, each
//! target's checkpoint, and the batches a replicator proposes. A batch applies
//! the source's changes and moves the checkpoint in the same LMDB transaction,
//! so a batch is applied exactly once whatever crashes or leader changes
//! happen around it.

use super::{prefix_end, DeleteRangeRequest, KvError, KvStore, KvWriter, PutRequest, RangeRequest};
use super::{Command, RequestOp, TxnRequest};
use heed::{RoTxn, RwTxn};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const META_RULES: &str = "mirror.rules";
const META_CHECKPOINT: &str = "mirror.checkpoint.";
const META_ORPHANS: &str = "mirror.orphans.";

/// Most writes of a demoted source listed for an operator per rule.
pub const ORPHANS_MAX: usize = 10_000;

/// A replication rule: the keys under `prefix` are written in `source` and
/// mirrored to every DC of `targets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorRule {
    /// The rule's name (its identity across DCs).
    pub name: String,
    /// The mirrored prefix.
    pub prefix: Vec<u8>,
    /// The DC whose writes are mirrored.
    pub source: String,
    /// The DCs holding read-only copies.
    pub targets: Vec<String>,
    /// Whether a write in a target is sent to the source instead of refused.
    pub forward_writes: bool,
    /// Rises with every change of the rule; batches of another epoch are refused.
    pub epoch: u64,
    /// Who made this epoch's version (a DC name, or `config`); breaks ties
    /// between two versions of one epoch made at once.
    pub set_by: String,
    /// Whether the rule was removed (kept so the removal reaches every DC).
    pub deleted: bool,
    /// When the source was changed by a promotion: the old source, and the
    /// last revision of it the new source held (writes after it were never
    /// mirrored).
    pub handover: Option<Handover>,
}

/// What a promotion knew of the source it replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The former source DC.
    pub from: String,
    /// The last revision of the former source mirrored by the new source.
    pub revision: i64,
}

impl MirrorRule {
    /// Whether this version supersedes `other` (a higher epoch, or the same
    /// epoch set by a greater name).
    pub fn supersedes(&self, other: &MirrorRule) -> bool {
        (self.epoch, &self.set_by) > (other.epoch, &other.set_by)
    }

    /// Whether `dc` holds a read-only copy under this rule.
    pub fn is_target(&self, dc: &str) -> bool {
        !self.deleted && self.targets.iter().any(|t| t == dc)
    }

    /// Whether `dc` takes part (as source or target).
    pub fn involves(&self, dc: &str) -> bool {
        self.source == dc || self.targets.iter().any(|t| t == dc)
    }

    /// Whether the rule's prefix overlaps `prefix` (one starts with the other).
    pub fn overlaps(&self, prefix: &[u8]) -> bool {
        self.prefix.starts_with(prefix) || prefix.starts_with(&self.prefix)
    }

    fn covers_range(&self, key: &[u8], range_end: &[u8]) -> bool {
        if range_end.is_empty() {
            return key.starts_with(&self.prefix);
        }
        let end = prefix_end(&self.prefix);
        // [key, range_end) meets [prefix, end): key < end and range_end > prefix.
        let below_end = end == [0] || key < end.as_slice();
        let above_start = range_end == [0] || range_end > self.prefix.as_slice();
        below_end && above_start
    }
}

/// How far a target has applied a rule's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Checkpoint {
    /// The rule epoch the revision belongs to.
    pub epoch: u64,
    /// Every source change up to this revision is applied.
    pub source_revision: i64,
}

/// One change of a mirrored key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MirrorChange {
    /// The key now holds this value.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// The key was deleted (by a client, or by its lease's expiry).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

/// What a replicator proposes in a target DC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorBatch {
    /// The rule.
    pub rule: String,
    /// The rule epoch the replicator follows.
    pub epoch: u64,
    /// The checkpoint's revision this batch continues from; ignored for a resync.
    pub after: i64,
    /// The source revision the target holds once the batch is applied.
    pub through: i64,
    /// Whether this is a resync: `revisions` holds a single entry listing
    /// every key under the prefix at `through`, and keys missing from it are
    /// deleted.
    pub resync: bool,
    /// The source's changes, one entry per source revision, in order.
    pub revisions: Vec<(i64, Vec<MirrorChange>)>,
}

impl MirrorChange {
    /// Bytes of the key and value it carries.
    pub fn payload_bytes(&self) -> usize {
        match self {
            MirrorChange::Put { key, value } => key.len() + value.len(),
            MirrorChange::Delete { key } => key.len(),
        }
    }
}

impl MirrorBatch {
    /// Roughly how many bytes the batch takes in a log entry.
    pub fn payload_bytes(&self) -> usize {
        self.revisions
            .iter()
            .flat_map(|(_, c)| c)
            .map(|c| 16 + c.payload_bytes())
            .sum()
    }
}

/// A write the former source accepted after the revision its successor held:
/// never mirrored, replaced by the successor's content, listed for an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    /// The key.
    pub key: Vec<u8>,
    /// Its value here before the resync (empty for a delete).
    pub value: Vec<u8>,
    /// Its local mod revision.
    pub revision: i64,
}

/// Every rule this DC knows, deleted ones included.
pub fn rules(store: &KvStore, txn: &RoTxn) -> Result<BTreeMap<String, MirrorRule>, KvError> {
    Ok(store.meta_get(txn, META_RULES)?.unwrap_or_default())
}

/// A rule's checkpoint in this DC (zero if it never applied a batch).
pub fn checkpoint(store: &KvStore, txn: &RoTxn, rule: &str) -> Result<Checkpoint, KvError> {
    Ok(store
        .meta_get(txn, &format!("{META_CHECKPOINT}{rule}"))?
        .unwrap_or_default())
}

/// Writes this DC accepted as a source and lost to a promotion, for a rule.
pub fn orphans(store: &KvStore, txn: &RoTxn, rule: &str) -> Result<Vec<Orphan>, KvError> {
    Ok(store
        .meta_get(txn, &format!("{META_ORPHANS}{rule}"))?
        .unwrap_or_default())
}

/// Checks a rule against the others: a name, a non-empty prefix, targets
/// that differ from the source and each other, and no overlap with another
/// live rule.
pub fn check_rule(rule: &MirrorRule, others: &BTreeMap<String, MirrorRule>) -> Result<(), KvError> {
    let bad = |m: String| Err(KvError::InvalidArgument(m));
    if rule.deleted {
        return Ok(());
    }
    if rule.name.is_empty()
        || !rule
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return bad("rule name must be non-empty letters, digits, '-', '_' or '.'".into());
    }
    if rule.prefix.is_empty() {
        return bad("rule prefix must not be empty".into());
    }
    if rule.source.is_empty() {
        return bad("rule source must name a datacenter".into());
    }
    if rule.targets.is_empty() {
        return bad("rule needs at least one target datacenter".into());
    }
    for (i, t) in rule.targets.iter().enumerate() {
        if *t == rule.source {
            return bad(format!("target {t:?} is the rule's source"));
        }
        if rule.targets[..i].contains(t) {
            return bad(format!("target {t:?} is listed twice"));
        }
    }
    for other in others.values() {
        if other.name != rule.name && !other.deleted && other.overlaps(&rule.prefix) {
            return bad(format!(
                "prefix {:?} overlaps rule {:?} (prefix {:?})",
                String::from_utf8_lossy(&rule.prefix),
                other.name,
                String::from_utf8_lossy(&other.prefix)
            ));
        }
    }
    Ok(())
}

/// Stores `rule` if it supersedes the stored version. Returns whether it did.
pub(crate) fn set_rule(
    store: &KvStore,
    txn: &mut RwTxn,
    rule: &MirrorRule,
) -> Result<bool, KvError> {
    let mut all = rules(store, txn)?;
    if let Some(existing) = all.get(&rule.name) {
        if !rule.supersedes(existing) {
            return Ok(false);
        }
    }
    check_rule(rule, &all)?;
    all.insert(rule.name.clone(), rule.clone());
    store.meta_put(txn, META_RULES, &all)?;
    Ok(true)
}

/// The live rules under which this DC is a target, for checking client writes.
pub(crate) struct ReadOnly(Vec<MirrorRule>);

impl ReadOnly {
    pub(crate) fn load(store: &KvStore, txn: &RoTxn, dc: &str) -> Result<ReadOnly, KvError> {
        Ok(ReadOnly(
            rules(store, txn)?
                .into_values()
                .filter(|r| r.is_target(dc))
                .collect(),
        ))
    }

    /// Refuses a client write that touches a mirrored prefix.
    pub(crate) fn check(&self, command: &Command) -> Result<(), KvError> {
        if self.0.is_empty() {
            return Ok(());
        }
        match command {
            Command::Put(p) => self.check_range(&p.key, &[]),
            Command::DeleteRange(d) => self.check_range(&d.key, &d.range_end),
            Command::Txn(t) => self.check_txn(t),
            _ => Ok(()),
        }
    }

    fn check_txn(&self, t: &TxnRequest) -> Result<(), KvError> {
        for op in t.success.iter().chain(t.failure.iter()) {
            match op {
                RequestOp::Put(p) => self.check_range(&p.key, &[])?,
                RequestOp::DeleteRange(d) => self.check_range(&d.key, &d.range_end)?,
                RequestOp::Txn(inner) => self.check_txn(inner)?,
                RequestOp::Range(_) => {}
            }
        }
        Ok(())
    }

    fn check_range(&self, key: &[u8], range_end: &[u8]) -> Result<(), KvError> {
        match self.0.iter().find(|r| r.covers_range(key, range_end)) {
            Some(rule) => Err(KvError::MirrorReadOnly {
                key: String::from_utf8_lossy(key).into_owned(),
                rule: rule.name.clone(),
                source_dc: rule.source.clone(),
                forward_writes: rule.forward_writes,
            }),
            None => Ok(()),
        }
    }
}

/// Applies a replicator's batch in a target DC: each source revision becomes
/// one revision here, and the checkpoint moves to `through`, all in the
/// caller's transaction. Refused (nothing written) unless the rule is live
/// with this DC as a target at the batch's epoch, and the batch continues
/// from exactly the stored checkpoint (a resync: does not go below it).
/// Returns the store's revision after the batch.
pub(crate) fn apply_batch(
    store: KvStore,
    txn: &mut RwTxn,
    batch: &MirrorBatch,
    dc: &str,
) -> Result<i64, KvError> {
    let refuse = |m: String| Err(KvError::MirrorRefused(m));
    let all = rules(&store, txn)?;
    let Some(rule) = all.get(&batch.rule).filter(|r| r.is_target(dc)) else {
        return refuse(format!("rule {:?} does not mirror into {dc}", batch.rule));
    };
    if batch.epoch != rule.epoch {
        return refuse(format!(
            "batch of epoch {} for rule {:?}, which is at epoch {}",
            batch.epoch, rule.name, rule.epoch
        ));
    }
    let at = checkpoint(&store, txn, &rule.name)?;
    let same_epoch = at.epoch == batch.epoch;
    if batch.resync {
        if same_epoch && batch.through < at.source_revision {
            return refuse(format!(
                "resync at source revision {} is below the checkpoint {}",
                batch.through, at.source_revision
            ));
        }
    } else if !same_epoch || batch.after != at.source_revision {
        return refuse(format!(
            "batch continues from {} (epoch {}); the checkpoint is {} (epoch {})",
            batch.after, batch.epoch, at.source_revision, at.epoch
        ));
    }
    if batch.through < batch.after && !batch.resync {
        return refuse("batch ends before it starts".into());
    }
    for (rev, _) in &batch.revisions {
        if (!batch.resync && *rev <= batch.after) || *rev > batch.through {
            return refuse(format!("change at revision {rev} outside the batch"));
        }
    }
    if batch.resync {
        resync(store, txn, rule, batch, dc)?;
    } else {
        for (_, changes) in &batch.revisions {
            let mut writer = KvWriter::new(store, txn)?;
            for change in changes {
                apply_change(&mut writer, change)?;
            }
            writer.finish()?;
        }
    }
    store.meta_put(
        txn,
        &format!("{META_CHECKPOINT}{}", rule.name),
        &Checkpoint {
            epoch: batch.epoch,
            source_revision: batch.through,
        },
    )?;
    store.revision(txn)
}

fn apply_change(writer: &mut KvWriter, change: &MirrorChange) -> Result<(), KvError> {
    match change {
        MirrorChange::Put { key, value } => {
            writer.put(&PutRequest {
                key: key.clone(),
                value: value.clone(),
                ..Default::default()
            })?;
        }
        MirrorChange::Delete { key } => {
            writer.delete_range(&DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            })?;
        }
    }
    Ok(())
}

/// Replaces the copy under the rule's prefix with the source's complete
/// content, at one revision: keys that differ are put, keys the source lacks
/// are deleted. When this DC was the source before a promotion, its writes
/// after the handover revision are recorded as orphans first.
fn resync(
    store: KvStore,
    txn: &mut RwTxn,
    rule: &MirrorRule,
    batch: &MirrorBatch,
    dc: &str,
) -> Result<(), KvError> {
    let mut wanted: BTreeMap<&[u8], &[u8]> = BTreeMap::new();
    for change in batch.revisions.iter().flat_map(|(_, c)| c) {
        match change {
            MirrorChange::Put { key, value } => {
                if !key.starts_with(&rule.prefix) {
                    return Err(KvError::MirrorRefused(
                        "resync carries a key outside the prefix".into(),
                    ));
                }
                wanted.insert(key, value);
            }
            MirrorChange::Delete { .. } => {
                return Err(KvError::MirrorRefused("resync carries a delete".into()))
            }
        }
    }
    let here = store.range(
        txn,
        &RangeRequest {
            key: rule.prefix.clone(),
            range_end: prefix_end(&rule.prefix),
            ..Default::default()
        },
    )?;
    if let Some(handover) = rule.handover.as_ref().filter(|h| h.from == dc) {
        let mut lost = orphans(&store, txn, &rule.name)?;
        for kv in here
            .kvs
            .iter()
            .filter(|kv| kv.mod_revision > handover.revision)
        {
            if wanted.get(kv.key.as_slice()) != Some(&kv.value.as_slice())
                && lost.len() < ORPHANS_MAX
            {
                lost.push(Orphan {
                    key: kv.key.clone(),
                    value: kv.value.clone(),
                    revision: kv.mod_revision,
                });
            }
        }
        store.meta_put(txn, &format!("{META_ORPHANS}{}", rule.name), &lost)?;
    }
    let mut writer = KvWriter::new(store, txn)?;
    for kv in &here.kvs {
        match wanted.get(kv.key.as_slice()) {
            Some(v) if *v == kv.value.as_slice() && kv.lease == 0 => {
                wanted.remove(kv.key.as_slice());
            }
            Some(_) => {}
            None => apply_change(
                &mut writer,
                &MirrorChange::Delete {
                    key: kv.key.clone(),
                },
            )?,
        }
    }
    for (key, value) in wanted {
        apply_change(
            &mut writer,
            &MirrorChange::Put {
                key: key.to_vec(),
                value: value.to_vec(),
            },
        )?;
    }
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, prefix: &str) -> MirrorRule {
        MirrorRule {
            name: name.into(),
            prefix: prefix.as_bytes().to_vec(),
            source: "dc1".into(),
            targets: vec!["dc2".into()],
            forward_writes: false,
            epoch: 1,
            set_by: "dc1".into(),
            deleted: false,
            handover: None,
        }
    }

    #[test]
    fn ranges_touching_a_prefix_are_found() {
        let r = rule("g", "/global/");
        assert!(r.covers_range(b"/global/a", b""));
        assert!(!r.covers_range(b"/globalx", b""));
        assert!(r.covers_range(b"/", b"\0"));
        assert!(r.covers_range(b"/a", b"/h"));
        assert!(!r.covers_range(b"/a", b"/global/"));
        assert!(r.covers_range(b"/global/z", b"/zzz"));
        assert!(!r.covers_range(b"/global0", b"/zzz"));
        assert!(r.covers_range(b"\0", b"\0"));
    }

    #[test]
    fn bad_rules_are_refused() {
        let mut others = BTreeMap::new();
        others.insert("g".into(), rule("g", "/global/"));
        assert!(check_rule(&rule("h", "/other/"), &others).is_ok());
        assert!(check_rule(&rule("g", "/global/x/"), &others).is_ok());
        assert!(check_rule(&rule("h", "/global/x/"), &others).is_err());
        assert!(check_rule(&rule("h", "/"), &others).is_err());
        assert!(check_rule(&rule("h", ""), &others).is_err());
        let mut same = rule("h", "/h/");
        same.targets = vec!["dc1".into()];
        assert!(check_rule(&same, &others).is_err());
        let mut none = rule("h", "/h/");
        none.targets.clear();
        assert!(check_rule(&none, &others).is_err());
        assert!(check_rule(&rule("bad name", "/h/"), &others).is_err());
    }

    fn store() -> (tempfile::TempDir, KvStore) {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::store::open_env(dir.path(), crate::store::EnvKind::State).unwrap();
        (dir, KvStore::open(env).unwrap())
    }

    fn set(s: &KvStore, r: &MirrorRule) -> bool {
        let mut w = s.env().write_txn().unwrap();
        let changed = set_rule(s, &mut w, r).unwrap();
        w.commit().unwrap();
        changed
    }

    fn apply(s: &KvStore, b: &MirrorBatch, dc: &str) -> Result<i64, KvError> {
        let mut w = s.env().write_txn().unwrap();
        let r = apply_batch(*s, &mut w, b, dc);
        if r.is_ok() {
            w.commit().unwrap();
        }
        r
    }

    fn put(key: &str, value: &str) -> MirrorChange {
        MirrorChange::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn batch(after: i64, through: i64, revs: Vec<(i64, Vec<MirrorChange>)>) -> MirrorBatch {
        MirrorBatch {
            rule: "g".into(),
            epoch: 1,
            after,
            through,
            resync: false,
            revisions: revs,
        }
    }

    fn content(s: &KvStore) -> Vec<(String, String, i64)> {
        let r = s.env().read_txn().unwrap();
        s.range(
            &r,
            &RangeRequest {
                key: b"/g/".to_vec(),
                range_end: prefix_end(b"/g/"),
                ..Default::default()
            },
        )
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key).unwrap(),
                String::from_utf8(kv.value).unwrap(),
                kv.version,
            )
        })
        .collect()
    }

    #[test]
    fn a_batch_applies_once_in_order_and_only_from_the_checkpoint() {
        let (_d, s) = store();
        set(&s, &rule("g", "/g/"));
        let b1 = batch(
            2,
            5,
            vec![(3, vec![put("/g/a", "1")]), (5, vec![put("/g/a", "2")])],
        );
        // A new rule starts with a full sync; incremental batches come after it.
        assert!(apply(&s, &b1, "dc2").is_err());
        let mut start = batch(0, 2, vec![(2, vec![])]);
        start.resync = true;
        assert_eq!(apply(&s, &start, "dc2").unwrap(), 1, "nothing to change");
        // One target revision per source revision.
        assert_eq!(apply(&s, &b1, "dc2").unwrap(), 3);
        // The same batch again is refused and changes nothing.
        assert!(matches!(
            apply(&s, &b1, "dc2"),
            Err(KvError::MirrorRefused(_))
        ));
        assert_eq!(content(&s), vec![("/g/a".into(), "2".into(), 2)]);
        // A gap is refused too.
        let gap = batch(6, 9, vec![(9, vec![put("/g/b", "x")])]);
        assert!(apply(&s, &gap, "dc2").is_err());
        let b2 = batch(
            5,
            9,
            vec![(
                9,
                vec![MirrorChange::Delete {
                    key: b"/g/a".to_vec(),
                }],
            )],
        );
        apply(&s, &b2, "dc2").unwrap();
        assert!(content(&s).is_empty());
        let r = s.env().read_txn().unwrap();
        assert_eq!(checkpoint(&s, &r, "g").unwrap().source_revision, 9);
    }

    #[test]
    fn batches_of_another_epoch_or_outside_a_target_are_refused() {
        let (_d, s) = store();
        set(&s, &rule("g", "/g/"));
        let b = batch(0, 3, vec![(3, vec![put("/g/a", "1")])]);
        assert!(apply(&s, &b, "dc1").is_err(), "the source applies no batch");
        let mut old = b.clone();
        old.epoch = 0;
        assert!(apply(&s, &old, "dc2").is_err());
        let mut outside = b.clone();
        outside.revisions = vec![(4, vec![put("/g/a", "1")])];
        assert!(apply(&s, &outside, "dc2").is_err());
        assert!(content(&s).is_empty());
    }

    #[test]
    fn client_writes_under_a_mirrored_prefix_are_refused_in_targets_only() {
        let (_d, s) = store();
        set(&s, &rule("g", "/g/"));
        let r = s.env().read_txn().unwrap();
        let p = Command::Put(PutRequest {
            key: b"/g/a".to_vec(),
            ..Default::default()
        });
        let err = ReadOnly::load(&s, &r, "dc2")
            .unwrap()
            .check(&p)
            .unwrap_err();
        assert!(err.to_string().contains("dc1"), "{err}");
        assert!(ReadOnly::load(&s, &r, "dc1").unwrap().check(&p).is_ok());
        let outside = Command::Put(PutRequest {
            key: b"/h".to_vec(),
            ..Default::default()
        });
        assert!(ReadOnly::load(&s, &r, "dc2")
            .unwrap()
            .check(&outside)
            .is_ok());
        let nested = Command::Txn(TxnRequest {
            failure: vec![RequestOp::Txn(TxnRequest {
                success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b"\0".to_vec(),
                    range_end: b"\0".to_vec(),
                    ..Default::default()
                })],
                ..Default::default()
            })],
            ..Default::default()
        });
        assert!(ReadOnly::load(&s, &r, "dc2")
            .unwrap()
            .check(&nested)
            .is_err());
    }

    #[test]
    fn a_resync_replaces_the_copy_and_lists_a_demoted_sources_lost_writes() {
        let (_d, s) = store();
        // This DC (dc1) was the source; dc2 was promoted holding dc1 up to revision 3.
        let mut promoted = rule("g", "/g/");
        promoted.source = "dc2".into();
        promoted.targets = vec!["dc1".into()];
        promoted.epoch = 2;
        promoted.set_by = "dc2".into();
        promoted.handover = Some(Handover {
            from: "dc1".into(),
            revision: 3,
        });
        {
            // Local writes at revisions 2 and 3, then one after the handover.
            let mut w = s.env().write_txn().unwrap();
            for changes in [
                vec![put("/g/a", "1"), put("/g/gone", "x")],
                vec![put("/g/late", "never mirrored")],
                vec![put("/g/late", "lost")],
            ] {
                let mut k = KvWriter::new(s, &mut w).unwrap();
                for change in &changes {
                    apply_change(&mut k, change).unwrap();
                }
                k.finish().unwrap();
            }
            w.commit().unwrap();
        }
        set(&s, &promoted);
        let mut resync = batch(0, 40, vec![(40, vec![put("/g/a", "1"), put("/g/b", "2")])]);
        resync.epoch = 2;
        resync.resync = true;
        let before = s.revision(&s.env().read_txn().unwrap()).unwrap();
        assert_eq!(
            apply(&s, &resync, "dc1").unwrap(),
            before + 1,
            "one revision"
        );
        assert_eq!(
            content(&s),
            vec![
                ("/g/a".into(), "1".into(), 1),
                ("/g/b".into(), "2".into(), 1)
            ]
        );
        let r = s.env().read_txn().unwrap();
        let lost = orphans(&s, &r, "g").unwrap();
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].value, b"lost");
        drop(r);
        // A resync below the checkpoint of the same epoch is refused.
        resync.through = 39;
        assert!(apply(&s, &resync, "dc1").is_err());
    }

    #[test]
    fn newer_epochs_supersede() {
        let a = rule("g", "/g/");
        let mut b = a.clone();
        assert!(!b.supersedes(&a));
        b.set_by = "dc2".into();
        assert!(b.supersedes(&a));
        b.epoch = 0;
        assert!(!b.supersedes(&a));
    }
}
