//! What the catalog stores: service instances, their checks and their
//! health, as JSON values under the reserved prefix; and the registration a
//! client sends, checked before anything is written.

use super::CatalogError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use meridian_node::config::parse_duration;

/// Most tags on one instance.
const TAGS_MAX: usize = 64;
/// Most metadata entries on one instance.
const META_MAX: usize = 64;
/// Longest interval, timeout, TTL or deregistration delay a check may have.
const DURATION_MAX: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
/// Transitions kept in an instance's health history.
pub const HISTORY_MAX: usize = 10;

/// An instance's health, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Healthy: lookups return it.
    Passing,
    /// Degraded: listed, but lookups skip it.
    Warning,
    /// Failing (or not yet checked): lookups skip it.
    Critical,
}

impl Status {
    /// The name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }

    /// Parses `passing`, `warning` or `critical` (also Consul's `pass`,
    /// `warn` and `fail`).
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "passing" | "pass" => Some(Status::Passing),
            "warning" | "warn" => Some(Status::Warning),
            "critical" | "fail" => Some(Status::Critical),
            _ => None,
        }
    }
}

/// What a check probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// The instance reports its own status at least every `ttl_ms`.
    Ttl {
        /// How long a report holds.
        ttl_ms: u64,
    },
    /// An HTTP GET: 2xx is passing, 429 warning, anything else critical.
    Http {
        /// The URL (`http://`).
        url: String,
    },
    /// A TCP connect: connected is passing.
    Tcp {
        /// `host:port`.
        addr: String,
    },
}

impl Probe {
    /// `ttl`, `http` or `tcp`, as metrics label checks.
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Ttl { .. } => "ttl",
            Probe::Http { .. } => "http",
            Probe::Tcp { .. } => "tcp",
        }
    }
}

/// A stored check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What it probes.
    pub probe: Probe,
    /// Time between probes (HTTP and TCP).
    pub interval_ms: u64,
    /// How long a probe may take before it counts as critical.
    pub timeout_ms: u64,
    /// Removes the instance after it has been critical this long.
    pub deregister_after_ms: Option<u64>,
}

/// A stored instance: the value of `service/<name>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The service's name.
    pub service: String,
    /// The instance's id, unique within the service.
    pub id: String,
    /// The node (host) it runs on; its id when not given.
    pub node: String,
    /// Host name or IP address clients connect to.
    pub address: String,
    /// Port clients connect to.
    pub port: u16,
    /// Tags, in the order given.
    pub tags: Vec<String>,
    /// Free-form metadata.
    pub meta: BTreeMap<String, String>,
    /// Its check, if any.
    pub check: Option<Check>,
}

/// One change of an instance's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The new status.
    pub status: Status,
    /// What the check said.
    pub output: String,
    /// When (milliseconds since the Unix epoch, the checking server's clock).
    pub at_ms: u64,
    /// The server that saw it (or `report` for a TTL report).
    pub by: String,
}

/// A stored health record: the value of `health/<name>/<id>`. Written only
/// when the status changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The current status.
    pub status: Status,
    /// The check's output at the last change.
    pub output: String,
    /// When the current status began (ms since the Unix epoch).
    pub since_ms: u64,
    /// The server whose check set it.
    pub by: String,
    /// The latest transitions, oldest first, at most [`HISTORY_MAX`].
    pub history: Vec<Transition>,
    /// Whether a probe or report has set it (false while it still holds
    /// the status given at registration).
    #[serde(default)]
    pub checked: bool,
}

impl Health {
    /// The health of a newly registered instance: passing without a check,
    /// critical until its first probe or report with one (as Consul does).
    pub fn initial(check: Option<&Check>, by: &str, now_ms: u64) -> Health {
        let (status, output) = match check {
            None => (Status::Passing, "registered without a check"),
            Some(c) if matches!(c.probe, Probe::Ttl { .. }) => {
                (Status::Critical, "awaiting the first TTL report")
            }
            Some(_) => (Status::Critical, "awaiting the first check"),
        };
        Health::first(status, output, by, now_ms)
    }

    fn first(status: Status, output: &str, by: &str, now_ms: u64) -> Health {
        Health {
            status,
            output: output.to_string(),
            since_ms: now_ms,
            by: by.to_string(),
            history: vec![Transition {
                status,
                output: output.to_string(),
                at_ms: now_ms,
                by: by.to_string(),
            }],
            checked: false,
        }
    }

