//! Two datacenters joined over QUIC on loopback, each WAN direction through
//! the project's UDP fault layer: requests naming the other datacenter run
//! there and answer as it would; an unknown datacenter is a 404 listing the
//! known ones; a cut link is a 503 naming the datacenter within the
//! configured timeout while each side keeps serving its own clients; under
//! 50 ms RTT and 1 % loss forwarding still works.

mod support;

use meridian_tests::udp_proxy::{Conditions, UdpProxy};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

const FORWARD_TIMEOUT_MS: u64 = 1500;

/// dc1 and dc2, one server each; `to_dc1` and `to_dc2` are the proxies in
/// front of each datacenter's QUIC endpoint that the other one uses.
struct Pair {
    dc1: Cluster,
    dc2: Cluster,
    to_dc1: UdpProxy,
    to_dc2: UdpProxy,
}

fn federation_section(
    peer: &str,
    seed: std::net::SocketAddr,
    advertise: std::net::SocketAddr,
) -> String {
    format!(
        "[federation]\nforward_timeout_ms = {FORWARD_TIMEOUT_MS}\nprobe_interval_ms = 200\n\
         advertise_wan_addr = \"{advertise}\"\n[federation.peers]\n{peer} = [\"{seed}\"]\n"
    )
}

async fn start_pair() -> Pair {
    let p1 = free_ports();
    let p2 = free_ports();
    let local = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let to_dc1 = UdpProxy::start(local(p1.1), 1).await.expect("proxy");
    let to_dc2 = UdpProxy::start(local(p2.1), 2).await.expect("proxy");
    let dc1 = Cluster::launch(Spec {
        datacenter: "dc1".into(),
        ports: vec![p1],
        tuning: RaftTuning::default(),
        ca_from: None,
        extra: vec![federation_section("dc2", to_dc2.addr(), to_dc1.addr())],
    })
    .await;
    let dc2 = Cluster::launch(Spec {
        datacenter: "dc2".into(),
        ports: vec![p2],
        tuning: RaftTuning::default(),
        ca_from: Some(dc1.tls_dir()),
        extra: vec![federation_section("dc1", to_dc1.addr(), to_dc2.addr())],
    })
    .await;
    Pair {
        dc1,
        dc2,
        to_dc1,
        to_dc2,
    }
}

