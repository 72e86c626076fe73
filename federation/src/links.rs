//! One link per remote datacenter. A keeper task per datacenter says hello
//! to one of its servers every probe interval: that checks the link, learns
//! the datacenter's current servers (so the configured seeds may go stale)
//! and reads quinn's RTT estimate. When the server it talks to fails, the
//! keeper tries the others (current, then known, then seeds), backing off
//! while none answers.

use crate::config::FederationConfig;
use crate::metrics::FederationMetrics;
use crate::wire::{self, Hello, WanRequest, WanResponse};
use meridian_gateway::{Endpoint, FrameReader, FrameWriter, ALPN_WAN};
use meridian_node::kv::mirror::MirrorRule;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Why a remote datacenter could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// The datacenter is not in the configuration.
    #[error("unknown datacenter {dc:?}; known: {known}")]
    Unknown {
        /// The name asked for.
        dc: String,
        /// The datacenters this server knows, comma-separated.
        known: String,
    },
    /// No server of the datacenter answered in time.
    #[error("datacenter {dc:?} is unreachable: {cause}")]
    Unreachable {
        /// The datacenter.
        dc: String,
        /// What the last attempt ran into.
        cause: String,
    },
}

/// A link as `/v1/datacenters` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    /// The remote datacenter.
    pub name: String,
    /// "up" or "down".
    pub state: &'static str,
    /// When the link entered that state (seconds since the Unix epoch).
    pub since: u64,
    /// Smoothed RTT in milliseconds while up.
    pub rtt_ms: Option<f64>,
    /// The server the link talks to.
    pub connected_to: Option<String>,
    /// The datacenter's servers, as it last said (or the seeds, before that).
    pub servers: Vec<String>,
    /// Why the link is down.
    pub error: Option<String>,
}

struct Link {
    seeds: Vec<String>,
    known: Vec<String>,
    current: Option<SocketAddr>,
    up: bool,
    since: SystemTime,
    error: Option<String>,
    rtt: Option<Duration>,
}

/// What a hello tells about this datacenter, and what is done with what a
/// remote one tells.
pub trait LocalSide: Send + Sync {
    /// This datacenter's current WAN addresses.
    fn servers(&self) -> Vec<String>;
    /// The replication rules this datacenter knows.
    fn rules(&self) -> Vec<MirrorRule>;
    /// A remote datacenter told its rules (in a hello or its answer).
    fn heard(&self, dc: &str, rules: Vec<MirrorRule>);
}

