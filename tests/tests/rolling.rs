//! A rolling restart under continuous writes: each server in turn is
//! drained, stopped, started and waited for. No acknowledged write is lost,
//! and clients see only retryable errors (counted). Also: a drained server
//! refuses client requests and reports not ready; `meridian leader
//! transfer` moves leadership without stopping anyone, to the voter named,
//! without waiting for an election timeout.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// What the writers saw.
#[derive(Debug, Default)]
struct Seen {
    acked: Vec<String>,
    /// Retryable refusals by kind: HTTP status, "connect" for a stopped
    /// server, "cut" for a request in flight when its server stopped.
    retryable: BTreeMap<String, usize>,
    /// Anything else (must stay empty).
    other: Vec<String>,
    /// The longest time between two acknowledged writes.
    longest_gap: Duration,
}

async fn writer(urls: Vec<String>, stop: Arc<AtomicBool>, id: usize) -> Seen {
    // A new connection per request, so a stopped server is a refused
    // connection rather than a pooled one found dead.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let mut seen = Seen::default();
    let mut last_ack: Option<std::time::Instant> = None;
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) && i < 20_000 {
        let key = format!("/roll/{id}/{i}");
        let url = &urls[i % urls.len()];
        i += 1;
        let body = json!({"key": b64(key.as_bytes()), "value": b64(b"v")});
        match client
            .post(format!("{url}/v3/kv/put"))
            .json(&body)
            .send()
            .await
        {
            Ok(r) => {
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                match status {
                    200 => {
                        seen.acked.push(key);
                        let now = std::time::Instant::now();
                        if let Some(last) = last_ack {
                            seen.longest_gap = seen.longest_gap.max(now - last);
                        }
                        last_ack = Some(now);
                    }
                    // etcd's retryable codes: unavailable (no leader,
                    // draining, leader changed) and deadline exceeded.
                    503 | 504 => {
                        *seen.retryable.entry(status.to_string()).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    _ => seen.other.push(format!("{status} {v}")),
                }
            }
            Err(e) if e.is_connect() => {
                *seen.retryable.entry("connect".into()).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The server was stopped with the request in flight: its outcome
            // is unknown to this client, which retries elsewhere (never
            // counted as acknowledged).
            Err(e) if e.is_request() || e.is_body() => {
                *seen.retryable.entry("cut".into()).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => seen.other.push(e.to_string()),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_writes_loses_nothing_and_errs_only_retryably() {
    let mut dc = Cluster::start(3).await;
    let urls: Vec<String> = (0..3).map(|i| dc.url(i).to_string()).collect();

    // A drained follower refuses clients (retryable) and is not ready; undone, it serves.
    let leader = dc.leader().await;
    let follower = dc.url((leader + 1) % 3).to_string();
    let (code, v) = post(&format!("{follower}/admin/drain"), &json!({}))
        .await
        .expect("drain");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["was_leader"], false, "{v}");
    let (code, v) = put(&follower, "/k", "v").await.expect("put");
    assert_eq!(code, 503, "{v}");
    assert!(
        v["message"].as_str().unwrap_or("").contains("draining"),
        "{v}"
    );
    let ready = reqwest::get(format!("{follower}/ready"))
        .await
        .expect("ready");
    assert_eq!(ready.status().as_u16(), 503);
    let (code, _) = send(
        reqwest::Method::DELETE,
        &format!("{follower}/admin/drain"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    let (code, v) = put(&follower, "/k", "v").await.expect("put");
    assert_eq!(code, 200, "{v}");

    // `leader transfer` moves leadership and keeps every server running.
    let said = transfer(&dc, None);
    let after = dc.leader().await;
    assert_ne!(after, leader, "{said:?}");

    // The rolling restart, with two writers going all along.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|id| tokio::spawn(writer(urls.clone(), stop.clone(), id)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut order: Vec<usize> = (0..3).collect();
    let current = dc.leader().await;
    order.retain(|i| *i != current);
    order.push(current); // the leader last
    for i in order {
        let (code, v) = post(&format!("{}/admin/drain", dc.url(i)), &json!({}))
            .await
            .expect("drain");
        assert_eq!(code, 200, "{v}");
        dc.kill(i);
        dc.restart(i).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = stop_writers(&stop, writers).await;
    eprintln!(
        "rolling restart: {} writes acknowledged, retryable errors {:?}",
        seen.acked.len(),
        seen.retryable
    );
    assert!(seen.acked.len() > 100, "{}", seen.acked.len());
    assert_kept(&dc, &seen.acked).await;
}

/// Stops the writers and merges what they saw; fails on any error that is
/// not retryable.
async fn stop_writers(stop: &AtomicBool, writers: Vec<tokio::task::JoinHandle<Seen>>) -> Seen {
    stop.store(true, Ordering::SeqCst);
    let mut all = Seen::default();
    for w in writers {
        let seen = w.await.expect("writer");
        assert!(
            seen.other.is_empty(),
            "non-retryable errors: {:?}",
            seen.other
        );
        all.acked.extend(seen.acked);
        for (k, n) in seen.retryable {
            *all.retryable.entry(k).or_default() += n;
        }
        all.longest_gap = all.longest_gap.max(seen.longest_gap);
    }
    all
}

/// Every acknowledged write is on every server: a linearizable range
/// there waits until the server has applied everything committed.
async fn assert_kept(dc: &Cluster, acked: &[String]) {
    for i in 0..dc.servers.len() {
        let (code, v) = post(
            &format!("{}/v3/kv/range", dc.url(i)),
            &json!({"key": b64(b"/roll/"), "range_end": b64(&prefix_end("/roll/")),
                    "keys_only": true}),
        )
        .await
        .expect("range");
        assert_eq!(code, 200, "{v}");
        let have: std::collections::BTreeSet<Vec<u8>> = v["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| unb64(&kv["key"]))
            .collect();
        let lost: Vec<&String> = acked
            .iter()
            .filter(|k| !have.contains(k.as_bytes()))
            .collect();
        assert!(
            lost.is_empty(),
            "server {i} lost {} acknowledged writes: {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
}

/// Runs `meridian leader transfer` (to `to`, if given); returns its output
/// line's fields.
fn transfer(dc: &Cluster, to: Option<&str>) -> BTreeMap<String, String> {
    let urls: Vec<&str> = (0..dc.servers.len()).map(|i| dc.url(i)).collect();
    let mut args = vec!["leader", "transfer", "--endpoints"];
    let joined = urls.join(",");
    args.push(&joined);
    if let Some(name) = to {
        args.extend(["--to", name]);
    }
    let out = std::process::Command::new(binary())
        .args(&args)
        .output()
        .expect("meridian leader transfer");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// With long election timeouts (2–4 s), a handover that waited for one
/// would show; the vote-based handover takes a vote round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_transfer_hands_over_to_the_named_voter_without_waiting_an_election_timeout() {
    const ELECTION_MIN_MS: u64 = 2000;
    let dc = Cluster::start_with(
        3,
        RaftTuning {
            election_timeout_ms: (ELECTION_MIN_MS, 2 * ELECTION_MIN_MS),
            ..RaftTuning::default()
        },
    )
    .await;
    let urls: Vec<String> = (0..3).map(|i| dc.url(i).to_string()).collect();
    let leader = dc.leader().await;
    let follower = (leader + 1) % 3;

    // Refusals, each changing nothing: the server still serves.
    let leader_name = dc.servers[leader].name.clone();
    let refused = [
        (leader, json!({"to": "n9"}), "no member named n9"),
        (leader, json!({"to": leader_name}), "leads already"),
        (leader, json!({"to": 5}), "bad JSON body"),
        (leader, json!({"to": "n2", "now": true}), "unknown field"),
        (follower, json!({"to": "n1"}), "does not lead"),
    ];
    for (server, body, says) in refused {
        let (code, v) = post(&format!("{}/admin/drain", dc.url(server)), &body)
            .await
            .expect("drain");
        assert!((400..500).contains(&code), "{body}: {code} {v}");
        assert!(
            v["message"].as_str().unwrap_or("").contains(says),
            "{body}: {v}"
        );
        let (code, v) = put(dc.url(server), "/k", "v").await.expect("put");
        assert_eq!(code, 200, "{body} left the server refusing: {v}");
    }
    assert_eq!(dc.leader().await, leader);

    // Three handovers under two writers: to each follower, then back.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|id| tokio::spawn(writer(urls.clone(), stop.clone(), id)))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let order = [follower, (leader + 2) % 3, leader];
    for target in order {
        let name = dc.servers[target].name.clone();
        let said = transfer(&dc, Some(&name));
        assert_eq!(said.get("leader"), Some(&name), "{said:?}");
        assert_eq!(
            said.get("handover").map(String::as_str),
            Some("vote"),
            "{said:?}"
        );
        let leaderless: u64 = said
            .get("leaderless_ms")
            .and_then(|v| v.parse().ok())
            .expect("leaderless_ms");
        eprintln!("handover to {name}: {said:?}");
        assert!(
            leaderless < ELECTION_MIN_MS,
            "the handover to {name} took {leaderless} ms without a leader"
        );
        assert_eq!(dc.leader().await, target);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = stop_writers(&stop, writers).await;
    eprintln!(
        "three handovers: {} writes acknowledged, longest gap {:?}, retryable errors {:?}",
        seen.acked.len(),
        seen.longest_gap,
        seen.retryable
    );
    assert!(
        seen.longest_gap < Duration::from_millis(ELECTION_MIN_MS),
        "writes stopped for {:?}",
        seen.longest_gap
    );
    assert_kept(&dc, &seen.acked).await;
}

/// In a datacenter of five voters, the named voter takes over once the
/// others' lease has run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_transfer_in_a_five_voter_datacenter_goes_to_the_named_voter() {
    let dc = Cluster::start(5).await;
    let leader = dc.leader().await;
    for step in 1..=2 {
        let target = (leader + 2 * step) % 5;
        let name = dc.servers[target].name.clone();
        let said = transfer(&dc, Some(&name));
        eprintln!("five voters, handover to {name}: {said:?}");
        assert_eq!(said.get("leader"), Some(&name), "{said:?}");
        assert_eq!(
            said.get("handover").map(String::as_str),
            Some("lease"),
            "{said:?}"
        );
        assert_eq!(dc.leader().await, target);
    }
    let (code, v) = put(dc.url(leader), "/after", "v").await.expect("put");
    assert_eq!(code, 200, "{v}");
}

async fn levels(base: &str) -> (u64, bool) {
    let v = get_json(&format!("{base}/v1/status"))
        .await
        .expect("status");
    let on = v["features"]
        .as_array()
        .and_then(|f| f.iter().find(|x| x["name"] == "cluster-level-record"))
        .and_then(|x| x["on"].as_bool())
        .unwrap_or(false);
    (v["cluster_level"].as_u64().unwrap_or(0), on)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_feature_stays_off_until_every_server_runs_the_new_version() {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| free_ports()).collect();
    let old = "[testing]\nadvertise_feature_level = 1\n".to_string();
    let mut dc = Cluster::launch(Spec {
        datacenter: "test".into(),
        ports,
        tuning: RaftTuning::default(),
        ca_from: None,
        extra: vec![String::new(), String::new(), old],
    })
    .await;
    // n3 plays a server of the previous version: the level stays at 1.
    let leader = dc.leader().await;
    for _ in 0..15 {
        for i in 0..3 {
            assert_eq!(levels(dc.url(i)).await, (1, false), "server {i}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let members = get_json(&format!("{}/v1/members", dc.url(leader)))
        .await
        .expect("members");
    let n3 = members["members"]
        .as_array()
        .and_then(|l| l.iter().find(|m| m["name"] == "n3"))
        .cloned()
        .expect("n3");
    assert_eq!(n3["feature_level"], 1, "{members}");
    // n3 is upgraded: restarted without the override.
    let config = std::fs::read_to_string(dc.config_path(2)).expect("config");
    let upgraded: String = config
        .lines()
        .filter(|l| !l.starts_with("[testing]") && !l.starts_with("advertise_feature_level"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dc.config_path(2), upgraded).expect("write");
    dc.kill(2);
    dc.restart(2).await;
    for i in 0..3 {
        let mut last = (0, false);
        for _ in 0..100 {
            last = levels(dc.url(i)).await;
            if last == (2, true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(last, (2, true), "server {i} after the upgrade");
    }
    let out = std::process::Command::new(binary())
        .args(["status", "--endpoints", dc.url(0)])
        .output()
        .expect("meridian status");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("feature_level=2 cluster_level=2"), "{said}");
}
