//! `meridian lock` and `meridian elect`: etcd's lock and election recipes
//! from the command line, each held by a lease this process keeps alive.

use super::client::Endpoints;
use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `lock`.
#[derive(clap::Args)]
pub struct LockArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// The lock's name.
    name: String,
    /// TTL of the lease that holds the lock, in seconds.
    #[arg(long, default_value_t = 10)]
    ttl: i64,
    /// Command to run while holding the lock; without one, hold until Ctrl-C.
    /// It gets MERIDIAN_LOCK_KEY and MERIDIAN_LOCK_REVISION (the fencing token).
    #[arg(last = true)]
    command: Vec<String>,
}

/// Arguments of `elect`.
#[derive(clap::Args)]
pub struct ElectArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// The election's name.
    name: String,
    /// The value to announce once elected.
    #[arg(required_unless_present = "listen")]
    value: Option<String>,
    /// Print the leader's value now and at every change, instead of campaigning.
    #[arg(long)]
    listen: bool,
    /// TTL of the lease that holds the leadership, in seconds.
    #[arg(long, default_value_t = 10)]
    ttl: i64,
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// A lease kept alive by a background task until dropped.
struct Session {
    id: i64,
    lost: Arc<AtomicBool>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Session {
    async fn start(ep: &Endpoints, ttl: i64) -> Result<Session> {
        let v = ep
            .post("/v3/lease/grant", &json!({ "TTL": ttl.to_string() }))
            .await?;
        let id: i64 = v["ID"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("lease grant answered without an ID"))?;
        let granted: i64 = v["TTL"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(ttl);
        let lost = Arc::new(AtomicBool::new(false));
        let every = Duration::from_millis((granted.max(1) as u64 * 1000) / 3);
        let (ep2, lost2) = (ep.clone(), lost.clone());
        let keeper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                // An answer without a TTL means the lease is gone (etcd
                // omits a zero TTL); no answer at all is retried.
                let alive = ep2
                    .post("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))
                    .await
                    .ok()
                    .map(|v| v["result"]["TTL"].as_str().is_some_and(|s| s != "0"));
                if alive == Some(false) {
                    lost2.store(true, Ordering::SeqCst);
                    return;
                }
            }
        });
        Ok(Session { id, lost, keeper })
    }

    async fn end(self, ep: &Endpoints) {
        self.keeper.abort();
        let _ = ep
            .post("/v3/lease/revoke", &json!({ "ID": self.id.to_string() }))
            .await;
    }
}

/// Waits for Ctrl-C or for the session's lease to be lost.
async fn hold(session: &Session) -> Result<()> {
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => return r.context("waiting for Ctrl-C"),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if session.lost.load(Ordering::SeqCst) {
                    bail!("the lease expired: the lock or leadership is lost");
                }
            }
        }
    }
}

pub async fn lock(args: LockArgs) -> Result<()> {
    let ep = &args.endpoints;
    let session = Session::start(ep, args.ttl).await?;
    let result = lock_held(ep, &args, &session).await;
    session.end(ep).await;
    let code = result?;
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

async fn lock_held(ep: &Endpoints, args: &LockArgs, session: &Session) -> Result<i32> {
    let v = ep
        .post(
            "/v3/lock/lock",
            &json!({ "name": b64(args.name.as_bytes()), "lease": session.id.to_string() }),
        )
        .await?;
    let key = v["key"]
        .as_str()
        .context("lock answered without a key")?
        .to_string();
    let kv = ep.post("/v3/kv/range", &json!({ "key": key })).await?;
    let revision = kv["kvs"][0]["create_revision"]
        .as_str()
        .context("the lock key vanished")?
        .to_string();
    let key_text = String::from_utf8_lossy(&STANDARD.decode(&key)?).into_owned();
    let code = if args.command.is_empty() {
        println!("{key_text}");
        println!("revision={revision}");
        hold(session).await?;
        0
    } else {
        let mut child = tokio::process::Command::new(&args.command[0])
            .args(&args.command[1..])
            .env("MERIDIAN_LOCK_KEY", &key_text)
            .env("MERIDIAN_LOCK_REVISION", &revision)
            .spawn()
            .with_context(|| format!("cannot run {}", args.command[0]))?;
        loop {
            tokio::select! {
                status = child.wait() => break status?.code().unwrap_or(1),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if session.lost.load(Ordering::SeqCst) {
                        let _ = child.kill().await;
                        bail!("the lease expired while {} ran: the lock is lost", args.command[0]);
                    }
                }
            }
        }
    };
    ep.post("/v3/lock/unlock", &json!({ "key": key })).await?;
    Ok(code)
}

pub async fn elect(args: ElectArgs) -> Result<()> {
    let ep = &args.endpoints;
    let name = b64(args.name.as_bytes());
    if args.listen {
        return listen(ep, &name).await;
    }
    let value = args.value.clone().unwrap_or_default();
    let session = Session::start(ep, args.ttl).await?;
    let result = async {
        let v = ep
            .post(
                "/v3/election/campaign",
                &json!({ "name": name, "lease": session.id.to_string(), "value": b64(value.as_bytes()) }),
            )
            .await?;
        let leader = v["leader"].clone();
        println!(
            "elected {} value={} revision={}",
            args.name,
            value,
            leader["rev"].as_str().unwrap_or("?")
        );
        hold(&session).await?;
        ep.post("/v3/election/resign", &json!({ "leader": leader }))
            .await?;
        anyhow::Ok(())
    }
    .await;
    session.end(ep).await;
    result
}

/// Prints the leader's value now and at every change (one line each).
async fn listen(ep: &Endpoints, name: &str) -> Result<()> {
    let client = ep.client()?;
    let mut last_error = String::new();
    for endpoint in &ep.endpoints {
        let url = format!("{}/v3/election/observe", endpoint.trim_end_matches('/'));
        let mut r = match client
            .post(&url)
            .json(&json!({ "name": name }))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                last_error = format!("{url}: HTTP {}", r.status().as_u16());
                continue;
            }
            Err(e) => {
                last_error = format!("{url}: {e}");
                continue;
            }
        };
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = r.chunk().await.ok().flatten() {
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let v: Value = serde_json::from_slice(&line)?;
                let kv = &v["result"]["kv"];
                let value = kv["value"]
                    .as_str()
                    .and_then(|s| STANDARD.decode(s).ok())
                    .unwrap_or_default();
                println!(
                    "leader={} revision={}",
                    String::from_utf8_lossy(&value),
                    kv["create_revision"].as_str().unwrap_or("?")
                );
            }
        }
        last_error = format!("{url}: stream ended");
    }
    bail!("observing stopped: {last_error}")
}
