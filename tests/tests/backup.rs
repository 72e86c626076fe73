//! Backups on real servers: `meridian snapshot save` during a write stream,
//! `snapshot status`, truncated and bit-flipped files refused before anything
//! is written, and `snapshot restore` seeding a new 3-server datacenter whose
//! content equals the source's at the backup's revision.

mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use support::*;

fn meridian(args: &[&str]) -> Output {
    std::process::Command::new(binary())
        .args(args)
        .output()
        .expect("run meridian")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every key with its value, version, create and mod revision, at
/// `revision` (0: the current one).
async fn content(base: &str, revision: i64) -> Vec<(Vec<u8>, Vec<u8>, i64, i64, i64)> {
    let (status, v) = post(
        &format!("{base}/v3/kv/range"),
        &json!({"key": b64(b"\0"), "range_end": b64(b"\0"), "revision": revision}),
    )
    .await
    .expect("range");
    assert_eq!(status, 200, "{v}");
    let num = |v: &Value| v.as_str().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    v["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            (
                unb64(&kv["key"]),
                unb64(&kv["value"]),
                num(&kv["version"]),
                num(&kv["create_revision"]),
                num(&kv["mod_revision"]),
            )
        })
        .collect()
}

fn no_data(dir: &Path) -> bool {
    ["log", "state"].iter().all(|part| {
        let d = dir.join(part);
        !d.exists() || std::fs::read_dir(&d).map_or(true, |mut r| r.next().is_none())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_writes_restores_into_a_new_datacenter_and_bad_files_are_refused() {
    let source = Cluster::start(3).await;
    let urls: Vec<String> = (0..3).map(|i| source.url(i).to_string()).collect();
    // A lease with a key on it travels too.
    let lease = grant_lease(&urls[0], 600).await;
    let (status, v) = post(
        &format!("{}/v3/kv/put", urls[0]),
        &json!({"key": b64(b"/leased"), "value": b64(b"x"), "lease": lease.to_string()}),
    )
    .await
    .expect("put");
    assert_eq!(status, 200, "{v}");
    // A write stream across the servers: new keys and overwrites.
    let writer_urls = urls.clone();
    let writing = tokio::spawn(async move {
        let mut done = 0usize;
        for i in 0..600usize {
            let url = &writer_urls[i % 3];
            let key = format!("/load/k{}", i % 250);
            if put(url, &key, &format!("v{i}")).await.is_ok() {
                done += 1;
            }
        }
        done
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dc.mbak");
    let file_s = file.to_str().expect("path");
    let out = meridian(&["snapshot", "save", file_s, "--endpoints", &urls[1]]);
    assert!(out.status.success(), "{}", text(&out));
    let written = writing.await.expect("writer");
    assert_eq!(written, 600);
    let out = meridian(&["snapshot", "status", file_s]);
    assert!(out.status.success(), "{}", text(&out));
    let status_line = text(&out);
    let field = |name: &str| {
        status_line
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {status_line}"))
            .to_string()
    };
    let revision: i64 = field("revision").parse().expect("revision");
    assert_eq!(field("dc"), "test");
    assert_eq!(field("members"), "n1,n2,n3");
    assert_eq!(field("sha256").len(), 64);
    let (_, now) = post(
        &format!("{}/v3/kv/range", urls[0]),
        &json!({"key": b64(b"/x")}),
    )
    .await
    .expect("range");
    let end: i64 = now["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("revision");
    assert!(
        revision > 3 && revision < end,
        "backup revision {revision} not taken mid-stream (stream ended at {end})"
    );
    let expected = content(&urls[0], revision).await;
    assert!(expected.len() > 2, "{}", expected.len());

    // Damaged copies are refused, and nothing is written.
    let bytes = std::fs::read(&file).expect("read backup");
    let truncated = dir.path().join("truncated.mbak");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).expect("write");
    let flipped = dir.path().join("flipped.mbak");
    let mut altered = bytes.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 0x10;
    std::fs::write(&flipped, &altered).expect("write");
    for bad in [&truncated, &flipped] {
        let bad_s = bad.to_str().expect("path");
        let out = meridian(&["snapshot", "status", bad_s]);
        assert!(!out.status.success());
        assert!(text(&out).contains("corrupt"), "{}", text(&out));
        let target = dir.path().join("restore-target");
        let out = meridian(&[
            "snapshot",
            "restore",
            bad_s,
            "--data-dir",
            target.to_str().expect("path"),
            "--name",
            "n1",
            "--initial-members",
            "n1,n2,n3",
        ]);
        assert!(!out.status.success());
        assert!(text(&out).contains("corrupt"), "{}", text(&out));
        assert!(no_data(&target), "a refused restore wrote data");
    }

    // Restored into a new datacenter of three servers.
    let ports: Vec<(u16, u16)> = (0..3).map(|_| free_ports()).collect();
    let mut restored = Cluster::launch_prepared(
        Spec {
            datacenter: "test".into(),
            ports,
            tuning: RaftTuning::default(),
            ca_from: None,
            extra: Vec::new(),
        },
        |data_dir, name| {
            let out = meridian(&[
                "snapshot",
                "restore",
                file_s,
                "--data-dir",
                data_dir.to_str().expect("path"),
                "--name",
                name,
                "--initial-members",
                "n1,n2,n3",
            ]);
            assert!(out.status.success(), "{}", text(&out));
        },
    )
    .await;
    let leader = restored.leader().await;
    for i in 0..3 {
        let got = content(restored.url(i), 0).await;
        assert_eq!(got.len(), expected.len(), "server {i}");
        assert!(
            got == expected,
            "server {i}: content differs from the source at {revision}"
        );
    }
    let source_status = get_json(&format!("{}/v1/status", urls[0]))
        .await
        .expect("status");
    let new_status = get_json(&format!("{}/v1/status", restored.url(leader)))
        .await
        .expect("status");
    assert_eq!(new_status["revision"], json!(revision), "{new_status}");
    assert_ne!(new_status["cluster_id"], source_status["cluster_id"]);
    // The lease came along and still holds its key; the new DC takes writes.
    let (status, v) = post(
        &format!("{}/v3/lease/timetolive", restored.url(leader)),
        &json!({"ID": lease.to_string(), "keys": true}),
    )
    .await
    .expect("ttl");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["keys"], json!([b64(b"/leased")]), "{v}");
    let (status, v) = put(restored.url(0), "/after", "restore")
        .await
        .expect("put");
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["header"]["revision"],
        json!((revision + 1).to_string()),
        "{v}"
    );
    // The restored contents are in no Raft log: a power loss before the
    // first snapshot rebuilds each server from the copy the restore kept.
    for i in 0..3 {
        assert!(restored
            .data_dir(i)
            .join("snapshots/restored.snap")
            .is_file());
        restored.kill(i);
        tear_state(&restored.data_dir(i));
    }
    restored.restart_all().await;
    for i in 0..3 {
        restored.wait_applied(i, "/after").await;
        assert!(
            content(restored.url(i), revision).await == expected,
            "server {i}: content differs from the source after a rebuild"
        );
        assert_eq!(
            metric(restored.url(i), "meridian_state_rebuilds_total").await,
            1.0
        );
    }
    // A restored data directory refuses a configuration it was not restored for.
    let out = meridian(&[
        "snapshot",
        "restore",
        file_s,
        "--data-dir",
        dir.path().join("x").to_str().expect("path"),
        "--name",
        "n9",
        "--initial-members",
        "n1,n2",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("must include"), "{}", text(&out));
}