    /// Whether a result of `status` is news: another status, or the first
    /// result at all.
    pub fn changes_to(&self, status: Status) -> bool {
        self.status != status || !self.checked
    }

    /// This record moved to `status`, with the transition in its history.
    pub fn moved(&self, status: Status, output: &str, by: &str, now_ms: u64) -> Health {
        let mut history = self.history.clone();
        history.push(Transition {
            status,
            output: output.to_string(),
            at_ms: now_ms,
            by: by.to_string(),
        });
        let excess = history.len().saturating_sub(HISTORY_MAX);
        history.drain(..excess);
        Health {
            status,
            output: output.to_string(),
            since_ms: now_ms,
            by: by.to_string(),
            history,
            checked: true,
        }
    }
}

/// A check as a client writes it: exactly one of `ttl`, `http`, `tcp`;
/// durations as Go writes them (`"10s"`, `"500ms"`, `"1m"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// TTL check: how long each report holds.
    pub ttl: Option<String>,
    /// HTTP check: the URL to GET.
    pub http: Option<String>,
    /// TCP check: `host:port` to connect to.
    pub tcp: Option<String>,
    /// Time between probes (HTTP and TCP; required for them).
    pub interval: Option<String>,
    /// Probe timeout (default: the interval, at most 10 s).
    pub timeout: Option<String>,
    /// Remove the instance after it has been critical this long.
    pub deregister_critical_after: Option<String>,
}

/// A registration as a client sends it to `PUT /v1/catalog/register`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The service's name.
    pub service: Option<String>,
    /// The instance's id (default: the service's name).
    pub id: Option<String>,
    /// The node it runs on (default: the instance id).
    pub node: Option<String>,
    /// Host name or IP address.
    pub address: Option<String>,
    /// Port, 1 to 65535.
    pub port: Option<i64>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// An existing lease to bind the instance to (decimal id, as a string
    /// or a number).
    pub lease: Option<serde_json::Value>,
    /// Seconds: the server grants a lease of this TTL and binds the instance.
    pub ttl: Option<i64>,
    /// Its check.
    pub check: Option<CheckSpec>,
}

/// A registration that passed every check, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Valid {
    /// The instance to store.
    pub instance: Instance,
    /// The lease to bind (0 for none).
    pub lease: i64,
    /// The TTL of a lease to grant for it (0 for none).
    pub grant_ttl: i64,
}

impl Registration {
    /// Checks every field; the first problem is the error.
    pub fn validate(self) -> Result<Valid, CatalogError> {
        let bad = |m: String| Err(CatalogError::Invalid(m));
        let service = match self.service {
            Some(s) => s,
            None => return bad("service: a service name is required".into()),
        };
        check_name("service", &service)?;
        let id = self.id.unwrap_or_else(|| service.clone());
        check_name("id", &id)?;
        let node = self.node.unwrap_or_else(|| id.clone());
        check_name("node", &node)?;
        let address = match self.address {
            Some(a) => a,
            None => return bad("address: an address (host name or IP) is required".into()),
        };
        if !valid_host(&address) {
            return bad(format!(
                "address: {address:?} is neither an IP address nor a host name"
            ));
        }
        let port = match self.port {
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => return bad(format!("port: {p} is not a port (1 to 65535)")),
            None => return bad("port: a port (1 to 65535) is required".into()),
        };
        if self.tags.len() > TAGS_MAX {
            return bad(format!("tags: at most {TAGS_MAX} tags"));
        }
        if let Some(t) = self
            .tags
            .iter()
            .find(|t| t.is_empty() || t.len() > 256 || t.chars().any(char::is_control))
        {
            return bad(format!(
                "tags: {t:?} is not a tag (1 to 256 printable characters)"
            ));
        }
        if self.meta.len() > META_MAX {
            return bad(format!("meta: at most {META_MAX} entries"));
        }
        if let Some((k, _)) = self
            .meta
            .iter()
            .find(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 512)
        {
            return bad(format!(
                "meta: {k:?}: keys are 1 to 128 bytes, values at most 512"
            ));
        }
        let lease = match self.lease {
            None => 0,
            Some(v) => match lease_id(&v) {
                Some(id) => id,
                None => return bad(format!("lease: {v} is not a lease id")),
            },
        };
        let grant_ttl = match self.ttl {
            None => 0,
            Some(_) if lease != 0 => {
                return bad("ttl: give either a lease or a ttl, not both".into())
            }
            Some(t) if t >= 1 => t,
            Some(t) => return bad(format!("ttl: {t} is not a TTL (whole seconds, 1 or more)")),
        };
        let check = self.check.map(CheckSpec::validate).transpose()?;
        Ok(Valid {
            instance: Instance {
                service,
                id,
                node,
                address,
                port,
                tags: self.tags,
                meta: self.meta,
                check,
            },
            lease,
            grant_ttl,
        })
    }
}

