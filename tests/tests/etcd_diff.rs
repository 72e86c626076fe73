//! Differential test: the same etcd v3 JSON requests go to a real etcd 3.4
//! (started here on loopback) and to a Meridian server, and the answers are
//! compared field by field. Header ids and raft_term differ by nature and are
//! left out; everything else (revisions, kvs, counts, flags, error codes and
//! messages) must match, except where Meridian is deliberately stricter
//! (documented in docs/api.md, checked here as such).

mod support;

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// A single-member etcd on loopback, killed on drop.
struct Etcd {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    l.local_addr().expect("local addr").port()
}

impl Etcd {
    async fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_tcp_port(), free_tcp_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .arg("--name=e1")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=e1={peer_url}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start etcd ({e}): the differential test needs etcd 3.4 \
                     (Debian package etcd-server; .ci/run installs it)"
                )
            });
        let mut etcd = Etcd {
            child,
            url,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(v) = get_json(&format!("{}/health", etcd.url)).await {
                if v["health"] == json!("true") {
                    break;
                }
            }
            if let Ok(Some(status)) = etcd.child.try_wait() {
                panic!("etcd exited at start ({status}): {}", etcd.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy within 30s: {}",
                etcd.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let version = get_json(&format!("{}/version", etcd.url))
            .await
            .expect("etcd /version");
        let server = version["etcdserver"].as_str().unwrap_or_default();
        assert!(
            server.starts_with("3.4."),
            "the differential test targets etcd 3.4, found {version}"
        );
        etcd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How two answers must agree.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Same HTTP status and the same body, header ids and raft_term aside.
    Same,
    /// Both reject with the same HTTP status and gRPC code; the message is
    /// the decoder's own wording (Go's JSON errors cannot be matched).
    SameErrorCode,
    /// etcd accepts this (or fails it otherwise); Meridian rejects it with
    /// 400 / InvalidArgument (docs/api.md, "Where Meridian is stricter than etcd").
    Stricter,
}

struct Step {
    path: &'static str,
    body: Vec<u8>,
    expect: Expect,
}

fn step(path: &'static str, body: Value) -> Step {
    Step {
        path,
        body: body.to_string().into_bytes(),
        expect: Expect::Same,
    }
}

fn step_raw(path: &'static str, body: &str, expect: Expect) -> Step {
    Step {
        path,
        body: body.as_bytes().to_vec(),
        expect,
    }
}

fn k(s: &str) -> String {
    b64(s.as_bytes())
}

/// Removes what differs between any two clusters: ids and terms in headers.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::Object(h)) = o.get_mut("header") {
                h.remove("cluster_id");
                h.remove("member_id");
                h.remove("raft_term");
            }
            for (_, x) in o.iter_mut() {
                normalize(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn put_step(key: &str, value: &str) -> Step {
    step("/v3/kv/put", json!({"key": k(key), "value": k(value)}))
}

fn range_step(extra: Value) -> Step {
    step("/v3/kv/range", extra)
}

fn all_keys() -> Value {
    json!({"key": b64(b"\0"), "range_end": b64(b"\0")})
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        b.extend(e);
    }
    base
}

fn steps() -> Vec<Step> {
    use Expect::*;
    let all = all_keys;
    let foo_prefix = || json!({"key": k("foo"), "range_end": k("fop")});
    let mut s = vec![
        // Puts: revisions 2..=8.
        put_step("a", "1"),
        put_step("b", "2"),
        put_step("c", "3"),
        put_step("foo", "f0"),
        put_step("foo/1", "f1"),
        put_step("foo/2", "f2"),
        put_step("foo/3", "f3"),
        step(
            "/v3/kv/put",
            json!({"key": k("a"), "value": k("11"), "prev_kv": true}),
        ),
        step(
            "/v3/kv/put",
            json!({"key": k("a"), "ignore_value": true, "prev_kv": true}),
        ),
        step("/v3/kv/put", json!({"key": k("zzz"), "ignore_value": true})),
        step(
            "/v3/kv/put",
            json!({"key": k("a"), "value": k("x"), "ignore_value": true}),
        ),
        step(
            "/v3/kv/put",
            json!({"key": k("a"), "value": k("x"), "lease": "12345"}),
        ),
        step("/v3/kv/put", json!({"key": "", "value": k("x")})),
        step("/v3/kv/put", json!({"value": k("x")})),
        step(
            "/v3/kv/put",
            json!({"key": k("b"), "value": k("22"), "ignore_lease": true}),
        ),
        step(
            "/v3/kv/put",
            json!({"key": b64(b"\x00bin\xff"), "value": b64(b"\x00\x01\x02")}),
        ),
        step("/v3/kv/put", json!({"key": k("empty")})),
        step(
            "/v3/kv/put",
            json!({"key": k("n"), "value": k("1"), "lease": 0}),
        ),
        // Ranges.
        range_step(json!({"key": k("a")})),
        range_step(json!({"key": k("nope")})),
        range_step(foo_prefix()),
        range_step(all()),
        range_step(json!({"key": k("b"), "range_end": b64(b"\0")})),
        range_step(with(all(), json!({"limit": "2"}))),
        range_step(with(all(), json!({"limit": 3, "sort_order": "DESCEND"}))),
        range_step(with(
            all(),
            json!({"sort_order": "ASCEND", "sort_target": "MOD"}),
        )),
        range_step(with(
            all(),
            json!({"sort_order": "DESCEND", "sort_target": "CREATE"}),
        )),
        range_step(with(
            all(),
            json!({"sort_order": "ASCEND", "sort_target": "VERSION"}),
        )),
        range_step(with(
            all(),
            json!({"sort_order": "DESCEND", "sort_target": "VALUE"}),
        )),
        range_step(with(all(), json!({"sort_target": "VALUE"}))),
        range_step(with(all(), json!({"sort_order": 2, "sort_target": 1}))),
        range_step(with(all(), json!({"revision": "2"}))),
        range_step(json!({"key": k("a"), "revision": "9"})),
        range_step(with(foo_prefix(), json!({"keys_only": true}))),
        range_step(with(all(), json!({"count_only": true}))),
        range_step(with(all(), json!({"count_only": true, "limit": "1"}))),
        range_step(with(all(), json!({"min_mod_revision": "6"}))),
        range_step(with(all(), json!({"max_mod_revision": "6"}))),
        range_step(with(
            all(),
            json!({"min_create_revision": "5", "max_create_revision": "7"}),
        )),
        range_step(with(
            all(),
            json!({"keys_only": true, "limit": "2", "sort_order": "DESCEND", "sort_target": "MOD"}),
        )),
        range_step(json!({"key": k("a"), "serializable": true})),
        range_step(json!({"key": k("a"), "revision": "999"})),
        range_step(json!({"key": ""})),
        range_step(json!({"key": k("a"), "limit": "-3"})),
        range_step(json!({"keysOnly": false, "key": k("b"), "rangeEnd": k("c")})),
        // Deletes.
        step("/v3/kv/deleterange", json!({"key": k("nope")})),
        step(
            "/v3/kv/deleterange",
            json!({"key": k("foo/1"), "prev_kv": true}),
        ),
        step(
            "/v3/kv/deleterange",
            json!({"key": k("foo/"), "range_end": k("foo0"), "prev_kv": true}),
        ),
        step("/v3/kv/deleterange", json!({"key": ""})),
        range_step(foo_prefix()),
        // Transactions.
        step(
            "/v3/kv/txn",
            json!({
                "compare": [{"key": k("a"), "target": "VALUE", "result": "EQUAL", "value": k("11")}],
                "success": [
                    {"request_put": {"key": k("c"), "value": k("33"), "prev_kv": true}},
                    {"request_range": {"key": k("a")}}
                ],
                "failure": [{"request_range": {"key": k("b")}}]
            }),
        ),
        step(
            "/v3/kv/txn",
            json!({
                "compare": [{"key": k("a"), "target": "VALUE", "result": "EQUAL", "value": k("nope")}],
                "success": [{"request_put": {"key": k("c"), "value": k("x")}}],
                "failure": [{"request_range": {"key": k("b")}}, {"request_range": {"key": k("c")}}]
            }),
        ),
        step(
            "/v3/kv/txn",
            json!({
                "compare": [{"key": k("a"), "target": "VERSION", "result": "GREATER", "version": "2"}],
                "success": [{"request_delete_range": {"key": k("empty"), "prev_kv": true}}]
            }),
        ),
        step(
            "/v3/kv/txn",
            json!({
                "compare": [{"key": k("foo"), "target": "CREATE", "result": "EQUAL", "create_revision": "5"}],
                "success": [{"request_put": {"key": k("foo"), "value": k("f00")}}]
            }),
        ),
        step(
            "/v3/kv/txn",
            json!({
                "compare": [{"key": k("b"), "target": "MOD", "result": "LESS", "mod_revision": "14"}],
                "success": [{"request_range": {"key": k("b")}}],
                "failure": [{"request_put": {"key": k("b"), "value": k("bad")}}]
            }),
        ),
        step(
            "/v3/kv/txn",
            json!({
                "compare": [{"key": k("c"), "target": "VALUE", "result": "NOT_EQUAL", "value": k("3")}],
                "success": [{"request_put": {"key": k("d"), "value": k("4")}}]
            }),
        ),
        step(
            "/v3/kv/txn",
            json!({
                "compare": [{"key": k("b"), "target": "LEASE", "result": "EQUAL", "lease": "0"}],
                "success": [{"request_range": {"key": k("b"), "keys_only": true}}]
            }),
        ),
        step(
            "/v3/kv/txn",
            json!({
                "compare": [{"key": k("missing"), "target": "VERSION", "result": "EQUAL", "version": "0"}],
                "success": [{"request_put": {"key": k("missing"), "value": k("now")}}]
            }),
        ),
        step(
            "/v3/kv/txn",
            json!({
                "compare": [{"key": k("missing"), "target": "CREATE", "result": "EQUAL"}],
                "success": [{"request_put": {"key": k("never"), "value": k("x")}}],
                "failure": [{"request_range": {"key": k("missing")}}]
            }),
        ),
        step(
            "/v3/kv/txn",
            json!({
                "compare": [{"key": k("a"), "range_end": k("d"), "target": "VERSION", "result": "GREATER", "version": "0"}],
                "success": [{"request_range": {"key": k("a"), "range_end": k("d"), "count_only": true}}]
            }),
        ),
        step(
            "/v3/kv/txn",
            json!({
                "compare": [{"key": k("a"), "range_end": k("d"), "target": "VERSION", "result": "GREATER", "version": "1"}],
                "success": [{"request_put": {"key": k("never"), "value": k("x")}}]
            }),
        ),
        step(
            "/v3/kv/txn",
            json!({
                "success": [{"request_txn": {
                    "compare": [{"key": k("d"), "target": "VALUE", "result": "EQUAL", "value": k("4")}],
                    "success": [
                        {"request_put": {"key": k("e"), "value": k("5")}},
                        {"request_txn": {"success": [{"request_range": {"key": k("e")}}]}}
                    ]
                }}, {"request_range": {"key": k("d")}}]
            }),
        ),
        step(
            "/v3/kv/txn",
            json!({"success": [
                {"request_put": {"key": k("t1"), "value": k("v")}},
                {"request_range": {"key": k("t1")}},
                {"request_delete_range": {"key": k("t2")}}
            ]}),
        ),
        step(
            "/v3/kv/txn",
            json!({"success": [
                {"request_put": {"key": k("dup"), "value": k("1")}},
                {"request_put": {"key": k("dup"), "value": k("2")}}
            ]}),
        ),
        step(
            "/v3/kv/txn",
            json!({"success": [
                {"request_put": {"key": k("dup"), "value": k("1")}},
                {"request_delete_range": {"key": k("d"), "range_end": k("f")}},
                {"request_put": {"key": k("e"), "value": k("2")}}
            ]}),
        ),
        step(
            "/v3/kv/txn",
            json!({"success": (0..129).map(|_| json!({"request_range": {"key": k("a")}})).collect::<Vec<_>>()}),
        ),
        step(
            "/v3/kv/txn",
            json!({"success": (0..128).map(|_| json!({"request_range": {"key": k("a")}})).collect::<Vec<_>>()}),
        ),
        step("/v3/kv/txn", json!({})),
        step(
            "/v3/kv/txn",
            json!({"compare": [{"key": k("a"), "target": "VALUE", "result": "EQUAL", "value": k("none")}]}),
        ),
        step(
            "/v3/kv/txn",
            json!({"success": [
                {"request_put": {"key": k("rollback"), "value": k("1")}},
                {"request_put": {"key": k("rollback2"), "value": k("1"), "lease": "999"}}
            ]}),
        ),
        range_step(json!({"key": k("rollback")})),
        range_step(with(all(), json!({"keys_only": true}))),
        // Compaction.
        step("/v3/kv/compaction", json!({"revision": "5"})),
        range_step(with(all(), json!({"revision": "4"}))),
        range_step(with(all(), json!({"revision": "5"}))),
        range_step(json!({"key": k("a"), "revision": "6"})),
        step("/v3/kv/compaction", json!({"revision": "5"})),
        step("/v3/kv/compaction", json!({"revision": "3"})),
        step("/v3/kv/compaction", json!({"revision": "999"})),
        step("/v3/kv/compaction", json!({"revision": "-1"})),
        step(
            "/v3/kv/compaction",
            json!({"revision": "9", "physical": true}),
        ),
        range_step(json!({"key": k("a"), "revision": "9"})),
        range_step(json!({"key": k("a"), "revision": "8"})),
        step(
            "/v3/kv/txn",
            json!({"success": [{"request_range": {"key": k("a"), "revision": "7"}}]}),
        ),
        step(
            "/v3/kv/txn",
            json!({"success": [{"request_range": {"key": k("a"), "revision": "10"}}]}),
        ),
        // After compaction, history above it is intact.
        range_step(with(all(), json!({"revision": "12"}))),
        // Malformed input: both reject with InvalidArgument.
        step_raw("/v3/kv/put", "{not json", SameErrorCode),
        step_raw("/v3/kv/put", "[1]", SameErrorCode),
        step_raw("/v3/kv/put", r#"{"key":"!!!"}"#, SameErrorCode),
        step_raw(
            "/v3/kv/range",
            r#"{"key":"YQ==","sort_order":"SIDEWAYS"}"#,
            SameErrorCode,
        ),
        step_raw(
            "/v3/kv/range",
            r#"{"key":"YQ==","limit":"ten"}"#,
            SameErrorCode,
        ),
        step_raw(
            "/v3/kv/txn",
            r#"{"compare":[{"target":"BOGUS","key":"YQ=="}]}"#,
            SameErrorCode,
        ),
        step_raw("/v3/kv/txn", r#"{"success":[{}]}"#, SameErrorCode),
    ];
    // The whole keyspace, with full metadata, at the end.
    s.push(range_step(all()));
    s.extend(stricter());
    s
}

/// Requests etcd accepts and Meridian refuses (docs/api.md); they come last
/// because etcd's acceptance may change its keyspace.
fn stricter() -> Vec<Step> {
    use Expect::*;
    vec![
        step_raw(
            "/v3/kv/range",
            r#"{"key":"Yg==","range_end":"YQ=="}"#,
            Stricter,
        ),
        step_raw(
            "/v3/kv/range",
            r#"{"key":"YQ==","revision":"-5"}"#,
            Stricter,
        ),
        step_raw(
            "/v3/kv/deleterange",
            r#"{"key":"Yg==","range_end":"YQ=="}"#,
            Stricter,
        ),
        step_raw(
            "/v3/kv/put",
            r#"{"key":"YQ==","value":"MQ==","prefix":true}"#,
            Stricter,
        ),
        step_raw(
            "/v3/kv/txn",
            r#"{"compare":[{"key":"Yg==","range_end":"YQ==","target":"VERSION"}]}"#,
            Stricter,
        ),
        step_raw(
            "/v3/kv/txn",
            r#"{"success":[{"request_range":{"key":"YQ==","revision":"-1"}}]}"#,
            Stricter,
        ),
    ]
}

async fn send(base: &str, step: &Step) -> (u16, Value) {
    let mut last = String::new();
    for _ in 0..3 {
        match post_raw(&format!("{base}{}", step.path), step.body.clone()).await {
            Ok(r) => return r,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{base}{}: {last}", step.path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_answers_match_etcd_3_4() {
    let etcd = Etcd::start().await;
    let meridian = Cluster::start(1).await;
    let m_url = meridian.url(0).to_string();

    let steps = steps();
    assert!(steps.len() >= 60, "{} steps", steps.len());
    let mut failures = Vec::new();
    for (i, st) in steps.iter().enumerate() {
        let (es, mut ev) = send(&etcd.url, st).await;
        let (ms, mut mv) = send(&m_url, st).await;
        normalize(&mut ev);
        normalize(&mut mv);
        let body = String::from_utf8_lossy(&st.body);
        let body: String = body.chars().take(200).collect();
        let ok = match st.expect {
            Expect::Same => es == ms && ev == mv,
            Expect::SameErrorCode => {
                es == ms && es >= 400 && ev["code"] == mv["code"] && mv["message"].is_string()
            }
            Expect::Stricter => {
                (es, &ev["code"]) != (400, &json!(3))
                    && ms == 400
                    && mv["code"] == json!(3)
                    && mv["message"].is_string()
            }
        };
        if !ok {
            failures.push(format!(
                "step {i} {:?} {} {body}\n  etcd     {es} {ev}\n  meridian {ms} {mv}",
                st.expect, st.path
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} steps differ:\n{}",
        failures.len(),
        steps.len(),
        failures.join("\n")
    );

    // The maintenance and cluster answers have etcd's shape (values differ by nature).
    for path in ["/v3/maintenance/status", "/v3/cluster/member/list"] {
        let st = step(path, json!({}));
        let (es, ev) = send(&etcd.url, &st).await;
        let (ms, mv) = send(&m_url, &st).await;
        assert_eq!((es, ms), (200, 200), "{path}");
        for key in ev.as_object().expect("etcd object").keys() {
            assert!(mv.get(key).is_some(), "{path}: Meridian lacks {key}: {mv}");
        }
    }
    let em = &send(&etcd.url, &step("/v3/cluster/member/list", json!({})))
        .await
        .1["members"][0];
    let mm = &send(&m_url, &step("/v3/cluster/member/list", json!({})))
        .await
        .1["members"][0];
    for key in em.as_object().expect("member object").keys() {
        assert!(mm.get(key).is_some(), "member lacks {key}: {mm}");
    }
    let ev = get_json(&format!("{}/version", etcd.url)).await.unwrap();
    let mv = get_json(&format!("{m_url}/version")).await.unwrap();
    for key in ev.as_object().expect("version object").keys() {
        assert!(mv.get(key).is_some(), "/version lacks {key}: {mv}");
    }
}

/// Opens a watch stream with `body` and returns its first `n` JSON lines
/// (fewer if the stream goes quiet for 3 s), keeping the response open for more.
async fn watch_lines(base: &str, body: &str, n: usize) -> (Vec<Value>, reqwest::Response, Vec<u8>) {
    watch_lines_at(base, "/v3/watch", body, n).await
}

/// Like [`watch_lines`] for any streaming path.
async fn watch_lines_at(
    base: &str,
    path: &str,
    body: &str,
    n: usize,
) -> (Vec<Value>, reqwest::Response, Vec<u8>) {
    let mut response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .body(body.to_string())
        .send()
        .await
        .expect("watch request");
    let mut buf = Vec::new();
    let lines = read_lines(&mut response, &mut buf, n).await;
    (lines, response, buf)
}

async fn read_lines(response: &mut reqwest::Response, buf: &mut Vec<u8>, n: usize) -> Vec<Value> {
    let mut lines = Vec::new();
    while lines.len() < n {
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let mut v: Value = serde_json::from_slice(&line).expect("a JSON line");
            normalize(&mut v);
            lines.push(v);
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(3), response.chunk()).await {
            Ok(Ok(Some(chunk))) => buf.extend_from_slice(&chunk),
            Ok(Ok(None)) if !buf.is_empty() => buf.push(b'\n'), // a last unterminated object
            _ => break,
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_match_etcd_3_4() {
    let etcd = Etcd::start().await;
    let meridian = Cluster::start(1).await;
    let systems = [etcd.url.clone(), meridian.url(0).to_string()];
    for base in &systems {
        for st in [
            put_step("a", "1"),
            put_step("a", "2"),
            step("/v3/kv/deleterange", json!({"key": k("a")})),
            put_step("b", "x"),
        ] {
            let (s, v) = send(base, &st).await;
            assert_eq!(s, 200, "{base}: {v}");
        }
    }
    let a = k("a");
    let cases: Vec<(String, usize)> = vec![
        (
            format!(r#"{{"create_request":{{"key":"{a}","start_revision":"2","prev_kv":true}}}}"#),
            2,
        ),
        (
            format!(
                r#"{{"create_request":{{"key":"{a}","start_revision":"2","filters":["NOPUT"],"watch_id":"7"}}}}"#
            ),
            2,
        ),
        (
            format!(
                r#"{{"create_request":{{"key":"{a}","start_revision":"2","filters":["NODELETE"]}}}}"#
            ),
            2,
        ),
        (
            format!(
                r#"{{"create_request":{{"key":"{a}","range_end":"AA==","start_revision":"1"}}}}"#
            ),
            2,
        ),
        (
            format!(
                r#"{{"create_request":{{"key":"{}","range_end":"{}","start_revision":"3"}}}}"#,
                k("a"),
                k("c")
            ),
            2,
        ),
        (r#"{"progress_request":{}}"#.to_string(), 1),
        (
            format!(
                r#"{{"create_request":{{"key":"{a}"}}}}{{"create_request":{{"key":"{}"}}}}"#,
                k("b")
            ),
            2,
        ),
        ("garbage".to_string(), 1),
    ];
    for (body, n) in &cases {
        let (e, _, _) = watch_lines(&systems[0], body, *n).await;
        let (m, _, _) = watch_lines(&systems[1], body, *n).await;
        assert_eq!(e.len(), *n, "etcd answered {body} with {e:?}");
        if body == "garbage" {
            assert_eq!(m.len(), 1, "{m:?}");
            assert!(m[0]["code"].as_i64().is_some(), "{m:?}");
            assert!(e[0]["code"].as_i64().is_some(), "{e:?}");
            continue;
        }
        assert_eq!(m, e, "watch {body}");
    }

    // Live events: a watcher created first sees a later put.
    for base in &systems {
        let (created, mut response, mut buf) = watch_lines(
            base,
            &format!(
                r#"{{"create_request":{{"key":"{}","prev_kv":true}}}}"#,
                k("c")
            ),
            1,
        )
        .await;
        assert_eq!(created[0]["result"]["created"], json!(true), "{base}");
        send(base, &put_step("c", "live")).await;
        let events = read_lines(&mut response, &mut buf, 1).await;
        assert_eq!(
            events[0]["result"]["events"][0]["kv"]["value"],
            json!(k("live")),
            "{base}: {events:?}"
        );
        assert_eq!(
            events[0]["result"]["header"]["revision"],
            json!("6"),
            "{base}"
        );
    }

    // A watch from a compacted revision is cancelled with compact_revision.
    for base in &systems {
        let (s, v) = send(base, &step("/v3/kv/compaction", json!({"revision": "4"}))).await;
        assert_eq!(s, 200, "{v}");
    }
    let body = format!(r#"{{"create_request":{{"key":"{a}","start_revision":"2"}}}}"#);
    let (e, _, _) = watch_lines(&systems[0], &body, 2).await;
    let (m, _, _) = watch_lines(&systems[1], &body, 2).await;
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(m, e, "compacted watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_answers_match_etcd_3_4() {
    let etcd = Etcd::start().await;
    let meridian = Cluster::start(1).await;
    let systems = [etcd.url.clone(), meridian.url(0).to_string()];
    let steps: Vec<Step> = vec![
        step("/v3/lease/grant", json!({"TTL": "60", "ID": "100"})),
        step("/v3/lease/grant", json!({"TTL": 30, "ID": 200})),
        step("/v3/lease/grant", json!({"TTL": "60", "ID": "100"})),
        step("/v3/lease/grant", json!({"TTL": "9000000001"})),
        step(
            "/v3/kv/put",
            json!({"key": k("la"), "value": k("1"), "lease": "100"}),
        ),
        step(
            "/v3/kv/put",
            json!({"key": k("lb"), "value": k("2"), "lease": "100"}),
        ),
        step(
            "/v3/kv/put",
            json!({"key": k("lc"), "value": k("3"), "lease": "200"}),
        ),
        step(
            "/v3/kv/put",
            json!({"key": k("lc"), "value": k("33"), "ignore_lease": true, "prev_kv": true}),
        ),
        step(
            "/v3/kv/put",
            json!({"key": k("ld"), "value": k("4"), "lease": "300"}),
        ),
        step("/v3/lease/timetolive", json!({"ID": "999"})),
        step(
            "/v3/kv/lease/timetolive",
            json!({"ID": "999", "keys": true}),
        ),
        step(
            "/v3/kv/txn",
            json!({
                "compare": [{"key": k("la"), "target": "LEASE", "result": "EQUAL", "lease": "100"}],
                "success": [{"request_range": {"key": k("l"), "range_end": k("m")}}]
            }),
        ),
        step("/v3/lease/revoke", json!({"ID": "999"})),
        step("/v3/lease/revoke", json!({"ID": "100"})),
        step("/v3/kv/range", json!({"key": k("l"), "range_end": k("m")})),
        step("/v3/kv/lease/revoke", json!({"ID": "100"})),
        step("/v3/lease/timetolive", json!({"ID": "100"})),
    ];
    let mut failures = Vec::new();
    for (i, st) in steps.iter().enumerate() {
        let (es, mut ev) = send(&systems[0], st).await;
        let (ms, mut mv) = send(&systems[1], st).await;
        normalize(&mut ev);
        normalize(&mut mv);
        if (es, &ev) != (ms, &mv) {
            failures.push(format!(
                "step {i} {} {}\n  etcd     {es} {ev}\n  meridian {ms} {mv}",
                st.path,
                String::from_utf8_lossy(&st.body)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Time-to-live with keys: remaining TTL counts down from the grant.
    for base in &systems {
        let (_, v) = send(
            base,
            &step("/v3/lease/timetolive", json!({"ID": "200", "keys": true})),
        )
        .await;
        assert_eq!(v["grantedTTL"], json!("30"), "{base}: {v}");
        let ttl: i64 = v["TTL"].as_str().unwrap().parse().unwrap();
        assert!((28..=30).contains(&ttl), "{base}: {v}");
        assert_eq!(v["keys"], json!([k("lc")]), "{base}: {v}");
        let (_, v) = send(base, &step("/v3/lease/leases", json!({}))).await;
        assert_eq!(v["leases"], json!([{"ID": "200"}]), "{base}: {v}");
    }
    // Keep-alive stream: one answer per request object; TTL absent for an unknown lease.
    let body = r#"{"ID":"200"}{"ID":"999"}"#;
    let (e, _, _) = watch_lines_at(&systems[0], "/v3/lease/keepalive", body, 2).await;
    let (m, _, _) = watch_lines_at(&systems[1], "/v3/lease/keepalive", body, 2).await;
    assert_eq!(m, e, "keep-alive answers");
    // Bad input: a negative TTL is refused (etcd raises it to its minimum instead).
    let (s, v) = send(&systems[1], &step("/v3/lease/grant", json!({"TTL": "-5"}))).await;
    assert_eq!((s, v["code"].clone()), (400, json!(3)), "{v}");
}
