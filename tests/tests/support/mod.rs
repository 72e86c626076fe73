//! Starting real Meridian servers (child processes of the `meridian` binary)
//! on loopback with ephemeral ports, and talking to them over HTTP.
#![allow(dead_code)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `meridian` binary built beside this test executable.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join("meridian");
    assert!(
        bin.exists(),
        "{} is missing: run the workspace tests (`cargo test --workspace`), which build it",
        bin.display()
    );
    bin
}

/// A free TCP port and a free UDP port on 127.0.0.1.
pub fn free_ports() -> (u16, u16) {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    (
        tcp.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    )
}

pub fn b64(s: &[u8]) -> String {
    STANDARD.encode(s)
}

pub fn unb64(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| STANDARD.decode(s).ok())
        .unwrap_or_default()
}

/// One server of a test datacenter.
pub struct Server {
    pub name: String,
    pub client_url: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A datacenter of servers running as child processes; killed on drop.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub servers: Vec<Server>,
    /// The datacenter's name.
    pub datacenter: String,
}

/// How to start a test datacenter.
pub struct Spec {
    /// Its name.
    pub datacenter: String,
    /// (client TCP port, peer UDP port) of each server.
    pub ports: Vec<(u16, u16)>,
    pub tuning: RaftTuning,
    /// A directory whose CA (ca.pem, ca-key.pem) this datacenter shares.
    pub ca_from: Option<PathBuf>,
    /// Configuration text appended for each server (e.g. a `[federation]` section).
    pub extra: Vec<String>,
}

/// Extra `[raft]` settings for a test cluster.
#[derive(Clone, Copy)]
pub struct RaftTuning {
    pub snapshot_logs: u64,
    pub purge_lag_logs: u64,
    /// (min, max) election timeout in milliseconds.
    pub election_timeout_ms: (u64, u64),
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            snapshot_logs: 10_000,
            purge_lag_logs: 1_000,
            election_timeout_ms: (400, 800),
        }
    }
}

/// Leaves the stopped server's state at `data_dir` as a machine crash may:
/// its marker written under a boot that has ended, and every page after
/// LMDB's two meta pages never written (zeroes).
pub fn tear_state(data_dir: &Path) {
    let state = data_dir.join("state");
    std::fs::write(
        state.join("boot"),
        "00000000-0000-0000-0000-000000000000 running\n",
    )
    .expect("write the marker");
    let data = state.join("data.mdb");
    let mut bytes = std::fs::read(&data).expect("read data.mdb");
    assert!(
        bytes.len() > 2 * 4096,
        "an LMDB file holds more than its meta pages"
    );
    bytes[2 * 4096..].fill(0);
    std::fs::write(&data, bytes).expect("write data.mdb");
}

impl Cluster {
    pub async fn start(size: usize) -> Cluster {
        Self::start_with(size, RaftTuning::default()).await
    }

    pub async fn start_with(size: usize, tuning: RaftTuning) -> Cluster {
        let ports: Vec<(u16, u16)> = (0..size).map(|_| free_ports()).collect();
        Self::launch(Spec {
            datacenter: "test".into(),
            ports,
            tuning,
            ca_from: None,
            extra: Vec::new(),
        })
        .await
    }

    /// Starts a datacenter as `spec` says and waits until it is ready.
    pub async fn launch(spec: Spec) -> Cluster {
        Self::launch_prepared(spec, |_, _| {}).await
    }

