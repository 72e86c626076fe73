//! Prefix replication between datacenters over real QUIC on loopback: rules
//! from configuration and the API, mirroring to several targets, WAN cuts
//! (the project's UDP fault layer), target leader kills, compaction past a
//! target's checkpoint, promotion of a target to source, read-only mirrors,
//! forwarded writes and bad rules.

mod support;

use meridian_tests::udp_proxy::{Conditions, UdpProxy};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::*;

const PREFIX: &str = "/global/";

fn rule_toml(name: &str, prefix: &str, source: &str, targets: &[&str]) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "[federation.replication.{name}]\nprefix = \"{prefix}\"\nsource = \"{source}\"\ntargets = [{}]\n",
        targets.join(", ")
    )
}

/// Every key under `prefix` in one server's own state: key → (value, version).
async fn content(base: &str, prefix: &str) -> BTreeMap<String, (String, i64)> {
    let (status, v) = post(
        &format!("{base}/v3/kv/range"),
        &json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix)), "serializable": true}),
    )
    .await
    .expect("range");
    assert_eq!(status, 200, "{v}");
    v["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| {
                    (
                        String::from_utf8(unb64(&kv["key"])).expect("utf8 key"),
                        (
                            String::from_utf8(unb64(&kv["value"])).expect("utf8 value"),
                            kv["version"]
                                .as_str()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn values(c: &BTreeMap<String, (String, i64)>) -> BTreeMap<String, String> {
    c.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect()
}

/// Waits (at most `secs`) until `dst` holds exactly `src`'s keys and values under the prefix.
async fn wait_same(src: &str, dst: &str, secs: u64) -> BTreeMap<String, (String, i64)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let want = content(src, PREFIX).await;
        let got = content(dst, PREFIX).await;
        if values(&want) == values(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{dst} still differs from {src}: {} keys there, {} here; rules: {}",
            want.len(),
            got.len(),
            get_json(&format!("{dst}/v1/federation/replication"))
                .await
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `targets` have finished the rule's first sync (a marker
/// written at the source shows there), so that every later source write
/// arrives as one change of its own.
async fn synced(source: &str, targets: &[&str]) {
    put(source, &format!("{PREFIX}synced"), "1")
        .await
        .expect("marker");
    for t in targets {
        wait_same(source, t, 30).await;
    }
}

/// Waits (at most 20 s) until the target's replicator of `global` is in `state`.
async fn wait_state(base: &str, state: &str) {
    for _ in 0..200 {
        let r = rules(base).await;
        if r["rules"][0]["progress"]["state"] == json!(state) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("replication never {state}: {}", rules(base).await);
}

/// Puts many keys with `clients` concurrent connections; returns when all are acknowledged.
async fn put_all(base: &str, writes: Vec<(String, String)>, clients: usize) {
    let client = reqwest::Client::new();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(writes.into_iter()));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, queue, base) = (client.clone(), queue.clone(), base.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().expect("queue").next();
                let Some((k, v)) = next else { return };
                let r = client
                    .post(format!("{base}/v3/kv/put"))
                    .body(json!({"key": b64(k.as_bytes()), "value": b64(v.as_bytes())}).to_string())
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .expect("put");
                assert_eq!(r.status().as_u16(), 200, "put {k}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
}

async fn delete(base: &str, key: &str) -> (u16, Value) {
    post(
        &format!("{base}/v3/kv/deleterange"),
        &json!({"key": b64(key.as_bytes())}),
    )
    .await
    .expect("delete")
}

async fn rules(base: &str) -> Value {
    get_json(&format!("{base}/v1/federation/replication"))
        .await
        .expect("rules")
}

/// Waits (at most 20 s) until `base` knows rule `name` at `epoch` or above.
async fn wait_rule(base: &str, name: &str, epoch: u64) -> Value {
    for _ in 0..200 {
        let v = rules(base).await;
        if let Some(r) = v["rules"]
            .as_array()
            .and_then(|l| l.iter().find(|r| r["name"] == json!(name)))
        {
            if r["epoch"].as_u64().unwrap_or(0) >= epoch {
                return r.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{base} never learned rule {name} at epoch {epoch}: {}",
        rules(base).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_datacenters_mirror_puts_and_deletes_in_order() {
    let plans = [
        Plan::new("dc1", 1),
        Plan::new("dc2", 1),
        Plan::new("dc3", 1),
    ];
    let rule = rule_toml("global", PREFIX, "dc1", &["dc2", "dc3"]);
    let dcs = launch(&plans, &rule).await;
    let (u1, u2, u3) = (dcs[0].url(0), dcs[1].url(0), dcs[2].url(0));
    synced(u1, &[u2, u3]).await;
    delete(u1, &format!("{PREFIX}synced")).await;

    // A poller in dc2 checks that no key ever goes back to an older value.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (stop, u2) = (stop.clone(), u2.to_string());
        tokio::spawn(async move {
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            let mut polls = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && polls < 2_000 {
                polls += 1;
                for (k, (v, _)) in content(&u2, PREFIX).await {
                    let seq: u64 = v
                        .split('-')
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let before = seen.insert(k.clone(), seq).unwrap_or(0);
                    assert!(seq >= before, "{k} went back from {before} to {seq}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            polls
        })
    };

    // 10,000 puts over 2,000 keys (each key written 5 times, in sequence order
    // per key), plus one key outside the prefix that must not be mirrored.
    let writes: Vec<(String, String)> = (0..10_000)
        .map(|i| (format!("{PREFIX}k{:04}", i % 2_000), format!("v-{i:05}")))
        .collect();
    for round in writes.chunks(2_000) {
        put_all(u1, round.to_vec(), 16).await;
    }
    put(u1, "/local/only-dc1", "x").await.expect("put");
    for i in 0..1_000 {
        let (status, v) = delete(u1, &format!("{PREFIX}k{:04}", i * 2)).await;
        assert_eq!(status, 200, "{v}");
    }
    let source = content(u1, PREFIX).await;
    assert_eq!(source.len(), 1_000);
    for target in [u2, u3] {
        let copy = wait_same(u1, target, 120).await;
        // Each source write became one write here: the versions match.
        assert_eq!(copy, source);
        assert_eq!(get(target, "/local/only-dc1", true).await.unwrap(), None);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(poller.await.expect("poller") > 0);

    // A key whose lease expires at the source is deleted in the targets.
    let lease = grant_lease(u1, 1).await;
    let leased = format!("{PREFIX}leased");
    let (s, v) = post(
        &format!("{u1}/v3/kv/put"),
        &json!({"key": b64(leased.as_bytes()), "value": b64(b"v"), "lease": lease.to_string()}),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut was_there = [false, false];
    let mut gone = [false, false];
    while gone != [true, true] {
        for (i, target) in [u2, u3].into_iter().enumerate() {
            let here = get(target, &leased, true).await.unwrap().is_some();
            was_there[i] |= here;
            gone[i] = was_there[i] && !here;
        }
        assert!(
            Instant::now() < deadline,
            "leased key never came and went in both targets: seen {was_there:?}, gone {gone:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The targets say where they are: role, checkpoint, no lag.
    let r = wait_rule(u2, "global", 1).await;
    assert_eq!(r["role"], json!("target"), "{r}");
    let r1 = wait_rule(u1, "global", 1).await;
    assert_eq!(r1["role"], json!("source"), "{r1}");
    let dirs = get_json(&format!("{u3}/v1/datacenters")).await.unwrap();
    let dc1 = dirs["datacenters"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["name"] == json!("dc1")).cloned())
        .expect("dc1 listed");
    assert_eq!(dc1["replication"][0]["rule"], json!("global"), "{dirs}");
    let page = metrics_page(u3).await;
    assert!(
        metric_in(&page, "meridian_replication_changes_total{rule=\"global\"}") >= 11_000.0,
        "every change counted"
    );
    assert_eq!(
        metric_in(
            &page,
            "meridian_replication_lag_revisions{rule=\"global\",source=\"dc1\"}"
        ),
        0.0
    );
}

/// dc1 (source) and dc2 (target), one server each, every WAN packet through a proxy.
async fn pair_through_proxies(rule: &str) -> (Vec<Cluster>, UdpProxy, UdpProxy) {
    let mut plans = [Plan::new("dc1", 1), Plan::new("dc2", 1)];
    let to_dc1 = UdpProxy::start(local(plans[0].ports[0].1), 11)
        .await
        .expect("proxy");
    let to_dc2 = UdpProxy::start(local(plans[1].ports[0].1), 12)
        .await
        .expect("proxy");
    plans[0].seen_at = vec![to_dc1.addr()];
    plans[1].seen_at = vec![to_dc2.addr()];
    let dcs = launch(&plans, rule).await;
    (dcs, to_dc1, to_dc2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_heals_without_gap_or_duplicate_and_a_compacted_checkpoint_resyncs() {
    let rule = rule_toml("global", PREFIX, "dc1", &["dc2"]);
    let (dcs, to_dc1, to_dc2) = pair_through_proxies(&rule).await;
    let (u1, u2) = (dcs[0].url(0).to_string(), dcs[1].url(0).to_string());
    synced(&u1, &[&u2]).await;
    let counter = format!("{PREFIX}counter");
    let mut n = 0;
    for _ in 0..50 {
        n += 1;
        put(&u1, &counter, &format!("c-{n}")).await.unwrap();
    }
    wait_same(&u1, &u2, 30).await;

    // Cut both directions; both DCs keep serving their own reads and writes.
    to_dc1.cut(true);
    to_dc2.cut(true);
    wait_state(&u2, "retrying").await;
    for i in 0..100 {
        n += 1;
        let (s, v) = put(&u1, &counter, &format!("c-{n}")).await.unwrap();
        assert_eq!(s, 200, "dc1 write during the cut: {v}");
        put(&u1, &format!("{PREFIX}during-{i}"), "x").await.unwrap();
        let (s, _) = put(&u2, &format!("/local/dc2-{i}"), "y").await.unwrap();
        assert_eq!(s, 200, "dc2 local write during the cut");
    }
    assert!(get(&u2, &counter, false).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    to_dc1.cut(false);
    to_dc2.cut(false);
    let copy = wait_same(&u1, &u2, 60).await;
    let source = content(&u1, PREFIX).await;
    // Every write of the counter arrived once: same value, same version.
    assert_eq!(copy[&counter], source[&counter]);
    assert_eq!(copy[&counter], (format!("c-{n}"), n));

    // Cut again, write and delete, and compact the source past dc2's checkpoint.
    to_dc1.cut(true);
    to_dc2.cut(true);
    wait_state(&u2, "retrying").await;
    for i in 0..50 {
        delete(&u1, &format!("{PREFIX}during-{i}")).await;
        put(&u1, &format!("{PREFIX}after-{i}"), "z").await.unwrap();
    }
    let (_, status) = post(&format!("{u1}/v3/maintenance/status"), &json!({}))
        .await
        .unwrap();
    let rev: i64 = status["header"]["revision"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("revision");
    let (s, v) = post(
        &format!("{u1}/v3/kv/compaction"),
        &json!({"revision": rev.to_string()}),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    to_dc1.cut(false);
    to_dc2.cut(false);
    wait_same(&u1, &u2, 60).await;
    let resyncs = metric(
        &u2,
        "meridian_replication_batches_total{kind=\"resync\",rule=\"global\"}",
    )
    .await;
    assert!(
        resyncs >= 2.0,
        "the first sync and the resync after compaction: {resyncs}"
    );
    // The mirror stays live after the resync.
    put(&u1, &format!("{PREFIX}last"), "1").await.unwrap();
    wait_same(&u1, &u2, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_target_leader_is_replaced_and_its_successor_resumes_from_the_checkpoint() {
    let plans = [Plan::new("dc1", 1), Plan::new("dc2", 3)];
    let rule = rule_toml("global", PREFIX, "dc1", &["dc2"]);
    let mut dcs = launch(&plans, &rule).await;
    let u1 = dcs[0].url(0).to_string();
    synced(&u1, &[dcs[1].url(0)]).await;
    let counter = format!("{PREFIX}counter");
    let writer = {
        let u1 = u1.clone();
        let counter = counter.clone();
        tokio::spawn(async move {
            for n in 1..=600 {
                let (s, v) = put(&u1, &counter, &format!("c-{n}")).await.unwrap();
                assert_eq!(s, 200, "{v}");
            }
        })
    };
    // Kill dc2's leader while the stream runs.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let leader = dcs[1].leader().await;
    dcs[1].kill(leader);
    writer.await.expect("writer");
    let alive = (leader + 1) % 3;
    let copy = wait_same(&u1, dcs[1].url(alive), 60).await;
    // 600 writes of the counter, each applied exactly once across the leader change.
    assert_eq!(copy[&counter], ("c-600".to_string(), 600));
    dcs[1].restart(leader).await;
    let copy = wait_same(&u1, dcs[1].url(leader), 30).await;
    assert_eq!(copy[&counter], ("c-600".to_string(), 600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_moves_the_source_and_the_old_source_returns_as_a_target() {
    let plans = [
        Plan::new("dc1", 1),
        Plan::new("dc2", 1),
        Plan::new("dc3", 1),
    ];
    let rule = rule_toml("global", PREFIX, "dc1", &["dc2", "dc3"]);
    let mut dcs = launch(&plans, &rule).await;
    let (u1, u2, u3) = (
        dcs[0].url(0).to_string(),
        dcs[1].url(0).to_string(),
        dcs[2].url(0).to_string(),
    );
    for i in 0..20 {
        put(&u1, &format!("{PREFIX}k{i}"), "from-dc1")
            .await
            .unwrap();
    }
    wait_same(&u1, &u2, 30).await;
    wait_same(&u1, &u3, 30).await;
    // dc2 cannot write yet: it is a read-only mirror.
    let (s, v) = put(&u2, &format!("{PREFIX}k0"), "early").await.unwrap();
    assert_eq!(s, 412, "{v}");

    // dc1 is lost; dc2 becomes the source.
    dcs[0].kill(0);
    let (s, v) = send(
        reqwest::Method::POST,
        &format!("{u2}/v1/federation/replication/global/promote"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["source"], json!("dc2"), "{v}");
    assert_eq!(v["epoch"], json!(2), "{v}");
    assert_eq!(v["targets"], json!(["dc3", "dc1"]), "{v}");
    for i in 0..20 {
        let (s, v) = put(&u2, &format!("{PREFIX}k{i}"), "from-dc2")
            .await
            .unwrap();
        assert_eq!(s, 200, "{v}");
    }
    // dc3 follows the new source.
    wait_rule(&u3, "global", 2).await;
    let copy = wait_same(&u2, &u3, 60).await;
    assert!(copy.values().all(|(v, _)| v == "from-dc2"));

    // dc1 returns, learns the promotion and becomes a target without
    // overwriting dc2's newer data.
    dcs[0].restart(0).await;
    let r = wait_rule(&u1, "global", 2).await;
    assert_eq!(r["role"], json!("target"), "{r}");
    let copy = wait_same(&u2, &u1, 60).await;
    assert!(copy.values().all(|(v, _)| v == "from-dc2"));
    assert!(content(&u2, PREFIX)
        .await
        .values()
        .all(|(v, _)| v == "from-dc2"));
    let (s, v) = put(&u1, &format!("{PREFIX}k0"), "stale").await.unwrap();
    assert_eq!(s, 412, "dc1 is now a read-only mirror: {v}");
    assert!(v["message"].as_str().unwrap_or("").contains("dc2"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_and_writes_to_mirrors_are_refused_and_forwarded_writes_reach_the_source() {
    let plans = [Plan::new("dc1", 1), Plan::new("dc2", 1)];
    let dcs = launch(&plans, &rule_toml("global", PREFIX, "dc1", &["dc2"])).await;
    let (u1, u2) = (dcs[0].url(0).to_string(), dcs[1].url(0).to_string());
    let url = |base: &str, name: &str| format!("{base}/v1/federation/replication/{name}");
    wait_rule(&u1, "global", 1).await;
    let before = rules(&u1).await;
    for (name, body, says) in [
        (
            "e",
            json!({"prefix": "", "source": "dc1", "targets": ["dc2"]}),
            "prefix must not be empty",
        ),
        (
            "o",
            json!({"prefix": "/global/x/", "source": "dc1", "targets": ["dc2"]}),
            "overlaps rule \"global\"",
        ),
        (
            "o2",
            json!({"prefix": "/", "source": "dc1", "targets": ["dc2"]}),
            "overlaps",
        ),
        (
            "s",
            json!({"prefix": "/s/", "source": "dc1", "targets": ["dc1"]}),
            "is the rule's source",
        ),
        (
            "u",
            json!({"prefix": "/u/", "source": "dc1", "targets": ["nowhere"]}),
            "unknown datacenter \"nowhere\"",
        ),
        (
            "u2",
            json!({"prefix": "/u/", "source": "dc9", "targets": ["dc2"]}),
            "unknown datacenter \"dc9\"",
        ),
        (
            "t",
            json!({"prefix": "/t/", "source": "dc1", "targets": []}),
            "at least one target",
        ),
        (
            "x",
            json!({"prefix": "/x/", "source": "dc1", "targets": ["dc2"], "bogus": 1}),
            "bogus",
        ),
        (
            "bad name!",
            json!({"prefix": "/b/", "source": "dc1", "targets": ["dc2"]}),
            "rule name",
        ),
    ] {
        let (s, v) = send(reqwest::Method::PUT, &url(&u1, name), Some(body)).await;
        assert_eq!(s, 400, "{name}: {v}");
        assert_eq!(v["code"], json!(3), "{v}");
        assert!(
            v["message"].as_str().unwrap_or("").contains(says),
            "{name}: {v}"
        );
    }
    let (s, v) = send(reqwest::Method::DELETE, &url(&u1, "nope"), None).await;
    assert_eq!((s, v["code"].clone()), (404, json!(5)), "{v}");
    let (s, v) = send(
        reqwest::Method::POST,
        &format!("{}/promote", url(&u1, "global")),
        None,
    )
    .await;
    assert_eq!(s, 400, "dc1 is already the source: {v}");
    assert_eq!(
        rules(&u1).await["rules"],
        before["rules"],
        "nothing changed"
    );

    // A write to the read-only mirror names the source and the rule, and changes nothing.
    put(&u1, &format!("{PREFIX}a"), "1").await.unwrap();
    wait_same(&u1, &u2, 30).await;
    for (path, body) in [
        (
            "/v3/kv/put",
            json!({"key": b64(b"/global/a"), "value": b64(b"2")}),
        ),
        (
            "/v3/kv/deleterange",
            json!({"key": b64(b"/"), "range_end": b64(b"0")}),
        ),
        (
            "/v3/kv/txn",
            json!({"success": [{"request_put": {"key": b64(b"/global/b"), "value": b64(b"x")}}]}),
        ),
    ] {
        let (s, v) = post(&format!("{u2}{path}"), &body).await.unwrap();
        assert_eq!(s, 412, "{path}: {v}");
        let m = v["message"].as_str().unwrap_or("");
        assert!(
            m.contains("dc1") && m.contains("global") && m.contains("read-only"),
            "{m}"
        );
    }
    assert_eq!(
        get(&u2, "/global/a", true).await.unwrap(),
        Some(b"1".to_vec())
    );
    assert_eq!(get(&u2, "/global/b", true).await.unwrap(), None);

    // A second rule, created through the API in dc2 with forward_writes:
    // dc1 learns it, and a write made in dc1 is answered by dc2.
    let (s, v) = send(
        reqwest::Method::PUT,
        &url(&u2, "shared"),
        Some(json!({"prefix": "/shared/", "source": "dc2", "targets": ["dc1"], "forward_writes": true})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    wait_rule(&u1, "shared", 1).await;
    let mut answered_by = None;
    for _ in 0..50 {
        let r = reqwest::Client::new()
            .post(format!("{u1}/v3/kv/put"))
            .body(json!({"key": b64(b"/shared/x"), "value": b64(b"via-dc1")}).to_string())
            .send()
            .await
            .expect("put");
        let by = r
            .headers()
            .get("meridian-datacenter")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if r.status().as_u16() == 200 && by.as_deref() == Some("dc2") {
            answered_by = by;
            break;
        }
        // Until dc1 has applied the rule, the write is an ordinary local one.
        delete(&u1, "/shared/x").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(answered_by.as_deref(), Some("dc2"));
    assert_eq!(
        get(&u2, "/shared/x", true).await.unwrap(),
        Some(b"via-dc1".to_vec())
    );
    // ...and comes back to dc1 as a mirrored write.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&u1, "/shared/x", true).await.unwrap() != Some(b"via-dc1".to_vec()) {
        assert!(
            Instant::now() < deadline,
            "forwarded write never mirrored back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Deleting the rule makes the copy writable.
    let (s, v) = send(reqwest::Method::DELETE, &url(&u2, "shared"), None).await;
    assert_eq!(s, 200, "{v}");
    wait_rule(&u1, "shared", 2).await;
    let (s, v) = put(&u1, "/shared/x", "mine").await.unwrap();
    assert_eq!(s, 200, "{v}");
}

/// WAN conditions: 25 ms ± 5 ms each way and 1 % loss between dc1 and dc2;
/// 500 writes a second for 4 s at the source. Reports the replication lag
/// (from each write's acknowledgement at the source until the target holds
/// it); asserts only that everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_keeps_up_under_wan_delay_and_loss() {
    let rule = rule_toml("global", PREFIX, "dc1", &["dc2"]);
    let (dcs, to_dc1, to_dc2) = pair_through_proxies(&rule).await;
    let (u1, u2) = (dcs[0].url(0).to_string(), dcs[1].url(0).to_string());
    let wan = Conditions {
        delay: Duration::from_millis(25),
        jitter: Duration::from_millis(5),
        loss: 0.01,
        cut: false,
    };
    to_dc1.set(wan, wan);
    to_dc2.set(wan, wan);
    put(&u1, &format!("{PREFIX}warm"), "1").await.unwrap();
    wait_same(&u1, &u2, 30).await;

    // The target side: a watch on the prefix records when each write arrives.
    let watch = reqwest::Client::new()
        .post(format!("{u2}/v3/watch"))
        .body(
            json!({"create_request": {"key": b64(format!("{PREFIX}w/").as_bytes()), "range_end": b64(&prefix_end(&format!("{PREFIX}w/")))}})
                .to_string(),
        )
        .send()
        .await
        .expect("watch");
    let rate = 500u64;
    let total = rate * 4;
    let arrivals = tokio::spawn(async move {
        let mut watch = watch;
        let mut buf: Vec<u8> = Vec::new();
        let mut seen: BTreeMap<u64, Instant> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        while (seen.len() as u64) < total && Instant::now() < deadline {
            let chunk = match tokio::time::timeout(Duration::from_secs(30), watch.chunk()).await {
                Ok(Ok(Some(c))) => c,
                _ => break,
            };
            let now = Instant::now();
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                for e in v["result"]["events"].as_array().into_iter().flatten() {
                    let key = String::from_utf8(unb64(&e["kv"]["key"])).unwrap_or_default();
                    if let Some(n) = key.rsplit('/').next().and_then(|n| n.parse().ok()) {
                        seen.entry(n).or_insert(now);
                    }
                }
            }
        }
        seen
    });
    // The source side: 500 writes a second, open loop (each write starts on time).
    let client = reqwest::Client::new();
    let start = Instant::now();
    let mut writes = Vec::new();
    for n in 1..=total {
        let due = start + Duration::from_micros(n * 1_000_000 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, u1) = (client.clone(), u1.clone());
        writes.push(tokio::spawn(async move {
            let r = client
                .post(format!("{u1}/v3/kv/put"))
                .body(
                    json!({"key": b64(format!("{PREFIX}w/{n}").as_bytes()), "value": b64(b"x")})
                        .to_string(),
                )
                .send()
                .await
                .expect("put");
            assert_eq!(r.status().as_u16(), 200);
            (n, Instant::now())
        }));
    }
    let mut acked = Vec::new();
    for w in writes {
        acked.push(w.await.expect("write"));
    }
    let achieved = total as f64 / start.elapsed().as_secs_f64();
    let seen = arrivals.await.expect("watch reader");
    assert_eq!(
        seen.len() as u64,
        total,
        "every write arrived in the target"
    );
    let mut lags: Vec<f64> = acked
        .iter()
        .map(|(n, at)| seen[n].saturating_duration_since(*at).as_secs_f64() * 1000.0)
        .collect();
    lags.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lags[((lags.len() - 1) as f64 * p) as usize];
    eprintln!(
        "replication at {achieved:.0} writes/s over 50 ms RTT, 1% loss: lag p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} writes)",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        lags[lags.len() - 1],
        lags.len()
    );
    wait_same(&u1, &u2, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_a_cut_off_source_accepted_after_a_promotion_are_listed_not_lost_silently() {
    let rule = rule_toml("global", PREFIX, "dc1", &["dc2"]);
    let (dcs, to_dc1, to_dc2) = pair_through_proxies(&rule).await;
    let (u1, u2) = (dcs[0].url(0).to_string(), dcs[1].url(0).to_string());
    put(&u1, &format!("{PREFIX}a"), "1").await.unwrap();
    synced(&u1, &[&u2]).await;

    // dc1 is cut off; it keeps accepting writes nobody mirrors.
    to_dc1.cut(true);
    to_dc2.cut(true);
    wait_state(&u2, "retrying").await;
    put(&u1, &format!("{PREFIX}a"), "lost-update")
        .await
        .unwrap();
    put(&u1, &format!("{PREFIX}new"), "lost-create")
        .await
        .unwrap();
    // The operators fail over to dc2, which writes on.
    let (s, v) = send(
        reqwest::Method::POST,
        &format!("{u2}/v1/federation/replication/global/promote"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    put(&u2, &format!("{PREFIX}b"), "from-dc2").await.unwrap();

    // The link heals: dc1 takes dc2's content and lists what it lost.
    to_dc1.cut(false);
    to_dc2.cut(false);
    let r = wait_rule(&u1, "global", 2).await;
    assert_eq!(r["role"], json!("target"), "{r}");
    let copy = wait_same(&u2, &u1, 60).await;
    assert_eq!(copy[&format!("{PREFIX}a")].0, "1");
    assert!(!copy.contains_key(&format!("{PREFIX}new")));
    let r = wait_rule(&u1, "global", 2).await;
    let lost: Vec<(String, String)> = r["unreplicated_writes"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|w| {
                    (
                        w["key"].as_str().unwrap_or("").to_string(),
                        w["value"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        lost,
        vec![
            (format!("{PREFIX}a"), "lost-update".to_string()),
            (format!("{PREFIX}new"), "lost-create".to_string()),
        ],
        "{r}"
    );
    assert_eq!(r["handover"]["from"], json!("dc1"), "{r}");
}
