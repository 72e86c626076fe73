//! The binary as a user meets it: `dev` then curl, and start-up errors for bad configuration.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn meridian() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
}

fn free_base_port() -> u16 {
    // Find 30 consecutive free TCP and UDP ports starting at a random-ish base.
    let seed = std::process::id() as u16;
    for attempt in 0..200u16 {
        let base = 20000 + (seed.wrapping_mul(31).wrapping_add(attempt * 97)) % 30000;
        let free = (0..3).all(|i| {
            let p = base + 10 * i;
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
    let base = free_base_port();
    let mut child = KillOnDrop(
        meridian()
            .args(["dev", "--base-port", &base.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dev"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut urls = Vec::new();
    for _ in 0..3 {
        let line = lines.next().expect("a server line").expect("utf-8");
        assert!(line.starts_with("dc=dc1 name=n"), "{line}");
        urls.push(
            line.split("client=")
                .nth(1)
                .expect("client url")
                .to_string(),
        );
    }
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
}