impl CheckSpec {
    fn validate(self) -> Result<Check, CatalogError> {
        let bad = |m: String| Err(CatalogError::Invalid(m));
        let given = [self.ttl.is_some(), self.http.is_some(), self.tcp.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return bad("check: give exactly one of ttl, http or tcp".into());
        }
        let duration = |field: &str, v: &Option<String>| -> Result<Option<u64>, CatalogError> {
            match v {
                None => Ok(None),
                Some(s) => match parse_duration(s) {
                    Some(d) if !d.is_zero() && d <= DURATION_MAX => {
                        Ok(Some(d.as_millis().max(1) as u64))
                    }
                    _ => Err(CatalogError::Invalid(format!(
                        "check.{field}: {s:?} is not a duration greater than zero and at most 30 days (e.g. \"10s\", \"500ms\")"
                    ))),
                },
            }
        };
        let interval = duration("interval", &self.interval)?;
        let timeout = duration("timeout", &self.timeout)?;
        let deregister_after_ms =
            duration("deregister_critical_after", &self.deregister_critical_after)?;
        let probe = if let Some(ttl) = &self.ttl {
            let Some(ttl_ms) = duration("ttl", &Some(ttl.clone()))? else {
                return bad("check.ttl: a duration is required".into());
            };
            Probe::Ttl { ttl_ms }
        } else if let Some(url) = self.http {
            let Some(rest) = url.strip_prefix("http://") else {
                return bad(format!(
                    "check.http: {url:?} is not an http:// URL (https checks are not supported; use a tcp check)"
                ));
            };
            let host = rest.split(['/', '?']).next().unwrap_or("");
            if host_port(host).is_none() {
                return bad(format!("check.http: {url:?} has no valid host"));
            }
            Probe::Http { url }
        } else {
            let addr = self.tcp.unwrap_or_default();
            match host_port(&addr) {
                Some((_, Some(_))) => Probe::Tcp { addr },
                _ => return bad(format!("check.tcp: {addr:?} is not host:port")),
            }
        };
        let interval_ms = match (&probe, interval) {
            (Probe::Ttl { ttl_ms }, i) => i.unwrap_or(*ttl_ms),
            (_, Some(i)) => i,
            (_, None) => {
                return bad(
                    "check.interval: http and tcp checks need an interval (e.g. \"10s\")".into(),
                )
            }
        };
        let timeout_ms = timeout.unwrap_or(interval_ms.min(10_000));
        Ok(Check {
            probe,
            interval_ms,
            timeout_ms,
            deregister_after_ms,
        })
    }
}

/// Service names, instance ids and node names: 1 to 128 letters, digits,
/// `-`, `_`, `.` or `:` (they are parts of keys, so no `/`).
pub fn check_name(field: &str, name: &str) -> Result<(), CatalogError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(CatalogError::Invalid(format!(
            "{field}: {name:?} is not a name (1 to 128 letters, digits, '-', '_', '.' or ':')"
        )))
    }
}

fn lease_id(v: &serde_json::Value) -> Option<i64> {
    let id = match v {
        serde_json::Value::String(s) => s.parse::<i64>().ok()?,
        serde_json::Value::Number(n) => n.as_i64()?,
        _ => return None,
    };
    (id > 0).then_some(id)
}

