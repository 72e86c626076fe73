//! The Raft log's files: numbered segments in `log/`, each a sequence of
//! checksummed records written once, in order, and made durable with one
//! `fdatasync` per batch.
//!
//! A record is `[len u32][crc32 u32][kind u8][payload]` (little-endian;
//! `len` and the checksum cover kind and payload). Every segment opens with
//! a [`Record::State`] holding the vote, committed id and purged id at its
//! creation, so older segments can be deleted without losing them. Later
//! records change that state: entries, votes, committed ids, truncations and
//! purges. Reading a segment stops at a zero length (the rest is the zeroes
//! written ahead of the write position) or at the end of the file.
//!
//! Space is zeroed ahead of the write position in chunks, so most
//! `fdatasync`s write data blocks only and leave the file's size and
//! extents alone (an append that grows the file also costs a journal
//! commit). Segments are never written again after the process that wrote
//! them stops: every start trims the last segment to its valid records and
//! begins a new one. A record that fails its checksum is therefore only
//! possible at the end of the last segment (a write torn by a crash, never
//! acknowledged) and is dropped there; anywhere else it is corruption and
//! opening fails.

use super::types::{LogId, StorageError};
use openraft::{ErrorSubject, ErrorVerb, Vote};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A segment is closed once a write would take it past this size.
pub(crate) const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Zeroes are written ahead of the write position this much at a time.
const ZERO_CHUNK: u64 = 4 * 1024 * 1024;
/// Bytes before a record's kind: length and checksum.
const HEAD: usize = 8;
/// At most what a record adds to its payload: the head, the kind and a log
/// id (three varints); a size hint for buffers, not a limit.
pub(crate) const RECORD_OVERHEAD: usize = HEAD + 1 + 40;

const KIND_STATE: u8 = 1;
const KIND_ENTRY: u8 = 2;
const KIND_VOTE: u8 = 3;
const KIND_COMMITTED: u8 = 4;
const KIND_TRUNCATE: u8 = 5;
const KIND_PURGE: u8 = 6;

/// The vote, committed id and purged id: what a segment's first record holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct LogMeta {
    pub vote: Option<Vote<u64>>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
}

/// One record of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record<'a> {
    /// The log's state when the segment was created (always first).
    State(LogMeta),
    /// An entry: its id and its postcard encoding.
    Entry(LogId, &'a [u8]),
    /// The vote changed.
    Vote(Vote<u64>),
    /// The committed id changed (a hint for the next start).
    Committed(Option<LogId>),
    /// Entries from this index on are gone.
    Truncate(u64),
    /// Entries up to and including this id are gone.
    Purge(LogId),
}

/// Where an entry's encoding lies on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub id: LogId,
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn postcard_io(e: postcard::Error) -> io::Error {
    invalid(e.to_string())
}

/// Appends `record` to `out`; returns where in `out` an entry's encoding
/// starts (the payload after its id), or the record's start for others.
pub(crate) fn encode(record: &Record<'_>, out: &mut Vec<u8>) -> io::Result<usize> {
    let start = out.len();
    out.extend_from_slice(&[0; HEAD]);
    let mut at = start;
    match record {
        Record::State(meta) => {
            out.push(KIND_STATE);
            postcard::to_io(meta, &mut *out).map_err(postcard_io)?;
        }
        Record::Entry(id, bytes) => {
            out.push(KIND_ENTRY);
            postcard::to_io(id, &mut *out).map_err(postcard_io)?;
            at = out.len();
            out.extend_from_slice(bytes);
        }
        Record::Vote(vote) => {
            out.push(KIND_VOTE);
            postcard::to_io(vote, &mut *out).map_err(postcard_io)?;
        }
        Record::Committed(c) => {
            out.push(KIND_COMMITTED);
            postcard::to_io(c, &mut *out).map_err(postcard_io)?;
        }
        Record::Truncate(index) => {
            out.push(KIND_TRUNCATE);
            out.extend_from_slice(&index.to_le_bytes());
        }
        Record::Purge(id) => {
            out.push(KIND_PURGE);
            postcard::to_io(id, &mut *out).map_err(postcard_io)?;
        }
    }
    let body = &out[start + HEAD..];
    let len = u32::try_from(body.len())
        .map_err(|_| invalid(format!("a log record of {} bytes is too large", body.len())))?;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEAD].copy_from_slice(&crc.to_le_bytes());
    Ok(at)
}

