//! etcd's grpc-gateway JSON: bytes as base64, 64-bit integers as strings
//! (numbers accepted too), enums by name or number, zero values omitted in
//! answers, field names in snake_case (camelCase accepted on input).

use crate::kv::*;
use crate::server::Header;
use base64::display::Base64Display;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Map, Value};

/// A request field that could not be decoded.
#[derive(Debug)]
pub struct FieldError {
    /// The field's name.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

type Obj = Map<String, Value>;

fn err(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Whether `candidate` is the lowerCamelCase spelling of the snake_case
/// `name` (`prev_kv` and `prevKv`), compared without building it.
fn is_camel_of(name: &str, candidate: &str) -> bool {
    let mut given = candidate.chars();
    let mut up = false;
    for c in name.chars() {
        if c == '_' {
            up = true;
        } else if up {
            if !c.to_uppercase().all(|u| given.next() == Some(u)) {
                return false;
            }
            up = false;
        } else if given.next() != Some(c) {
            return false;
        }
    }
    given.next().is_none()
}

fn field<'a>(obj: &'a Obj, name: &str) -> Option<&'a Value> {
    obj.get(name)
        .or_else(|| {
            if !name.contains('_') {
                return None;
            }
            obj.iter()
                .find(|(k, _)| is_camel_of(name, k))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

/// Parses a JSON object out of a body.
pub fn object(body: &[u8]) -> Result<Obj, FieldError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(err("body", "expected a JSON object")),
        Err(e) => Err(err("body", format!("malformed JSON: {e}"))),
    }
}

fn known(obj: &Obj, names: &[&str]) -> Result<(), FieldError> {
    for k in obj.keys() {
        if !names.iter().any(|n| n == k || is_camel_of(n, k)) {
            return Err(err(k, format!("unknown field {k:?}")));
        }
    }
    Ok(())
}

fn bytes(obj: &Obj, name: &str) -> Result<Vec<u8>, FieldError> {
    match field(obj, name) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => STANDARD
            .decode(s)
            .or_else(|_| URL_SAFE.decode(s))
            .map_err(|e| err(name, format!("invalid base64: {e}"))),
        Some(_) => Err(err(name, "expected a base64 string")),
    }
}

fn int(obj: &Obj, name: &str) -> Result<i64, FieldError> {
    match field(obj, name) {
        None => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| err(name, "expected a 64-bit integer")),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| err(name, "expected a 64-bit integer")),
        Some(_) => Err(err(name, "expected a 64-bit integer")),
    }
}

fn boolean(obj: &Obj, name: &str) -> Result<bool, FieldError> {
    match field(obj, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(err(name, "expected true or false")),
    }
}

fn enumeration(obj: &Obj, name: &str, names: &[&str]) -> Result<usize, FieldError> {
    let bad = || err(name, format!("expected one of {}", names.join(", ")));
    match field(obj, name) {
        None => Ok(0),
        Some(Value::String(s)) => names.iter().position(|n| n == s).ok_or_else(bad),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|n| n as usize)
            .filter(|n| *n < names.len())
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

fn sub_object<'a>(obj: &'a Obj, name: &str) -> Result<Option<&'a Obj>, FieldError> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(err(name, "expected an object")),
    }
}

fn array<'a>(obj: &'a Obj, name: &str) -> Result<&'a [Value], FieldError> {
    match field(obj, name) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(err(name, "expected an array")),
    }
}

/// Decodes a RangeRequest.
pub fn range_request(obj: &Obj) -> Result<RangeRequest, FieldError> {
    known(
        obj,
        &[
            "key",
            "range_end",
            "limit",
            "revision",
            "sort_order",
            "sort_target",
            "serializable",
            "keys_only",
            "count_only",
            "min_mod_revision",
            "max_mod_revision",
            "min_create_revision",
            "max_create_revision",
        ],
    )?;
    Ok(RangeRequest {
        key: bytes(obj, "key")?,
        range_end: bytes(obj, "range_end")?,
        limit: int(obj, "limit")?,
        revision: int(obj, "revision")?,
        sort_order: [SortOrder::None, SortOrder::Ascend, SortOrder::Descend]
            [enumeration(obj, "sort_order", &["NONE", "ASCEND", "DESCEND"])?],
        sort_target: [
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ][enumeration(
            obj,
            "sort_target",
            &["KEY", "VERSION", "CREATE", "MOD", "VALUE"],
        )?],
        serializable: boolean(obj, "serializable")?,
        keys_only: boolean(obj, "keys_only")?,
        count_only: boolean(obj, "count_only")?,
        min_mod_revision: int(obj, "min_mod_revision")?,
        max_mod_revision: int(obj, "max_mod_revision")?,
        min_create_revision: int(obj, "min_create_revision")?,
        max_create_revision: int(obj, "max_create_revision")?,
    })
}

