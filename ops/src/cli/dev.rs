//! `meridian dev`: a datacenter of three servers on loopback in one process,
//! with generated certificates and temporary data (or `--data-dir`).
//!
//! Ports: server i (0, 1, 2) listens for clients on `base + 10*i` and for
//! peers (QUIC) on `base + 10*i + 1`. With the default base 2379 the client
//! URLs are :2379, :2389 and :2399, the CLI's default endpoints.

use anyhow::{Context, Result};
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
    /// Datacenter name.
    #[arg(long, default_value = "dc1")]
    datacenter: String,
}

const NAMES: [&str; 3] = ["n1", "n2", "n3"];

pub async fn run(args: Args) -> Result<()> {
    if args.base_port > u16::MAX - 30 {
        anyhow::bail!(
            "--base-port {} leaves no room for three servers",
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
    let tls_dir = root.join("tls");
    if !tls_dir.join("ca.pem").exists() {
        let names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
        meridian_gateway::tls::generate(&tls_dir, &args.datacenter, &names)
            .context("generating certificates")?;
    }
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let client_port = |i: usize| args.base_port + 10 * i as u16;
    let members: BTreeMap<String, InitialMember> = NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let m = InitialMember {
                peer_addr: addr(client_port(i) + 1).to_string(),
                client_url: format!("http://{}", addr(client_port(i))),
            };
            (n.to_string(), m)
        })
        .collect();
    let mut running = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let config = NodeConfig {
            name: name.to_string(),
            datacenter: args.datacenter.clone(),
            data_dir: root.join(name),
            client_addr: addr(client_port(i)),
            peer_addr: addr(client_port(i) + 1),
            advertise_client_url: format!("http://{}", addr(client_port(i))),
            advertise_peer_addr: addr(client_port(i) + 1).to_string(),
            initial_members: members.clone(),
            tls: TlsPaths::in_dir(&tls_dir, name),
            raft: RaftSettings::default(),
            limits: Limits::default(),
            watch: Default::default(),
            lease: Default::default(),
        };
        running.push(crate::server::start(config).await?);
        say(format_args!(
            "dc={} name={} client=http://{}",
            args.datacenter,
            name,
            addr(client_port(i))
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
    super::agent::wait_for_signal().await;
    for r in running {
        r.stop().await;
    }
    drop(temp);
    Ok(())
}

/// Prints one line; a closed stdout (e.g. `meridian dev | head -3`) does not
/// stop the datacenter.
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(line);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}
