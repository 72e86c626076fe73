//! `meridian member list | add | promote | remove` and `meridian status`.

use super::client::{path_segment, Endpoints};
use anyhow::Result;
use serde_json::{json, Value};

/// Arguments of `member`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    endpoints: Endpoints,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List the members: id, name, peer address, client URL, role, then
    /// version, applied index and lag behind the leader's log.
    List,
    /// Add a server (started with `initial_cluster_state = "existing"`) as
    /// a learner; it catches up by log or snapshot.
    Add {
        /// Its name (also the name in its certificate).
        name: String,
        /// Its peer (QUIC) address, host:port.
        #[arg(long)]
        peer_addr: String,
        /// Its client URL.
        #[arg(long)]
        client_url: String,
        /// Add it as a learner (the only way in; promote it once it has caught up).
        #[arg(long)]
        learner: bool,
    },
    /// Make a learner a voter (refused while it is far behind).
    Promote {
        /// Its name.
        name: String,
    },
    /// Remove a member (refused if the voters left would not make a quorum).
    Remove {
        /// Its name.
        name: String,
    },
}

fn member_line(m: &Value) -> String {
    format!(
        "{} {} role={} lag={}",
        s(m, "name"),
        s(m, "id"),
        s(m, "role"),
        m["lag"]
    )
}

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

pub async fn run(args: Args) -> Result<()> {
    match args.command {
        Command::List => {
            let resp = args
                .endpoints
                .post("/v3/cluster/member/list", &json!({}))
                .await?;
            let leader_view = match args.endpoints.leader().await {
                Ok(l) => l.get("/v1/members").await.ok(),
                Err(_) => None,
            };
            for m in resp
                .get("members")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let client = m
                    .get("clientURLs")
                    .and_then(Value::as_array)
                    .and_then(|a| a.first())
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let peer = m
                    .get("peerURLs")
                    .and_then(Value::as_array)
                    .and_then(|a| a.first())
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let role = if m.get("isLearner").and_then(Value::as_bool).unwrap_or(false) {
                    "learner"
                } else {
                    "voter"
                };
                // The leader's view of its log, and the member's own status.
                let lag = leader_view
                    .as_ref()
                    .and_then(|v| {
                        v["members"]
                            .as_array()?
                            .iter()
                            .find(|x| s(x, "name") == s(m, "name"))
                            .map(|x| x["lag"].to_string())
                    })
                    .unwrap_or_else(|| "?".into());
                let own = Endpoints {
                    endpoints: vec![client.to_string()],
                    dc: None,
                };
                let (version, applied) = match own.get("/v1/status").await {
                    Ok(st) => (s(&st, "version"), st["raft_applied_index"].to_string()),
                    Err(_) => ("unreachable".to_string(), "?".to_string()),
                };
                println!(
                    "{}, {}, {}, {}, {}, {}, {}, {}",
                    s(m, "ID"),
                    s(m, "name"),
                    peer,
                    client,
                    role,
                    version,
                    applied,
                    lag
                );
            }
        }
        Command::Add {
            name,
            peer_addr,
            client_url,
            learner,
        } => {
            if !learner {
                anyhow::bail!("a new server joins as a learner: add --learner, then `meridian member promote {name}` once it has caught up");
            }
            let v = args.endpoints.leader()
                .await?
                .post(
                    "/v1/members",
                    &json!({"name": name, "peer_addr": peer_addr, "client_url": client_url, "learner": true}),
                )
                .await?;
            println!("added {}", member_line(&v));
        }
        Command::Promote { name } => {
            let v = args
                .endpoints
                .leader()
                .await?
                .post(
                    &format!("/v1/members/{}/promote", path_segment(&name)?),
                    &json!({}),
                )
                .await?;
            println!("promoted {}", member_line(&v));
        }
        Command::Remove { name } => {
            args.endpoints
                .leader()
                .await?
                .delete(&format!("/v1/members/{}", path_segment(&name)?))
                .await?;
            println!("removed {name}");
        }
    }
    Ok(())
}

/// `meridian status`: one line per endpoint.
pub async fn status(endpoints: Endpoints) -> Result<()> {
    let mut failures = 0;
    for endpoint in &endpoints.endpoints {
        let one = Endpoints {
            endpoints: vec![endpoint.clone()],
            dc: endpoints.dc.clone(),
        };
        match one.post("/v3/maintenance/status", &json!({})).await {
            Ok(v) => {
                let header = v.get("header").cloned().unwrap_or_default();
                let me = s(&header, "member_id");
                let leader = s(&v, "leader");
                let info = v.get("meridian").cloned().unwrap_or_default();
                let levels = one.get("/v1/status").await.unwrap_or_default();
                println!(
                    "{endpoint}: dc={} name={} version={} feature_level={} cluster_level={} leader={} revision={} raft_term={} raft_index={} db_size={}",
                    s(&info, "datacenter"),
                    s(&info, "name"),
                    s(&info, "version"),
                    levels["feature_level"],
                    levels["cluster_level"],
                    if me == leader { "self".to_string() } else { leader },
                    s(&header, "revision"),
                    s(&header, "raft_term"),
                    s(&v, "raftIndex"),
                    s(&v, "dbSize"),
                );
            }
            Err(e) => {
                failures += 1;
                println!("{endpoint}: unreachable: {e}");
            }
        }
    }
    if failures == endpoints.endpoints.len() {
        anyhow::bail!("no endpoint answered");
    }
    Ok(())
}