/// Decodes a PutRequest.
pub fn put_request(obj: &Obj) -> Result<PutRequest, FieldError> {
    known(
        obj,
        &[
            "key",
            "value",
            "lease",
            "prev_kv",
            "ignore_value",
            "ignore_lease",
        ],
    )?;
    Ok(PutRequest {
        key: bytes(obj, "key")?,
        value: bytes(obj, "value")?,
        lease: int(obj, "lease")?,
        prev_kv: boolean(obj, "prev_kv")?,
        ignore_value: boolean(obj, "ignore_value")?,
        ignore_lease: boolean(obj, "ignore_lease")?,
    })
}

/// Decodes a DeleteRangeRequest.
pub fn delete_request(obj: &Obj) -> Result<DeleteRangeRequest, FieldError> {
    known(obj, &["key", "range_end", "prev_kv"])?;
    Ok(DeleteRangeRequest {
        key: bytes(obj, "key")?,
        range_end: bytes(obj, "range_end")?,
        prev_kv: boolean(obj, "prev_kv")?,
    })
}

/// Decodes a CompactionRequest.
pub fn compaction_request(obj: &Obj) -> Result<CompactionRequest, FieldError> {
    known(obj, &["revision", "physical"])?;
    Ok(CompactionRequest {
        revision: int(obj, "revision")?,
        physical: boolean(obj, "physical")?,
    })
}

fn compare(obj: &Obj) -> Result<Compare, FieldError> {
    known(
        obj,
        &[
            "result",
            "target",
            "key",
            "version",
            "create_revision",
            "mod_revision",
            "value",
            "lease",
            "range_end",
        ],
    )?;
    let result = [
        CompareResult::Equal,
        CompareResult::Greater,
        CompareResult::Less,
        CompareResult::NotEqual,
    ][enumeration(obj, "result", &["EQUAL", "GREATER", "LESS", "NOT_EQUAL"])?];
    let target = match enumeration(
        obj,
        "target",
        &["VERSION", "CREATE", "MOD", "VALUE", "LEASE"],
    )? {
        0 => CompareTarget::Version(int(obj, "version")?),
        1 => CompareTarget::Create(int(obj, "create_revision")?),
        2 => CompareTarget::Mod(int(obj, "mod_revision")?),
        3 => CompareTarget::Value(bytes(obj, "value")?),
        _ => CompareTarget::Lease(int(obj, "lease")?),
    };
    Ok(Compare {
        result,
        target,
        key: bytes(obj, "key")?,
        range_end: bytes(obj, "range_end")?,
    })
}

fn request_op(obj: &Obj, depth: usize) -> Result<RequestOp, FieldError> {
    known(
        obj,
        &[
            "request_range",
            "request_put",
            "request_delete_range",
            "request_txn",
        ],
    )?;
    if obj.len() != 1 {
        return Err(err(
            "request",
            "expected exactly one of request_range, request_put, request_delete_range, request_txn",
        ));
    }
    if let Some(o) = sub_object(obj, "request_range")? {
        return Ok(RequestOp::Range(range_request(o)?));
    }
    if let Some(o) = sub_object(obj, "request_put")? {
        return Ok(RequestOp::Put(put_request(o)?));
    }
    if let Some(o) = sub_object(obj, "request_delete_range")? {
        return Ok(RequestOp::DeleteRange(delete_request(o)?));
    }
    if let Some(o) = sub_object(obj, "request_txn")? {
        return Ok(RequestOp::Txn(txn_request_at(o, depth + 1)?));
    }
    Err(err("request", "empty request operation"))
}

/// Decodes a TxnRequest.
pub fn txn_request(obj: &Obj) -> Result<TxnRequest, FieldError> {
    txn_request_at(obj, 0)
}

