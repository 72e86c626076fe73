//! Leases in a three-server datacenter: expiry deletes every attached key at
//! one revision once keep-alives stop; keep-alives keep them, also through a
//! follower; killing the leader does not expire a lease early; leases reach
//! a server that missed them by snapshot and survive a restart of every server.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

async fn grant(base: &str, id: i64, ttl: i64) {
    let (s, v) = post(
        &format!("{base}/v3/lease/grant"),
        &json!({"ID": id.to_string(), "TTL": ttl.to_string()}),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
}

async fn put_with_lease(base: &str, key: &str, lease: i64) -> i64 {
    let (s, v) = post(
        &format!("{base}/v3/kv/put"),
        &json!({"key": b64(key.as_bytes()), "value": b64(b"v"), "lease": lease.to_string()}),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
    v["header"]["revision"].as_str().unwrap().parse().unwrap()
}

async fn keep_alive(base: &str, id: i64) -> Option<i64> {
    let r = reqwest::Client::new()
        .post(format!("{base}/v3/lease/keepalive"))
        .body(json!({"ID": id.to_string()}).to_string())
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let mut r = r;
    let chunk = r.chunk().await.ok()??;
    let v: Value = serde_json::from_slice(&chunk).ok()?;
    v["result"]["TTL"].as_str().and_then(|s| s.parse().ok())
}

async fn mod_revisions(base: &str, prefix: &str) -> Vec<i64> {
    let (_, v) = post(
        &format!("{base}/v3/kv/range"),
        &json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))}),
    )
    .await
    .unwrap();
    v["kvs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|kv| kv["mod_revision"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_with_their_keys_unless_kept_alive_even_across_a_leader_kill() {
    let mut c = Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;

    // Lease 1 is left to expire; lease 2 is kept alive through a follower.
    grant(c.url(follower), 1, 2).await;
    grant(c.url(follower), 2, 2).await;
    for i in 0..3 {
        put_with_lease(c.url(follower), &format!("one/{i}"), 1).await;
        put_with_lease(c.url(follower), &format!("two/{i}"), 2).await;
    }
    let (_, v) = put(c.url(follower), "probe", "x").await.unwrap();
    let before: i64 = v["header"]["revision"].as_str().unwrap().parse().unwrap();

    // Watch the expiry: all of lease 1's keys go at one revision.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert_eq!(
            keep_alive(c.url(other), 2).await,
            Some(2),
            "lease 2 kept alive"
        );
        if mod_revisions(c.url(follower), "one/").await.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "lease 1 expires");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, v) = post(
        &format!("{}/v3/kv/range", c.url(follower)),
        &json!({"key": b64(b"one/"), "range_end": b64(b"one0"), "revision": before.to_string()}),
    )
    .await
    .unwrap();
    assert_eq!(v["count"], json!("3"), "the keys existed before expiry");
    // The three deletes share one revision: the range just before it still has all three.
    let (_, h) = post(
        &format!("{}/v3/kv/range", c.url(follower)),
        &json!({"key": b64(b"one/"), "range_end": b64(b"one0"), "count_only": true}),
    )
    .await
    .unwrap();
    let now: i64 = h["header"]["revision"].as_str().unwrap().parse().unwrap();
    let mut expiry_rev = None;
    for rev in before..=now {
        let (_, v) = post(
            &format!("{}/v3/kv/range", c.url(follower)),
            &json!({"key": b64(b"one/"), "range_end": b64(b"one0"), "count_only": true,
                    "revision": rev.to_string()}),
        )
        .await
        .unwrap();
        let count: i64 = v["count"].as_str().unwrap_or("0").parse().unwrap();
        if count == 0 {
            expiry_rev = Some(rev);
            break;
        }
        assert_eq!(count, 3, "no revision sees a partial expiry");
    }
    assert!(expiry_rev.is_some());
    assert_eq!(mod_revisions(c.url(other), "two/").await.len(), 3);

    // A longer lease (TTL 4 s) kept alive until the leader is killed, then left
    // alone: it must not expire before its TTL has passed since the last keep-alive.
    grant(c.url(follower), 3, 4).await;
    put_with_lease(c.url(follower), "three/a", 3).await;
    assert_eq!(keep_alive(c.url(follower), 3).await, Some(4));
    let last_keep_alive = Instant::now();
    let leader = c.leader().await;
    c.kill(leader);
    let survivor = (0..3).find(|i| *i != leader).unwrap();
    // Keep lease 2 alive through the failover too.
    let mut seen_gone = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let _ = keep_alive(c.url(survivor), 2).await;
        if mod_revisions(c.url(survivor), "three/").await.is_empty() {
            seen_gone = Some(last_keep_alive.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gone_after = seen_gone.expect("lease 3 expires under the new leader");
    assert!(
        gone_after >= Duration::from_secs(4),
        "lease 3 expired {gone_after:?} after its last keep-alive, before its 4 s TTL"
    );
    assert_eq!(
        mod_revisions(c.url(survivor), "two/").await.len(),
        3,
        "the kept-alive lease survives the failover"
    );
}

/// A lease's time-to-live with keys as server `base` sees it: (granted TTL, keys).
async fn time_to_live(base: &str, id: i64) -> (i64, Vec<String>) {
    let (s, v) = post(
        &format!("{base}/v3/lease/timetolive"),
        &json!({"ID": id.to_string(), "keys": true}),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
    let granted = v["grantedTTL"].as_str().unwrap_or("0").parse().unwrap();
    let mut keys: Vec<String> = v["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|k| String::from_utf8(unb64(k)).unwrap())
        .collect();
    keys.sort();
    (granted, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_state_survives_a_snapshot_install_and_a_restart_of_every_server() {
    let mut c = Cluster::start_with(
        3,
        RaftTuning {
            snapshot_logs: 50,
            purge_lag_logs: 5,
            ..RaftTuning::default()
        },
    )
    .await;
    let leader = c.leader().await;
    let lagging = (leader + 1) % 3;
    grant(c.url(leader), 7, 3).await;
    put_with_lease(c.url(leader), "kept/a", 7).await;
    put_with_lease(c.url(leader), "kept/b", 7).await;
    let want = (3, vec!["kept/a".to_string(), "kept/b".to_string()]);

    // The lagging server misses the grant's log entries entirely: they are
    // purged while it is down, so it learns the lease from a snapshot.
    c.kill(lagging);
    for i in 0..300 {
        let (status, _) = put(c.url(leader), &format!("s/{i}"), "x").await.unwrap();
        assert_eq!(status, 200);
        if i % 50 == 0 {
            assert_eq!(keep_alive(c.url(leader), 7).await, Some(3));
        }
    }
    c.restart(lagging).await;
    c.wait_applied(lagging, "s/299").await;
    assert!(c.log(lagging).contains("snapshot installed"));
    assert_eq!(keep_alive(c.url(leader), 7).await, Some(3));
    assert_eq!(time_to_live(c.url(lagging), 7).await, want);
    let (_, v) = post(&format!("{}/v3/lease/leases", c.url(lagging)), &json!({}))
        .await
        .unwrap();
    assert_eq!(v["leases"], json!([{"ID": "7"}]), "{v}");

    // Every server stops and starts again: the lease and its keys are still
    // there, keep-alives still work, and without them it still expires.
    for i in 0..3 {
        c.kill(i);
    }
    c.restart_all().await;
    for i in 0..3 {
        assert_eq!(time_to_live(c.url(i), 7).await, want, "server {i}");
    }
    assert_eq!(keep_alive(c.url(lagging), 7).await, Some(3));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !mod_revisions(c.url(lagging), "kept/").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the lease expires after restarts"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(time_to_live(c.url(lagging), 7).await, (0, vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_storm_deletes_every_key_while_client_writes_keep_going() {
    let c = Cluster::start(1).await;
    let url = c.url(0).to_string();
    const LEASES: i64 = 300;
    for id in 1..=LEASES {
        grant(&url, id, 1).await;
        put_with_lease(&url, &format!("storm/{id}"), id).await;
    }
    // The leases expire together; client writes go on meanwhile, each
    // answered within the request deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut writes = 0;
    loop {
        let (status, v) = put(&url, &format!("client/{writes}"), "x").await.unwrap();
        assert_eq!(status, 200, "write {writes} during the expiry storm: {v}");
        writes += 1;
        if mod_revisions(&url, "storm/").await.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "every lease expires");
    }
    assert!(writes > 1, "writes ran while the leases expired");
    let (_, v) = post(&format!("{url}/v3/lease/leases"), &json!({}))
        .await
        .unwrap();
    assert!(v["leases"].as_array().is_none_or(|l| l.is_empty()), "{v}");
}
