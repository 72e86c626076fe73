//! Compaction on real servers: automatic retention by revisions and by a
//! time window (etcd's auto-compaction modes) keeps exactly the history it
//! should; `/admin/compact` and `meridian compact` compact by revision or
//! by keeping the latest N; bad requests change nothing.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

async fn launch(servers: usize, compaction: &str) -> Cluster {
    let ports: Vec<(u16, u16)> = (0..servers).map(|_| free_ports()).collect();
    Cluster::launch(Spec {
        datacenter: "test".into(),
        ports,
        tuning: RaftTuning::default(),
        ca_from: None,
        extra: vec![compaction.to_string(); servers],
    })
    .await
}

async fn status(base: &str) -> Value {
    get_json(&format!("{base}/v1/status"))
        .await
        .expect("status")
}

/// The revision a put answered with.
async fn put_rev(base: &str, key: &str, value: &str) -> i64 {
    let (code, v) = put(base, key, value).await.expect("put");
    assert_eq!(code, 200, "{v}");
    v["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("revision")
}

/// A range of `key` at `revision`: the HTTP status.
async fn read_at(base: &str, key: &str, revision: i64) -> (u16, Value) {
    post(
        &format!("{base}/v3/kv/range"),
        &json!({"key": b64(key.as_bytes()), "revision": revision}),
    )
    .await
    .expect("range")
}

async fn wait_compacted(base: &str, at_least: i64) -> i64 {
    let mut last = Value::Null;
    for _ in 0..150 {
        last = status(base).await;
        let c = last["compacted_revision"].as_i64().unwrap_or(0);
        if c >= at_least {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never compacted to {at_least}: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_retention_keeps_the_latest_revisions_on_every_server() {
    let dc = launch(
        3,
        "[compaction]\nmode = \"revision\"\nretention = \"20\"\ninterval_ms = 200\n",
    )
    .await;
    let mut last = 0;
    for i in 0..100 {
        last = put_rev(dc.url(i % 3), "/c", &format!("v{i}")).await;
    }
    for i in 0..3 {
        let compacted = wait_compacted(dc.url(i), last - 20).await;
        assert!(compacted <= last - 20, "server {i} compacted {compacted}");
    }
    let (code, v) = read_at(dc.url(0), "/c", last - 10).await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = read_at(dc.url(1), "/c", last - 50).await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap_or("").contains("compacted"),
        "{v}"
    );
    let leader = dc.leader().await;
    let page = metrics_page(dc.url(leader)).await;
    assert!(
        metric_in(&page, "meridian_compactions_total{trigger=\"auto\"}") >= 1.0,
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_retention_keeps_the_window() {
    let dc = launch(
        1,
        "[compaction]\nmode = \"periodic\"\nretention = \"2s\"\ninterval_ms = 200\n",
    )
    .await;
    let base = dc.url(0).to_string();
    let first = put_rev(&base, "/p", "first").await;
    let start = Instant::now();
    let mut writes = Vec::new();
    while start.elapsed() < Duration::from_millis(3500) {
        writes.push((Instant::now(), put_rev(&base, "/p", "x").await));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let compacted = wait_compacted(&base, first).await;
    assert!(compacted > first);
    // Everything written within the last second (well inside the 2 s
    // window) is still readable at its revision.
    let end = Instant::now();
    for (at, rev) in &writes {
        if end.duration_since(*at) < Duration::from_millis(1000) {
            let (code, v) = read_at(&base, "/p", *rev).await;
            assert_eq!(code, 200, "revision {rev} inside the window: {v}");
        }
    }
    let (code, _) = read_at(&base, "/p", first).await;
    assert_eq!(code, 400, "the first write is older than the window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_compaction_obeys_its_request_and_refuses_bad_ones() {
    let dc = launch(1, "").await;
    let base = dc.url(0).to_string();
    for i in 0..20 {
        put_rev(&base, "/m", &format!("v{i}")).await;
    }
    let admin = |body: Value| {
        let url = format!("{base}/admin/compact");
        async move { post(&url, &body).await.expect("compact") }
    };
    let current = status(&base).await["revision"].as_i64().expect("revision");
    let (code, v) = admin(json!({"keep": 3})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["compacted"], true, "{v}");
    assert_eq!(v["compacted_revision"], json!(current - 3), "{v}");
    let (code, v) = admin(json!({"keep": 1000})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["compacted"], false, "{v}");
    for bad in [
        json!({"revision": current + 100}),
        json!({"revision": 2}),
        json!({"keep": -1}),
        json!({"revision": 5, "keep": 5}),
        json!({}),
        json!({"when": "now"}),
    ] {
        let (code, v) = admin(bad.clone()).await;
        assert_eq!(code, 400, "{bad}: {v}");
    }
    assert_eq!(
        status(&base).await["compacted_revision"],
        json!(current - 3)
    );
    let last = put_rev(&base, "/p", "y").await;
    let out = std::process::Command::new(binary())
        .args(["compact", &(last - 1).to_string(), "--endpoints", &base])
        .output()
        .expect("meridian compact");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("compacted_revision={}", last - 1)),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defrag_shrinks_a_stopped_servers_files_while_the_others_take_writes() {
    let mut dc = Cluster::start_with(
        3,
        RaftTuning {
            snapshot_logs: 300,
            purge_lag_logs: 10,
            ..RaftTuning::default()
        },
    )
    .await;
    // About 8 MB of values, then most of it deleted and compacted away.
    let value = "x".repeat(4000);
    for i in 0..2000 {
        let (code, v) = put(dc.url(i % 3), &format!("/big/{i:05}"), &value)
            .await
            .expect("put");
        assert_eq!(code, 200, "{v}");
    }
    let (code, v) = post(
        &format!("{}/v3/kv/deleterange", dc.url(0)),
        &json!({"key": b64(b"/big/0"), "range_end": b64(b"/big/2")}),
    )
    .await
    .expect("delete");
    assert_eq!(code, 200, "{v}");
    for i in 0..400 {
        put_rev(dc.url(i % 3), &format!("/small/{i}"), "s").await;
    }
    let (code, v) = post(&format!("{}/admin/compact", dc.url(0)), &json!({"keep": 1}))
        .await
        .expect("compact");
    assert_eq!(code, 200, "{v}");

    // Refused while the server runs.
    let defrag = |dir: std::path::PathBuf| {
        std::process::Command::new(binary())
            .args(["defrag", "--data-dir"])
            .arg(dir)
            .output()
            .expect("meridian defrag")
    };
    // A follower is defragmented: stopping it costs no election.
    let leader = dc.leader().await;
    let target = (leader + 1) % 3;
    let name = dc.servers[target].name.clone();
    let others: Vec<String> = (0..3)
        .filter(|i| *i != target)
        .map(|i| dc.url(i).to_string())
        .collect();
    let out = defrag(dc.dir.path().join(&name));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A client keeps writing through the other two meanwhile.
    let urls = others;
    let writing = tokio::spawn(async move {
        let mut failed = 0;
        for i in 0..300usize {
            match put(&urls[i % 2], &format!("/during/{i}"), "w").await {
                Ok((200, _)) => {}
                _ => failed += 1,
            }
        }
        failed
    });
    // Stopped only once it has applied the compaction itself.
    let compacted = status(dc.url(leader)).await["compacted_revision"]
        .as_i64()
        .expect("compacted");
    wait_compacted(dc.url(target), compacted).await;
    dc.kill(target);
    let out = defrag(dc.dir.path().join(&name));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = |name: &str| -> u64 {
        said.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {said}"))
    };
    let (before, after) = (bytes("before_bytes"), bytes("after_bytes"));
    eprintln!("defrag: {before} bytes before, {after} after");
    assert!(
        after * 2 < before,
        "defrag did not shrink the files: {before} -> {after}"
    );
    dc.restart(target).await;
    let failed = writing.await.expect("writer");
    assert_eq!(failed, 0, "writes failed during the defrag");
    dc.wait_applied(target, "/during/299").await;
    let (code, v) = read_at(dc.url(target), "/small/399", 0).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["count"], "1", "{v}");
}