fn txn_request_at(obj: &Obj, depth: usize) -> Result<TxnRequest, FieldError> {
    if depth > 16 {
        return Err(err("request_txn", "transactions nested too deeply"));
    }
    known(obj, &["compare", "success", "failure"])?;
    let objects = |name: &str| -> Result<Vec<&Obj>, FieldError> {
        array(obj, name)?
            .iter()
            .map(|v| v.as_object().ok_or_else(|| err(name, "expected objects")))
            .collect()
    };
    Ok(TxnRequest {
        compare: objects("compare")?
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: objects("success")?
            .into_iter()
            .map(|o| request_op(o, depth))
            .collect::<Result<_, _>>()?,
        failure: objects("failure")?
            .into_iter()
            .map(|o| request_op(o, depth))
            .collect::<Result<_, _>>()?,
    })
}

fn put_int(o: &mut Obj, name: &str, v: i64) {
    if v != 0 {
        o.insert(name.into(), Value::String(v.to_string()));
    }
}

/// Standard base64, as etcd encodes bytes.
pub fn b64(v: &[u8]) -> String {
    STANDARD.encode(v)
}

fn put_bool(o: &mut Obj, name: &str, v: bool) {
    if v {
        o.insert(name.into(), Value::Bool(true));
    }
}

/// A decoded `create_request` of a watch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchCreate {
    /// First key.
    pub key: Vec<u8>,
    /// Range end, as in a range.
    pub range_end: Vec<u8>,
    /// First revision to deliver; 0 for "after the current one".
    pub start_revision: i64,
    /// Periodic progress responses when idle.
    pub progress_notify: bool,
    /// Leave out puts.
    pub no_put: bool,
    /// Leave out deletes.
    pub no_delete: bool,
    /// Include the previous key-value in events.
    pub prev_kv: bool,
    /// Client-chosen id; 0 lets the server assign one.
    pub watch_id: i64,
    /// Split large responses (accepted; responses are bounded anyway).
    pub fragment: bool,
}

/// One request object of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchRequest {
    /// Start a watcher.
    Create(WatchCreate),
    /// Stop a watcher.
    Cancel(i64),
    /// Ask for a progress response.
    Progress,
}

/// Decodes one request object of a watch stream.
pub fn watch_request(obj: &Obj) -> Result<WatchRequest, FieldError> {
    known(
        obj,
        &["create_request", "cancel_request", "progress_request"],
    )?;
    if let Some(c) = sub_object(obj, "create_request")? {
        known(
            c,
            &[
                "key",
                "range_end",
                "start_revision",
                "progress_notify",
                "filters",
                "prev_kv",
                "watch_id",
                "fragment",
            ],
        )?;
        let mut create = WatchCreate {
            key: bytes(c, "key")?,
            range_end: bytes(c, "range_end")?,
            start_revision: int(c, "start_revision")?,
            progress_notify: boolean(c, "progress_notify")?,
            prev_kv: boolean(c, "prev_kv")?,
            watch_id: int(c, "watch_id")?,
            fragment: boolean(c, "fragment")?,
            ..Default::default()
        };
        for f in array(c, "filters")? {
            let bad = || err("filters", "expected NOPUT or NODELETE");
            match f {
                Value::String(s) if s == "NOPUT" => create.no_put = true,
                Value::String(s) if s == "NODELETE" => create.no_delete = true,
                Value::Number(n) if n.as_u64() == Some(0) => create.no_put = true,
                Value::Number(n) if n.as_u64() == Some(1) => create.no_delete = true,
                _ => return Err(bad()),
            }
        }
        return Ok(WatchRequest::Create(create));
    }
    if let Some(c) = sub_object(obj, "cancel_request")? {
        known(c, &["watch_id"])?;
        return Ok(WatchRequest::Cancel(int(c, "watch_id")?));
    }
    if let Some(p) = sub_object(obj, "progress_request")? {
        known(p, &[])?;
        return Ok(WatchRequest::Progress);
    }
    Err(err(
        "request",
        "expected create_request, cancel_request or progress_request",
    ))
}

/// Encodes a watch event.
pub fn event(e: &Event, with_prev: bool) -> Value {
    let mut o = Obj::new();
    if e.kind == EventKind::Delete {
        o.insert("type".into(), json!("DELETE"));
    }
    o.insert("kv".into(), kv(&e.kv));
    if with_prev {
        if let Some(p) = &e.prev_kv {
            o.insert("prev_kv".into(), kv(p));
        }
    }
    Value::Object(o)
}