    /// As [`Cluster::launch`], after `prepare(data_dir, name)` has run for
    /// each server (e.g. restoring a backup into its data directory).
    pub async fn launch_prepared(spec: Spec, prepare: impl Fn(&Path, &str)) -> Cluster {
        let size = spec.ports.len();
        let dir = tempfile::tempdir().expect("tempdir");
        let names: Vec<String> = (1..=size).map(|i| format!("n{i}")).collect();
        let tls = dir.path().join("tls");
        if let Some(ca_dir) = &spec.ca_from {
            std::fs::create_dir_all(&tls).expect("tls dir");
            for file in ["ca.pem", "ca-key.pem"] {
                std::fs::copy(ca_dir.join(file), tls.join(file)).expect("copy the CA");
            }
        }
        let status = Command::new(binary())
            .args(["tls", "init", "--datacenter", &spec.datacenter, "--dir"])
            .arg(&tls)
            .arg("--names")
            .arg(names.join(","))
            .stdout(Stdio::null())
            .status()
            .expect("tls init");
        assert!(status.success());
        let ports = &spec.ports;
        let members: String = names
            .iter()
            .zip(ports)
            .map(|(n, (c, p))| {
                format!("{n} = {{ peer = \"127.0.0.1:{p}\", client = \"http://127.0.0.1:{c}\" }}\n")
            })
            .collect();
        let mut servers = Vec::new();
        for (i, (name, (client, peer))) in names.iter().zip(ports).enumerate() {
            let tuning = spec.tuning;
            let config = format!(
                "name = \"{name}\"\ndatacenter = \"{dc}\"\ndata_dir = \"{data}\"\nclient_addr = \"127.0.0.1:{client}\"\npeer_addr = \"127.0.0.1:{peer}\"\n\
                 [initial_members]\n{members}\n[tls]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
                 [raft]\nheartbeat_interval_ms = 50\nelection_timeout_min_ms = {emin}\nelection_timeout_max_ms = {emax}\nsnapshot_logs = {snap}\npurge_lag_logs = {lag}\nrpc_timeout_ms = 1000\n\
                 [limits]\nrequest_timeout_ms = 4000\nvalue_bytes_max = 65536\n[lease]\nmin_ttl_seconds = 1\n[watch]\nprogress_notify_interval_ms = 300\n{extra}",
                dc = spec.datacenter,
                data = dir.path().join(name).display(),
                ca = tls.join("ca.pem").display(),
                cert = tls.join(format!("{name}.pem")).display(),
                key = tls.join(format!("{name}-key.pem")).display(),
                snap = tuning.snapshot_logs,
                lag = tuning.purge_lag_logs,
                emin = tuning.election_timeout_ms.0,
                emax = tuning.election_timeout_ms.1,
                extra = spec.extra.get(i).map(String::as_str).unwrap_or(""),
            );
            let config_path = dir.path().join(format!("{name}.toml"));
            std::fs::write(&config_path, config).expect("write config");
            servers.push(Server {
                name: name.clone(),
                client_url: format!("http://127.0.0.1:{client}"),
                config: config_path,
                log: dir.path().join(format!("{name}.log")),
                child: None,
            });
        }
        let mut cluster = Cluster {
            dir,
            servers,
            datacenter: spec.datacenter.clone(),
        };
        for name in &names {
            prepare(&cluster.dir.path().join(name), name);
        }
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster.wait_ready_all().await;
        cluster
    }

    /// Starts a new server `name` (a certificate from this datacenter's CA,
    /// the first server's settings) that joins the running datacenter
    /// (`initial_cluster_state = "existing"`) and waits to be added; answers
    /// its index and its (client, peer) ports. Not waited for: it becomes
    /// ready once a member adds it.
    pub fn start_joiner(&mut self, name: &str) -> (usize, (u16, u16)) {
        let tls = self.tls_dir();
        let status = Command::new(binary())
            .args(["tls", "init", "--datacenter"])
            .arg(&self.datacenter)
            .arg("--dir")
            .arg(&tls)
            .arg("--names")
            .arg(name)
            .stdout(Stdio::null())
            .status()
            .expect("tls init");
        assert!(status.success());
        let (client, peer) = free_ports();
        let first = &self.servers[0];
        let template = std::fs::read_to_string(&first.config).expect("config");
        let old = first.name.clone();
        let mut config = String::from("initial_cluster_state = \"existing\"\n");
        for line in template.lines() {
            let line = if line.starts_with("name = ") {
                format!("name = \"{name}\"")
            } else if line.starts_with("data_dir = ") {
                format!("data_dir = \"{}\"", self.dir.path().join(name).display())
            } else if line.starts_with("client_addr = ") {
                format!("client_addr = \"127.0.0.1:{client}\"")
            } else if line.starts_with("peer_addr = ") {
                format!("peer_addr = \"127.0.0.1:{peer}\"")
            } else if line.starts_with("cert = ") || line.starts_with("key = ") {
                line.replace(&format!("{old}.pem"), &format!("{name}.pem"))
                    .replace(&format!("{old}-key.pem"), &format!("{name}-key.pem"))
            } else {
                line.to_string()
            };
            config.push_str(&line);
            config.push('\n');
        }
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("write config");
        self.servers.push(Server {
            name: name.to_string(),
            client_url: format!("http://127.0.0.1:{client}"),
            config: path,
            log: self.dir.path().join(format!("{name}.log")),
            child: None,
        });
        let i = self.servers.len() - 1;
        self.spawn(i);
        (i, (client, peer))
    }

