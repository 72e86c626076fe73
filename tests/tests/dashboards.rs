//! The dashboards and rules in `dashboards/`: promtool accepts the alert and
//! recording rules and every panel's expression; every metric they name is
//! exported by a running federation; and a real Prometheus scraping a
//! federation fires the no-leader alert when a datacenter loses quorum.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

fn rule_files() -> Vec<PathBuf> {
    let dir = dashboards_dir();
    vec![dir.join("alerts.yml"), dir.join("recording.yml")]
}

fn dashboards() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dashboards_dir()).expect("dashboards/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("read dashboard");
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((path.display().to_string(), v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every panel expression, with Grafana's variables replaced by values
/// Prometheus accepts.
fn panel_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (file, d) in dashboards() {
        for panel in d["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                let expr = expr
                    .replace("$__rate_interval", "5m")
                    .replace("$datacenter", ".*")
                    .replace("$instance", ".*");
                out.push((format!("{file}: {}", panel["title"]), expr));
            }
        }
    }
    out
}

/// The `meridian_*` metric names an expression uses (not recorded series,
/// which contain colons), with histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some(found) = text[i..].find("meridian_") {
        let start = i + found;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let before = start.checked_sub(1).map(|b| bytes[b]);
        let part_of_other =
            before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
        if !part_of_other {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_string());
        }
        i = end;
    }
    names
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (Debian package `prometheus`, installed by .ci/run)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn promtool_accepts_the_rules_and_every_panel_expression() {
    let files = rule_files();
    let paths: Vec<&str> = files.iter().map(|p| p.to_str().expect("path")).collect();
    let mut args = vec!["check", "rules"];
    args.extend(&paths);
    let (ok, said) = promtool(&args);
    assert!(ok, "{said}");
    // Each alert has a severity, a summary and a runbook link into
    // docs/operations.md that exists there.
    let operations = std::fs::read_to_string(dashboards_dir().join("../docs/operations.md"))
        .expect("docs/operations.md");
    let alerts = std::fs::read_to_string(&files[0]).expect("alerts");
    let mut count = 0;
    for block in alerts.split("- alert: ").skip(1) {
        count += 1;
        let name = block.lines().next().unwrap_or("");
        assert!(block.contains("severity: "), "{name} has no severity");
        assert!(block.contains("summary: "), "{name} has no summary");
        let anchor = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url: docs/operations.md#"))
            .unwrap_or_else(|| panic!("{name} has no runbook link"));
        let heading = operations.lines().any(|l| {
            l.starts_with('#')
                && l.trim_start_matches('#')
                    .trim()
                    .to_lowercase()
                    .replace(' ', "-")
                    == anchor
        });
        assert!(
            heading,
            "{name}: no heading for #{anchor} in docs/operations.md"
        );
    }
    assert!(count >= 12, "{count} alerts");
    // Every panel expression as a recording rule.
    let exprs = panel_exprs();
    assert!(exprs.len() > 50, "{} panel expressions", exprs.len());
    let mut rules = String::from("groups:\n  - name: panels\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: panel:expression:{i}\n        expr: {}\n",
            serde_json::to_string(expr).expect("quote")
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("panels.yml");
    std::fs::write(&file, rules).expect("write");
    let (ok, said) = promtool(&["check", "rules", file.to_str().expect("path")]);
    assert!(ok, "{said}");
    // Every dashboard filters by datacenter and instance.
    for (file, d) in dashboards() {
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .expect("templating")
            .iter()
            .filter_map(|v| v["name"].as_str())
            .collect();
        assert!(
            vars.contains(&"datacenter") && vars.contains(&"instance"),
            "{file}: {vars:?}"
        );
    }
}

/// dc1 (three servers, frequent Raft snapshots) and dc2 (one), with `/m/`
/// mirrored from dc1 to dc2.
async fn federation() -> Vec<Cluster> {
    let plans = [Plan::new("dc1", 3), Plan::new("dc2", 1)];
    let rule =
        "[federation.replication.m]\nprefix = \"/m/\"\nsource = \"dc1\"\ntargets = [\"dc2\"]\n";
    let mut out: Vec<Cluster> = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let cluster = Cluster::launch(Spec {
            datacenter: plan.name.into(),
            ports: plan.ports.clone(),
            tuning: RaftTuning {
                snapshot_logs: 20,
                purge_lag_logs: 5,
                ..RaftTuning::default()
            },
            ca_from: out.first().map(Cluster::tls_dir),
            extra: (0..plan.ports.len())
                .map(|s| section(&plans, i, s, rule))
                .collect(),
        })
        .await;
        out.push(cluster);
    }
    out
}

