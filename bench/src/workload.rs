//! The workloads: what one operation sends, and how the keyspace is prepared
//! before measuring. Every request is etcd's v3 JSON gateway, so Meridian and
//! etcd pay the same protocol cost.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

/// A named workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Puts of unique keys with `--value-bytes` values.
    Put,
    /// Linearizable range of one key.
    Range,
    /// Serializable range of one key.
    RangeSerializable,
    /// Compare-and-swap txns (compare mod_revision, put) on `--keys` hot keys.
    TxnCas,
    /// Range over a prefix of `--keys` keys, full key-values.
    RangePrefix,
    /// Range over a prefix of `--keys` keys, keys only.
    RangePrefixKeys,
}

pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// The etcd prefix end of `prefix` (its last byte below 0xff incremented).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

const SINGLE_KEY: &str = "bench/single";
const HOT_PREFIX: &str = "bench/hot/";
const WIDE_PREFIX: &str = "bench/wide/";

fn hot_key(i: usize) -> String {
    format!("{HOT_PREFIX}{i:05}")
}

/// The requests that prepare the keyspace for a workload (path, body).
pub fn setup(workload: Workload, keys: usize, value: &[u8]) -> Vec<(&'static str, Value)> {
    let puts = |prefix: &str| -> Vec<(&'static str, Value)> {
        let names: Vec<String> = (0..keys).map(|i| format!("{prefix}{i:05}")).collect();
        // Batches of 100 puts per txn (etcd allows at most 128 operations).
        names
            .chunks(100)
            .map(|chunk| {
                let ops: Vec<Value> = chunk
                    .iter()
                    .map(
                        |k| json!({"request_put": {"key": b64(k.as_bytes()), "value": b64(value)}}),
                    )
                    .collect();
                ("/v3/kv/txn", json!({ "success": ops }))
            })
            .collect()
    };
    match workload {
        Workload::Put => Vec::new(),
        Workload::Range | Workload::RangeSerializable => vec![(
            "/v3/kv/put",
            json!({"key": b64(SINGLE_KEY.as_bytes()), "value": b64(value)}),
        )],
        Workload::TxnCas => puts(HOT_PREFIX),
        Workload::RangePrefix | Workload::RangePrefixKeys => puts(WIDE_PREFIX),
    }
}

/// Per-worker state a workload carries between operations.
pub struct Worker {
    pub id: usize,
    seq: u64,
    rng: u64,
    /// Last mod_revision seen per hot key (CAS workload).
    mod_revisions: Vec<i64>,
}

/// What an answer meant for the workload.
pub enum Outcome {
    /// Done as asked.
    Ok,
    /// A CAS whose compare failed (another worker won the race).
    CasLost,
}

impl Worker {
    pub fn new(id: usize, keys: usize) -> Worker {
        Worker {
            id,
            seq: 0,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1),
            mod_revisions: vec![0; keys],
        }
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// The next request (path, body) and, for CAS, the hot key index.
    pub fn next(
        &mut self,
        workload: Workload,
        keys: usize,
        value: &[u8],
    ) -> (&'static str, Value, usize) {
        self.seq += 1;
        match workload {
            Workload::Put => {
                let key = format!("bench/put/{}/{}", self.id, self.seq);
                (
                    "/v3/kv/put",
                    json!({"key": b64(key.as_bytes()), "value": b64(value)}),
                    0,
                )
            }
            Workload::Range => (
                "/v3/kv/range",
                json!({"key": b64(SINGLE_KEY.as_bytes())}),
                0,
            ),
            Workload::RangeSerializable => (
                "/v3/kv/range",
                json!({"key": b64(SINGLE_KEY.as_bytes()), "serializable": true}),
                0,
            ),
            Workload::TxnCas => {
                let i = (self.random() % keys.max(1) as u64) as usize;
                let key = b64(hot_key(i).as_bytes());
                let body = json!({
                    "compare": [{"key": key, "target": "MOD", "result": "EQUAL",
                                 "mod_revision": self.mod_revisions[i].to_string()}],
                    "success": [{"request_put": {"key": key, "value": b64(value)}}],
                    "failure": [{"request_range": {"key": key}}]
                });
                ("/v3/kv/txn", body, i)
            }
            Workload::RangePrefix | Workload::RangePrefixKeys => {
                let body = json!({
                    "key": b64(WIDE_PREFIX.as_bytes()),
                    "range_end": b64(&prefix_end(WIDE_PREFIX.as_bytes())),
                    "keys_only": workload == Workload::RangePrefixKeys,
                });
                ("/v3/kv/range", body, 0)
            }
        }
    }

    /// Reads an answer; for CAS, remembers the key's new mod_revision.
    pub fn answer(&mut self, workload: Workload, key: usize, body: &Value) -> Outcome {
        if workload != Workload::TxnCas {
            return Outcome::Ok;
        }
        let revision = |s: &Value| s.as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        if body["succeeded"] == json!(true) {
            self.mod_revisions[key] = revision(&body["header"]["revision"]);
            Outcome::Ok
        } else {
            let kv = &body["responses"][0]["response_range"]["kvs"][0];
            self.mod_revisions[key] = revision(&kv["mod_revision"]);
            Outcome::CasLost
        }
    }
}
