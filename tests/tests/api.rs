//! Bad input of every kind answers a clear 4xx in the API's format and writes nothing.

mod support;

use serde_json::{json, Value};
use support::*;

async fn revision(url: &str) -> i64 {
    get_json(&format!("{url}/v1/status")).await.unwrap()["revision"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_answers_4xx_with_a_clear_error_and_writes_nothing() {
    let c = Cluster::start(1).await;
    let url = c.url(0).to_string();
    put(&url, "k", "v").await.unwrap();
    let before = revision(&url).await;
    let big = "x".repeat(70_000);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/v3/kv/put", b"{not json".to_vec(), 400, "malformed JSON"),
        (
            "/v3/kv/put",
            br#"{"key":"!!!","value":"YQ=="}"#.to_vec(),
            400,
            "key: invalid base64",
        ),
        (
            "/v3/kv/put",
            br#"{"value":"YQ=="}"#.to_vec(),
            400,
            "key is not provided",
        ),
        (
            "/v3/kv/put",
            br#"{"key":"YQ==","bogus":1}"#.to_vec(),
            400,
            "unknown field",
        ),
        (
            "/v3/kv/put",
            json!({"key": b64(b"big"), "value": b64(big.as_bytes())})
                .to_string()
                .into_bytes(),
            400,
            "request is too large",
        ),
        (
            "/v3/kv/put",
            json!({"key": b64(b"a"), "value": b64(b"x"), "ignore_value": true})
                .to_string()
                .into_bytes(),
            400,
            "value is provided",
        ),
        (
            "/v3/kv/put",
            json!({"key": b64(b"a"), "lease": "7"})
                .to_string()
                .into_bytes(),
            404,
            "lease not found",
        ),
        (
            "/v3/kv/range",
            br#"{"key":"YQ==","revision":"999"}"#.to_vec(),
            400,
            "future revision",
        ),
        (
            "/v3/kv/range",
            br#"{"key":"YQ==","limit":"ten"}"#.to_vec(),
            400,
            "limit",
        ),
        (
            "/v3/kv/range",
            br#"{"key":"YQ==","sort_order":"SIDEWAYS"}"#.to_vec(),
            400,
            "sort_order",
        ),
        (
            "/v3/kv/txn",
            br#"{"compare":[{"key":"YQ==","target":"COLOR","result":"EQUAL"}]}"#.to_vec(),
            400,
            "target",
        ),
        (
            "/v3/kv/txn",
            br#"{"success":[{"request_put":{"key":"YQ=="}},{"request_put":{"key":"YQ=="}}]}"#
                .to_vec(),
            400,
            "duplicate key",
        ),
        (
            "/v3/kv/txn",
            br#"{"success":[{}]}"#.to_vec(),
            400,
            "request",
        ),
        (
            "/v3/kv/compaction",
            br#"{"revision":"999"}"#.to_vec(),
            400,
            "future revision",
        ),
        (
            "/v3/kv/deleterange",
            br#"{"key":""}"#.to_vec(),
            400,
            "key is not provided",
        ),
        (
            "/v3/kv/deleterange",
            json!({"key": b64(b"k"), "range_end": b64(b"a")})
                .to_string()
                .into_bytes(),
            400,
            "range_end must be above key",
        ),
        (
            "/v3/kv/range",
            br#"{"key":"YQ==","revision":"-1"}"#.to_vec(),
            400,
            "revision must not be negative",
        ),
        (
            "/v3/kv/put",
            vec![b'{'; 4 * 1024 * 1024],
            400,
            "request is too large",
        ),
        // Far past the limit: the server reads the rest before answering, so
        // the client gets the error instead of a reset connection.
        (
            "/v3/kv/put",
            vec![b'{'; 16 * 1024 * 1024],
            400,
            "request is too large",
        ),
    ];
    for (path, body, status, needle) in cases {
        let (got, v) = post_raw(&format!("{url}{path}"), body).await.unwrap();
        assert_eq!(got, status, "{path} {needle}: {v}");
        let message = v["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{path}: expected {needle:?} in {message:?}"
        );
        assert!(v["code"].as_i64().is_some(), "{path}: gRPC code present");
    }
    // Compaction below, then a read at a compacted revision.
    put(&url, "k", "v2").await.unwrap();
    let (s, _) = post(
        &format!("{url}/v3/kv/compaction"),
        &json!({ "revision": (before + 1).to_string() }),
    )
    .await
    .unwrap();
    assert_eq!(s, 200);
    let (s, v) = post(
        &format!("{url}/v3/kv/range"),
        &json!({ "key": b64(b"k"), "revision": before.to_string() }),
    )
    .await
    .unwrap();
    assert_eq!(
        (s, v["message"].as_str().unwrap_or_default()),
        (
            400,
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
    assert_eq!(
        revision(&url).await,
        before + 1,
        "only the one good put changed the store"
    );

    // /v1: bad revision, bad query, non-UTF-8 key.
    let client = reqwest::Client::new();
    for (path, field) in [
        ("/v1/kv/k?rev=-1", "rev"),
        ("/v1/kv/k?rev=abc", "rev"),
        ("/v1/kv/k?frobnicate", "frobnicate"),
        ("/v1/kv/%ff%fe", "key"),
        ("/v1/kv/%zz", "key"),
    ] {
        let r = client.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["field"], json!(field), "{path}: {v}");
    }
    let r = client
        .put(format!("{url}/v1/kv/%ff"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(revision(&url).await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_api_serves_raw_values_prefixes_and_cas() {
    let c = Cluster::start(1).await;
    let url = c.url(0);
    let client = reqwest::Client::new();
    let r = client
        .put(format!("{url}/v1/kv/app/a"))
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let rev: Value = r.json().await.unwrap();
    client
        .put(format!("{url}/v1/kv/app/b"))
        .body("2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        client
            .get(format!("{url}/v1/kv/app/a"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "1"
    );
    assert_eq!(
        client
            .get(format!("{url}/v1/kv/missing"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    let v: Value = client
        .get(format!("{url}/v1/kv/app/?prefix&stale"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["count"], json!(2));
    // CAS on the mod revision: the first succeeds, a stale one conflicts.
    let ok = client
        .put(format!("{url}/v1/kv/app/a?cas={}", rev["revision"]))
        .body("3")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let stale = client
        .put(format!("{url}/v1/kv/app/a?cas={}", rev["revision"]))
        .body("4")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status().as_u16(), 409);
    let v: Value = client
        .get(format!("{url}/v1/kv/app/a?rev={}", rev["revision"]))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["kvs"][0]["value"], json!("1"));
    let d: Value = client
        .delete(format!("{url}/v1/kv/app/?prefix"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["deleted"], json!(2));
    let metrics = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "meridian_has_leader 1",
        "meridian_keys",
        "meridian_revision",
        "meridian_fsync_duration_seconds_bucket",
        "meridian_api_requests_total{code=\"409\",route=\"/v1/kv\"} 1",
    ] {
        assert!(metrics.contains(name), "metric {name} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_gauges_are_current_when_scraped() {
    let c = Cluster::start(1).await;
    let url = c.url(0).to_string();
    // Each round writes, then scrapes at once: the gauges must already say
    // what the store holds, not what it held a few applies ago.
    for round in 1..=5 {
        for i in 0..round {
            put(&url, &format!("gauges/{round}/{i}"), "v")
                .await
                .unwrap();
        }
        // A scrape between two equal answers of the status endpoint: no
        // write of the server's own (its checker's announcement) in between.
        let mut compared = false;
        for _ in 0..20 {
            let before = get_json(&format!("{url}/v1/status")).await.unwrap();
            let metrics = metrics_page(&url).await;
            let after = get_json(&format!("{url}/v1/status")).await.unwrap();
            if before["revision"] != after["revision"] {
                continue;
            }
            assert_eq!(
                metric_value(&metrics, "meridian_keys"),
                after["keys"].as_f64(),
                "round {round}"
            );
            assert_eq!(
                metric_value(&metrics, "meridian_revision"),
                after["revision"].as_f64(),
                "round {round}"
            );
            compared = true;
            break;
        }
        assert!(compared, "round {round}: the revision never held still");
    }
}
