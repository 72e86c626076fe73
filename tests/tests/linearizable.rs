//! Several clients read, write and compare-and-swap a few keys through
//! different servers of a three-server datacenter while the leader is killed
//! twice; the recorded history must be linearizable.

mod support;

use meridian_tests::linearizability::{check, Call, Op, Return};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const KEYS: u32 = 3;
const CLIENTS: u64 = 5;
const OPS_PER_CLIENT_MAX: usize = 5_000;

fn key(k: u32) -> String {
    format!("lin/{k}")
}

/// A small deterministic generator so a failing run can be replayed in kind.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn value_of(v: &Value) -> Option<u64> {
    String::from_utf8(unb64(v)).ok()?.parse().ok()
}

/// Sends one operation; `None` when the client cannot know what happened.
async fn perform(http: &reqwest::Client, base: &str, k: u32, call: Call) -> Option<Return> {
    let (path, body) = match call {
        Call::Read => ("range", json!({ "key": b64(key(k).as_bytes()) })),
        Call::Write(v) => (
            "put",
            json!({ "key": b64(key(k).as_bytes()), "value": b64(v.to_string().as_bytes()) }),
        ),
        Call::Cas { expect, new } => (
            "txn",
            json!({
                "compare": [{ "key": b64(key(k).as_bytes()), "target": "VALUE", "result": "EQUAL",
                              "value": b64(expect.to_string().as_bytes()) }],
                "success": [{ "request_put": { "key": b64(key(k).as_bytes()),
                                               "value": b64(new.to_string().as_bytes()) } }]
            }),
        ),
    };
    let r = http
        .post(format!("{base}/v3/kv/{path}"))
        .json(&body)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    Some(match call {
        Call::Read => Return::Read(v["kvs"].get(0).and_then(|kv| value_of(&kv["value"]))),
        Call::Write(_) => Return::Written,
        Call::Cas { .. } => Return::Cas(v["succeeded"] == json!(true)),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_with_two_leader_kills_is_linearizable() {
    let mut c = Cluster::start(3).await;
    let urls: Vec<String> = (0..3).map(|i| c.url(i).to_string()).collect();
    let start = Instant::now();
    let now = move || start.elapsed().as_micros() as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let history: Arc<Mutex<Vec<Op>>> = Arc::default();

    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let (urls, stop, history) = (urls.clone(), stop.clone(), history.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id + 1));
            let mut server = id as usize % urls.len();
            let mut last_seen = [0u64; KEYS as usize];
            let mut counter = 0u64;
            for _ in 0..OPS_PER_CLIENT_MAX {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let k = (rng.next() % KEYS as u64) as u32;
                counter += 1;
                let fresh = (id + 1) << 32 | counter;
                let call = match rng.next() % 10 {
                    0..=3 => Call::Read,
                    4..=6 => Call::Write(fresh),
                    _ => Call::Cas {
                        expect: last_seen[k as usize],
                        new: fresh,
                    },
                };
                let call_at = now();
                let ret = perform(&http, &urls[server], k, call).await;
                let return_at = now();
                let ret = match ret {
                    Some(r) => r,
                    None => {
                        // Try another server next time; an unanswered read changed nothing.
                        server = (server + 1) % urls.len();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        if call == Call::Read {
                            continue;
                        }
                        Return::Unknown
                    }
                };
                match (call, ret) {
                    (Call::Read, Return::Read(Some(v))) => last_seen[k as usize] = v,
                    (Call::Write(v), Return::Written) => last_seen[k as usize] = v,
                    (Call::Cas { new, .. }, Return::Cas(true)) => last_seen[k as usize] = new,
                    _ => {}
                }
                history.lock().expect("history").push(Op {
                    key: k,
                    call_at,
                    return_at,
                    call,
                    ret,
                });
            }
        }));
    }

    // Kill the leader twice: each time traffic runs under the new leader,
    // then the old one comes back and catches up before the next kill.
    let mut kills = Vec::new();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for _ in 0..2 {
        let leader = c.leader().await;
        kills.push(now());
        c.kill(leader);
        let next = c.leader().await;
        assert_ne!(next, leader, "a new leader is elected");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        c.restart(leader).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client task");
    }

    let history = history.lock().expect("history").clone();
    let acked_after = |t: u64| {
        history
            .iter()
            .filter(|o| o.call_at > t && matches!(o.ret, Return::Written | Return::Cas(true)))
            .count()
    };

    for (i, t) in kills.iter().enumerate() {
        assert!(
            acked_after(*t) > 10,
            "writes continue after leader kill {i} (kills at {kills:?} µs; {} ops in all)",
            history.len()
        );
    }
    let unknown = history.iter().filter(|o| o.ret == Return::Unknown).count();
    let cas_ok = history
        .iter()
        .filter(|o| o.ret == Return::Cas(true))
        .count();
    assert!(cas_ok > 0, "some compare-and-swaps succeed");
    eprintln!(
        "history: {} operations ({} with unknown outcome, {} successful CAS)",
        history.len(),
        unknown,
        cas_ok
    );
    if let Err(verdict) = check(&history) {
        let mut ops: Vec<_> = history.iter().collect();
        ops.sort_by_key(|o| o.call_at);
        let dump: Vec<String> = ops.iter().map(|o| format!("{o:?}")).collect();
        panic!("{verdict:?}\n{}", dump.join("\n"));
    }
}
