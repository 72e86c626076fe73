//! `meridian dev`: a federation of datacenters (`dc1`, `dc2`, ...; two by
//! default, `--dcs N`) of three servers each on loopback, in one process, with
//! generated certificates (one CA for the federation) and temporary data (or
//! `--data-dir`).
//!
//! Ports: server i (0, 1, 2) of datacenter d (0, 1, ...) listens for clients
//! on `base + 100*d + 10*i` and for peers and other datacenters (QUIC) on that
//! port + 1. With the default base 2379, dc1's client URLs are :2379, :2389
//! and :2399 (the CLI's default endpoints) and dc2's :2479, :2489 and :2499.
//!
//! With more than one datacenter, the rule `global` mirrors the prefix
//! `/global/` from dc1 to every other datacenter; dev prints it as
//! `rule=global prefix=/global/ source=dc1 targets=dc2,...`.

use anyhow::{Context, Result};
use meridian_federation::{FederationConfig, RuleSpec};
use meridian_gateway::tls::TlsPaths;
use meridian_node::config::{InitialMember, Limits, RaftSettings};
use meridian_node::NodeConfig;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Arguments of `dev`.
#[derive(clap::Args)]
pub struct Args {
    /// First port; see the module docs for the scheme.
    #[arg(long, default_value_t = 2379)]
    base_port: u16,
    /// Keep data here across runs instead of in a temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How many datacenters (named dc1, dc2, ...).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=9))]
    dcs: u16,
}

const NAMES: [&str; 3] = ["n1", "n2", "n3"];

pub async fn run(args: Args) -> Result<()> {
    let stop = super::agent::StopSignals::listen()?;
    let dcs = args.dcs as u32;
    if u32::from(args.base_port) + 100 * (dcs - 1) + 21 > u32::from(u16::MAX) {
        anyhow::bail!(
            "--base-port {} leaves no room for {dcs} datacenters of three servers",
            args.base_port
        );
    }
    let temp = match &args.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("meridian-dev-")
                .tempdir()
                .context("temporary directory")?,
        ),
    };
    let root = match (&args.data_dir, &temp) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => unreachable!("one of the two is set"),
    };
    let addr = |port: u32| SocketAddr::from(([127, 0, 0, 1], port as u16));
    let client_port = |d: u32, i: usize| u32::from(args.base_port) + 100 * d + 10 * i as u32;
    let dc_name = |d: u32| format!("dc{}", d + 1);
    let names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();

    // One CA for the federation; each datacenter's certificates in its own directory.
    let tls_root = root.join("tls");
    for d in 0..dcs {
        let dir = tls_root.join(dc_name(d));
        if dir.join("n1.pem").exists() {
            continue;
        }
        std::fs::create_dir_all(&dir).context("certificate directory")?;
        if d > 0 {
            for file in ["ca.pem", "ca-key.pem"] {
                std::fs::copy(tls_root.join(dc_name(0)).join(file), dir.join(file))
                    .context("sharing the federation's CA")?;
            }
        }
        meridian_gateway::tls::generate(&dir, &dc_name(d), &names)
            .context("generating certificates")?;
    }

    let mut rules = BTreeMap::new();
    if dcs > 1 {
        rules.insert(
            "global".to_string(),
            RuleSpec {
                prefix: "/global/".into(),
                source: dc_name(0),
                targets: (1..dcs).map(dc_name).collect(),
                forward_writes: false,
            },
        );
    }
    let mut running = Vec::new();
    for d in 0..dcs {
        let members: BTreeMap<String, InitialMember> = NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let m = InitialMember {
                    peer_addr: addr(client_port(d, i) + 1).to_string(),
                    client_url: format!("http://{}", addr(client_port(d, i))),
                };
                (n.to_string(), m)
            })
            .collect();
        let federation = FederationConfig {
            peers: (0..dcs)
                .filter(|other| *other != d)
                .map(|other| {
                    let seeds = (0..NAMES.len())
                        .map(|i| addr(client_port(other, i) + 1).to_string())
                        .collect();
                    (dc_name(other), seeds)
                })
                .collect(),
            replication: rules.clone(),
            ..FederationConfig::default()
        };
        for (i, name) in NAMES.iter().enumerate() {
            let config = NodeConfig {
                name: name.to_string(),
                datacenter: dc_name(d),
                data_dir: root.join(dc_name(d)).join(name),
                client_addr: addr(client_port(d, i)),
                peer_addr: addr(client_port(d, i) + 1),
                advertise_client_url: format!("http://{}", addr(client_port(d, i))),
                advertise_peer_addr: addr(client_port(d, i) + 1).to_string(),
                initial_members: members.clone(),
                tls: TlsPaths::in_dir(&tls_root.join(dc_name(d)), name),
                raft: RaftSettings::default(),
                limits: Limits::default(),
                watch: Default::default(),
                lease: Default::default(),
                compaction: Default::default(),
                join_existing: false,
                advertise_feature_level: None,
            };
            running.push(crate::server::start(config, federation.clone()).await?);
            say(format_args!(
                "dc={} name={} client=http://{}",
                dc_name(d),
                name,
                addr(client_port(d, i))
            ));
        }
    }
    for (name, rule) in &rules {
        say(format_args!(
            "rule={name} prefix={} source={} targets={}",
            rule.prefix,
            rule.source,
            rule.targets.join(",")
        ));
    }
    say(format_args!(
        "data: {}{}",
        root.display(),
        if temp.is_some() {
            " (removed on exit)"
        } else {
            ""
        }
    ));
    stop.wait().await;
    // All at once: one by one, each waited for its QUIC connections to
    // drain while the servers still running kept calling it.
    let stops: Vec<_> = running
        .into_iter()
        .map(|r| tokio::spawn(r.stop()))
        .collect();
    for stop in stops {
        let _ = stop.await;
    }
    drop(temp);
    Ok(())
}

/// Prints one line; a closed stdout (e.g. `meridian dev | head -3`) does not
/// stop the federation.
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(line);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}
