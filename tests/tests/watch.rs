//! Watches under failure: a watcher on a follower keeps receiving every event
//! exactly once across a leader kill, a watcher whose server restarts and
//! reconnects from its last revision + 1 misses nothing, and a watcher that stops
//! reading neither stalls writes nor loses events.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

/// A watch stream being read line by line.
struct Stream {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl Stream {
    async fn open(base: &str, key: &str, prefix: bool, start: i64) -> Stream {
        let mut create = json!({"key": b64(key.as_bytes()), "start_revision": start.to_string()});
        if prefix {
            create["range_end"] = json!(b64(&prefix_end(key)));
        }
        let mut s = Stream::post(base, json!({ "create_request": create }).to_string()).await;
        let created = s.next(Duration::from_secs(5)).await.expect("created");
        assert_eq!(created["result"]["created"], json!(true), "{created}");
        s
    }

    /// Opens a watch stream with `body` as its request objects.
    async fn post(base: &str, body: String) -> Stream {
        let response = reqwest::Client::new()
            .post(format!("{base}/v3/watch"))
            .body(body)
            .send()
            .await
            .expect("watch request");
        Stream {
            response,
            buf: Vec::new(),
        }
    }

    /// The next response, or None after `quiet` without one (or at the end).
    async fn next(&mut self, quiet: Duration) -> Option<Value> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).expect("JSON line"));
            }
            match tokio::time::timeout(quiet, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }

    /// Appends (mod_revision, value) of each event to `out` until it holds
    /// `want` events or the stream is quiet for `quiet`.
    async fn collect(&mut self, want: usize, quiet: Duration, out: &mut Vec<(i64, String)>) {
        while out.len() < want {
            let Some(v) = self.next(quiet).await else {
                return;
            };
            for e in v["result"]["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let rev = e["kv"]["mod_revision"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("mod_revision");
                let value = String::from_utf8(unb64(&e["kv"]["value"])).expect("utf-8");
                out.push((rev, value));
            }
        }
    }
}

/// A one-server cluster, its client URL, and the revision of a first put.
async fn one_server_after_put(key: &str, value: &str) -> (Cluster, String, i64) {
    let c = Cluster::start(1).await;
    let url = c.url(0).to_string();
    let (_, v) = put(&url, key, value).await.unwrap();
    let start = v["header"]["revision"].as_str().unwrap().parse().unwrap();
    (c, url, start)
}

