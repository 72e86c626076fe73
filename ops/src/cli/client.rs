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
    /// Run the request in this datacenter (forwarded over the WAN link by
    /// the server that receives it).
    #[arg(long, global = true, env = "MERIDIAN_DATACENTER")]
    pub dc: Option<String>,
}

impl Endpoints {
    /// An HTTP client that names the datacenter asked for with `--dc`.
    pub fn client(&self) -> Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(dc) = &self.dc {
            let value = reqwest::header::HeaderValue::from_str(dc)
                .map_err(|_| anyhow!("--dc {dc:?} is not a datacenter name"))?;
            headers.insert("meridian-datacenter", value);
        }
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .map_err(|e| anyhow!("HTTP client: {e}"))
    }

    /// GETs JSON from the first endpoint that answers; an API error becomes a one-line error.
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.first_answer(path, |client, url| client.get(url)).await
    }

    /// POSTs JSON to the first endpoint that answers; an API error becomes a one-line error.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.first_answer(path, |client, url| client.post(url).json(body))
            .await
    }

    /// PUTs JSON to the first endpoint that answers.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value> {
        self.first_answer(path, |client, url| client.put(url).json(body))
            .await
    }

    /// DELETEs at the first endpoint that answers.
    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.first_answer(path, |client, url| client.delete(url))
            .await
    }

    /// The current leader's client URL, as any of these endpoints tells it
    /// (`GET /v1/members`).
    pub async fn leader(&self) -> Result<Endpoints> {
        let v = self.get("/v1/members").await?;
        let id = v["leader"].as_str().unwrap_or("");
        let url = v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["id"].as_str() == Some(id))
            .and_then(|m| m["client_url"].as_str())
            .filter(|u| !u.is_empty())
            .ok_or_else(|| anyhow!("no leader is known now; retry shortly"))?;
        Ok(Endpoints {
            endpoints: vec![url.to_string()],
            dc: self.dc.clone(),
        })
    }

    /// Sends the request `build` makes to each endpoint in turn until one answers.
    async fn first_answer(
        &self,
        path: &str,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Value> {
        let client = self.client()?;
        let mut last = None;
        for endpoint in &self.endpoints {
            let url = format!("{}{}", endpoint.trim_end_matches('/'), path);
            match build(&client, &url).send().await {
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

/// A name checked for use as one segment of a URL path.
pub fn path_segment(name: &str) -> Result<&str> {
    if name.is_empty() || name.contains(['/', '?', '#', '%']) {
        return Err(anyhow!("{name:?} cannot be used in a URL path"));
    }
    Ok(name)
}
