//! Locks and elections (etcd's v3lock and v3election) in a three-server
//! datacenter: mutual exclusion with strictly increasing fencing tokens, a
//! stale holder's late write rejected by a compare on its token, and an
//! election whose killed leader is replaced after its lease TTL while
//! observers see every change.

mod support;

use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// Keeps a lease alive every 300 ms until aborted.
fn keep_alive(base: String, lease: i64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let _ = reqwest::Client::new()
                .post(format!("{base}/v3/lease/keepalive"))
                .body(json!({"ID": lease.to_string()}).to_string())
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

async fn post_long(url: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Locks `name`; returns the lock key and its fencing token (create revision).
async fn lock(base: &str, name: &str, lease: i64) -> (String, i64) {
    let (s, v) = post_long(
        &format!("{base}/v3/lock/lock"),
        &json!({"name": b64(name.as_bytes()), "lease": lease.to_string()}),
    )
    .await;
    assert_eq!(s, 200, "lock: {v}");
    let key = v["key"].as_str().unwrap().to_string();
    let (_, r) = post(&format!("{base}/v3/kv/range"), &json!({"key": key}))
        .await
        .unwrap();
    let token = r["kvs"][0]["create_revision"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (key, token)
}

fn pad(token: i64) -> String {
    format!("{token:020}")
}

/// The protected write: append to the log only if no later token has written.
async fn fenced_append(base: &str, token: i64, who: &str) -> bool {
    let (s, v) = post(
        &format!("{base}/v3/kv/txn"),
        &json!({
            "compare": [{"key": b64(b"fence"), "target": "VALUE", "result": "LESS",
                         "value": b64(pad(token).as_bytes())}],
            "success": [
                {"request_put": {"key": b64(b"fence"), "value": b64(pad(token).as_bytes())}},
                {"request_put": {"key": b64(format!("log/{}", pad(token)).as_bytes()),
                                 "value": b64(who.as_bytes())}}
            ]
        }),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
    v["succeeded"] == json!(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_holders_exclude_each_other_and_a_stale_holder_is_fenced_off() {
    let c = Cluster::start(3).await;
    let urls: Vec<String> = (0..3).map(|i| c.url(i).to_string()).collect();
    put(&urls[0], "fence", &pad(0)).await.unwrap();

    // A holder that pauses: takes the lock, then its lease lapses (no keep-alives).
    let stale_lease = grant_lease(&urls[1], 1).await;
    let (_, stale_token) = lock(&urls[1], "job", stale_lease).await;

    let holding = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..4usize {
        let base = urls[w % 3].clone();
        let holding = holding.clone();
        workers.push(tokio::spawn(async move {
            let lease = grant_lease(&base, 2).await;
            let keeper = keep_alive(base.clone(), lease);
            let mut tokens = Vec::new();
            for round in 0..3 {
                let (key, token) = lock(&base, "job", lease).await;
                assert_eq!(
                    holding.fetch_add(1, Ordering::SeqCst),
                    0,
                    "one holder at a time"
                );
                assert!(
                    fenced_append(&base, token, &format!("w{w}/{round}")).await,
                    "a current holder's write goes through"
                );
                tokio::time::sleep(Duration::from_millis(30)).await;
                holding.fetch_sub(1, Ordering::SeqCst);
                let (s, v) = post(&format!("{base}/v3/lock/unlock"), &json!({"key": key}))
                    .await
                    .unwrap();
                assert_eq!(s, 200, "{v}");
                tokens.push(token);
            }
            keeper.abort();
            tokens
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    assert_eq!(all.len(), 12);
    assert!(
        all.iter().all(|t| *t > stale_token),
        "later holders have larger tokens"
    );

    // The paused holder wakes up and writes with its old token: refused.
    assert!(
        !fenced_append(&urls[1], stale_token, "stale").await,
        "the stale holder's write is rejected by the token compare"
    );
    // The log: one entry per holding, tokens strictly increasing in write order.
    let (_, v) = post(
        &format!("{}/v3/kv/range", urls[2]),
        &json!({"key": b64(b"log/"), "range_end": b64(b"log0"), "sort_target": "MOD"}),
    )
    .await
    .unwrap();
    let entries = v["kvs"].as_array().unwrap();
    assert_eq!(entries.len(), 12);
    let tokens: Vec<String> = entries
        .iter()
        .map(|kv| String::from_utf8(unb64(&kv["key"])).unwrap())
        .collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    assert!(entries.iter().all(|kv| unb64(&kv["value"]) != b"stale"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_after_its_ttl_and_observers_see_each_change() {
    let mut c = Cluster::start(3).await;
    let raft_leader = c.leader().await;
    // The election's first leader campaigns through the Raft leader's server,
    // which is then killed: its keep-alives stop with it.
    let a = c.url(raft_leader).to_string();
    let b_idx = (raft_leader + 1) % 3;
    let b = c.url(b_idx).to_string();
    let observer_url = c.url((raft_leader + 2) % 3).to_string();

    let lease_a = grant_lease(&a, 2).await;
    let keeper_a = keep_alive(a.clone(), lease_a);
    let (s, va) = post_long(
        &format!("{a}/v3/election/campaign"),
        &json!({"name": b64(b"svc"), "lease": lease_a.to_string(), "value": b64(b"a")}),
    )
    .await;
    assert_eq!(s, 200, "{va}");

    // Observer stream.
    let mut observe = reqwest::Client::new()
        .post(format!("{observer_url}/v3/election/observe"))
        .json(&json!({"name": b64(b"svc")}))
        .send()
        .await
        .unwrap();
    let mut buf = Vec::new();
    async fn line(r: &mut reqwest::Response, buf: &mut Vec<u8>) -> Value {
        loop {
            if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let l: Vec<u8> = buf.drain(..=pos).collect();
                return serde_json::from_slice(&l).unwrap();
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), r.chunk())
                .await
                .expect("observer hears within 30 s")
                .unwrap()
                .expect("stream open");
            buf.extend_from_slice(&chunk);
        }
    }
    let first = line(&mut observe, &mut buf).await;
    assert_eq!(unb64(&first["result"]["kv"]["value"]), b"a");

    // The leader proclaims a new value; observers see it.
    let (s, v) = post(
        &format!("{a}/v3/election/proclaim"),
        &json!({"leader": va["leader"], "value": b64(b"a2")}),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        unb64(&line(&mut observe, &mut buf).await["result"]["kv"]["value"]),
        b"a2"
    );

    // B campaigns (waits); then A's server dies.
    let lease_b = grant_lease(&b, 2).await;
    let keeper_b = keep_alive(b.clone(), lease_b);
    let campaign_b = {
        let b = b.clone();
        tokio::spawn(async move {
            post_long(
                &format!("{b}/v3/election/campaign"),
                &json!({"name": b64(b"svc"), "lease": lease_b.to_string(), "value": b64(b"b")}),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    keeper_a.abort();
    c.kill(raft_leader);
    let (s, vb) = campaign_b.await.unwrap();
    assert_eq!(s, 200, "{vb}");
    let rev_a: i64 = va["leader"]["rev"].as_str().unwrap().parse().unwrap();
    let rev_b: i64 = vb["leader"]["rev"].as_str().unwrap().parse().unwrap();
    assert!(rev_b > rev_a, "the new leader's token is larger");
    assert_eq!(
        unb64(&line(&mut observe, &mut buf).await["result"]["kv"]["value"]),
        b"b"
    );

    // The old leader's proclaim is refused now.
    let (s, v) = post(
        &format!("{b}/v3/election/proclaim"),
        &json!({"leader": va["leader"], "value": b64(b"late")}),
    )
    .await
    .unwrap();
    assert_eq!(
        (s, v["message"].clone()),
        (412, json!("election: not leader")),
        "{v}"
    );
    let (_, v) = post(
        &format!("{b}/v3/election/leader"),
        &json!({"name": b64(b"svc")}),
    )
    .await
    .unwrap();
    assert_eq!(unb64(&v["kv"]["value"]), b"b");
    keeper_b.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordination_metrics_count_watchers_leases_and_waiters() {
    let c = Cluster::start(1).await;
    let base = c.url(0).to_string();

    // Leases: four granted, one revoked, one left to expire, one kept alive.
    let kept = grant_lease(&base, 60).await;
    let expiring = grant_lease(&base, 1).await;
    let revoked = grant_lease(&base, 60).await;
    let waiting = grant_lease(&base, 60).await;
    let _ = expiring;
    let (s, v) = post(
        &format!("{base}/v3/lease/revoke"),
        &json!({"ID": revoked.to_string()}),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
    let r = reqwest::Client::new()
        .post(format!("{base}/v3/lease/keepalive"))
        .body(format!(
            "{}\n{}",
            json!({"ID": kept.to_string()}),
            json!({"ID": kept.to_string()})
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap().lines().count(),
        2,
        "two keep-alive answers"
    );
    expect_metric(&base, "meridian_lease_grants_total", 4.0).await;
    expect_metric(&base, "meridian_lease_revokes_total", 1.0).await;
    expect_metric(&base, "meridian_lease_keepalives_total", 2.0).await;
    expect_metric(&base, "meridian_lease_expiries_total", 1.0).await;
    expect_metric(&base, "meridian_leases", 2.0).await;

    // A lock held and one client waiting for it; the same for an election.
    lock(&base, "m", kept).await;
    let lock_waiter = {
        let base = base.clone();
        tokio::spawn(async move { lock(&base, "m", waiting).await })
    };
    expect_metric(&base, "meridian_lock_waiters", 1.0).await;
    let campaign = |lease: i64| {
        let base = base.clone();
        async move {
            post_long(
                &format!("{base}/v3/election/campaign"),
                &json!({"name": b64(b"e"), "lease": lease.to_string(), "value": b64(b"x")}),
            )
            .await
        }
    };
    assert_eq!(campaign(kept).await.0, 200);
    let election_waiter = tokio::spawn(campaign(waiting));
    expect_metric(&base, "meridian_election_waiters", 1.0).await;
    // Waiters that give up (here: disconnect) stop counting, and their
    // contender keys are withdrawn so they never hold with nobody holding.
    lock_waiter.abort();
    election_waiter.abort();
    expect_metric(&base, "meridian_lock_waiters", 0.0).await;
    expect_metric(&base, "meridian_election_waiters", 0.0).await;
    for name in ["m/", "e/"] {
        let mut contenders = 2;
        for _ in 0..100 {
            let (_, v) = post(
                &format!("{base}/v3/kv/range"),
                &json!({"key": b64(name.as_bytes()), "range_end": b64(&prefix_end(name)), "count_only": true}),
            )
            .await
            .unwrap();
            contenders = v["count"].as_str().unwrap_or("0").parse().unwrap();
            if contenders == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(contenders, 1, "only the holder's key is left under {name}");
    }

    // One watch stream with two watchers; one put reaches both.
    let body = [b"w/a".as_slice(), b"w/"]
        .iter()
        .map(|k| json!({"create_request": {"key": b64(k), "range_end": b64(b"w0")}}).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let mut stream = reqwest::Client::new()
        .post(format!("{base}/v3/watch"))
        .body(body)
        .send()
        .await
        .unwrap();
    expect_metric(&base, "meridian_watch_streams", 1.0).await;
    expect_metric(&base, "meridian_watchers", 2.0).await;
    let before = metric(&base, "meridian_watch_events_total").await;
    put(&base, "w/a", "1").await.unwrap();
    expect_metric(&base, "meridian_watch_events_total", before + 2.0).await;
    assert!(stream.chunk().await.unwrap().is_some());
    drop(stream);
    expect_metric(&base, "meridian_watch_streams", 0.0).await;
    expect_metric(&base, "meridian_watchers", 0.0).await;
}
