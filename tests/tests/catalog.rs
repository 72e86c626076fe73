//! The service catalog on real servers: instances bound to leases, HTTP, TCP
//! and TTL checks against real listeners started here on loopback, checks
//! spread over the servers, failover lookups across datacenters joined over
//! QUIC (with delays and cuts from the project's UDP fault layer), the
//! Consul-compatible reads with blocking queries, and bad input.

mod support;

use meridian_tests::udp_proxy::{Conditions, UdpProxy};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOOKUP_TIMEOUT_MS: u64 = 1500;

fn catalog_section() -> String {
    format!("[catalog]\nlookup_timeout_ms = {LOOKUP_TIMEOUT_MS}\nchecker_ttl_seconds = 2\n")
}

async fn register(base: &str, body: Value) -> (u16, Value) {
    send(
        reqwest::Method::PUT,
        &format!("{base}/v1/catalog/register"),
        Some(body),
    )
    .await
}

/// `GET /v1/health/service/<name>` (linearizable): (service id, status) of
/// each instance.
async fn health(base: &str, service: &str) -> Vec<(String, String)> {
    listed(base, service, "").await
}

/// The same from the server's own state (`stale`): answers while the
/// datacenter elects a leader.
async fn health_stale(base: &str, service: &str) -> Vec<(String, String)> {
    listed(base, service, "?stale").await
}