/// Waits (at most 15 s) until `dc`'s link to `remote` is in `state`.
async fn wait_link(base: &str, remote: &str, state: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..150 {
        if let Ok(v) = get_json(&format!("{base}/v1/datacenters")).await {
            let link = v["datacenters"]
                .as_array()
                .and_then(|l| l.iter().find(|d| d["name"] == json!(remote)).cloned());
            if let Some(link) = link {
                if link["state"] == json!(state) {
                    return link;
                }
                last = link;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("link to {remote} never {state}: {last}");
}

async fn post_with(url: &str, body: &Value, dc: Option<&str>) -> (u16, Value, Option<String>) {
    let mut req = reqwest::Client::new()
        .post(url)
        .body(body.to_string())
        .timeout(Duration::from_secs(10));
    if let Some(dc) = dc {
        req = req.header("Meridian-Datacenter", dc);
    }
    let r = req.send().await.expect("request");
    let served_by = r
        .headers()
        .get("meridian-datacenter")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null), served_by)
}

fn value_of(range: &Value) -> Vec<u8> {
    unb64(&range["kvs"][0]["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_naming_another_datacenter_run_there() {
    let p = start_pair().await;
    let (u1, u2) = (p.dc1.url(0).to_string(), p.dc2.url(0).to_string());
    let link = wait_link(&u1, "dc2", "up").await;
    assert!(link["rtt_ms"].as_f64().is_some(), "{link}");
    assert_eq!(
        link["servers"],
        json!([p.to_dc2.addr().to_string()]),
        "{link}"
    );
    wait_link(&u2, "dc1", "up").await;

    put(&u1, "k", "from-dc1").await.unwrap();
    put(&u2, "k", "from-dc2").await.unwrap();
    put(&u2, "only-dc2", "x").await.unwrap();
    let (_, dc2_status) = post(&format!("{u2}/v3/maintenance/status"), &json!({}))
        .await
        .unwrap();

    // A range with dc=dc2 sent to dc1 reads dc2's data with dc2's header.
    let (s, v, by) = post_with(
        &format!("{u1}/v3/kv/range?dc=dc2"),
        &json!({"key": b64(b"k")}),
        None,
    )
    .await;
    assert_eq!((s, by.as_deref()), (200, Some("dc2")), "{v}");
    assert_eq!(value_of(&v), b"from-dc2");
    assert_eq!(
        v["header"]["cluster_id"],
        dc2_status["header"]["cluster_id"]
    );
    assert_eq!(
        v["header"]["revision"], dc2_status["header"]["revision"],
        "dc2's revision: {v}"
    );
    // The header form, and serializable reads, too.
    let (s, v, by) = post_with(
        &format!("{u1}/v3/kv/range"),
        &json!({"key": b64(b"only-dc2"), "serializable": true}),
        Some("dc2"),
    )
    .await;
    assert_eq!((s, by.as_deref()), (200, Some("dc2")), "{v}");
    assert_eq!(value_of(&v), b"x");
    // Local answers name the local datacenter.
    let (_, v, by) = post_with(
        &format!("{u1}/v3/kv/range"),
        &json!({"key": b64(b"k")}),
        None,
    )
    .await;
    assert_eq!(
        (value_of(&v), by.as_deref()),
        (b"from-dc1".to_vec(), Some("dc1"))
    );

    // A txn forwarded to dc2 compares and writes there, not here.
    let txn = json!({
        "compare": [{"key": b64(b"k"), "target": "VALUE", "result": "EQUAL", "value": b64(b"from-dc2")}],
        "success": [{"request_put": {"key": b64(b"k"), "value": b64(b"txn-in-dc2")}}]
    });
    let (s, v, by) = post_with(&format!("{u1}/v3/kv/txn?dc=dc2"), &txn, None).await;
    assert_eq!(
        (s, by.as_deref(), &v["succeeded"]),
        (200, Some("dc2"), &json!(true)),
        "{v}"
    );
    assert_eq!(get(&u2, "k", false).await.unwrap().unwrap(), b"txn-in-dc2");
    assert_eq!(get(&u1, "k", false).await.unwrap().unwrap(), b"from-dc1");

    // The native API and lease operations too.
    let r = reqwest::get(format!("{u1}/v1/kv/only-dc2?dc=dc2"))
        .await
        .unwrap();
    assert_eq!(r.headers()["meridian-datacenter"], "dc2");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"x");
    let (s, v, _) = post_with(
        &format!("{u1}/v3/lease/grant?dc=dc2"),
        &json!({"ID": "77", "TTL": "60"}),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = post(&format!("{u2}/v3/lease/leases"), &json!({}))
        .await
        .unwrap();
    assert_eq!(v["leases"], json!([{"ID": "77"}]));
    let (_, v) = post(&format!("{u1}/v3/lease/leases"), &json!({}))
        .await
        .unwrap();
    assert!(v["leases"].as_array().is_none_or(|l| l.is_empty()), "{v}");

    // A watch forwarded to dc2 stays open across the WAN and sees dc2's writes.
    let mut watch = reqwest::Client::new()
        .post(format!("{u1}/v3/watch?dc=dc2"))
        .body(json!({"create_request": {"key": b64(b"w")}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(watch.headers()["meridian-datacenter"], "dc2");
    let mut buf = Vec::new();
    let mut lines = Vec::new();
    put(&u2, "w", "seen-across").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines.len() < 2 && Instant::now() < deadline {
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_secs(5), watch.chunk()).await
        {
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                lines.push(serde_json::from_slice::<Value>(&line).unwrap());
            }
        }
    }
    assert_eq!(lines.len(), 2, "created, then the event: {lines:?}");
    assert_eq!(
        unb64(&lines[1]["result"]["events"][0]["kv"]["value"]),
        b"seen-across"
    );

    // Unknown datacenter: 404 naming the known ones, in the API's error shape.
    let (s, v, _) = post_with(
        &format!("{u1}/v3/kv/range?dc=mars"),
        &json!({"key": b64(b"k")}),
        None,
    )
    .await;
    assert_eq!((s, &v["code"]), (404, &json!(5)), "{v}");
    assert_eq!(v["datacenters"], json!(["dc1", "dc2"]));
    assert!(v["error"].as_str().unwrap().contains("mars"), "{v}");
    // `dc` without a name is a bad request.
    let (s, _, _) = post_with(
        &format!("{u1}/v3/kv/range?dc"),
        &json!({"key": b64(b"k")}),
        None,
    )
    .await;
    assert_eq!(s, 400);

    // Metrics count the forwarded requests and the link.
    let m = reqwest::get(format!("{u1}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("meridian_federation_link_up{dc=\"dc2\"} 1"),
        "{m}"
    );
    assert!(m.contains("meridian_federation_forwarded_requests_total{dc=\"dc2\",outcome=\"ok\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_fails_forwarded_requests_in_time_while_each_side_serves_locally() {
    let p = start_pair().await;
    let (u1, u2) = (p.dc1.url(0).to_string(), p.dc2.url(0).to_string());
    wait_link(&u1, "dc2", "up").await;
    put(&u2, "k", "v").await.unwrap();

    p.to_dc1.cut(true);
    p.to_dc2.cut(true);
    let start = Instant::now();
    let (s, v, _) = post_with(
        &format!("{u1}/v3/kv/range?dc=dc2"),
        &json!({"key": b64(b"k")}),
        None,
    )
    .await;
    let took = start.elapsed();
    assert_eq!((s, &v["code"]), (503, &json!(14)), "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("\"dc2\""),
        "names the datacenter: {v}"
    );
    assert!(
        took < Duration::from_millis(FORWARD_TIMEOUT_MS + 2000),
        "answered after {took:?}, configured timeout {FORWARD_TIMEOUT_MS} ms"
    );
    // Both sides keep serving their own clients.
    assert_eq!(put(&u1, "local1", "ok").await.unwrap().0, 200);
    assert_eq!(put(&u2, "local2", "ok").await.unwrap().0, 200);
    let link = wait_link(&u1, "dc2", "down").await;
    assert!(link["error"].is_string(), "{link}");

    // Healed: forwarding works again.
    p.to_dc1.cut(false);
    p.to_dc2.cut(false);
    wait_link(&u1, "dc2", "up").await;
    let (s, v, by) = post_with(
        &format!("{u1}/v3/kv/range?dc=dc2"),
        &json!({"key": b64(b"local2")}),
        None,
    )
    .await;
    assert_eq!((s, by.as_deref()), (200, Some("dc2")), "{v}");
    assert_eq!(value_of(&v), b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_works_over_50_ms_rtt_with_1_percent_loss() {
    let p = start_pair().await;
    let (u1, u2) = (p.dc1.url(0).to_string(), p.dc2.url(0).to_string());
    wait_link(&u1, "dc2", "up").await;
    put(&u2, "k", "v").await.unwrap();
    // 25 ms each way (50 ms RTT), up to 5 ms jitter, 1 % loss each way.
    let wan = Conditions {
        delay: Duration::from_millis(25),
        jitter: Duration::from_millis(5),
        loss: 0.01,
        cut: false,
    };
    p.to_dc1.set(wan, wan);
    p.to_dc2.set(wan, wan);
    let mut forwarded = Vec::new();
    let mut local = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let (s, v, by) = post_with(
            &format!("{u1}/v3/kv/range?dc=dc2"),
            &json!({"key": b64(b"k"), "serializable": true}),
            None,
        )
        .await;
        forwarded.push(t.elapsed());
        assert_eq!((s, by.as_deref()), (200, Some("dc2")), "{v}");
        assert_eq!(value_of(&v), b"v");
        let t = Instant::now();
        let (s, _, _) = post_with(
            &format!("{u2}/v3/kv/range"),
            &json!({"key": b64(b"k"), "serializable": true}),
            None,
        )
        .await;
        local.push(t.elapsed());
        assert_eq!(s, 200);
    }
    forwarded.sort();
    local.sort();
    let link = wait_link(&u1, "dc2", "up").await;
    println!(
        "forwarded serializable read over 50 ms RTT, 1 % loss: p50 {:?} p90 {:?} max {:?}; \
         same read in dc2 directly p50 {:?}; link RTT estimate {} ms",
        forwarded[49], forwarded[89], forwarded[99], local[49], link["rtt_ms"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datacenter_missing_from_the_configuration_is_refused() {
    let p = start_pair().await;
    let u1 = p.dc1.url(0).to_string();
    wait_link(&u1, "dc2", "up").await;
    // dc3 shares the CA and lists dc1 as a peer, but dc1 does not list dc3.
    let p3 = free_ports();
    let dc3 = Cluster::launch(Spec {
        datacenter: "dc3".into(),
        ports: vec![p3],
        tuning: RaftTuning::default(),
        ca_from: Some(p.dc1.tls_dir()),
        extra: vec![format!(
            "[federation]\nforward_timeout_ms = {FORWARD_TIMEOUT_MS}\nprobe_interval_ms = 200\n\
             [federation.peers]\ndc1 = [\"{}\"]\n",
            p.to_dc1.addr()
        )],
    })
    .await;
    let u3 = dc3.url(0).to_string();
    // The link never comes up, and a forwarded request is refused in time.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v = get_json(&format!("{u3}/v1/datacenters")).await.unwrap();
    let link = &v["datacenters"][1];
    assert_eq!(
        (&link["name"], &link["state"]),
        (&json!("dc1"), &json!("down")),
        "{v}"
    );
    let (s, v, _) = post_with(
        &format!("{u3}/v3/kv/range?dc=dc1"),
        &json!({"key": b64(b"k")}),
        None,
    )
    .await;
    assert_eq!((s, &v["code"]), (503, &json!(14)), "{v}");
    // dc1 does not know dc3 either: 404.
    let (s, _, _) = post_with(
        &format!("{u1}/v3/kv/range?dc=dc3"),
        &json!({"key": b64(b"k")}),
        None,
    )
    .await;
    assert_eq!(s, 404);
    // dc1's own link to dc2 is unaffected.
    wait_link(&u1, "dc2", "up").await;
}