/// An IP address, or a DNS host name.
fn valid_host(h: &str) -> bool {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// `host[:port]` (IPv6 in brackets), when the host is valid.
fn host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return None,
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    (s.starts_with('[') || valid_host(host)).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(v: serde_json::Value) -> Result<Valid, CatalogError> {
        serde_json::from_value::<Registration>(v)
            .map_err(|e| CatalogError::Invalid(e.to_string()))?
            .validate()
    }

    #[test]
    fn a_full_registration_is_accepted_with_defaults_filled_in() {
        let v = reg(serde_json::json!({
            "service": "api", "address": "10.0.0.7", "port": 8080, "tags": ["v1"],
            "check": {"http": "http://10.0.0.7:8080/health", "interval": "2s"}
        }))
        .expect("valid");
        assert_eq!(v.instance.id, "api");
        assert_eq!(v.instance.node, "api");
        let check = v.instance.check.expect("check");
        assert_eq!(check.interval_ms, 2000);
        assert_eq!(check.timeout_ms, 2000);
        let ttl = reg(serde_json::json!({
            "service": "api", "id": "a-2", "address": "db.example", "port": 1,
            "lease": "7587", "check": {"ttl": "15s", "deregister_critical_after": "1m"}
        }))
        .expect("valid");
        assert_eq!(ttl.lease, 7587);
        let check = ttl.instance.check.expect("check");
        assert_eq!(check.probe, Probe::Ttl { ttl_ms: 15_000 });
        assert_eq!(check.deregister_after_ms, Some(60_000));
    }

    #[test]
    fn bad_registrations_are_refused_naming_the_field() {
        let cases = [
            (
                serde_json::json!({"address": "10.0.0.1", "port": 80}),
                "service:",
            ),
            (
                serde_json::json!({"service": "a/b", "address": "10.0.0.1", "port": 80}),
                "service:",
            ),
            (
                serde_json::json!({"service": "api", "address": "not an address", "port": 80}),
                "address:",
            ),
            (
                serde_json::json!({"service": "api", "address": "10.0.0.1", "port": 0}),
                "port:",
            ),
            (
                serde_json::json!({"service": "api", "address": "10.0.0.1", "port": 70000}),
                "port:",
            ),
            (
                serde_json::json!({"service": "api", "address": "10.0.0.1"}),
                "port:",
            ),
            (
                serde_json::json!({"service": "api", "address": "10.0.0.1", "port": 80, "ttl": 0}),
                "ttl:",
            ),
            (
                serde_json::json!({"service": "api", "address": "10.0.0.1", "port": 80, "ttl": 5, "lease": 9}),
                "ttl:",
            ),
            (
                serde_json::json!({"service": "api", "address": "10.0.0.1", "port": 80, "lease": "x"}),
                "lease:",
            ),
            (
                serde_json::json!({"service": "api", "address": "h", "port": 80, "check": {"tcp": "h:1", "interval": "0s"}}),
                "check.interval:",
            ),
            (
                serde_json::json!({"service": "api", "address": "h", "port": 80, "check": {"tcp": "h:1"}}),
                "check.interval:",
            ),
            (
                serde_json::json!({"service": "api", "address": "h", "port": 80, "check": {"tcp": "h"}}),
                "check.tcp:",
            ),
            (
                serde_json::json!({"service": "api", "address": "h", "port": 80, "check": {"http": "https://h/", "interval": "1s"}}),
                "check.http:",
            ),
            (
                serde_json::json!({"service": "api", "address": "h", "port": 80, "check": {"ttl": "5s", "tcp": "h:1"}}),
                "check:",
            ),
            (
                serde_json::json!({"service": "api", "address": "h", "port": 80, "check": {}}),
                "check:",
            ),
        ];
        for (body, field) in cases {
            match reg(body.clone()) {
                Err(CatalogError::Invalid(m)) => {
                    assert!(m.starts_with(field), "{body}: {m}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn history_keeps_the_latest_transitions() {
        let mut h = Health::initial(None, "s1", 1);
        for i in 0..25 {
            let status = if i % 2 == 0 {
                Status::Critical
            } else {
                Status::Passing
            };
            h = h.moved(status, "x", "s1", 2 + i);
        }
        assert_eq!(h.history.len(), HISTORY_MAX);
        assert_eq!(h.history.last().map(|t| t.at_ms), Some(26));
        assert_eq!(h.since_ms, 26);
    }
}