/// Encodes a WatchResponse inside etcd's stream envelope `{"result": ...}`.
pub fn watch_response(h: &Header, watch_id: i64, mut fields: Obj) -> Value {
    put_int(&mut fields, "watch_id", watch_id);
    json!({ "result": with_header(Some(h), fields) })
}

/// Encodes a header.
pub fn header(h: &Header) -> Value {
    to_value(HeaderOut(h))
}

/// Encodes a key-value.
pub fn kv(kv: &KeyValue) -> Value {
    to_value(KvOut(kv))
}

/// A value built by one of the encoders below; they only write maps with
/// string keys, which cannot fail to convert.
fn to_value(v: impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

// The encoders of key-values and range answers write straight to the
// output instead of building a [`Value`] first: a range over 100,000 keys
// would otherwise hold several small allocations per key, many times the
// size of the encoded answer, and the allocator keeps that memory after.

struct HeaderOut<'a>(&'a Header);

impl Serialize for HeaderOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let h = self.0;
        let mut m = s.serialize_map(None)?;
        if h.cluster_id != 0 {
            m.serialize_entry("cluster_id", &AsString(h.cluster_id))?;
            m.serialize_entry("member_id", &AsString(h.member_id))?;
        }
        int_entry(&mut m, "revision", h.revision)?;
        if h.raft_term != 0 {
            m.serialize_entry("raft_term", &AsString(h.raft_term))?;
        }
        m.end()
    }
}

struct KvOut<'a>(&'a KeyValue);

impl Serialize for KvOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let kv = self.0;
        let mut m = s.serialize_map(None)?;
        bytes_entry(&mut m, "key", &kv.key)?;
        int_entry(&mut m, "create_revision", kv.create_revision)?;
        int_entry(&mut m, "mod_revision", kv.mod_revision)?;
        int_entry(&mut m, "version", kv.version)?;
        bytes_entry(&mut m, "value", &kv.value)?;
        int_entry(&mut m, "lease", kv.lease)?;
        m.end()
    }
}

/// A response's own fields, written into its answer's map after the header.
trait Fields {
    fn write_fields<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error>;
}

impl Fields for RangeResponse {
    fn write_fields<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        if !self.kvs.is_empty() {
            m.serialize_entry("kvs", &Seq(&self.kvs))?;
        }
        if self.more {
            m.serialize_entry("more", &true)?;
        }
        int_entry(m, "count", self.count)
    }
}

impl Fields for PutResponse {
    fn write_fields<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        if let Some(p) = &self.prev_kv {
            m.serialize_entry("prev_kv", &KvOut(p))?;
        }
        Ok(())
    }
}

/// A response with its header, if it has one (answers inside a txn may not).
struct Out<'a, R> {
    header: Option<&'a Header>,
    response: &'a R,
}

impl<R: Fields> Serialize for Out<'_, R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if let Some(h) = self.header {
            m.serialize_entry("header", &HeaderOut(h))?;
        }
        self.response.write_fields(&mut m)?;
        m.end()
    }
}

/// A response with its header, encoded when the answer is written: no
/// [`Value`] is built for the most frequent answers.
pub struct Answer<R> {
    /// The answer's header.
    pub header: Header,
    /// The response itself.
    pub response: R,
}

/// A range's answer.
pub type RangeAnswer = Answer<RangeResponse>;
/// A put's answer.
pub type PutAnswer = Answer<PutResponse>;

impl<R: Fields> Serialize for Answer<R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Out {
            header: Some(&self.header),
            response: &self.response,
        }
        .serialize(s)
    }
}

struct Seq<'a>(&'a [KeyValue]);

impl Serialize for Seq<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(KvOut))
    }
}

/// A value written as a JSON string through its `Display`: how the gateway
/// writes 64-bit integers, and base64 bytes.
struct AsString<T>(T);

impl<T: std::fmt::Display> Serialize for AsString<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

fn int_entry<M: SerializeMap>(m: &mut M, name: &str, v: i64) -> Result<(), M::Error> {
    if v == 0 {
        return Ok(());
    }
    m.serialize_entry(name, &AsString(v))
}

fn bytes_entry<M: SerializeMap>(m: &mut M, name: &str, v: &[u8]) -> Result<(), M::Error> {
    if v.is_empty() {
        return Ok(());
    }
    m.serialize_entry(name, &AsString(Base64Display::new(v, &STANDARD)))
}