    /// Server `i`'s configuration file (to change it before a restart).
    pub fn config_path(&self, i: usize) -> &Path {
        &self.servers[i].config
    }

    /// Where this datacenter's CA is (to share it with other datacenters).
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    fn spawn(&mut self, i: usize) {
        let s = &mut self.servers[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)
            .expect("log file");
        let child = Command::new(binary())
            .arg("agent")
            .arg("--config")
            .arg(&s.config)
            .env("RUST_LOG", "info,openraft=error,quinn=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        s.child = Some(child);
    }

    /// SIGKILLs server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops server `i` cleanly (SIGTERM), waiting at most 30 s for it to exit.
    pub fn terminate(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            // SAFETY: kill(2) on the pid of a child this harness spawned and has not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "server {} did not stop within 30 s of SIGTERM; log:\n{}",
                self.servers[i].name,
                self.log(i)
            );
        }
    }

    /// The data directory of server `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.servers[i].name)
    }

    /// Starts server `i` again and waits until it is ready.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ready(i).await;
    }

    /// Starts every stopped server at once (a quorum needs several) and
    /// waits until all are ready.
    pub async fn restart_all(&mut self) {
        for i in 0..self.servers.len() {
            if self.servers[i].child.is_none() {
                self.spawn(i);
            }
        }
        self.wait_ready_all().await;
    }

    pub fn url(&self, i: usize) -> &str {
        &self.servers[i].client_url
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.servers[i].log).unwrap_or_default()
    }

    pub async fn wait_ready(&self, i: usize) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = client
                .get(format!("{}/ready", self.url(i)))
                .timeout(Duration::from_secs(5))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "server {} not ready within 30s; log:\n{}",
            self.servers[i].name,
            self.log(i)
        );
    }

    pub async fn wait_ready_all(&self) {
        for i in 0..self.servers.len() {
            self.wait_ready(i).await;
        }
    }

    /// Waits (at most 30 s) until server `i` has `key` in its own state
    /// (a serializable read), e.g. after catching up; panics with its log.
    pub async fn wait_applied(&self, i: usize, key: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(self.url(i), key, true).await.unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "server {i} did not catch up to {key}; log:\n{}",
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Index of the leader, as the live servers report it.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for i in 0..self.servers.len() {
                if self.servers[i].child.is_none() {
                    continue;
                }
                if let Ok(v) = get_json(&format!("{}/v1/status", self.url(i))).await {
                    if v["is_leader"] == json!(true) {
                        return i;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no leader within 30s");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
        // A failed test's servers leave with their temporary directory: show
        // the end of each log first.
        if std::thread::panicking() {
            for (i, s) in self.servers.iter().enumerate() {
                let log = self.log(i);
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("--- end of {}'s log ---\n{tail}", s.name);
            }
        }
    }
}

pub async fn get_json(url: &str) -> Result<Value, String> {
    let r = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    r.json().await.map_err(|e| e.to_string())
}

/// POSTs JSON; returns (HTTP status, body).
pub async fn post(url: &str, body: &Value) -> Result<(u16, Value), String> {
    post_raw(url, body.to_string().into_bytes()).await
}

pub async fn post_raw(url: &str, body: Vec<u8>) -> Result<(u16, Value), String> {
    let r = reqwest::Client::new()
        .post(url)
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let text = r.text().await.map_err(|e| e.to_string())?;
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, v))
}

pub async fn put(base: &str, key: &str, value: &str) -> Result<(u16, Value), String> {
    post(
        &format!("{base}/v3/kv/put"),
        &json!({ "key": b64(key.as_bytes()), "value": b64(value.as_bytes()) }),
    )
    .await
}

/// Grants a lease with a server-chosen id; returns the id.
pub async fn grant_lease(base: &str, ttl: i64) -> i64 {
    let (s, v) = post(
        &format!("{base}/v3/lease/grant"),
        &json!({"TTL": ttl.to_string()}),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
    v["ID"].as_str().unwrap().parse().unwrap()
}

/// Serializable or linearizable range of one key; returns the value if present.
pub async fn get(base: &str, key: &str, serializable: bool) -> Result<Option<Vec<u8>>, String> {
    let (status, v) = post(
        &format!("{base}/v3/kv/range"),
        &json!({ "key": b64(key.as_bytes()), "serializable": serializable }),
    )
    .await?;
    if status != 200 {
        return Err(format!("HTTP {status}: {v}"));
    }
    Ok(v["kvs"]
        .as_array()
        .and_then(|a| a.first())
        .map(|kv| unb64(&kv["value"])))
}

/// The end of the range of keys starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    end
}

