//! The HTTP client the CLI verbs share: tries each endpoint in turn.

use anyhow::{anyhow, Result};
use serde_json::Value;

/// Default endpoints: the client ports of `meridian dev` with its default base port.
pub const DEFAULT_ENDPOINTS: &str =
    "http://127.0.0.1:2379,http://127.0.0.1:2389,http://127.0.0.1:2399";

/// Where the servers are.
#[derive(clap::Args, Clone)]
pub struct Endpoints {
    /// Client URLs of servers, comma-separated.
    #[arg(long, global = true, value_delimiter = ',', default_value = DEFAULT_ENDPOINTS, env = "MERIDIAN_ENDPOINTS")]
    pub endpoints: Vec<String>,
}

impl Endpoints {
    /// POSTs JSON to the first endpoint that answers; an API error becomes a one-line error.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let client = reqwest::Client::new();
        let mut last = None;
        for endpoint in &self.endpoints {
            let url = format!("{}{}", endpoint.trim_end_matches('/'), path);
            match client.post(&url).json(body).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let value: Value = resp
                        .json()
                        .await
                        .map_err(|e| anyhow!("{url}: unreadable answer: {e}"))?;
                    if status.is_success() {
                        return Ok(value);
                    }
                    let message = value
                        .get("message")
                        .or_else(|| value.get("error"))
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error");
                    return Err(anyhow!("{message} (HTTP {})", status.as_u16()));
                }
                Err(e) => last = Some(anyhow!("{url}: {e}")),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no endpoints given")))
    }
}
