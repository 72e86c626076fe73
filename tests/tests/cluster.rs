//! A three-server datacenter of real processes: leader failover, crash
//! durability of acknowledged writes, and catch-up by snapshot.

mod support;

use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_a_new_one_and_the_old_leader_catches_up() {
    let mut c = Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let (status, _) = put(c.url(follower), "before", "1").await.unwrap();
    assert_eq!(status, 200, "a follower forwards writes to the leader");

    c.kill(leader);
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    let survivor = (0..3).find(|i| *i != leader).unwrap();
    let mut acked = 0;
    for i in 0..20 {
        let (status, body) = put(c.url(survivor), &format!("after/{i}"), "v")
            .await
            .unwrap();
        assert_eq!(status, 200, "write {i} after failover: {body}");
        acked += 1;
    }
    assert_eq!(acked, 20);

    c.restart(leader).await;
    // The restarted server catches up: a linearizable read through it sees every write.
    for i in 0..20 {
        assert_eq!(
            get(c.url(leader), &format!("after/{i}"), false)
                .await
                .unwrap(),
            Some(b"v".to_vec())
        );
    }
    assert_eq!(
        get(c.url(leader), "before", false).await.unwrap(),
        Some(b"1".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_with_their_revisions() {
    let mut c = Cluster::start(3).await;
    let leader = c.leader().await;
    let url = c.url(leader).to_string();
    // A stream of writes; the leader is killed in the middle of it.
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..400 {
            match put(&url, &format!("k/{i:04}"), &format!("v{i}")).await {
                Ok((200, body)) => acked.push((
                    i,
                    body["header"]["revision"]
                        .as_str()
                        .unwrap_or("0")
                        .parse::<i64>()
                        .unwrap_or(0),
                )),
                _ => break,
            }
        }
        acked
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    c.kill(leader);
    let acked = writer.await.unwrap();
    assert!(
        !acked.is_empty(),
        "some writes were acknowledged before the kill"
    );
    c.restart(leader).await;
    c.wait_ready_all().await;
    for server in 0..3 {
        for (i, revision) in &acked {
            let write = format!("write {i} on server {server}");
            let key = format!("k/{i:04}");
            let kept = (format!("v{i}"), revision.to_string());
            assert_write_kept(c.url(server), &key, &kept, &write).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_while_the_log_was_purged_catches_up_by_snapshot() {
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
    c.kill(lagging);
    for i in 0..300 {
        let (status, _) = put(c.url(leader), &format!("s/{i}"), "x").await.unwrap();
        assert_eq!(status, 200);
    }
    c.restart(lagging).await;
    // Serializable reads on the lagging server read its own state.
    c.wait_applied(lagging, "s/299").await;
    for i in 0..300 {
        assert!(
            get(c.url(lagging), &format!("s/{i}"), true)
                .await
                .unwrap()
                .is_some(),
            "key s/{i} missing"
        );
    }
    assert!(
        c.log(lagging).contains("snapshot installed"),
        "the lagging server caught up by snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_hold_back_entries_yet_reads_that_must_see_them_do_and_a_crash_loses_none() {
    let mut c = Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let leader_url = c.url(leader).to_string();
    let follower_url = c.url(follower).to_string();

    // Each write acknowledged by the leader is seen at once by a
    // linearizable read on the follower, which holds entries back.
    for i in 0..30 {
        let (status, _) = put(&leader_url, &format!("held/{i}"), &i.to_string())
            .await
            .unwrap();
        assert_eq!(status, 200);
        let seen = get(&follower_url, &format!("held/{i}"), false)
            .await
            .unwrap();
        assert_eq!(seen, Some(i.to_string().into_bytes()), "write {i}");
    }
    let held = metric(&follower_url, "meridian_raft_entries_held_total").await;
    assert!(held > 0.0, "the follower held nothing back");

    // Serializable reads there see the writes once the hold is over.
    put(&leader_url, "held/last", "x").await.unwrap();
    c.wait_applied(follower, "held/last").await;

    // Writes the follower may still hold when it is killed are applied
    // again from its log when it comes back.
    for i in 30..40 {
        put(&leader_url, &format!("held/{i}"), &i.to_string())
            .await
            .unwrap();
    }
    c.kill(follower);
    c.restart(follower).await;
    c.wait_applied(follower, "held/39").await;
    for i in 0..40 {
        let seen = get(c.url(follower), &format!("held/{i}"), true)
            .await
            .unwrap();
        assert_eq!(
            seen,
            Some(i.to_string().into_bytes()),
            "write {i} after the restart"
        );
    }
}

/// The whole datacenter loses power: every server's state, written without
/// fsync, may be torn (here: all its pages after the meta pages lost), and
/// the logs were purged below snapshots. Each server rebuilds its state from
/// its last snapshot and its log, and every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datacenter_that_loses_power_rebuilds_torn_states_and_loses_no_acknowledged_write() {
    let mut c = Cluster::start_with(
        3,
        RaftTuning {
            snapshot_logs: 20,
            purge_lag_logs: 5,
            ..RaftTuning::default()
        },
    )
    .await;
    let leader = c.leader().await;
    let leader_url = c.url(leader).to_string();
    for i in 0..60 {
        let (status, body) = put(&leader_url, &format!("power/{i:02}"), &i.to_string())
            .await
            .unwrap();
        assert_eq!(status, 200, "write {i}: {body}");
    }
    for i in 0..3 {
        c.wait_applied(i, "power/59").await;
    }
    // A process crash under the same boot needs no rebuild: the page cache
    // kept every commit.
    c.kill(leader);
    c.restart(leader).await;
    assert_eq!(
        metric(c.url(leader), "meridian_state_rebuilds_total").await,
        0.0
    );

    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        assert!(
            c.data_dir(i).join("snapshots/current.snap").is_file(),
            "server {i} has built a snapshot"
        );
        tear_state(&c.data_dir(i));
    }
    c.restart_all().await;
    for i in 0..3 {
        assert_eq!(
            metric(c.url(i), "meridian_state_rebuilds_total").await,
            1.0,
            "server {i}"
        );
        c.wait_applied(i, "power/59").await;
        for k in 0..60 {
            let seen = get(c.url(i), &format!("power/{k:02}"), true).await.unwrap();
            assert_eq!(
                seen,
                Some(k.to_string().into_bytes()),
                "server {i}, write {k}"
            );
        }
        assert!(c.log(i).contains("rebuilt the state"), "server {i}");
    }
    let leader = c.leader().await;
    let (status, body) = put(c.url(leader), "power/after", "x").await.unwrap();
    assert_eq!(status, 200, "{body}");
}

/// A clean stop leaves the state synced and says so, so that a machine
/// restart after it needs no rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_marks_the_state_synced_and_the_next_start_trusts_it() {
    let mut c = Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    for i in 0..10 {
        put(c.url(leader), &format!("clean/{i}"), "v")
            .await
            .unwrap();
    }
    c.wait_applied(follower, "clean/9").await;
    let marker = c.data_dir(follower).join("state/boot");
    let running = std::fs::read_to_string(&marker).expect("marker");
    assert!(running.trim_end().ends_with(" running"), "{running:?}");
    c.terminate(follower);
    let synced = std::fs::read_to_string(&marker).expect("marker");
    assert!(synced.trim_end().ends_with(" synced"), "{synced:?}");
    c.restart(follower).await;
    assert_eq!(
        metric(c.url(follower), "meridian_state_rebuilds_total").await,
        0.0
    );
    c.wait_applied(follower, "clean/9").await;
}

/// A lone server answers writes from its open state transaction and
/// commits them later when nobody reads (ADR 0019). Killed before that
/// commit, it applies them again from its log when it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_server_killed_with_applies_uncommitted_loses_no_acknowledged_write() {
    let mut c = Cluster::start(1).await;
    let url = c.url(0).to_string();
    let mut acked = Vec::new();
    for i in 0..30 {
        let (status, body) = put(&url, &format!("lone/{i:02}"), &format!("v{i}"))
            .await
            .unwrap_or_else(|e| panic!("put {i}: {e}"));
        assert_eq!(status, 200, "put {i}");
        acked.push(
            body["header"]["revision"]
                .as_str()
                .unwrap_or("0")
                .to_string(),
        );
    }
    // No read in between: the last writes are still waiting for their commit.
    c.kill(0);
    c.restart(0).await;
    c.wait_ready_all().await;
    for (i, revision) in acked.iter().enumerate() {
        let kept = (format!("v{i}"), revision.clone());
        assert_write_kept(
            c.url(0),
            &format!("lone/{i:02}"),
            &kept,
            &format!("write {i}"),
        )
        .await;
    }
}

/// Asserts that `key` on the server at `base` still holds an acknowledged
/// write: its value and its revision (as etcd's JSON writes it) `kept`.
async fn assert_write_kept(base: &str, key: &str, kept: &(String, String), write: &str) {
    let (status, v) = post(
        &format!("{base}/v3/kv/range"),
        &json!({ "key": b64(key.as_bytes()) }),
    )
    .await
    .unwrap_or_else(|e| panic!("range of {write}: {e}"));
    assert_eq!(status, 200);
    let kv = &v["kvs"][0];
    assert_eq!(
        unb64(&kv["value"]),
        kept.0.as_bytes(),
        "acknowledged {write} lost"
    );
    assert_eq!(
        kv["mod_revision"],
        json!(kept.1),
        "revision of {write} changed"
    );
}

/// The members of a datacenter apply the same entries together; each waits
/// longer by its rank among the members' ids (a sixth, a third more), so
/// that they do not all build their snapshots at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_build_their_snapshots_one_after_another() {
    let c = Cluster::start_with(
        3,
        RaftTuning {
            snapshot_logs: 120,
            ..RaftTuning::default()
        },
    )
    .await;
    let leader = c.url(c.leader().await).to_string();
    // 120 writes (and the few entries that formed the cluster): past the
    // first member's 120 entries, well short of the next one's 140.
    for i in 0..120 {
        let (status, body) = put(&leader, &format!("stagger/{i}"), "v").await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..3 {
        c.wait_applied(i, "stagger/119").await;
    }
    let mut got = all_snapshot_builds(&c).await;
    for _ in 0..50 {
        if got.iter().any(|b| *b > 0.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        got = all_snapshot_builds(&c).await;
    }
    // Give the others time to follow, were they going to.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    got = all_snapshot_builds(&c).await;
    let mut sorted = got.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(
        sorted,
        [0.0, 0.0, 1.0],
        "snapshots per member after 120 writes"
    );
    // Past the last member's 160 entries, every member has built one.
    for i in 120..170 {
        let (status, body) = put(&leader, &format!("stagger/{i}"), "v").await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..3 {
        expect_snapshot_builds(c.url(i), 1.0).await;
    }
}

/// Snapshots built by each server so far.
async fn all_snapshot_builds(c: &Cluster) -> Vec<f64> {
    let mut all = Vec::new();
    for i in 0..3 {
        all.push(snapshot_builds(c.url(i)).await);
    }
    all
}

/// Snapshots built by a server so far.
async fn snapshot_builds(base: &str) -> f64 {
    let name = "meridian_snapshot_duration_seconds_count{kind=\"build\"}";
    metric_value(&metrics_page(base).await, name).unwrap_or(0.0)
}

/// Waits (at most 10 s) until the server has built `want` snapshots.
async fn expect_snapshot_builds(base: &str, want: f64) {
    let mut got = 0.0;
    for _ in 0..100 {
        got = snapshot_builds(base).await;
        if got >= want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(got, want, "snapshots built");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_waits_until_the_log_since_the_last_is_as_large_as_it() {
    let c = Cluster::start_with(
        1,
        RaftTuning {
            snapshot_logs: 20,
            ..RaftTuning::default()
        },
    )
    .await;
    let url = c.url(0);
    let big = "x".repeat(32 * 1024);
    // 30 entries of 32 KiB: the first snapshot comes after 20 (ADR 0020:
    // with no snapshot yet, entries alone decide), holding about 640 KiB.
    for i in 0..30 {
        let (status, _) = put(url, &format!("big/{i}"), &big).await.unwrap();
        assert_eq!(status, 200);
    }
    expect_snapshot_builds(url, 1.0).await;
    // 100 small entries are five times `snapshot_logs` but a sliver of
    // what the snapshot would copy again: no new one.
    for i in 0..100 {
        let (status, _) = put(url, &format!("small/{i}"), "v").await.unwrap();
        assert_eq!(status, 200);
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        snapshot_builds(url).await,
        1.0,
        "a snapshot was built after 100 small entries"
    );
    // Once as much payload as the snapshot holds has been applied, the next
    // one follows.
    for i in 30..60 {
        let (status, _) = put(url, &format!("big/{i}"), &big).await.unwrap();
        assert_eq!(status, 200);
    }
    expect_snapshot_builds(url, 2.0).await;
}