/// Decodes a record's body (kind and payload); an entry's encoding is
/// returned with its offset within the body.
fn decode(body: &[u8]) -> io::Result<(Record<'_>, usize)> {
    let (&kind, payload) = body
        .split_first()
        .ok_or_else(|| invalid("an empty log record".into()))?;
    let record = match kind {
        KIND_STATE => Record::State(postcard::from_bytes(payload).map_err(postcard_io)?),
        KIND_ENTRY => {
            let (id, rest) = postcard::take_from_bytes::<LogId>(payload).map_err(postcard_io)?;
            let at = body.len() - rest.len();
            return Ok((Record::Entry(id, rest), at));
        }
        KIND_VOTE => Record::Vote(postcard::from_bytes(payload).map_err(postcard_io)?),
        KIND_COMMITTED => Record::Committed(postcard::from_bytes(payload).map_err(postcard_io)?),
        KIND_TRUNCATE => {
            let bytes: [u8; 8] = payload
                .try_into()
                .map_err(|_| invalid("a truncate record of the wrong size".into()))?;
            Record::Truncate(u64::from_le_bytes(bytes))
        }
        KIND_PURGE => Record::Purge(postcard::from_bytes(payload).map_err(postcard_io)?),
        other => return Err(invalid(format!("unknown log record kind {other}"))),
    };
    Ok((record, 0))
}

/// The path of segment `seq` in `dir`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.log"))
}

/// A segment as found on disk.
pub(crate) struct Segment {
    pub file: Arc<File>,
    /// The highest entry index it holds, if any.
    pub max_index: Option<u64>,
}

/// What the segments in a directory add up to.
#[derive(Default)]
pub(crate) struct Replayed {
    pub meta: LogMeta,
    pub entries: BTreeMap<u64, Loc>,
    pub segments: BTreeMap<u64, Segment>,
}

impl Replayed {
    fn apply(&mut self, record: &Record<'_>, loc: Option<Loc>) {
        match record {
            Record::State(meta) => {
                self.meta.vote = meta.vote;
                self.meta.committed = meta.committed;
                if let Some(p) = meta.purged {
                    self.purge(p);
                }
            }
            Record::Entry(..) => {
                if let Some(loc) = loc {
                    self.entries.split_off(&loc.id.index);
                    self.entries.insert(loc.id.index, loc);
                }
            }
            Record::Vote(v) => self.meta.vote = Some(*v),
            Record::Committed(c) => self.meta.committed = *c,
            Record::Truncate(index) => {
                self.entries.split_off(index);
            }
            Record::Purge(id) => self.purge(*id),
        }
    }

    fn purge(&mut self, id: LogId) {
        if !matches!(self.meta.purged, Some(p) if p.index > id.index) {
            self.meta.purged = Some(id);
        }
        drop_through(&mut self.entries, id.index);
    }
}

/// Drops the entries up to and including `index` (a purge).
pub(crate) fn drop_through(entries: &mut BTreeMap<u64, Loc>, index: u64) {
    *entries = match index.checked_add(1) {
        Some(next) => entries.split_off(&next),
        None => BTreeMap::new(),
    };
}