fn with_header(h: Option<&Header>, mut o: Obj) -> Value {
    if let Some(h) = h {
        o.insert("header".into(), header(h));
    }
    Value::Object(o)
}

/// Encodes a RangeResponse.
pub fn range_response(h: Option<&Header>, r: &RangeResponse) -> Value {
    to_value(Out {
        header: h,
        response: r,
    })
}

/// Encodes a PutResponse.
pub fn put_response(h: Option<&Header>, r: &PutResponse) -> Value {
    to_value(Out {
        header: h,
        response: r,
    })
}

/// Encodes a DeleteRangeResponse.
pub fn delete_response(h: Option<&Header>, r: &DeleteRangeResponse) -> Value {
    let mut o = Obj::new();
    put_int(&mut o, "deleted", r.deleted);
    if !r.prev_kvs.is_empty() {
        o.insert(
            "prev_kvs".into(),
            Value::Array(r.prev_kvs.iter().map(kv).collect()),
        );
    }
    with_header(h, o)
}

/// Encodes a TxnResponse; answers inside carry a header with only the
/// revision (a nested txn's own header is empty), as etcd's do.
pub fn txn_response(h: Option<&Header>, r: &TxnResponse) -> Value {
    let inner = h.map(|h| Header {
        cluster_id: 0,
        member_id: 0,
        revision: h.revision,
        raft_term: 0,
    });
    let mut o = Obj::new();
    put_bool(&mut o, "succeeded", r.succeeded);
    if !r.responses.is_empty() {
        let ops = r
            .responses
            .iter()
            .map(|op| match op {
                ResponseOp::Range(x) => {
                    json!({ "response_range": range_response(inner.as_ref(), x) })
                }
                ResponseOp::Put(x) => json!({ "response_put": put_response(inner.as_ref(), x) }),
                ResponseOp::DeleteRange(x) => {
                    json!({ "response_delete_range": delete_response(inner.as_ref(), x) })
                }
                ResponseOp::Txn(x) => {
                    // etcd leaves a nested txn's own header empty.
                    let mut t = txn_response(inner.as_ref(), x);
                    if h.is_some() {
                        t["header"] = json!({});
                    }
                    json!({ "response_txn": t })
                }
            })
            .collect();
        o.insert("responses".into(), Value::Array(ops));
    }
    with_header(h, o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_case_spellings_are_recognised_exactly() {
        for (snake, camel) in [
            ("prev_kv", "prevKv"),
            ("ignore_value", "ignoreValue"),
            ("key", "key"),
            ("a__b", "aB"),
            ("_x", "X"),
        ] {
            assert!(is_camel_of(snake, camel), "{snake} {camel}");
        }
        for (snake, other) in [
            ("prev_kv", "prevkv"),
            ("prev_kv", "prevKvx"),
            ("prev_kv", "prevK"),
            ("prev_kv", "prev_kv"),
            ("key", "Key"),
        ] {
            assert!(!is_camel_of(snake, other), "{snake} {other}");
        }
    }

    #[test]
    fn decoders_accept_etcd_shapes_and_name_the_bad_field() {
        let o = object(br#"{"key":"YQ==","rangeEnd":"Yg==","limit":"2","sort_order":"DESCEND","sort_target":4}"#).unwrap();
        let r = range_request(&o).unwrap();
        assert_eq!(
            (r.key, r.range_end, r.limit, r.sort_order, r.sort_target),
            (
                b"a".to_vec(),
                b"b".to_vec(),
                2,
                SortOrder::Descend,
                SortTarget::Value
            )
        );
        let e = range_request(&object(br#"{"key":"!!"}"#).unwrap()).unwrap_err();
        assert_eq!(e.field, "key");
        let e = range_request(&object(br#"{"limit":"x"}"#).unwrap()).unwrap_err();
        assert_eq!(e.field, "limit");
        let e = txn_request(&object(br#"{"compare":[{"target":"COLOR"}]}"#).unwrap()).unwrap_err();
        assert_eq!(e.field, "target");
        assert!(object(b"{not json").is_err());
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_input() {
        // A small deterministic fuzz: mutate valid requests byte by byte.
        let seeds: [&[u8]; 3] = [
            br#"{"key":"YQ==","range_end":"Yg==","limit":"2","sort_order":"DESCEND"}"#,
            br#"{"compare":[{"target":"VALUE","result":"EQUAL","key":"YQ==","value":"MQ=="}],"success":[{"request_put":{"key":"YQ==","value":"Mg=="}}],"failure":[{"request_txn":{"success":[{"request_range":{"key":"YQ=="}}]}}]}"#,
            br#"{"key":"YQ==","value":"Mg==","lease":"0","prev_kv":true}"#,
        ];
        let mut state: u64 = 0x9E3779B97F4A7C15;
        for seed in seeds {
            for _ in 0..3000 {
                let mut input = seed.to_vec();
                for _ in 0..(state % 4 + 1) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let pos = (state as usize) % input.len();
                    input[pos] = (state >> 32) as u8;
                }
                if let Ok(o) = object(&input) {
                    let _ = range_request(&o);
                    let _ = put_request(&o);
                    let _ = delete_request(&o);
                    let _ = txn_request(&o);
                    let _ = compaction_request(&o);
                }
            }
        }
    }

    /// The header the answer tests write.
    fn sample_header() -> Header {
        Header {
            cluster_id: 7,
            member_id: 9,
            revision: 12,
            raft_term: 3,
        }
    }

    #[test]
    fn answers_are_written_as_the_gateway_writes_them() {
        let header = sample_header();
        let full = KeyValue {
            key: b"a".to_vec(),
            create_revision: 4,
            mod_revision: 12,
            version: 2,
            value: b"hello".to_vec(),
            lease: 0,
        };
        let keys_only = KeyValue {
            key: b"b\xff".to_vec(),
            create_revision: 5,
            mod_revision: 5,
            version: 1,
            value: Vec::new(),
            lease: 0x7f00_0000_0000_0001,
        };
        let answer = RangeAnswer {
            header,
            response: RangeResponse {
                kvs: vec![full, keys_only],
                more: true,
                count: 3,
            },
        };
        let written: Value = serde_json::from_slice(&serde_json::to_vec(&answer).unwrap()).unwrap();
        let expected = json!({
            "header": {"cluster_id": "7", "member_id": "9", "revision": "12", "raft_term": "3"},
            "kvs": [
                {"key": "YQ==", "create_revision": "4", "mod_revision": "12", "version": "2", "value": "aGVsbG8="},
                {"key": "Yv8=", "create_revision": "5", "mod_revision": "5", "version": "1", "lease": "9151314442816847873"}
            ],
            "more": true,
            "count": "3"
        });
        assert_eq!(written, expected);
        assert_eq!(range_response(Some(&header), &answer.response), expected);
        // Zero values are left out, as proto3 JSON does.
        let empty = range_response(None, &RangeResponse::default());
        assert_eq!(empty, json!({}));
        let quiet = Header {
            cluster_id: 0,
            member_id: 0,
            revision: 0,
            raft_term: 0,
        };
        assert_eq!(super::header(&quiet), json!({}));
    }

    #[test]
    fn put_answers_are_written_as_etcd_writes_them() {
        let header = sample_header();
        let plain = PutAnswer {
            header,
            response: PutResponse { prev_kv: None },
        };
        let written = serde_json::to_string(&plain).unwrap();
        assert_eq!(
            written,
            r#"{"header":{"cluster_id":"7","member_id":"9","revision":"12","raft_term":"3"}}"#
        );
        assert_eq!(
            put_response(Some(&header), &plain.response),
            serde_json::from_str::<Value>(&written).unwrap()
        );
        let previous = KeyValue {
            key: b"a".to_vec(),
            create_revision: 4,
            mod_revision: 11,
            version: 2,
            value: b"hello".to_vec(),
            lease: 0,
        };
        let with_prev = PutAnswer {
            header,
            response: PutResponse {
                prev_kv: Some(previous),
            },
        };
        let written: Value =
            serde_json::from_slice(&serde_json::to_vec(&with_prev).unwrap()).unwrap();
        let expected = json!({
            "header": {"cluster_id": "7", "member_id": "9", "revision": "12", "raft_term": "3"},
            "prev_kv": {"key": "YQ==", "create_revision": "4", "mod_revision": "11", "version": "2", "value": "aGVsbG8="}
        });
        assert_eq!(written, expected);
        assert_eq!(put_response(Some(&header), &with_prev.response), expected);
        // Inside a txn an answer may carry no header.
        assert_eq!(
            put_response(None, &PutResponse { prev_kv: None }),
            json!({})
        );
    }
}
