//! `meridian service` (register, deregister, list, health, report) and
//! `meridian lookup`: the service catalog from the command line.

use super::client::{path_segment, Endpoints};
use super::federation::comma_joined;
use anyhow::{bail, Result};
use serde_json::{json, Map, Value};

/// What `service register` takes.
#[derive(clap::Args)]
struct Register {
    /// The service's name.
    service: String,
    /// The instance's id (default: the service's name).
    #[arg(long)]
    id: Option<String>,
    /// Host name or IP address clients connect to.
    #[arg(long)]
    address: String,
    /// Port clients connect to.
    #[arg(long)]
    port: i64,
    /// A tag (repeat for more).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Metadata as KEY=VALUE (repeat for more).
    #[arg(long = "meta")]
    meta: Vec<String>,
    /// Bind the instance to a new lease of this many seconds (keep it
    /// alive with `meridian` lease keep-alives or any etcd client).
    #[arg(long, conflicts_with = "lease")]
    ttl: Option<i64>,
    /// Bind the instance to an existing lease.
    #[arg(long)]
    lease: Option<i64>,
    /// HTTP check: the URL the servers GET (2xx is passing).
    #[arg(long, group = "check")]
    check_http: Option<String>,
    /// TCP check: host:port the servers connect to.
    #[arg(long, group = "check")]
    check_tcp: Option<String>,
    /// TTL check: the instance reports within this long (e.g. 15s).
    #[arg(long, group = "check")]
    check_ttl: Option<String>,
    /// Time between probes (e.g. 10s).
    #[arg(long)]
    interval: Option<String>,
    /// Probe timeout (e.g. 2s).
    #[arg(long)]
    timeout: Option<String>,
    /// Remove the instance after it has been critical this long.
    #[arg(long)]
    deregister_after: Option<String>,
}

/// Arguments of `service`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    endpoints: Endpoints,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Registers (or re-registers) an instance of a service.
    Register(Box<Register>),
    /// Removes an instance.
    Deregister {
        /// The service's name.
        service: String,
        /// The instance's id.
        id: String,
    },
    /// One line per service: its name and tags.
    List,
    /// One line per instance of a service: address, status, since, output.
    Health {
        /// The service's name.
        service: String,
        /// Only passing instances.
        #[arg(long)]
        passing: bool,
    },
    /// Reports a TTL check's status.
    Report {
        /// The service's name.
        service: String,
        /// The instance's id.
        id: String,
        /// passing, warning or critical.
        #[arg(long, default_value = "passing")]
        status: String,
        /// A note kept with a status change.
        #[arg(long, default_value = "")]
        output: String,
    },
}

pub async fn run(args: Args) -> Result<()> {
    let e = &args.endpoints;
    match args.command {
        Command::Register(r) => {
            let Register {
                service,
                id,
                address,
                port,
                tags,
                meta,
                ttl,
                lease,
                check_http,
                check_tcp,
                check_ttl,
                interval,
                timeout,
                deregister_after,
            } = *r;
            let mut body =
                json!({ "service": service, "address": address, "port": port, "tags": tags });
            let mut metadata = Map::new();
            for pair in meta {
                let Some((k, v)) = pair.split_once('=') else {
                    bail!("--meta {pair:?} is not KEY=VALUE");
                };
                metadata.insert(k.to_string(), json!(v));
            }
            body["meta"] = Value::Object(metadata);
            if let Some(id) = id {
                body["id"] = json!(id);
            }
            if let Some(ttl) = ttl {
                body["ttl"] = json!(ttl);
            }
            if let Some(lease) = lease {
                body["lease"] = json!(lease.to_string());
            }
            let mut check = Map::new();
            for (k, v) in [
                ("http", check_http),
                ("tcp", check_tcp),
                ("ttl", check_ttl),
                ("interval", interval),
                ("timeout", timeout),
                ("deregister_critical_after", deregister_after),
            ] {
                if let Some(v) = v {
                    check.insert(k.to_string(), json!(v));
                }
            }
            if !check.is_empty() {
                body["check"] = Value::Object(check);
            }
            let v = e.put("/v1/catalog/register", &body).await?;
            let lease = v["lease"]
                .as_str()
                .map_or(String::new(), |l| format!(" lease={l}"));
            println!(
                "registered service={} id={}{lease}",
                v["service"].as_str().unwrap_or(""),
                v["id"].as_str().unwrap_or("")
            );
        }
        Command::Deregister { service, id } => {
            e.put(
                "/v1/catalog/deregister",
                &json!({ "service": service, "id": id }),
            )
            .await?;
            println!("deregistered service={service} id={id}");
        }
        Command::List => {
            let v = e.get("/v1/catalog/services").await?;
            for (name, tags) in v.as_object().into_iter().flatten() {
                println!("{name} tags={}", comma_joined(tags));
            }
        }
        Command::Health { service, passing } => {
            path_segment(&service)?;
            let path = format!(
                "/v1/health/service/{service}{}",
                if passing { "?passing" } else { "" }
            );
            let v = e.get(&path).await?;
            for entry in v.as_array().into_iter().flatten() {
                let s = &entry["Service"];
                println!(
                    "{} {}:{} status={} since_ms={} {}",
                    s["ID"].as_str().unwrap_or(""),
                    s["Address"].as_str().unwrap_or(""),
                    s["Port"],
                    entry["Status"].as_str().unwrap_or(""),
                    entry["StatusSince"],
                    entry["Checks"][0]["Output"].as_str().unwrap_or("")
                );
            }
        }
        Command::Report {
            service,
            id,
            status,
            output,
        } => {
            path_segment(&service)?;
            path_segment(&id)?;
            let v = e
                .put(
                    &format!("/v1/health/check/{service}/{id}"),
                    &json!({ "status": status, "output": output }),
                )
                .await?;
            println!(
                "service={service} id={id} status={}",
                v["status"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// Arguments of `lookup`.
#[derive(clap::Args)]
pub struct LookupArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// The service's name.
    service: String,
    /// When this datacenter has no healthy instance: `nearest:N` (by WAN
    /// round-trip time) or datacenters in order, comma-separated.
    #[arg(long)]
    failover: Option<String>,
    /// Only instances with this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Order instances by closeness of their address to this IP address.
    #[arg(long)]
    near: Option<String>,
    /// Most milliseconds each datacenter may take.
    #[arg(long)]
    timeout_ms: Option<u64>,
}

/// Prints where the answer came from, then one line per instance.
pub async fn lookup(args: LookupArgs) -> Result<()> {
    path_segment(&args.service)?;
    let mut query = Vec::new();
    for (k, v) in [
        ("failover", args.failover),
        ("tag", args.tag),
        ("near", args.near),
        ("timeout_ms", args.timeout_ms.map(|t| t.to_string())),
    ] {
        if let Some(v) = v {
            query.push(format!("{k}={}", encode(&v)));
        }
    }
    let mut path = format!("/v1/lookup/{}", args.service);
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let v = args.endpoints.get(&path).await?;
    println!(
        "service={} datacenter={} failover={} datacenters_tried={}",
        v["service"].as_str().unwrap_or(""),
        v["datacenter"].as_str().unwrap_or(""),
        v["failover"],
        v["datacenters_tried"]
    );
    for i in v["instances"].as_array().into_iter().flatten() {
        println!(
            "{} {}:{} tags={}",
            i["id"].as_str().unwrap_or(""),
            i["address"].as_str().unwrap_or(""),
            i["port"],
            comma_joined(&i["tags"])
        );
    }
    Ok(())
}

/// Escapes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':' | b',') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
