//! Membership changes on a loaded datacenter: a learner added while writes
//! flow catches up (by snapshot: the log below it was purged) and is
//! promoted; a member is removed and the datacenter stays available; unsafe
//! changes (promoting a learner that has nothing, removing a voter when the
//! rest would have no quorum) and bad requests are refused.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;

async fn members(base: &str) -> Value {
    get_json(&format!("{base}/v1/members"))
        .await
        .expect("members")
}

fn member<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    send(method, &url, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_catches_up_under_load_is_promoted_and_unsafe_changes_are_refused() {
    let mut dc = Cluster::start_with(
        3,
        RaftTuning {
            snapshot_logs: 100,
            purge_lag_logs: 10,
            ..RaftTuning::default()
        },
    )
    .await;
    // Writes flow through every original server while members change.
    let urls: Vec<String> = (0..3).map(|i| dc.url(i).to_string()).collect();
    let writer_urls = urls.clone();
    let writing = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut retryable = 0;
        for i in 0..800usize {
            let key = format!("/load/{i}");
            match put(&writer_urls[i % 3], &key, "v").await {
                Ok((200, _)) => acked.push(key),
                Ok((503 | 504, _)) | Err(_) => retryable += 1,
                Ok((code, v)) => panic!("write {i}: {code} {v}"),
            }
        }
        (acked, retryable)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let leader = dc.leader().await;
    let lead = dc.url(leader).to_string();
    let follower = dc.url((leader + 1) % 3).to_string();
    let (n4, (client, peer)) = dc.start_joiner("n4");
    let add = json!({"name": "n4", "peer_addr": format!("127.0.0.1:{peer}"),
                     "client_url": format!("http://127.0.0.1:{client}"), "learner": true});
    // Asked of a follower: refused, naming the leader.
    let (code, v) = call(
        reqwest::Method::POST,
        format!("{follower}/v1/members"),
        Some(add.clone()),
    )
    .await;
    assert_eq!(code, 412, "{v}");
    assert!(
        v["message"].as_str().unwrap_or("").contains("leader"),
        "{v}"
    );
    // Without "learner": refused.
    let mut voter = add.clone();
    voter["learner"] = json!(false);
    let (code, v) = call(
        reqwest::Method::POST,
        format!("{lead}/v1/members"),
        Some(voter),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = call(
        reqwest::Method::POST,
        format!("{lead}/v1/members"),
        Some(add.clone()),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["role"], "learner", "{v}");
    let (code, v) = call(
        reqwest::Method::POST,
        format!("{lead}/v1/members"),
        Some(add),
    )
    .await;
    assert_eq!(code, 412, "adding twice: {v}");

    // A learner with no server behind it has nothing: promoting it is refused.
    let ghost = json!({"name": "n5", "peer_addr": format!("127.0.0.1:{}", free_ports().1),
                       "client_url": "http://127.0.0.1:9", "learner": true});
    let (code, v) = call(
        reqwest::Method::POST,
        format!("{lead}/v1/members"),
        Some(ghost),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = call(
        reqwest::Method::POST,
        format!("{lead}/v1/members/n5/promote"),
        None,
    )
    .await;
    assert_eq!(code, 412, "{v}");
    assert!(v["message"].as_str().unwrap_or("").contains("n5"), "{v}");
    let (code, v) = call(
        reqwest::Method::DELETE,
        format!("{lead}/v1/members/n5"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = call(
        reqwest::Method::POST,
        format!("{lead}/v1/members/n9/promote"),
        None,
    )
    .await;
    assert_eq!(code, 404, "{v}");

    // n4 catches up while the writes go on, then is promoted.
    dc.wait_ready(n4).await;
    let mut last = Value::Null;
    for _ in 0..200 {
        last = members(&lead).await;
        if member(&last, "n4")
            .and_then(|m| m["lag"].as_u64())
            .is_some_and(|l| l < 50)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, v) = call(
        reqwest::Method::POST,
        format!("{lead}/v1/members/n4/promote"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{v} (members: {last})");
    assert_eq!(v["role"], "voter", "{v}");
    let (acked, retryable) = writing.await.expect("writer");
    assert!(
        acked.len() >= 790,
        "acked {} (retryable {retryable})",
        acked.len()
    );
    // Every acknowledged write is on the new voter.
    let n4_url = dc.url(n4).to_string();
    dc.wait_applied(n4, acked.last().expect("a write")).await;
    let (code, v) = post(
        &format!("{n4_url}/v3/kv/range"),
        &json!({"key": b64(b"/load/"), "range_end": b64(&prefix_end("/load/")), "count_only": true, "serializable": true}),
    )
    .await
    .expect("range");
    assert_eq!(code, 200, "{v}");
    let count: usize = v["count"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    assert!(
        count >= acked.len(),
        "n4 holds {count} of {} acknowledged writes",
        acked.len()
    );
    eprintln!(
        "{} writes acknowledged, {retryable} retryable errors while n4 joined",
        acked.len()
    );

    // Remove a follower of the four voters: the datacenter stays available.
    let leader = dc.leader().await;
    let lead = dc.url(leader).to_string();
    let gone = (0..4)
        .find(|i| *i != leader && *i != n4)
        .expect("a follower");
    let gone_name = dc.servers[gone].name.clone();
    let (code, v) = call(
        reqwest::Method::DELETE,
        format!("{lead}/v1/members/{gone_name}"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    dc.kill(gone);
    let (code, v) = put(&lead, "/after-removal", "ok").await.expect("put");
    assert_eq!(code, 200, "{v}");
    let listed = members(&lead).await;
    assert!(member(&listed, &gone_name).is_none(), "{listed}");
    assert_eq!(
        listed["members"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );

    // Three voters left; one stops. Removing another would leave two of
    // which one answers: refused, and nothing changes.
    let others: Vec<usize> = (0..4).filter(|i| *i != leader && *i != gone).collect();
    dc.kill(others[0]);
    let keep = dc.servers[others[1]].name.clone();
    let (code, v) = call(
        reqwest::Method::DELETE,
        format!("{lead}/v1/members/{keep}"),
        None,
    )
    .await;
    assert_eq!(code, 412, "{v}");
    assert!(
        v["message"].as_str().unwrap_or("").contains("quorum"),
        "{v}"
    );
    let listed = members(&lead).await;
    assert!(member(&listed, &keep).is_some(), "{listed}");
    let (code, v) = put(&lead, "/still", "writable").await.expect("put");
    assert_eq!(code, 200, "{v}");
}