/// Every remote datacenter's link.
pub struct Links {
    own: String,
    endpoint: Endpoint,
    local: Arc<dyn LocalSide>,
    links: BTreeMap<String, Mutex<Link>>,
    probe: Duration,
    connect_timeout: Duration,
    metrics: FederationMetrics,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Links {
    /// Links to every datacenter of `config`, not yet kept (see [`Links::start`]).
    pub(crate) fn new(
        own: String,
        endpoint: Endpoint,
        config: &FederationConfig,
        local: Arc<dyn LocalSide>,
        metrics: FederationMetrics,
    ) -> Arc<Links> {
        let links = config
            .peers
            .iter()
            .map(|(dc, seeds)| {
                metrics.link_up.with_label_values(&[dc]).set(0);
                let link = Link {
                    seeds: seeds.clone(),
                    known: Vec::new(),
                    current: None,
                    up: false,
                    since: SystemTime::now(),
                    error: Some("not connected yet".into()),
                    rtt: None,
                };
                (dc.clone(), Mutex::new(link))
            })
            .collect();
        Arc::new(Links {
            own,
            endpoint,
            local,
            links,
            probe: config.probe_interval,
            connect_timeout: config.forward_timeout,
            metrics,
            stop: tokio::sync::watch::channel(false).0,
        })
    }

    /// Starts one keeper task per remote datacenter.
    pub(crate) fn start(self: &Arc<Self>) {
        for dc in self.links.keys() {
            let links = self.clone();
            let dc = dc.clone();
            tokio::spawn(async move { links.keep(dc).await });
        }
    }

    /// Stops the keepers.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// This datacenter's WAN addresses, as hellos tell them.
    pub fn local_servers(&self) -> Vec<String> {
        self.local.servers()
    }

    /// The hello this datacenter says.
    pub(crate) fn own_hello(&self) -> Hello {
        Hello {
            datacenter: self.own.clone(),
            servers: self.local.servers(),
            rules: self.local.rules(),
        }
    }

    /// Takes in what a remote datacenter's hello told.
    pub(crate) fn heard(&self, hello: Hello) {
        if !hello.rules.is_empty() {
            self.local.heard(&hello.datacenter, hello.rules);
        }
    }

    /// The names of the remote datacenters.
    pub fn names(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }

    /// Whether `dc` is a configured remote datacenter.
    pub fn knows(&self, dc: &str) -> bool {
        self.links.contains_key(dc)
    }

    /// Every link's state.
    pub fn status(&self) -> Vec<LinkStatus> {
        self.links
            .iter()
            .filter_map(|(name, link)| {
                let l = link.lock().ok()?;
                Some(LinkStatus {
                    name: name.clone(),
                    state: if l.up { "up" } else { "down" },
                    since: l
                        .since
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    rtt_ms: l.rtt.filter(|_| l.up).map(|d| d.as_secs_f64() * 1000.0),
                    connected_to: l.current.filter(|_| l.up).map(|a| a.to_string()),
                    servers: if l.known.is_empty() {
                        l.seeds.clone()
                    } else {
                        l.known.clone()
                    },
                    error: if l.up { None } else { l.error.clone() },
                })
            })
            .collect()
    }

    fn unknown(&self, dc: &str) -> LinkError {
        LinkError::Unknown {
            dc: dc.to_string(),
            known: self.names().join(", "),
        }
    }

    /// Addresses to try for `dc`, best first: the one in use, the servers it
    /// told us about, then the seeds.
    fn candidates(&self, dc: &str) -> Result<Vec<String>, LinkError> {
        let link = self.links.get(dc).ok_or_else(|| self.unknown(dc))?;
        let l = link.lock().map_err(|_| self.unknown(dc))?;
        let mut out: Vec<String> = Vec::new();
        if let Some(current) = l.current {
            out.push(current.to_string());
        }
        for a in l.known.iter().chain(&l.seeds) {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        Ok(out)
    }

    /// Opens a stream to some server of `dc`, trying each candidate until
    /// `timeout` has passed.
    pub async fn open(
        &self,
        dc: &str,
        timeout: Duration,
    ) -> Result<(FrameWriter, FrameReader, SocketAddr), LinkError> {
        let candidates = self.candidates(dc)?;
        let server_name = meridian_gateway::tls::datacenter_name(dc);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut cause = "no address known".to_string();
        for candidate in candidates {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                cause = format!("no answer within {} ms", timeout.as_millis());
                break;
            }
            let addr = match resolve(&candidate).await {
                Ok(a) => a,
                Err(e) => {
                    cause = e;
                    continue;
                }
            };
            match self
                .endpoint
                .open_stream(addr, &server_name, ALPN_WAN, left)
                .await
            {
                Ok((w, r)) => return Ok((w, r, addr)),
                Err(e) => cause = e.to_string(),
            }
        }
        Err(LinkError::Unreachable {
            dc: dc.to_string(),
            cause,
        })
    }

    /// Says hello to `dc`: returns the server answering and its server list.
    async fn hello(&self, dc: &str) -> Result<(SocketAddr, Vec<String>), LinkError> {
        let unreachable = |cause: String| LinkError::Unreachable {
            dc: dc.to_string(),
            cause,
        };
        let (mut w, mut r, addr) = self.open(dc, self.connect_timeout).await?;
        let hello = wire::encode(&WanRequest::Hello(self.own_hello()));
        let exchange = async {
            self.metrics
                .send(dc, &mut w, &hello)
                .await
                .map_err(|e| e.to_string())?;
            w.finish();
            let frame = self
                .metrics
                .next(dc, &mut r)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("stream closed before the hello answer")?;
            match wire::decode::<WanResponse>(&frame)? {
                WanResponse::Hello(h) if h.datacenter == dc => {
                    let servers = h.servers.clone();
                    self.heard(h);
                    Ok(servers)
                }
                WanResponse::Hello(h) => Err(format!(
                    "the server at {addr} belongs to datacenter {:?}",
                    h.datacenter
                )),
                WanResponse::Refused(why) => Err(format!("refused: {why}")),
                other => Err(format!("unexpected answer to hello: {other:?}")),
            }
        };
        match tokio::time::timeout(self.connect_timeout, exchange).await {
            Ok(Ok(servers)) => Ok((addr, servers)),
            Ok(Err(cause)) => Err(unreachable(cause)),
            Err(_) => Err(unreachable(format!(
                "no hello answer within {} ms",
                self.connect_timeout.as_millis()
            ))),
        }
    }

    /// Records the outcome of a hello to `dc` in its link state and metrics;
    /// returns whether the link is up.
    fn record(&self, dc: &str, result: Result<(SocketAddr, Vec<String>), LinkError>) -> bool {
        let up = result.is_ok();
        self.metrics
            .link_up
            .with_label_values(&[dc])
            .set(i64::from(up));
        let Some(Ok(mut l)) = self.links.get(dc).map(|link| link.lock()) else {
            return up;
        };
        if l.up != up {
            l.since = SystemTime::now();
        }
        match result {
            Ok((addr, servers)) => {
                if !l.up {
                    tracing::info!(datacenter = %dc, server = %addr, "WAN link up");
                }
                l.up = true;
                l.current = Some(addr);
                if !servers.is_empty() {
                    l.known = servers;
                }
                l.error = None;
                l.rtt = self.endpoint.rtt(addr, ALPN_WAN);
                if let Some(rtt) = l.rtt {
                    self.metrics
                        .link_rtt
                        .with_label_values(&[dc])
                        .set(rtt.as_secs_f64());
                }
            }
            Err(e) => {
                if l.up {
                    tracing::warn!(datacenter = %dc, error = %e, "WAN link down");
                }
                l.up = false;
                l.current = None;
                l.error = Some(e.to_string());
            }
        }
        up
    }

    /// Keeps the link to `dc` until stopped.
    async fn keep(self: Arc<Self>, dc: String) {
        let mut stop = self.stop.subscribe();
        let mut backoff = Duration::from_millis(100);
        loop {
            if *stop.borrow() {
                return;
            }
            let up = self.record(&dc, self.hello(&dc).await);
            let pause = if up {
                backoff = Duration::from_millis(100);
                self.probe
            } else {
                let pause = backoff;
                backoff = (backoff * 2)
                    .min(Duration::from_secs(5))
                    .min(self.probe * 5);
                pause
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))
}
