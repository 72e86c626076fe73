//! The binary as a user meets it: `dev` then curl, and start-up errors for bad configuration.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn meridian() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
}

fn free_base_port() -> u16 {
    // Find the ports of two datacenters, free for TCP and UDP, starting at a random-ish
    // base; tests running in parallel in this process take different ones. They lie
    // below the kernel's ephemeral range (32768 and up), where a connection of another
    // test could take one as its local port between this check and dev's bind.
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let seed = (std::process::id() as u16)
        .wrapping_add(NEXT.fetch_add(1009, std::sync::atomic::Ordering::SeqCst));
    for attempt in 0..200u16 {
        let base = 20000 + (seed.wrapping_mul(31).wrapping_add(attempt * 97)) % 12000;
        // dev runs two datacenters: ports base.. and base + 100..
        let free = (0..6).all(|i| {
            let p = base + 100 * (i / 3) + 10 * (i % 3);
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", p + 1)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no free port range");
}

#[test]
fn dev_runs_a_datacenter_that_answers_put_and_get() {
    let (_child, lines) = start_dev_lines(3);
    for line in &lines {
        assert!(line.starts_with("dc=dc1 name=n"), "{line}");
    }
    let urls: Vec<String> = lines.iter().map(|l| client_url(l)).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut ok = false;
        for _ in 0..100 {
            if let Ok(r) = client
                .put(format!("{}/v1/kv/greeting", urls[0]))
                .body("hello")
                .send()
                .await
            {
                if r.status().is_success() {
                    ok = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "put through the dev datacenter");
        let got = client
            .get(format!("{}/v1/kv/greeting", urls[2]))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(got, "hello");
        // The CLI talks to the same servers.
        let out = meridian()
            .args(["kv", "get", "greeting", "--endpoints", &urls[1]])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "greeting\nhello\n");

        // `kv watch` prints history from --rev, then live changes, one line each.
        let endpoints = format!("{},{}", urls[0], urls[1]);
        let mut watcher = KillOnDrop(
            meridian()
                .args(["kv", "watch", "greet", "--prefix", "--rev", "1"])
                .args(["--endpoints", &endpoints])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn kv watch"),
        );
        let mut watched = BufReader::new(watcher.0.stdout.take().expect("stdout")).lines();
        let first = watched.next().expect("a line").expect("utf-8");
        assert_eq!(first, "rev=2 PUT greeting hello");
        client
            .delete(format!("{}/v1/kv/greeting", urls[2]))
            .send()
            .await
            .unwrap();
        let second = watched.next().expect("a line").expect("utf-8");
        assert_eq!(second, "rev=3 DELETE greeting");

        // `lock` runs a command under the lock with its key and fencing token.
        let out = meridian()
            .args(["lock", "job", "--ttl", "5", "--endpoints", &endpoints, "--"])
            .args([
                "sh",
                "-c",
                "echo \"$MERIDIAN_LOCK_KEY $MERIDIAN_LOCK_REVISION\"; exit 3",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "the command exit code");
        let printed = String::from_utf8_lossy(&out.stdout);
        let (key, revision) = printed.trim().split_once(' ').expect("key and revision");
        assert!(key.starts_with("job/"), "{printed}");
        assert!(revision.parse::<i64>().unwrap() > 3, "{printed}");
        // The lock was released: the lock prefix is empty again.
        let out = meridian()
            .args(["kv", "get", "job/", "--prefix", "--endpoints", &endpoints])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    });
}

/// Stops the child process however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_error(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, config).unwrap();
    let out = meridian()
        .args(["agent", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

const GOOD: &str = r#"
name = "n1"
datacenter = "dc1"
data_dir = "/tmp/never-used"
client_addr = "127.0.0.1:1"
peer_addr = "127.0.0.1:2"
[initial_members]
n1 = "127.0.0.1:2"
[tls]
ca = "/nonexistent/ca.pem"
cert = "/nonexistent/n1.pem"
key = "/nonexistent/n1-key.pem"
"#;

#[test]
fn bad_configuration_stops_start_up_with_one_line_naming_the_key() {
    let out = meridian()
        .args(["agent", "--config", "/nonexistent/meridian.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config file /nonexistent/meridian.toml not found"),
        "{err}"
    );

    let err = start_error(&format!("{GOOD}\nfrobnicate = 1\n"));
    assert!(err.contains("frobnicate"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let err = start_error(&GOOD.replace("127.0.0.1:1", "not-an-address"));
    assert!(err.contains("client_addr"), "{err}");

    let err = start_error(&format!(
        "{GOOD}\n[raft]\nelection_timeout_min_ms = 10\nheartbeat_interval_ms = 50\n"
    ));
    assert!(err.contains("raft.election_timeout_min_ms"), "{err}");

    let err = start_error(&GOOD.replace("n1 = \"127.0.0.1:2\"", "n2 = \"127.0.0.1:2\""));
    assert!(err.contains("initial_members"), "{err}");

    // A certificate issued for another datacenter is refused at start-up.
    let tls = tempfile::tempdir().unwrap();
    let out = meridian()
        .args([
            "tls",
            "init",
            "--datacenter",
            "dc2",
            "--names",
            "n1",
            "--dir",
        ])
        .arg(tls.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let data = tempfile::tempdir().unwrap();
    let err = start_error(
        &GOOD
            .replace("/nonexistent", &tls.path().display().to_string())
            .replace("/tmp/never-used", &data.path().display().to_string())
            .replace("127.0.0.1:1", "127.0.0.1:0")
            .replace("\"127.0.0.1:2\"", "\"127.0.0.1:0\""),
    );
    assert!(
        err.contains("not issued for datacenter \"dc1\"") && err.contains("--datacenter dc1"),
        "{err}"
    );
}

#[test]
fn worker_threads_sets_how_many_threads_serve() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for n in [1, 3] {
        let (_child, lines) = start_dev_with(&["--worker-threads", &n.to_string()], &[], 3);
        let metrics = rt.block_on(async {
            let url = format!("{}/metrics", client_url(&lines[0]));
            let mut text = String::new();
            for _ in 0..100 {
                if let Ok(r) = reqwest::get(&url).await {
                    text = r.text().await.unwrap_or_default();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            text
        });
        let line = metrics
            .lines()
            .find(|l| l.starts_with("meridian_worker_threads"))
            .unwrap_or_else(|| panic!("no meridian_worker_threads in {metrics}"));
        assert!(line.ends_with(&format!(" {n}")), "{line}");
    }
    let out = meridian()
        .args(["--worker-threads", "0", "dev"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--worker-threads"), "{err}");
}

/// Starts `meridian dev` on free ports; returns the child and dc1's client URLs.
fn start_dev() -> (KillOnDrop, Vec<String>) {
    let (child, lines) = start_dev_lines(3);
    (child, lines.iter().map(|l| client_url(l)).collect())
}

/// The client URL of one of dev's `dc=... name=... client=URL` lines.
fn client_url(line: &str) -> String {
    line.split("client=")
        .nth(1)
        .expect("client url")
        .to_string()
}

/// Starts `meridian dev` on free ports; returns the child and its first `n` lines.
fn start_dev_lines(n: usize) -> (KillOnDrop, Vec<String>) {
    start_dev_with(&[], &[], n)
}

/// [`start_dev_lines`] with `options` before the subcommand and `dev_args`
/// after it.
fn start_dev_with(options: &[&str], dev_args: &[&str], n: usize) -> (KillOnDrop, Vec<String>) {
    let base = free_base_port();
    let mut child = KillOnDrop(
        meridian()
            .args(options)
            .args(["dev", "--base-port", &base.to_string()])
            .args(dev_args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dev"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = (0..n)
        .map(|_| lines.next().expect("a line").expect("utf-8"))
        .collect();
    // Keep reading what dev prints, as a terminal would.
    std::thread::spawn(move || lines.for_each(drop));
    (child, first)
}

#[test]
fn dev_runs_two_datacenters_and_the_cli_reaches_either() {
    let (_dev, lines) = start_dev_lines(7);
    let dcs: Vec<&str> = lines
        .iter()
        .map(|l| l.split(' ').next().expect("dc=..."))
        .collect();
    assert_eq!(
        dcs,
        [
            "dc=dc1",
            "dc=dc1",
            "dc=dc1",
            "dc=dc2",
            "dc=dc2",
            "dc=dc2",
            "rule=global"
        ]
    );
    assert_eq!(
        lines[6],
        "rule=global prefix=/global/ source=dc1 targets=dc2"
    );
    let (dc1, dc2) = (client_url(&lines[0]), client_url(&lines[3]));
    let run = |args: &[&str]| {
        let out = meridian().args(args).output().expect("run meridian");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The link comes up within a few probe intervals.
    let mut status = String::new();
    for _ in 0..50 {
        status = run(&["federation", "status", "--endpoints", &dc1]).1;
        if status.contains("dc2 up") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(status.starts_with("dc1 local servers="), "{status}");
    assert!(status.contains("dc2 up since="), "{status}");
    // A put sent to dc1 with --dc dc2 lands in dc2 only.
    let (ok, out, err) = run(&[
        "kv",
        "put",
        "where",
        "dc2",
        "--dc",
        "dc2",
        "--endpoints",
        &dc1,
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "OK\n");
    assert_eq!(
        run(&["kv", "get", "where", "--endpoints", &dc2]).1,
        "where\ndc2\n"
    );
    assert_eq!(run(&["kv", "get", "where", "--endpoints", &dc1]).1, "");
    assert_eq!(
        run(&["kv", "get", "where", "--dc", "dc2", "--endpoints", &dc1]).1,
        "where\ndc2\n"
    );
    let (ok, _, err) = run(&["kv", "get", "where", "--dc", "mars", "--endpoints", &dc1]);
    assert!(!ok);
    assert!(
        err.contains("unknown datacenter \"mars\"") && err.contains("HTTP 404"),
        "{err}"
    );
    // /global/ written in dc1 shows up in dc2, where it is read-only.
    let (ok, _, err) = run(&["kv", "put", "/global/motd", "hi", "--endpoints", &dc1]);
    assert!(ok, "{err}");
    let mut mirrored = String::new();
    for _ in 0..100 {
        mirrored = run(&["kv", "get", "/global/motd", "--endpoints", &dc2]).1;
        if !mirrored.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(mirrored, "/global/motd\nhi\n");
    let (ok, _, err) = run(&["kv", "put", "/global/motd", "no", "--endpoints", &dc2]);
    assert!(!ok);
    assert!(err.contains("read-only") && err.contains("dc1"), "{err}");
    let rules = run(&["federation", "rules", "--endpoints", &dc2]).1;
    assert!(
        rules.starts_with(
            "global prefix=/global/ source=dc1 targets=dc2 epoch=1 role=target checkpoint="
        ),
        "{rules}"
    );
}

#[test]
fn a_paused_lock_holder_loses_the_lock_and_its_late_write_is_fenced_off() {
    let (_dev, urls) = start_dev();
    let endpoints = urls.join(",");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        let req = http.post(format!("{}{path}", urls[0])).json(&body);
        async move {
            let r = req.send().await.expect("request");
            r.json::<serde_json::Value>().await.expect("JSON")
        }
    };
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let pad = |t: i64| format!("{t:020}");
    rt.block_on(async {
        // Wait for the datacenter, then set the fence at token 0.
        let mut ready = false;
        for _ in 0..100 {
            if let Ok(r) = http
                .put(format!("{}/v1/kv/fence", urls[0]))
                .body(pad(0))
                .send()
                .await
            {
                if r.status().is_success() {
                    ready = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "dev datacenter up");
    });

    // The holder: `meridian lock` running a command that records its token and waits.
    use std::os::unix::process::CommandExt;
    let mut holder = KillOnDrop(
        meridian()
            .args(["lock", "job", "--ttl", "3", "--endpoints", &endpoints, "--"])
            .args([
                "sh",
                "-c",
                "echo \"$MERIDIAN_LOCK_REVISION\" > \"$1\"; exec sleep 60",
                "sh",
            ])
            .arg(&token_file)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lock"),
    );
    let mut stale_token = None;
    for _ in 0..100 {
        if let Some(t) = std::fs::read_to_string(&token_file)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
        {
            stale_token = Some(t);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stale_token = stale_token.expect("the holder got the lock");
    let pgid = holder.0.id() as i32;
    // Pause the holder (and its command): its keep-alives stop.
    assert_eq!(unsafe { libc::kill(-pgid, libc::SIGSTOP) }, 0);

    let fenced = |token: i64, who: &str| {
        post(
            "/v3/kv/txn",
            serde_json::json!({
                "compare": [{"key": b64("fence"), "target": "VALUE", "result": "LESS", "value": b64(&pad(token))}],
                "success": [{"request_put": {"key": b64("fence"), "value": b64(&pad(token))}},
                            {"request_put": {"key": b64(&format!("log/{}", pad(token))), "value": b64(who)}}]
            }),
        )
    };
    rt.block_on(async {
        // Another client takes the lock once the paused holder's lease expires.
        let lease: i64 = post("/v3/lease/grant", serde_json::json!({"TTL": "10"})).await["ID"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let locked = post(
            "/v3/lock/lock",
            serde_json::json!({"name": b64("job"), "lease": lease.to_string()}),
        )
        .await;
        let key = locked["key"].as_str().expect("lock key").to_string();
        let kv = post("/v3/kv/range", serde_json::json!({"key": key})).await;
        let token: i64 = kv["kvs"][0]["create_revision"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(token > stale_token);
        assert_eq!(
            fenced(token, "new").await["succeeded"],
            serde_json::json!(true)
        );
        post("/v3/lock/unlock", serde_json::json!({"key": key})).await;
    });

    // The holder wakes up: its late write with the old token is refused,
    // and `meridian lock` reports the lost lock and stops its command.
    assert_eq!(unsafe { libc::kill(-pgid, libc::SIGCONT) }, 0);
    rt.block_on(async {
        // `succeeded: false` is omitted, as etcd omits zero values.
        let late = fenced(stale_token, "stale").await;
        assert!(late["header"].is_object(), "{late}");
        assert_ne!(
            late["succeeded"],
            serde_json::json!(true),
            "the stale token is fenced off"
        );
    });
    let status = holder.0.wait().unwrap();
    assert!(
        !status.success(),
        "meridian lock fails once the lock is lost"
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(holder.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("lock is lost"), "{stderr}");
}

/// Ctrl-C stops every server of `meridian dev` cleanly: each leaves its
/// state synced and marked so (ADR 0017), so that a machine restart after
/// it needs no rebuild.
#[test]
fn dev_stops_every_server_cleanly_on_ctrl_c() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().to_str().expect("utf-8 path");
    let (mut dev, _lines) = start_dev_with(&[], &["--data-dir", dir], 7);

    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(dev.0.id() as i32, libc::SIGINT) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(status) = dev.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dev still runs 60 s after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    for dc in ["dc1", "dc2"] {
        for server in ["n1", "n2", "n3"] {
            let path = data.path().join(dc).join(server).join("state/boot");
            let marker = std::fs::read_to_string(&path).expect("marker");
            assert!(
                marker.trim_end().ends_with(" synced"),
                "{}: {marker:?}",
                path.display()
            );
        }
    }
}
