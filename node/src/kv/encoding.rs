//! Order-preserving encodings of LMDB keys.
//!
//! `kv` rows are keyed by `escape(key) ++ main(u64 BE) ++ sub(u32 BE)`. The
//! escape turns each 0x00 byte into 0x00 0xFF and ends the key with 0x00 0x00,
//! so encoded keys sort exactly like the raw keys and no key's encoding is a
//! prefix of another's: all revisions of one key are adjacent and in order.

/// Bytes of the revision suffix of a `kv` row key.
pub const REV_BYTES: usize = 12;

/// Escapes a user key (with its terminator).
pub fn escape_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2 + REV_BYTES);
    escape_into(key, &mut out);
    out.extend_from_slice(&[0, 0]);
    out
}

/// Escapes a user key without its terminator: the exclusive upper bound for a range end.
pub fn escape_bound(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2);
    escape_into(key, &mut out);
    out
}

fn escape_into(key: &[u8], out: &mut Vec<u8>) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
}

/// The `kv` row key of `key` at revision (main, sub).
pub fn row_key(key: &[u8], main: i64, sub: u32) -> Vec<u8> {
    let mut out = escape_key(key);
    push_rev(&mut out, main, sub);
    out
}

/// Appends a revision to an escaped key.
pub fn push_rev(out: &mut Vec<u8>, main: i64, sub: u32) {
    out.extend_from_slice(&(main as u64).to_be_bytes());
    out.extend_from_slice(&sub.to_be_bytes());
}

/// The key of a `changes` row.
pub fn rev_key(main: i64, sub: u32) -> [u8; REV_BYTES] {
    let mut out = [0u8; REV_BYTES];
    out[..8].copy_from_slice(&(main as u64).to_be_bytes());
    out[8..].copy_from_slice(&sub.to_be_bytes());
    out
}

/// Splits a revision (main, sub) off 12 bytes.
pub fn parse_rev(bytes: &[u8]) -> Option<(i64, u32)> {
    if bytes.len() != REV_BYTES {
        return None;
    }
    let main = u64::from_be_bytes(bytes[..8].try_into().ok()?) as i64;
    let sub = u32::from_be_bytes(bytes[8..].try_into().ok()?);
    Some((main, sub))
}

/// Splits a `kv` row key into (escaped key with terminator, main, sub).
pub fn split_row_key(row: &[u8]) -> Option<(&[u8], i64, u32)> {
    if row.len() < REV_BYTES + 2 {
        return None;
    }
    let (escaped, rev) = row.split_at(row.len() - REV_BYTES);
    let (main, sub) = parse_rev(rev)?;
    Some((escaped, main, sub))
}

/// Decodes an escaped key with its terminator back to the user key.
pub fn unescape_key(escaped: &[u8]) -> Option<Vec<u8>> {
    let body = escaped.strip_suffix(&[0, 0])?;
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        out.push(b);
        if b == 0 {
            if body.get(i + 1) != Some(&0xFF) {
                return None;
            }
            i += 1;
        }
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_preserves_order_and_round_trips() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"\0",
            b"\0\0",
            b"\0\x01",
            b"a",
            b"a\0",
            b"a\0b",
            b"a\x01",
            b"ab",
            b"b",
            b"\xff",
            b"\xff\xff",
        ];
        for w in keys.windows(2) {
            assert!(w[0] < w[1]);
            assert!(
                row_key(w[0], i64::MAX, u32::MAX) < row_key(w[1], 0, 0),
                "{:?} {:?}",
                w[0],
                w[1]
            );
            assert!(
                row_key(w[0], i64::MAX, u32::MAX) < escape_bound(w[1])
                    || w[1].starts_with(w[0]) && escape_bound(w[1]) > row_key(w[0], 0, 0)
            );
        }
        for k in &keys {
            let row = row_key(k, 7, 3);
            let (escaped, main, sub) = split_row_key(&row).unwrap();
            assert_eq!((main, sub), (7, 3));
            assert_eq!(unescape_key(escaped).unwrap(), k.to_vec());
        }
    }

    #[test]
    fn range_bound_excludes_exactly_the_keys_at_or_above_the_end() {
        let end = b"ab";
        assert!(row_key(b"a", 1, 0) < escape_bound(end));
        assert!(row_key(b"aa\xff", 1, 0) < escape_bound(end));
        assert!(row_key(b"ab", 1, 0) >= escape_bound(end));
        assert!(row_key(b"ab\0", 1, 0) >= escape_bound(end));
        assert!(row_key(b"b", 1, 0) >= escape_bound(end));
    }
}