/// Uses every kind of metric once: writes, forwarded requests, catalog
/// checks and lookups, compaction, a backup, replication.
async fn exercise(dcs: &[Cluster]) {
    let (dc1, dc2) = (dcs[0].url(0), dcs[1].url(0));
    for i in 0..40 {
        let (code, v) = put(dcs[0].url(i % 3), &format!("/m/k{i}"), "v")
            .await
            .expect("put");
        assert_eq!(code, 200, "{v}");
    }
    let (code, v) = post(&format!("{dc1}/admin/compact"), &json!({"keep": 5}))
        .await
        .expect("compact");
    assert_eq!(code, 200, "{v}");
    let backup = reqwest::Client::new()
        .post(format!("{dc1}/admin/snapshot"))
        .send()
        .await
        .expect("backup");
    assert_eq!(backup.status().as_u16(), 200);
    assert!(!backup.bytes().await.expect("body").is_empty());
    let (code, v) = send(
        reqwest::Method::GET,
        &format!("{dc1}/v1/kv/m/k1?dc=dc2"),
        None,
    )
    .await;
    assert!(code == 200 || code == 404, "{code} {v}");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let (code, v) = send(
        reqwest::Method::PUT,
        &format!("{dc2}/v1/catalog/register"),
        Some(
            json!({"service": "api", "address": "127.0.0.1", "port": addr.port(),
                    "check": {"tcp": addr.to_string(), "interval": "300ms"}}),
        ),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    for _ in 0..50 {
        let (code, _) = send(
            reqwest::Method::GET,
            &format!("{dc1}/v1/lookup/api?failover=nearest:1"),
            None,
        )
        .await;
        if code == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(tcp);
}

/// Every metric name any server of the federation exports.
async fn exported(dcs: &[Cluster]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for dc in dcs {
        for i in 0..dc.servers.len() {
            let page = metrics_page(dc.url(i)).await;
            for line in page.lines() {
                if let Some(rest) = line.strip_prefix("# TYPE ") {
                    if let Some(name) = rest.split_whitespace().next() {
                        names.insert(name.to_string());
                    }
                }
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboards_use_is_exported_and_prometheus_fires_no_leader() {
    let mut dcs = federation().await;
    exercise(&dcs).await;
    let mut used = BTreeSet::new();
    for file in rule_files() {
        used.extend(metric_names(&std::fs::read_to_string(file).expect("rules")));
    }
    for (_, expr) in panel_exprs() {
        used.extend(metric_names(&expr));
    }
    assert!(used.len() > 40, "{used:?}");
    let mut missing = BTreeSet::new();
    for _ in 0..100 {
        let have = exported(&dcs).await;
        missing = used.difference(&have).cloned().collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        missing.is_empty(),
        "named in dashboards/ but not exported: {missing:?}"
    );

    // A real Prometheus with the rules (their `for:` shortened) scrapes
    // every server; dc1 loses two of its three servers.
    let dir = tempfile::tempdir().expect("tempdir");
    let alerts = std::fs::read_to_string(&rule_files()[0]).expect("alerts");
    let quick: String = alerts
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("for: ") {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}for: 1s\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(dir.path().join("alerts.yml"), quick).expect("write");
    // The recording rules evaluated every second instead of every 30 s.
    let recording = std::fs::read_to_string(&rule_files()[1])
        .expect("recording rules")
        .replace("interval: 30s", "interval: 1s");
    std::fs::write(dir.path().join("recording.yml"), recording).expect("write");
    let mut targets = Vec::new();
    for dc in &dcs {
        for i in 0..dc.servers.len() {
            targets.push(format!("'{}'", dc.url(i).trim_start_matches("http://")));
        }
    }
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n- {}\n- {}\n\
         scrape_configs:\n- job_name: meridian\n  static_configs:\n  - targets: [{}]\n",
        dir.path().join("alerts.yml").display(),
        dir.path().join("recording.yml").display(),
        targets.join(", ")
    );
    let prometheus = start_prometheus(&config);
    let api = format!("{}/api/v1", prometheus.url);
    // Prometheus sees dc1's leader first.
    let mut seen = Value::Null;
    for _ in 0..150 {
        if let Ok(v) = get_json(&format!(
            "{api}/query?query=datacenter:meridian_has_leader:max"
        ))
        .await
        {
            seen = v.clone();
            let dc1_up = v["data"]["result"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|s| s["metric"]["datacenter"] == "dc1" && s["value"][1] == "1")
            });
            if dc1_up {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        seen["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "{seen}"
    );
    let leader = dcs[0].leader().await;
    let survivor = (leader + 1) % 3;
    for i in 0..3 {
        if i != survivor {
            dcs[0].kill(i);
        }
    }
    let mut firing = Value::Null;
    let mut fired = false;
    for _ in 0..200 {
        if let Ok(v) = get_json(&format!("{api}/alerts")).await {
            fired = v["data"]["alerts"].as_array().is_some_and(|l| {
                l.iter().any(|a| {
                    a["labels"]["alertname"] == "MeridianNoLeader"
                        && a["labels"]["datacenter"] == "dc1"
                        && a["state"] == "firing"
                })
            });
            firing = v;
            if fired {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(prometheus);
    assert!(fired, "MeridianNoLeader never fired for dc1: {firing}");
}
