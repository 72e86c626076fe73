//! `meridian`: the server (`agent`), a local datacenter for newcomers (`dev`),
//! and the command-line client.

mod cli;
mod config;
mod server;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "Meridian: a multi-datacenter control plane with etcd's API"
)]
struct Args {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Threads that serve clients, peers and Raft (default: one per core).
    /// Fewer than cores suits servers that share a machine's cores.
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server from a configuration file.
    Agent(cli::agent::Args),
    /// Run a local federation on loopback: datacenters of three servers each.
    Dev(cli::dev::Args),
    /// TLS material for the peer transport.
    Tls(cli::tls::Args),
    /// Key-value operations against a running datacenter.
    Kv(cli::kv::Args),
    /// Hold a lock (etcd's recipe), optionally while a command runs.
    Lock(cli::coord::LockArgs),
    /// Campaign in an election, or --listen to its leader changes.
    Elect(cli::coord::ElectArgs),
    /// Datacenter membership.
    Member(cli::member::Args),
    /// Status of the servers.
    Status(cli::client::Endpoints),
    /// The federation: datacenters and their WAN links.
    Federation(cli::federation::Args),
    /// The service catalog: register, deregister, list, health, report.
    Service(cli::service::Args),
    /// Healthy instances of a service, failing over to other datacenters.
    Lookup(cli::service::LookupArgs),
    /// Backups: save from a server, check, restore into a new datacenter.
    Snapshot(cli::snapshot::Args),
    /// Remove history below a revision, or all but the latest N revisions.
    Compact(cli::compact::Args),
    /// Rewrite a stopped server's database files compactly.
    Defrag(cli::defrag::Args),
    /// Drain a server before stopping it (or --undo).
    Drain(cli::drain::DrainArgs),
    /// Leadership: `leader transfer` moves it to another voter.
    Leader(cli::drain::LeaderArgs),
    /// Used by the server itself: installs a Raft snapshot into a state
    /// directory in a process of its own (ADR 0018).
    #[command(hide = true, name = meridian_node::raft::INSTALL_SUBCOMMAND)]
    InstallState(cli::install::Args),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,quinn=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() {
    let args = Args::parse();
    init_logging(args.log_format);
    // A server installs Raft snapshots through this same executable (even if
    // the file on disk has been replaced by an upgrade since it started).
    meridian_node::raft::install_in_child_processes("/proc/self/exe".into());
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = args.worker_threads {
        builder.worker_threads(usize::from(n));
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        match args.command {
            Command::Agent(a) => cli::agent::run(a).await,
            Command::Dev(a) => cli::dev::run(a).await,
            Command::Tls(a) => cli::tls::run(a),
            Command::Kv(a) => cli::kv::run(a).await,
            Command::Lock(a) => cli::coord::lock(a).await,
            Command::Elect(a) => cli::coord::elect(a).await,
            Command::Member(a) => cli::member::run(a).await,
            Command::Status(a) => cli::member::status(a).await,
            Command::Federation(a) => cli::federation::run(a).await,
            Command::Service(a) => cli::service::run(a).await,
            Command::Lookup(a) => cli::service::lookup(a).await,
            Command::Snapshot(a) => cli::snapshot::run(a).await,
            Command::Compact(a) => cli::compact::run(a).await,
            Command::Defrag(a) => cli::defrag::run(a),
            Command::Drain(a) => cli::drain::drain(a).await,
            Command::Leader(a) => cli::drain::leader(a).await,
            Command::InstallState(a) => cli::install::run(a),
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