async fn listed(base: &str, service: &str, query: &str) -> Vec<(String, String)> {
    let v = get_json(&format!("{base}/v1/health/service/{service}{query}"))
        .await
        .unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["Service"]["ID"].as_str().unwrap_or("").to_string(),
                e["Status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Waits (at most `secs`) until instance `id` of `service` has `status`
/// ("gone" for absent); answers how long that took.
async fn wait_status(base: &str, service: &str, id: &str, status: &str, secs: u64) -> Duration {
    let start = Instant::now();
    let mut last = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        last = health(base, service).await;
        let now = last
            .iter()
            .find(|(i, _)| i == id)
            .map_or("gone", |(_, s)| s.as_str());
        if now == status {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{service}/{id} never {status} within {secs} s: {last:?}");
}

/// A tiny HTTP server answering 200 to everything until aborted.
fn http_server(listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    })
}

async fn bind(port: u16) -> tokio::net::TcpListener {
    for _ in 0..50 {
        if let Ok(l) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot bind 127.0.0.1:{port}");
}

async fn start_dc(servers: usize) -> Cluster {
    let ports: Vec<(u16, u16)> = (0..servers).map(|_| free_ports()).collect();
    Cluster::launch(Spec {
        datacenter: "dc1".into(),
        ports,
        tuning: RaftTuning::default(),
        ca_from: None,
        extra: vec![catalog_section(); servers],
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_bound_instances_vanish_when_the_lease_lapses_and_stay_while_kept_alive_across_a_leader_kill(
) {
    let mut dc = start_dc(3).await;
    let base = dc.url(0).to_string();
    let (status, v) = register(
        &base,
        json!({"service": "web", "id": "short", "address": "10.0.0.1", "port": 80, "ttl": 2}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["lease"].as_str().is_some(), "{v}");
    let lease = grant_lease(&base, 2).await;
    let (status, v) = register(
        &base,
        json!({"service": "web", "id": "kept", "address": "10.0.0.2", "port": 80, "lease": lease.to_string()}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let listed = health(&base, "web").await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    // Keep-alives for "kept" from a task, through whichever server is up.
    let urls: Vec<String> = (0..3).map(|i| dc.url(i).to_string()).collect();
    let keeping = tokio::spawn(async move {
        for round in 0..200usize {
            let url = &urls[round % 3];
            let _ = post(&format!("{url}/v3/lease/keepalive"), &json!({"ID": lease})).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    wait_status(&base, "web", "short", "gone", 10).await;
    let leader = dc.leader().await;
    dc.kill(leader);
    let other = (leader + 1) % 3;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let listed = health_stale(dc.url(other), "web").await;
        assert!(
            listed.iter().any(|(id, _)| id == "kept"),
            "kept-alive instance lost after the leader kill: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    keeping.abort();
    wait_status(dc.url(other), "web", "kept", "gone", 10).await;
    let services = get_json(&format!("{}/v1/catalog/services", dc.url(other)))
        .await
        .expect("services");
    assert_eq!(services, json!({}), "{services}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_follow_real_servers_spread_over_the_servers_and_critical_instances_are_removed() {
    let dc = start_dc(3).await;
    let base = dc.url(0).to_string();
    let http_port = free_ports().0;
    let tcp_port = free_ports().0;
    let mut http = http_server(bind(http_port).await);
    let tcp_listener = bind(tcp_port).await;
    let check = |kind: &str, target: String| json!({ kind: target, "interval": "500ms", "timeout": "300ms" });
    for (id, kind, target) in [
        (
            "http",
            "http",
            format!("http://127.0.0.1:{http_port}/health"),
        ),
        ("tcp", "tcp", format!("127.0.0.1:{tcp_port}")),
    ] {
        let (status, v) = register(
            &base,
            json!({"service": "api", "id": id, "address": "127.0.0.1", "port": 8080, "check": check(kind, target)}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    // More TCP-checked instances, to see the checks spread.
    for i in 0..8 {
        let (status, v) = register(
            &base,
            json!({"service": "pool", "id": format!("p{i}"), "address": "127.0.0.1", "port": tcp_port,
                   "check": check("tcp", format!("127.0.0.1:{tcp_port}"))}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    wait_status(&base, "api", "http", "passing", 10).await;
    wait_status(&base, "api", "tcp", "passing", 10).await;
    for i in 0..8 {
        wait_status(&base, "pool", &format!("p{i}"), "passing", 10).await;
    }
    let pool = get_json(&format!("{base}/v1/health/service/pool"))
        .await
        .expect("pool");
    let checkers: BTreeSet<String> = pool
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            e["History"].as_array()?.last()?["by"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert!(
        checkers.len() >= 2,
        "every check ran on one server: {checkers:?}"
    );
    // Interval 500 ms + timeout 300 ms; the bound adds the runner's tick and
    // the status write.
    let bound = 800 + 2000;
    http.abort();
    let _ = http.await;
    let took = wait_status(&base, "api", "http", "critical", 10).await;
    eprintln!("HTTP server stopped -> critical in {took:?}");
    assert!(
        took < Duration::from_millis(bound),
        "HTTP check took {took:?}"
    );
    drop(tcp_listener);
    let took = wait_status(&base, "api", "tcp", "critical", 10).await;
    eprintln!("TCP listener closed -> critical in {took:?}");
    assert!(
        took < Duration::from_millis(bound),
        "TCP check took {took:?}"
    );
    http = http_server(bind(http_port).await);
    wait_status(&base, "api", "http", "passing", 10).await;
    let tcp_listener = bind(tcp_port).await;
    wait_status(&base, "api", "tcp", "passing", 10).await;
    // The history shows each change, oldest first.
    let entries = get_json(&format!("{base}/v1/health/service/api"))
        .await
        .expect("health");
    let http_entry = entries
        .as_array()
        .and_then(|l| l.iter().find(|e| e["Service"]["ID"] == "http"))
        .expect("http entry");
    let statuses: Vec<&str> = http_entry["History"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|t| t["status"].as_str())
        .collect();
    assert_eq!(
        statuses,
        ["critical", "passing", "critical", "passing"],
        "{http_entry}"
    );
    // ?passing keeps only passing instances.
    let (status, v) = register(
        &base,
        json!({"service": "api", "id": "doomed", "address": "127.0.0.1", "port": 9,
               "check": {"tcp": format!("127.0.0.1:{}", free_ports().0), "interval": "300ms",
                         "timeout": "200ms", "deregister_critical_after": "1s"}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let passing = get_json(&format!("{base}/v1/health/service/api?passing"))
        .await
        .expect("passing");
    assert!(
        passing
            .as_array()
            .is_some_and(|l| l.iter().all(|e| e["Service"]["ID"] != "doomed")),
        "{passing}"
    );
    wait_status(&base, "api", "doomed", "gone", 15).await;
    // A TTL check: passing while reported, critical when the reports stop.
    let (status, v) = register(
        &base,
        json!({"service": "worker", "id": "w1", "address": "127.0.0.1", "port": 7, "check": {"ttl": "1s"}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    wait_status(&base, "worker", "w1", "critical", 5).await;
    let report = |status: &str| {
        let url = format!("{}/v1/health/check/worker/w1", dc.url(1));
        let body = json!({"status": status, "output": "self-reported"});
        async move { send(reqwest::Method::PUT, &url, Some(body)).await }
    };
    let (status, v) = report("passing").await;
    assert_eq!(status, 200, "{v}");
    wait_status(&base, "worker", "w1", "passing", 5).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let (status, v) = report("pass").await;
        assert_eq!(status, 200, "{v}");
        let now = health(&base, "worker").await;
        assert_eq!(now, [("w1".to_string(), "passing".to_string())]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_status(&base, "worker", "w1", "critical", 10).await;
    let (status, _) = report("warning").await;
    assert_eq!(status, 200);
    wait_status(&base, "worker", "w1", "warning", 5).await;
    let page = metrics_page(&base).await;
    assert!(
        page.contains("meridian_catalog_instances{service=\"api\",status=\"passing\"} 2"),
        "{page}"
    );
    drop(tcp_listener);
    http.abort();
}

/// dc1, dc2 and dc3, one server each; every DC reaches dc2 and dc3 through
/// their proxies, and dc1 through its own.
async fn three_dcs() -> (Vec<Cluster>, UdpProxy, UdpProxy, UdpProxy) {
    let mut plans = [
        Plan::new("dc1", 1),
        Plan::new("dc2", 1),
        Plan::new("dc3", 1),
    ];
    let mut proxies = Vec::new();
    for (i, plan) in plans.iter_mut().enumerate() {
        let proxy = UdpProxy::start(local(plan.ports[0].1), 30 + i as u64)
            .await
            .expect("proxy");
        plan.seen_at = vec![proxy.addr()];
        proxies.push(proxy);
    }
    let dcs = launch(&plans, &catalog_section()).await;
    let to_dc3 = proxies.pop().expect("proxy");
    let to_dc2 = proxies.pop().expect("proxy");
    let to_dc1 = proxies.pop().expect("proxy");
    (dcs, to_dc1, to_dc2, to_dc3)
}

/// dc1's measured RTT to `dc` in ms, once its link is up.
async fn rtt(base: &str, dc: &str) -> Option<f64> {
    let v = get_json(&format!("{base}/v1/datacenters")).await.ok()?;
    v["datacenters"]
        .as_array()?
        .iter()
        .find(|d| d["name"] == dc)?["rtt_ms"]
        .as_f64()
}

/// Waits (at most 30 s) until dc1 measures `near` at least 40 ms closer than `far`.
async fn wait_nearer(base: &str, near: &str, far: &str) {
    let mut last = (None, None);
    for _ in 0..300 {
        last = (rtt(base, near).await, rtt(base, far).await);
        if let (Some(n), Some(f)) = last {
            if n + 40.0 < f {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{near} never measured nearer than {far}: {last:?}");
}

async fn lookup(base: &str, query: &str) -> (u16, Value, Duration) {
    let start = Instant::now();
    let (status, v) = send(
        reqwest::Method::GET,
        &format!("{base}/v1/lookup/api{query}"),
        None,
    )
    .await;
    (status, v, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_fail_over_to_the_nearest_datacenter_and_a_cut_one_costs_one_timeout() {
    let (dcs, to_dc1, to_dc2, to_dc3) = three_dcs().await;
    let (dc1, dc2, dc3) = (dcs[0].url(0), dcs[1].url(0), dcs[2].url(0));
    for (base, id) in [(dc2, "api-dc2"), (dc3, "api-dc3")] {
        let (status, v) = register(
            base,
            json!({"service": "api", "id": id, "address": "127.0.0.1", "port": 8080, "tags": ["v1"]}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    // dc1 has none of its own and says so without failover.
    let (status, v, _) = lookup(dc1, "").await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["datacenters_tried"], 1, "{v}");
    // dc2 far (60 ms each way), dc3 near.
    let slow = Conditions {
        delay: Duration::from_millis(60),
        ..Default::default()
    };
    let quick = Conditions {
        delay: Duration::from_millis(2),
        ..Default::default()
    };
    to_dc2.set(slow, slow);
    to_dc3.set(quick, quick);
    wait_nearer(dc1, "dc3", "dc2").await;
    let (status, v, _) = lookup(dc1, "?failover=nearest:1").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["datacenter"], "dc3", "{v}");
    assert_eq!(v["failover"], true, "{v}");
    assert_eq!(v["datacenters_tried"], 2, "{v}");
    assert_eq!(v["instances"][0]["id"], "api-dc3", "{v}");
    assert_eq!(v["instances"][0]["datacenter"], "dc3", "{v}");
    // The other way round.
    to_dc2.set(quick, quick);
    to_dc3.set(slow, slow);
    wait_nearer(dc1, "dc2", "dc3").await;
    let (status, v, _) = lookup(dc1, "?failover=nearest:1&tag=v1").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["datacenter"], "dc2", "{v}");
    // An explicit order is followed as given.
    let (status, v, _) = lookup(dc1, "?failover=dc3,dc2").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["datacenter"], "dc3", "{v}");
    // A tag nobody has: every DC answers "none", so 404 naming them all.
    let (status, v, _) = lookup(dc1, "?failover=nearest:2&tag=v2").await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["datacenters_tried"], 3, "{v}");
    // dc2 cut off: it costs one timeout, then dc3 answers.
    to_dc2.set(quick, quick);
    to_dc3.set(quick, quick);
    to_dc2.cut(true);
    let (status, v, took) = lookup(dc1, "?failover=dc2,dc3").await;
    eprintln!("lookup past a cut dc2 answered by dc3 in {took:?}");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["datacenter"], "dc3", "{v}");
    assert_eq!(v["tried"][1]["datacenter"], "dc2", "{v}");
    assert_eq!(v["tried"][1]["outcome"], "error", "{v}");
    assert!(
        took < Duration::from_millis(LOOKUP_TIMEOUT_MS + 1500),
        "took {took:?}"
    );
    // Only dc2, cut: a clear error within the timeout.
    let (status, v, took) = lookup(dc1, "?failover=dc2").await;
    eprintln!("lookup with only a cut dc2 failed in {took:?}");
    assert_eq!(status, 503, "{v}");
    let message = v["message"].as_str().unwrap_or("");
    assert!(
        message.contains("dc2") && message.contains("no healthy instance"),
        "{v}"
    );
    assert!(
        took < Duration::from_millis(LOOKUP_TIMEOUT_MS + 1500),
        "took {took:?}"
    );
    to_dc2.cut(false);
    drop(to_dc1);
    let page = metrics_page(dc1).await;
    assert!(
        metric_in(
            &page,
            "meridian_catalog_lookups_total{outcome=\"failover\"}"
        ) >= 4.0
    );
    assert!(
        metric_in(
            &page,
            "meridian_catalog_failover_hops_total{dc=\"dc2\",outcome=\"error\"}"
        ) >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_and_lookups_are_refused_and_change_nothing() {
    let dc = start_dc(1).await;
    let base = dc.url(0).to_string();
    let (status, v) = register(
        &base,
        json!({"service": "api", "id": "good", "address": "127.0.0.1", "port": 80, "check": {"ttl": "10s"}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    // The first check makes the server announce itself as a checker, a
    // write of its own shortly after: wait for it, so that the revision
    // compared below is one the bad requests alone could move.
    let (_, v) = send(reqwest::Method::GET, &format!("{base}/v1/status"), None).await;
    let checker = format!(
        "/meridian/catalog/checkers/{}",
        v["name"].as_str().unwrap_or("")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&base, &checker, false).await.ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "{checker} was never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = get_json(&format!("{base}/v1/health/service/api"))
        .await
        .expect("before");
    let (_, v) = send(reqwest::Method::GET, &format!("{base}/v1/status"), None).await;
    let revision = v["revision"].clone();
    let cases = [
        (json!({"address": "127.0.0.1", "port": 80}), "service"),
        (
            json!({"service": "api", "id": "x", "address": "no such host!", "port": 80}),
            "address",
        ),
        (
            json!({"service": "api", "id": "x", "address": "127.0.0.1", "port": 0}),
            "port",
        ),
        (
            json!({"service": "api", "id": "x", "address": "127.0.0.1", "port": 65536}),
            "port",
        ),
        (
            json!({"service": "api", "id": "x", "address": "127.0.0.1", "port": 80,
                "check": {"tcp": "127.0.0.1:1", "interval": "0s"}}),
            "interval",
        ),
        (
            json!({"service": "api", "id": "x", "address": "127.0.0.1", "port": 80, "lease": "12345"}),
            "lease",
        ),
        (
            json!({"service": "api", "id": "x", "address": "127.0.0.1", "port": 80, "colour": "red"}),
            "colour",
        ),
    ];
    for (body, word) in cases {
        let (status, v) = register(&base, body.clone()).await;
        assert!(status == 400 || status == 404, "{body}: {status} {v}");
        let message = v["message"].as_str().unwrap_or("");
        assert!(message.contains(word), "{body}: {v}");
    }
    let (status, v) = send(
        reqwest::Method::PUT,
        &format!("{base}/v1/catalog/register"),
        None,
    )
    .await;
    assert_eq!(status, 400, "{v}");
    // Deregistering what is not there, reporting a bad status or to an
    // instance without a TTL check.
    let (status, v) = send(
        reqwest::Method::PUT,
        &format!("{base}/v1/catalog/deregister"),
        Some(json!({"service": "api", "id": "nope"})),
    )
    .await;
    assert_eq!(status, 404, "{v}");
    let (status, v) = send(
        reqwest::Method::PUT,
        &format!("{base}/v1/health/check/api/good"),
        Some(json!({"status": "fine"})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    // Lookups: an unknown service, a failover to an unknown DC, bad
    // parameters.
    let (status, v) = send(
        reqwest::Method::GET,
        &format!("{base}/v1/lookup/nosuch"),
        None,
    )
    .await;
    assert_eq!(status, 404, "{v}");
    assert!(
        v["message"].as_str().unwrap_or("").contains("nosuch"),
        "{v}"
    );
    for (query, word) in [
        ("failover=dc9", "dc9"),
        ("failover=nearest:0", "nearest"),
        ("timeout_ms=0", "timeout_ms"),
        ("near=somewhere", "near"),
        ("colour=red", "colour"),
    ] {
        let (status, v) = send(
            reqwest::Method::GET,
            &format!("{base}/v1/lookup/api?{query}"),
            None,
        )
        .await;
        assert_eq!(status, 400, "{query}: {v}");
        assert!(
            v["message"].as_str().unwrap_or("").contains(word),
            "{query}: {v}"
        );
    }
    // Nothing changed: same content, same revision.
    let after = get_json(&format!("{base}/v1/health/service/api"))
        .await
        .expect("after");
    assert_eq!(before, after);
    let (_, v) = send(reqwest::Method::GET, &format!("{base}/v1/status"), None).await;
    assert_eq!(v["revision"], revision, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_blocking_queries_wait_for_a_catalog_change() {
    let dc = start_dc(1).await;
    let base = dc.url(0).to_string();
    let r = reqwest::get(format!("{base}/v1/catalog/services"))
        .await
        .expect("services");
    let index: i64 = r.headers()["x-consul-index"]
        .to_str()
        .expect("header")
        .parse()
        .expect("index");
    assert_eq!(r.headers()["x-consul-knownleader"], "true");
    // Unrelated writes do not wake it; the wait ends it.
    put(&base, "/app/x", "1").await.expect("put");
    let start = Instant::now();
    let r = reqwest::get(format!("{base}/v1/catalog/services?index={index}&wait=1s"))
        .await
        .expect("services");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.json::<Value>().await.expect("json"), json!({}));
    // A registration wakes it with a higher index.
    let url = format!("{base}/v1/catalog/services?index={index}&wait=30s");
    let waiting = tokio::spawn(async move {
        let start = Instant::now();
        let r = reqwest::get(url).await.expect("services");
        let index: i64 = r.headers()["x-consul-index"]
            .to_str()
            .expect("header")
            .parse()
            .expect("index");
        (
            start.elapsed(),
            index,
            r.json::<Value>().await.expect("json"),
        )
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, v) = register(
        &base,
        json!({"service": "db", "address": "127.0.0.1", "port": 5432, "tags": ["primary"]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (took, new_index, body) = waiting.await.expect("waiter");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(new_index > index);
    assert_eq!(body, json!({"db": ["primary"]}));
    // The fields Consul clients (Prometheus' Consul discovery among them)
    // read, with the types they parse.
    let r = reqwest::get(format!("{base}/v1/health/service/db"))
        .await
        .expect("health");
    for header in ["x-consul-index", "x-consul-lastcontact"] {
        let v = r.headers()[header].to_str().expect("header");
        assert!(v.parse::<u64>().is_ok(), "{header}: {v}");
    }
    let entries: Value = r.json().await.expect("json");
    let e = &entries[0];
    assert_eq!(e["Node"]["Node"], "db");
    assert_eq!(e["Node"]["Address"], "127.0.0.1");
    assert_eq!(e["Node"]["Datacenter"], "dc1");
    assert!(e["Node"]["TaggedAddresses"].is_object() && e["Node"]["Meta"].is_object());
    assert_eq!(e["Service"]["ID"], "db");
    assert_eq!(e["Service"]["Service"], "db");
    assert_eq!(e["Service"]["Address"], "127.0.0.1");
    assert_eq!(e["Service"]["Port"], 5432);
    assert_eq!(e["Service"]["Tags"], json!(["primary"]));
    assert!(e["Service"]["Meta"].is_object() && e["Checks"].is_array());
    let listed = get_json(&format!("{base}/v1/catalog/service/db?tag=primary"))
        .await
        .expect("catalog");
    assert_eq!(listed[0]["ServiceAddress"], "127.0.0.1");
    assert_eq!(listed[0]["ServicePort"], 5432);
    let agent = get_json(&format!("{base}/v1/agent/self"))
        .await
        .expect("self");
    assert_eq!(agent["Config"]["Datacenter"], "dc1");
    let (status, v) = send(
        reqwest::Method::GET,
        &format!("{base}/v1/catalog/services?wait=forever"),
        None,
    )
    .await;
    assert_eq!(status, 400, "{v}");
}

/// (datacenter, service id) of the scraper's active targets, read from the
/// discovered labels `<prefix>dc`/`datacenter` and `<prefix>service_id`.
async fn discovered(scraper: &str, dc_label: &str, id_label: &str) -> BTreeSet<(String, String)> {
    let Ok(v) = get_json(&format!("{scraper}/api/v1/targets")).await else {
        return BTreeSet::new();
    };
    v["data"]["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let labels = &t["discoveredLabels"];
            Some((
                labels[dc_label].as_str()?.to_string(),
                labels[id_label].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Registers api-1 and api-2 in dc1 and api-3 in dc2, waits until the
/// scraper finds exactly them, deregisters api-2 and waits until it is gone.
async fn discovery_follows_the_catalog(
    dcs: &[Cluster],
    scraper: impl Fn(&str) -> Scraper,
    dc_label: &str,
    id_label: &str,
) {
    let (dc1, dc2) = (dcs[0].url(0), dcs[1].url(0));
    for (base, id) in [(dc1, "api-1"), (dc1, "api-2"), (dc2, "api-3")] {
        let (status, v) = register(
            base,
            json!({"service": "api", "id": id, "address": "127.0.0.1", "port": free_ports().0, "tags": ["metrics"]}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    let scraper = scraper(dc1);
    let mut want: BTreeSet<(String, String)> =
        [("dc1", "api-1"), ("dc1", "api-2"), ("dc2", "api-3")]
            .iter()
            .map(|(d, i)| (d.to_string(), i.to_string()))
            .collect();
    let wait = |want: BTreeSet<(String, String)>| {
        let url = scraper.url.clone();
        async move {
            let mut last = BTreeSet::new();
            for _ in 0..300 {
                last = discovered(&url, dc_label, id_label).await;
                if last == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("discovered {last:?}, not {want:?}");
        }
    };
    wait(want.clone()).await;
    let (status, v) = send(
        reqwest::Method::PUT,
        &format!("{dc1}/v1/catalog/deregister"),
        Some(json!({"service": "api", "id": "api-2"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    want.remove(&("dc1".to_string(), "api-2".to_string()));
    wait(want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_service_discovery_finds_the_instances_of_two_datacenters() {
    let plans = [Plan::new("dc1", 1), Plan::new("dc2", 1)];
    let dcs = launch(&plans, &catalog_section()).await;
    // VictoriaMetrics' vmagent runs Prometheus' `consul_sd_configs` with its
    // own Consul client (blocking queries on /v1/catalog/services and
    // /v1/health/service); both jobs ask dc1's server, the dc2 one with
    // dc=dc2, forwarded over the WAN link.
    let vmagent = |dc1: &str| {
        let server = dc1.trim_start_matches("http://");
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n\
             - job_name: dc1\n  consul_sd_configs:\n  - server: '{server}'\n\
             - job_name: dc2\n  consul_sd_configs:\n  - server: '{server}'\n    datacenter: dc2\n"
        );
        start_scraper("vmagent", &config, |config, data, listen| {
            vec![
                format!("-promscrape.config={}", config.display()),
                format!("-httpListenAddr={listen}"),
                // How often vmagent applies what its watchers learnt.
                "-promscrape.consulSDCheckInterval=1s".to_string(),
                // Nowhere to send samples: a closed loopback port.
                "-remoteWrite.url=http://127.0.0.1:9/api/v1/write".to_string(),
                format!("-remoteWrite.tmpDataPath={}", data.display()),
            ]
        })
    };
    discovery_follows_the_catalog(
        &dcs,
        vmagent,
        "__meta_consul_dc",
        "__meta_consul_service_id",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_discovers_the_instances_of_two_datacenters_through_http_service_discovery() {
    let plans = [Plan::new("dc1", 1), Plan::new("dc2", 1)];
    let dcs = launch(&plans, &catalog_section()).await;
    // Debian's Prometheus is built without Consul discovery; its HTTP
    // discovery reads /v1/catalog/prometheus (the dc2 job through dc=dc2).
    let prometheus = |dc1: &str| {
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n\
             - job_name: dc1\n  http_sd_configs:\n  - url: '{dc1}/v1/catalog/prometheus?service=api'\n    refresh_interval: 1s\n\
             - job_name: dc2\n  http_sd_configs:\n  - url: '{dc1}/v1/catalog/prometheus?service=api&dc=dc2'\n    refresh_interval: 1s\n"
        );
        start_prometheus(&config)
    };
    discovery_follows_the_catalog(
        &dcs,
        prometheus,
        "__meta_meridian_datacenter",
        "__meta_meridian_service_id",
    )
    .await;
}