/// A server's /metrics page.
pub async fn metrics_page(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the series `name` (with its labels, if any, as the page
/// writes them) on a /metrics page; `None` when the page has none.
pub fn metric_value(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The value of an unlabelled metric on a /metrics page.
pub fn metric_in(page: &str, name: &str) -> f64 {
    metric_value(page, name).unwrap_or_else(|| panic!("{name} missing"))
}

/// The value of an unlabelled metric on a server's /metrics page.
pub async fn metric(base: &str, name: &str) -> f64 {
    metric_in(&metrics_page(base).await, name)
}

/// Waits (at most 10 s) until metric `name` equals `want`.
pub async fn expect_metric(base: &str, name: &str, want: f64) {
    let mut got = f64::NAN;
    for _ in 0..100 {
        got = metric(base, name).await;
        if got == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} is {got}, expected {want}");
}

// Federations: several datacenters on loopback.

pub fn local(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// A DC to launch: its name, its servers' ports, and the WAN address each
/// other DC uses for it (its own QUIC ports unless a proxy sits in front).
pub struct Plan {
    pub name: &'static str,
    pub ports: Vec<(u16, u16)>,
    pub seen_at: Vec<std::net::SocketAddr>,
}

impl Plan {
    pub fn new(name: &'static str, servers: usize) -> Plan {
        let ports: Vec<(u16, u16)> = (0..servers).map(|_| free_ports()).collect();
        let seen_at = ports.iter().map(|p| local(p.1)).collect();
        Plan {
            name,
            ports,
            seen_at,
        }
    }
}

/// The `[federation]` section of `plan`'s servers: every other DC as a peer,
/// and `rules` (more TOML tables) appended.
pub fn section(plans: &[Plan], me: usize, server: usize, rules: &str) -> String {
    let mut s = format!(
        "[federation]\nforward_timeout_ms = 1500\nprobe_interval_ms = 200\nadvertise_wan_addr = \"{}\"\n[federation.peers]\n",
        plans[me].seen_at[server]
    );
    for (i, p) in plans.iter().enumerate() {
        if i != me {
            let seeds: Vec<String> = p.seen_at.iter().map(|a| format!("\"{a}\"")).collect();
            s.push_str(&format!("{} = [{}]\n", p.name, seeds.join(", ")));
        }
    }
    s.push_str(rules);
    s
}

pub async fn launch(plans: &[Plan], rules: &str) -> Vec<Cluster> {
    let mut out: Vec<Cluster> = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let cluster = Cluster::launch(Spec {
            datacenter: plan.name.into(),
            ports: plan.ports.clone(),
            tuning: RaftTuning::default(),
            ca_from: out.first().map(Cluster::tls_dir),
            extra: (0..plan.ports.len())
                .map(|s| section(plans, i, s, rules))
                .collect(),
        })
        .await;
        out.push(cluster);
    }
    out
}

/// Any request with an optional JSON body: (status, JSON answer or null).
pub async fn send(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .timeout(Duration::from_secs(10));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

// External scrapers for discovery and alert tests.

/// A running scraper (Prometheus or VictoriaMetrics' vmagent, from Debian's
/// packages), stopped on drop.
pub struct Scraper {
    child: std::process::Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Scraper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program` with its config; `args` gets the config path, the
/// data directory and the listen address.
pub fn start_scraper(
    program: &str,
    config: &str,
    args: impl Fn(&std::path::Path, &std::path::Path, &str) -> Vec<String>,
) -> Scraper {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scrape.yml");
    std::fs::write(&path, config).expect("write config");
    let listen = format!("127.0.0.1:{}", free_ports().0);
    let log = std::fs::File::create(dir.path().join("scraper.log")).expect("log");
    let child = std::process::Command::new(program)
        .args(args(&path, &dir.path().join("data"), &listen))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{program} (installed by .ci/run from Debian's packages): {e}"));
    Scraper {
        child,
        url: format!("http://{listen}"),
        _dir: dir,
    }
}

/// Starts Debian's Prometheus with `config`.
pub fn start_prometheus(config: &str) -> Scraper {
    start_scraper("prometheus", config, |config, data, listen| {
        vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", data.display()),
            format!("--web.listen-address={listen}"),
        ]
    })
}