/// The sequence numbers of the segments in `dir`, oldest first; removes
/// segments left half-made by a crash (`*.tmp`).
fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            std::fs::remove_file(item.path())?;
        } else if let Some(hex) = name.strip_suffix(".log") {
            if let Ok(seq) = u64::from_str_radix(hex, 16) {
                seqs.push(seq);
            }
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Reads every segment in `dir` (creating it if missing), trims a torn
/// record off the end of the last one, and returns the log they hold.
pub(crate) fn replay(dir: &Path) -> io::Result<Replayed> {
    std::fs::create_dir_all(dir)?;
    let seqs = list(dir)?;
    let mut replayed = Replayed::default();
    for (i, &seq) in seqs.iter().enumerate() {
        let last = i + 1 == seqs.len();
        let path = segment_path(dir, seq);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let mut data = Vec::new();
        (&file).read_to_end(&mut data)?;
        let mut pos = 0usize;
        let mut max_index = None;
        let mut torn = None;
        loop {
            let Some(head) = data.get(pos..pos + HEAD) else {
                if pos < data.len() {
                    torn = Some("a record header cut short");
                }
                break;
            };
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            if len == 0 {
                break;
            }
            let Some(body) = data.get(pos + HEAD..pos + HEAD + len) else {
                torn = Some("a record cut short");
                break;
            };
            if crc32fast::hash(body) != crc {
                torn = Some("a record whose checksum does not match");
                break;
            }
            let (record, at) = decode(body)
                .map_err(|e| invalid(format!("{}: at byte {pos}: {e}", path.display())))?;
            if pos == 0 && !matches!(record, Record::State(_)) {
                return Err(invalid(format!(
                    "{}: does not start with the log's state",
                    path.display()
                )));
            }
            let loc = match &record {
                Record::Entry(id, bytes) => {
                    max_index = max_index.max(Some(id.index));
                    Some(Loc {
                        id: *id,
                        segment: seq,
                        offset: (pos + HEAD + at) as u64,
                        len: bytes.len() as u32,
                    })
                }
                _ => None,
            };
            replayed.apply(&record, loc);
            pos += HEAD + len;
        }
        if pos == 0 {
            return Err(invalid(format!(
                "{}: the segment has no valid first record",
                path.display()
            )));
        }
        if let Some(why) = torn {
            if !last {
                return Err(invalid(format!(
                    "{}: {why} at byte {pos}, and later segments follow (the log is corrupt)",
                    path.display()
                )));
            }
            tracing::warn!(segment = %path.display(), at = pos, "dropping a torn write at the end of the Raft log (never acknowledged)");
        }
        if last && (data.len() as u64) > pos as u64 {
            // Nothing is written here again: trim the zeroes and anything torn.
            file.set_len(pos as u64)?;
            file.sync_all()?;
        }
        replayed.segments.insert(
            seq,
            Segment {
                file: Arc::new(file),
                max_index,
            },
        );
    }
    Ok(replayed)
}

/// The segment being written.
pub(crate) struct Active {
    pub seq: u64,
    pub file: Arc<File>,
    /// Where the next record goes.
    pos: u64,
    /// Bytes from the start known to be written (records or zeroes).
    zeroed: u64,
}

impl Active {
    /// Creates segment `seq` in `dir` starting with `meta`; it appears under
    /// its name only once its first record is durable.
    pub(crate) fn create(dir: &Path, seq: u64, meta: &LogMeta) -> io::Result<Active> {
        let active = Active::begin(dir, seq, meta)?;
        active.publish(dir)?;
        Ok(active)
    }

    /// Starts segment `seq` under a temporary name, so that records written
    /// before [`Active::publish`] appear all at once or not at all.
    pub(crate) fn begin(dir: &Path, seq: u64, meta: &LogMeta) -> io::Result<Active> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(segment_path(dir, seq).with_extension("tmp"))?;
        let mut active = Active {
            seq,
            file: Arc::new(file),
            pos: 0,
            zeroed: 0,
        };
        let mut buf = Vec::new();
        encode(&Record::State(*meta), &mut buf)?;
        active.write(&buf)?;
        Ok(active)
    }

    /// Makes what was written durable and gives the segment its name.
    pub(crate) fn publish(&self, dir: &Path) -> io::Result<()> {
        self.file.sync_all()?;
        let path = segment_path(dir, self.seq);
        std::fs::rename(path.with_extension("tmp"), &path)?;
        crate::store::sync_dir(dir)
    }

    /// Bytes written to the segment so far.
    pub(crate) fn len(&self) -> u64 {
        self.pos
    }

    /// Writes `buf` at the write position (not yet durable); returns its
    /// offset in the file.
    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<u64> {
        let at = self.pos;
        let end = at + buf.len() as u64;
        if end > self.zeroed {
            // Zero ahead first, so the data write lands inside the file.
            let target = end.max(self.zeroed + ZERO_CHUNK);
            let zeroes = vec![0u8; 256 * 1024];
            let mut z = self.zeroed.max(end);
            while z < target {
                let n = (target - z).min(zeroes.len() as u64) as usize;
                self.file.write_all_at(&zeroes[..n], z)?;
                z += n as u64;
            }
            self.zeroed = target;
        }
        self.file.write_all_at(buf, at)?;
        self.pos = end;
        Ok(at)
    }

    /// Cuts the zeroes written ahead off a segment that is closed.
    pub(crate) fn trim(&self) -> io::Result<()> {
        self.file.set_len(self.pos)
    }

    /// Makes everything written durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Deletes segment `seq` from `dir`.
pub(crate) fn remove(dir: &Path, seq: u64) -> io::Result<()> {
    std::fs::remove_file(segment_path(dir, seq))
}

/// Reads an entry's encoding at `loc` from `file`.
pub(crate) fn read_at(file: &File, loc: &Loc) -> Result<Vec<u8>, StorageError> {
    let mut bytes = vec![0u8; loc.len as usize];
    file.read_exact_at(&mut bytes, loc.offset)
        .map_err(|e| StorageError::from_io_error(ErrorSubject::Log(loc.id), ErrorVerb::Read, e))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::testing::id;

    fn write_records(active: &mut Active, records: &[Record<'_>]) -> Vec<Loc> {
        let mut buf = Vec::new();
        let mut at = Vec::new();
        for r in records {
            let off = encode(r, &mut buf).expect("encode");
            if let Record::Entry(id, bytes) = r {
                at.push((*id, off, bytes.len()));
            }
        }
        let base = active.write(&buf).expect("write");
        active.sync().expect("sync");
        at.into_iter()
            .map(|(id, off, len)| Loc {
                id,
                segment: active.seq,
                offset: base + off as u64,
                len: len as u32,
            })
            .collect()
    }

    fn indexes(r: &Replayed) -> Vec<(u64, u64)> {
        r.entries
            .values()
            .map(|l| (l.id.index, l.id.leader_id.term))
            .collect()
    }

    #[test]
    fn records_replay_into_the_log_they_describe() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = LogMeta::default();
        let mut a = Active::create(dir.path(), 1, &meta).expect("create");
        let vote = Vote::new(3, 2);
        let locs = write_records(
            &mut a,
            &[
                Record::Entry(id(1, 1), b"one"),
                Record::Entry(id(1, 2), b"two"),
                Record::Entry(id(1, 3), b"three"),
                Record::Vote(vote),
                Record::Truncate(3),
                Record::Entry(id(2, 3), b"THREE"),
                Record::Committed(Some(id(1, 2))),
                Record::Purge(id(1, 1)),
            ],
        );
        drop(a);
        let r = replay(dir.path()).expect("replay");
        assert_eq!(indexes(&r), vec![(2, 1), (3, 2)]);
        assert_eq!(r.meta.vote, Some(vote));
        assert_eq!(r.meta.committed, Some(id(1, 2)));
        assert_eq!(r.meta.purged, Some(id(1, 1)));
        let seg = &r.segments[&1];
        assert_eq!(seg.max_index, Some(3));
        let three = r.entries[&3];
        assert_eq!(three, locs[3]);
        assert_eq!(read_at(&seg.file, &three).expect("read"), b"THREE");
        // The zeroes written ahead were trimmed off the closed segment.
        let len = std::fs::metadata(segment_path(dir.path(), 1))
            .expect("stat")
            .len();
        assert!(len < 200, "{len}");
    }

    #[test]
    fn a_torn_last_record_is_dropped_but_corruption_before_later_segments_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Active::create(dir.path(), 1, &LogMeta::default()).expect("create");
        let locs = write_records(
            &mut a,
            &[
                Record::Entry(id(1, 1), b"one"),
                Record::Entry(id(1, 2), b"two"),
            ],
        );
        drop(a);
        // Tear the second record: flip a byte of its payload.
        let path = segment_path(dir.path(), 1);
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.write_all_at(b"X", locs[1].offset).expect("tear");
        drop(f);
        let r = replay(dir.path()).expect("replay");
        assert_eq!(indexes(&r), vec![(1, 1)]);
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            locs[0].offset + u64::from(locs[0].len)
        );

        // Now damage segment 1 while a segment 2 follows it: refused.
        let meta = r.meta;
        drop(r);
        let mut b = Active::create(dir.path(), 2, &meta).expect("create");
        write_records(&mut b, &[Record::Entry(id(1, 2), b"two")]);
        drop(b);
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.write_all_at(b"Y", locs[0].offset).expect("damage");
        drop(f);
        let err = replay(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn a_later_segment_carries_the_state_of_deleted_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Active::create(dir.path(), 1, &LogMeta::default()).expect("create");
        write_records(
            &mut a,
            &[
                Record::Entry(id(1, 1), b"one"),
                Record::Vote(Vote::new(1, 1)),
            ],
        );
        drop(a);
        let meta = LogMeta {
            vote: Some(Vote::new(1, 1)),
            committed: Some(id(1, 1)),
            purged: Some(id(1, 1)),
        };
        let mut b = Active::create(dir.path(), 2, &meta).expect("create");
        write_records(&mut b, &[Record::Entry(id(1, 2), b"two")]);
        drop(b);
        remove(dir.path(), 1).expect("remove");
        // A segment half-made by a crash is ignored and removed.
        std::fs::write(dir.path().join("0000000000000003.tmp"), b"junk").expect("tmp");
        let r = replay(dir.path()).expect("replay");
        assert_eq!(r.meta, meta);
        assert_eq!(indexes(&r), vec![(2, 1)]);
        assert!(!dir.path().join("0000000000000003.tmp").exists());
    }
}
