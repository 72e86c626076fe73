//! `meridian-load`: the load generator of `bench/run`. It speaks etcd's v3
//! JSON gateway, so the same requests measure Meridian and etcd alike.
//!
//!     meridian-load run --system meridian --endpoints URL,... --workload put --clients 64
//!     meridian-load report bench/results/run.jsonl --markdown out.md --json out.json

mod conn;
mod cpu;
mod driver;
mod fanout;
mod floor;
mod leases;
mod mirror;
mod report;
mod workload;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "meridian-load",
    about = "Load generator for Meridian and etcd (v3 JSON gateway)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs one workload and appends its measurement (one JSON line) to --out.
    Run {
        /// Which system this is, as recorded ("meridian" or "etcd").
        #[arg(long)]
        system: String,
        /// Client URLs; clients are spread over them round-robin.
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        #[arg(long, value_enum)]
        workload: workload::Workload,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Seconds of load before measuring.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Seconds measured.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Open loop at this many requests per second in all; closed loop if absent.
        #[arg(long)]
        rate: Option<f64>,
        /// Hot keys (txn-cas) or prefix size (range-prefix*).
        #[arg(long, default_value_t = 100)]
        keys: usize,
        #[arg(long, default_value_t = 256)]
        value_bytes: usize,
        /// Prepare the keyspace first (the keys the workload reads or swaps).
        #[arg(long)]
        setup: bool,
        /// The servers' process ids: their CPU time over the measured period
        /// is reported per operation (`server_cpu_us_per_op`).
        #[arg(long, value_delimiter = ',')]
        server_pids: Vec<u32>,
        /// JSON-lines file the measurement is appended to; stdout if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Writes --keys keys under --prefix at --source and appends the time
    /// until --target holds them all (`mirror_<N>_keys_s`) to --out.
    Mirror {
        /// Which system this is, as recorded.
        #[arg(long)]
        system: String,
        /// A client URL of the source.
        #[arg(long)]
        source: String,
        /// A client URL of the target.
        #[arg(long)]
        target: String,
        #[arg(long, default_value = "bench/mirror/")]
        prefix: String,
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 256)]
        value_bytes: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Watch fan-out: --watchers watches on one prefix, one writer at
    /// --rate puts/s for --duration s; appends delivery latency p50/p99/max
    /// and the share of events delivered to --out.
    Fanout {
        #[arg(long)]
        system: String,
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value = "bench/fanout/")]
        prefix: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Leases at scale: grants --leases leases with --ttl, keeps all alive
    /// from --clients clients for --duration s; appends grant rate,
    /// keep-alive throughput and latency, and leases alive at the end.
    Leases {
        #[arg(long)]
        system: String,
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        #[arg(long, default_value_t = 10_000)]
        leases: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 60)]
        ttl: i64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Prints the fsync floor of --dir: the median milliseconds of a 4 KiB
    /// write plus fsync, over --count of them.
    FsyncFloor {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// Summarises a JSON-lines file of measurements as Markdown and JSON.
    Report {
        records: PathBuf,
        #[arg(long)]
        markdown: PathBuf,
        #[arg(long)]
        json: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Run {
            system,
            endpoints,
            workload,
            clients,
            warmup,
            duration,
            rate,
            keys,
            value_bytes,
            setup,
            server_pids,
            out,
        } => {
            let plan = driver::Plan {
                endpoints,
                workload,
                clients,
                warmup: Duration::from_secs_f64(warmup),
                duration: Duration::from_secs_f64(duration),
                rate,
                keys,
                value_bytes,
                server_pids,
            };
            if setup {
                driver::setup(&plan).await?;
            }
            let m = driver::run(&plan).await?;
            let mut record = serde_json::to_value(&m)?;
            record["system"] = serde_json::json!(system);
            let line = format!("{record}\n");
            let cpu = [
                ("servers'", m.server_cpu_us_per_op),
                ("client's", m.client_cpu_us_per_op),
            ]
            .iter()
            .filter_map(|(who, us)| us.map(|us| format!(", {who} CPU {us:.0} us/op")))
            .collect::<String>();
            eprintln!(
                "{system:>8} {workload:?} clients={clients}: {:.0} ops/s p50 {:.2} ms p99 {:.2} ms errors {}{cpu}",
                m.throughput, m.p50_ms, m.p99_ms, m.errors
            );
            match out {
                Some(path) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("open {}", path.display()))?
                    .write_all(line.as_bytes())?,
                None => print!("{line}"),
            }
        }
        Cmd::FsyncFloor { dir, count } => {
            println!("{:.3}", floor::measure(&dir, count)?);
        }
        Cmd::Mirror {
            system,
            source,
            target,
            prefix,
            keys,
            clients,
            value_bytes,
            out,
        } => {
            let (after_last, writes) =
                mirror::run(&source, &target, &prefix, keys, clients, value_bytes).await?;
            eprintln!(
                "{system:>8} mirror of {keys} keys: writes took {writes:.2} s, target complete {after_last:.3} s after the last write"
            );
            append(
                &out,
                &system,
                &[(format!("mirror_{keys}_keys_s_after_last_write"), after_last)],
            )?;
        }
        Cmd::Fanout {
            system,
            endpoints,
            watchers,
            rate,
            duration,
            prefix,
            out,
        } => {
            let f = fanout::run(
                &endpoints,
                watchers,
                rate,
                Duration::from_secs_f64(duration),
                &prefix,
            )
            .await?;
            eprintln!(
                "{system:>8} fan-out {watchers} watchers at {rate}/s: p50 {:.2} ms p99 {:.2} ms max {:.2} ms, {} of {} delivered",
                f.p50_ms, f.p99_ms, f.max_ms, f.delivered, f.expected
            );
            append(
                &out,
                &system,
                &[
                    (format!("watch_fanout_{watchers}_p50_ms"), f.p50_ms),
                    (format!("watch_fanout_{watchers}_p99_ms"), f.p99_ms),
                    (format!("watch_fanout_{watchers}_max_ms"), f.max_ms),
                    (
                        format!("watch_fanout_{watchers}_delivered_share"),
                        f.delivered as f64 / f.expected.max(1) as f64,
                    ),
                ],
            )?;
        }
        Cmd::Leases {
            system,
            endpoints,
            leases,
            clients,
            ttl,
            duration,
            out,
        } => {
            let l = leases::run(
                &endpoints,
                leases,
                clients,
                ttl,
                Duration::from_secs_f64(duration),
            )
            .await?;
            eprintln!(
                "{system:>8} {leases} leases: {:.0} grants/s, {:.0} keep-alives/s p50 {:.2} ms p99 {:.2} ms, {} alive, {} errors",
                l.grants_per_s, l.keepalives_per_s, l.p50_ms, l.p99_ms, l.alive, l.errors
            );
            append(
                &out,
                &system,
                &[
                    (format!("leases_{leases}_grants_per_s"), l.grants_per_s),
                    (
                        format!("leases_{leases}_keepalives_per_s"),
                        l.keepalives_per_s,
                    ),
                    (format!("leases_{leases}_keepalive_p50_ms"), l.p50_ms),
                    (format!("leases_{leases}_keepalive_p99_ms"), l.p99_ms),
                    (format!("leases_{leases}_alive_at_end"), l.alive as f64),
                    (format!("leases_{leases}_keepalive_errors"), l.errors as f64),
                ],
            )?;
        }
        Cmd::Report {
            records,
            markdown,
            json,
        } => {
            let text = std::fs::read_to_string(&records)
                .with_context(|| format!("read {}", records.display()))?;
            let (md, js) = report::report(&text)?;
            std::fs::write(&markdown, md)?;
            std::fs::write(&json, serde_json::to_string_pretty(&js)?)?;
        }
    }
    Ok(())
}

/// Appends one `{"system","metric","value"}` record per figure to `out`.
fn append(out: &PathBuf, system: &str, figures: &[(String, f64)]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("open {}", out.display()))?;
    for (metric, value) in figures {
        let line = serde_json::json!({"system": system, "metric": metric, "value": value});
        file.write_all(format!("{line}\n").as_bytes())?;
    }
    Ok(())
}