fn assert_exactly_once_in_order(seen: &[(i64, String)], expected: &[String]) {
    let values: Vec<&String> = seen.iter().map(|(_, v)| v).collect();
    let expected: Vec<&String> = expected.iter().collect();
    assert_eq!(values, expected, "every event once, in order");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "revisions increase"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_follower_survives_a_leader_kill_and_resumes_after_its_server_restarts() {
    let mut c = Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let (_, v) = put(c.url(follower), "w/start", "s").await.unwrap();
    let start: i64 = v["header"]["revision"].as_str().unwrap().parse().unwrap();
    let mut stream = Stream::open(c.url(follower), "w/", true, start).await;

    let mut expected = vec!["s".to_string()];
    for i in 0..20 {
        let value = format!("before-{i}");
        put(c.url(other), &format!("w/{i}"), &value).await.unwrap();
        expected.push(value);
    }
    c.kill(leader);
    // Writes continue under the new leader; the watcher on the follower sees them all.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    while i < 20 {
        assert!(Instant::now() < deadline, "writes after the leader kill");
        let value = format!("after-{i}");
        match put(c.url(other), &format!("w/{i}"), &value).await {
            Ok((200, _)) => {
                expected.push(value);
                i += 1;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut seen = Vec::new();
    stream
        .collect(expected.len(), Duration::from_secs(10), &mut seen)
        .await;
    assert_exactly_once_in_order(&seen, &expected);

    // The watcher's own server restarts while writes go on; the watcher
    // resumes on it from its last revision + 1.
    let last_seen = seen.last().expect("events").0;
    c.restart(leader).await;
    c.kill(follower);
    for i in 0..10 {
        let value = format!("later-{i}");
        loop {
            if let Ok((200, _)) = put(c.url(other), &format!("w/{i}"), &value).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        expected.push(value);
    }
    c.restart(follower).await;
    let mut resumed = Stream::open(c.url(follower), "w/", true, last_seen + 1).await;
    resumed
        .collect(expected.len(), Duration::from_secs(10), &mut seen)
        .await;
    assert_exactly_once_in_order(&seen, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_stalls_nothing_and_then_gets_every_event() {
    let (_c, url, start) = one_server_after_put("s/first", "0").await;
    // Opened, then not read while 10,000 writes go through.
    let mut stalled = Stream::open(&url, "s/", true, start).await;
    let http = reqwest::Client::new();
    let mut expected = vec!["0".to_string()];
    // Large enough that 10,000 events (about 28 MB of JSON) exceed what the
    // socket buffers between server and client can absorb.
    let value = "v".repeat(2000);
    for batch in 0..100 {
        let ops: Vec<Value> = (0..100)
            .map(|i| {
                json!({"request_put": {"key": b64(format!("s/{batch}/{i}").as_bytes()),
                                       "value": b64(value.as_bytes())}})
            })
            .collect();
        let r = http
            .post(format!("{url}/v3/kv/txn"))
            .json(&json!({ "success": ops }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            200,
            "writes go on while a watcher stalls"
        );
        expected.extend((0..100).map(|_| value.clone()));
    }
    // Single puts too, each its own revision.
    for i in 0..100 {
        put(&url, &format!("s/single/{i}"), &format!("p{i}"))
            .await
            .unwrap();
        expected.push(format!("p{i}"));
    }
    // The server holds the stalled watcher's place, not its events.
    let m = metrics_page(&url).await;
    let metric = |name: &str| metric_in(&m, name);
    assert_eq!(metric("meridian_watchers"), 1.0, "one watcher open");
    assert!(
        metric("meridian_watch_queued_responses") <= 16.0,
        "the stalled stream's queue stays within its bound"
    );
    assert!(
        metric("meridian_watch_events_total") < 10_000.0,
        "the stalled watcher has not been handed its events yet"
    );
    assert_eq!(
        metric("meridian_watch_catching_up_watchers"),
        1.0,
        "the stalled watcher is counted as catching up"
    );

    let mut seen = Vec::new();
    stalled
        .collect(expected.len(), Duration::from_secs(10), &mut seen)
        .await;
    assert_eq!(seen.len(), expected.len(), "every event after the stall");
    let values: Vec<&String> = seen.iter().map(|(_, v)| v).collect();
    let want: Vec<&String> = expected.iter().collect();
    assert_eq!(values, want);
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0));
    // Once the client has read everything, the watcher is current again.
    let mut current_again = false;
    for _ in 0..50 {
        let m = reqwest::get(format!("{url}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.lines()
            .any(|l| l == "meridian_watch_catching_up_watchers 0")
        {
            current_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(current_again, "the watcher leaves catch-up once current");
}

/// Reads Server-Sent Events until `n` events (not comments) have arrived.
async fn sse_events(response: &mut reqwest::Response, n: usize) -> Vec<(i64, String, Value)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        if let Some(pos) = buf.find("\n\n") {
            let block: String = buf.drain(..pos + 2).collect();
            let (mut id, mut kind, mut data) = (0, String::new(), Value::Null);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().expect("numeric id");
                } else if let Some(v) = line.strip_prefix("event: ") {
                    kind = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).expect("JSON data");
                }
            }
            if !kind.is_empty() {
                out.push((id, kind, data));
            }
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(5), response.chunk()).await {
            Ok(Ok(Some(chunk))) => buf.push_str(std::str::from_utf8(&chunk).expect("utf-8")),
            _ => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_watch_streams_server_sent_events_and_resumes_after_last_event_id() {
    let c = Cluster::start(1).await;
    let url = c.url(0).to_string();
    let http = reqwest::Client::new();
    let (_, v) = put(&url, "sse/a", "1").await.unwrap();
    let first: i64 = v["header"]["revision"].as_str().unwrap().parse().unwrap();
    put(&url, "sse/b", "2").await.unwrap();
    put(&url, "other", "x").await.unwrap();
    http.delete(format!("{url}/v1/kv/sse/a"))
        .send()
        .await
        .unwrap();

    let mut r = http
        .get(format!("{url}/v1/watch/sse/?prefix&rev={first}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let events = sse_events(&mut r, 3).await;
    let summary: Vec<(i64, &str, &str)> = events
        .iter()
        .map(|(id, kind, d)| (*id, kind.as_str(), d["kv"]["key"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (first, "put", "sse/a"),
            (first + 1, "put", "sse/b"),
            (first + 3, "delete", "sse/a"),
        ]
    );
    assert_eq!(events[0].2["kv"]["value"], json!("1"));
    assert_eq!(events[2].2["prev_kv"]["value"], json!("1"));
    // Live, then a reconnect with Last-Event-ID resumes after it.
    put(&url, "sse/c", "3").await.unwrap();
    let live = sse_events(&mut r, 1).await;
    assert_eq!(live[0].2["kv"]["key"], json!("sse/c"));
    let mut resumed = http
        .get(format!("{url}/v1/watch/sse/?prefix"))
        .header("Last-Event-ID", (first + 1).to_string())
        .send()
        .await
        .unwrap();
    let again = sse_events(&mut resumed, 2).await;
    let ids: Vec<i64> = again.iter().map(|e| e.0).collect();
    assert_eq!(ids, vec![first + 3, live[0].0]);
    // Bad input answers 400 in the /v1 format.
    for path in [
        "/v1/watch/sse?rev=-1",
        "/v1/watch/sse?stale",
        "/v1/watch/%ff",
    ] {
        let r = http.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{path}");
        let v: Value = r.json().await.unwrap();
        assert!(v["field"].is_string(), "{path}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stream_answers_bad_requests_clearly_and_stays_usable() {
    let c = Cluster::start(1).await;
    let url = c.url(0).to_string();
    // One body: a cancel of an unknown id, a create with a bad field, a good create.
    let body = format!(
        "{}{}{}",
        json!({"cancel_request": {"watch_id": "42"}}),
        json!({"create_request": {"key": b64(b"k"), "start_revision": "-3"}}),
        json!({"create_request": {"key": b64(b"k")}}),
    );
    let mut s = Stream::post(&url, body).await;
    let cancel = s.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(cancel["result"]["canceled"], json!(true), "{cancel}");
    assert!(cancel["result"]["cancel_reason"]
        .as_str()
        .unwrap()
        .contains("42"));
    let refused = s.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(refused["result"]["canceled"], json!(true), "{refused}");
    assert!(refused["result"]["cancel_reason"]
        .as_str()
        .unwrap()
        .contains("start_revision"));
    let created = s.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(created["result"]["created"], json!(true), "{created}");
    assert!(created["result"].get("canceled").is_none());
    put(&url, "k", "v").await.unwrap();
    let event = s.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        event["result"]["events"][0]["kv"]["value"],
        json!(b64(b"v"))
    );
    // A malformed object ends the stream with an error in etcd's format.
    let r = reqwest::Client::new()
        .post(format!("{url}/v3/watch"))
        .body("{\"create_request\": 7}")
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["code"], json!(3), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_replays_are_fragmented_when_asked() {
    let c = Cluster::start(1).await;
    let url = c.url(0).to_string();
    let value = "f".repeat(60_000);
    let mut first = 0;
    for i in 0..40 {
        let (_, v) = put(&url, &format!("big/{i:02}"), &value).await.unwrap();
        if i == 0 {
            first = v["header"]["revision"].as_str().unwrap().parse().unwrap();
        }
    }
    // Let the server's shared window of recent changes take in every write,
    // so that one read covers them all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for fragment in [false, true] {
        let create = json!({"create_request": {
            "key": b64(b"big/"), "range_end": b64(b"big0"),
            "start_revision": first.to_string(), "fragment": fragment}});
        let mut s = Stream::post(&url, create.to_string()).await;
        assert_eq!(
            s.next(Duration::from_secs(5)).await.unwrap()["result"]["created"],
            json!(true)
        );
        let (mut events, mut responses, mut fragments) = (0, 0, 0);
        while events < 40 {
            let v = s.next(Duration::from_secs(5)).await.expect("events");
            responses += 1;
            events += v["result"]["events"].as_array().map_or(0, Vec::len);
            if v["result"]["fragment"] == json!(true) {
                fragments += 1;
            }
        }
        assert_eq!(events, 40);
        if fragment {
            // 2.4 MB of values against the 1.5 MiB request limit.
            assert!(responses >= 2, "{responses} responses");
            assert_eq!(fragments, responses - 1, "all but the last are fragments");
        } else {
            assert_eq!(responses, 1, "one response without fragment");
            assert_eq!(fragments, 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_on_one_prefix_share_one_read_of_each_change() {
    let (_c, url, start) = one_server_after_put("fan/first", "0").await;
    let reads_before = metric(&url, "meridian_watch_history_reads_total").await;
    const WATCHERS: usize = 100;
    let mut streams = Vec::new();
    for _ in 0..WATCHERS {
        streams.push(Stream::open(&url, "fan/", true, start + 1).await);
    }
    let mut expected = Vec::new();
    for i in 0..200 {
        put(&url, &format!("fan/{i}"), &format!("v{i}"))
            .await
            .unwrap();
        expected.push(format!("v{i}"));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for mut s in streams {
        let want = expected.len();
        tasks.spawn(async move {
            let mut seen = Vec::new();
            s.collect(want, Duration::from_secs(10), &mut seen).await;
            seen
        });
    }
    let mut results = Vec::new();
    while let Some(seen) = tasks.join_next().await {
        results.push(seen.expect("watcher task"));
    }
    assert_eq!(results.len(), WATCHERS);
    for seen in &results {
        assert_exactly_once_in_order(seen, &expected);
    }
    let reads = metric(&url, "meridian_watch_history_reads_total").await - reads_before;
    assert!(
        reads < 5.0,
        "{WATCHERS} current watchers took their events from the shared window, \
         yet storage was read {reads} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_nobody_watches_come_from_storage_and_later_ones_from_the_window() {
    let (_c, url, start) = one_server_after_put("quiet/0", "v0").await;
    let mut expected = vec!["v0".to_string()];
    for i in 1..20 {
        put(&url, &format!("quiet/{i}"), &format!("v{i}"))
            .await
            .unwrap();
        expected.push(format!("v{i}"));
    }
    // Nobody was subscribed while these were written, so the shared window
    // did not keep them: a watch from the first one reads them from storage.
    let reads_before = metric(&url, "meridian_watch_history_reads_total").await;
    let mut s = Stream::open(&url, "quiet/", true, start).await;
    let mut seen = Vec::new();
    s.collect(expected.len(), Duration::from_secs(10), &mut seen)
        .await;
    assert_exactly_once_in_order(&seen, &expected);
    let reads = metric(&url, "meridian_watch_history_reads_total").await - reads_before;
    assert!(
        reads >= 1.0,
        "the window held changes written while nobody watched"
    );
    // Now that a watcher is subscribed, new changes go through the window.
    let reads_before = metric(&url, "meridian_watch_history_reads_total").await;
    for i in 20..40 {
        put(&url, &format!("quiet/{i}"), &format!("v{i}"))
            .await
            .unwrap();
        expected.push(format!("v{i}"));
    }
    s.collect(expected.len(), Duration::from_secs(10), &mut seen)
        .await;
    assert_exactly_once_in_order(&seen, &expected);
    let reads = metric(&url, "meridian_watch_history_reads_total").await - reads_before;
    assert_eq!(reads, 0.0, "a current watcher read storage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watch_with_progress_notify_hears_the_current_revision() {
    // The test servers send progress every 300 ms (`[watch]` in support).
    let c = Cluster::start(1).await;
    let url = c.url(0).to_string();
    let watch = |progress: bool| {
        let body = json!({"create_request": {"key": b64(b"quiet"), "progress_notify": progress,
                                              "watch_id": "5"}});
        Stream::post(&url, body.to_string())
    };
    let mut with = watch(true).await;
    let mut without = watch(false).await;
    for s in [&mut with, &mut without] {
        let created = s.next(Duration::from_secs(5)).await.expect("created");
        assert_eq!(created["result"]["created"], json!(true), "{created}");
    }
    // Writes elsewhere move the revision the progress reports.
    let (_, v) = put(&url, "elsewhere", "x").await.unwrap();
    let revision = v["header"]["revision"].clone();
    let mut progress = None;
    for _ in 0..20 {
        let v = with.next(Duration::from_secs(5)).await.expect("progress");
        assert!(v["result"]["events"].is_null(), "no events: {v}");
        if v["result"]["header"]["revision"] == revision {
            progress = Some(v);
            break;
        }
    }
    let progress = progress.expect("a progress response at the current revision");
    assert_eq!(progress["result"]["watch_id"], json!("5"), "{progress}");
    assert!(progress["result"]["created"].is_null(), "{progress}");
    // Another one follows while the watch stays idle.
    let again = with
        .next(Duration::from_secs(5))
        .await
        .expect("progress again");
    assert_eq!(again["result"]["header"]["revision"], revision, "{again}");
    // Without progress_notify an idle watch hears nothing.
    assert!(without.next(Duration::from_secs(1)).await.is_none());
}
